"""`phmdiff plan` and prepare's crop sentences (issue 29 item 1): the geometry, slice axis and its reason, the
crop of each plane axis and the foreground it cuts, checked against a box whose numbers are known by hand."""

import json

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.data.readers import find_subjects
from phmdiff.data.volume import VolumeSettings
from phmdiff.fingerprint import FORMAT, axis_reason, dataset_plan, format_plan, subject_plan

SHAPE = (40, 30, 10)
BOX = (slice(5, 35), slice(5, 25), slice(None))  # 30 x 20 x 10 = 6000 foreground voxels


AXIAL_3MM = np.diag([1.0, 1.0, 3.0, 1.0])


def box_dataset(root, affine=AXIAL_3MM, n=1):
    """Subjects s00.. with t1 and t2: a bright box (100, t2: 300) on a dark background (0), a few voxels at 200."""
    for k in range(n):
        for mod, value in (("t1", 100.0), ("t2", 300.0)):
            v = np.zeros(SHAPE, np.float32)
            v[BOX] = value
            v[20, 15, :] = 2 * value
            (root / f"s{k:02d}").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(v, affine), root / f"s{k:02d}" / f"{mod}.nii.gz")
    return root


def test_a_box_cropped_to_16_says_how_much_foreground_each_axis_loses(tmp_path):
    (sub,) = find_subjects(box_dataset(tmp_path / "d"))
    r = subject_plan(sub, ["t1", "t2"], VolumeSettings(["t1", "t2"], size=16))
    assert r["orientation"] == "RAS" and r["spacing_ras_mm"] == [1.0, 1.0, 3.0]
    assert r["slice_axis"] == 2 and r["slice_axis_reason"] == "auto: the coarsest spacing, 3 mm along axial"
    assert r["plane"] == [40, 30] and r["pad"] == [[-12, -12], [-7, -7]]
    # x: rows 5..11 and 28..34 of the box (7 x 20 x 10 each); y: rows 5, 6 and 23, 24 (2 x 30 x 10 each)
    assert r["foreground_cut"] == [[1400, 1400], [600, 600]]
    assert r["foreground_voxels"] == 6000 and r["foreground_lost"] == 6000 - 16 * 16 * 10  # corners once
    assert "cuts 3440 foreground voxels (57.3 % of the foreground)" in r["crop_warning"]
    assert r["slices"] == {"total": 10, "kept": 10, "min_foreground": 0.05}
    t1 = r["intensity"]["t1"]
    assert t1["median"] == 100.0 and t1["max"] == 200.0 and t1["foreground_fraction"] == 6000 / np.prod(SHAPE)
    r = subject_plan(sub, ["t1"], VolumeSettings(["t1"], size=48))  # padding cuts nothing
    assert r["pad"] == [[4, 4], [9, 9]] and r["foreground_lost"] == 0 and r["crop_warning"] is None


def test_orientation_is_named_and_the_axis_follows_ras_not_the_array(tmp_path):
    flipped = np.array([[0, 0, -3.0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # array z -> R-L
    (sub,) = find_subjects(box_dataset(tmp_path / "d", flipped))
    r = subject_plan(sub, ["t1"], VolumeSettings(["t1"], size=None))
    assert r["orientation"] == "SAL" and r["spacing_ras_mm"] == [3.0, 1.0, 1.0]
    assert r["slice_axis"] == 0 and r["slice_axis_name"] == "sagittal (R-L)" and r["fit"] == "keep"


@pytest.mark.parametrize("spacing, axis, setting, words", [
    ([1.0, 1.0, 1.0], 2, "auto", "isotropic voxels, axial by default"),
    ([1.0, 1.0, 2.0], 2, "auto", "the coarsest spacing, 2 mm along axial"),
    ([5.0, 5.0, 4.84], 0, "auto", "(tied with coronal; the first wins a tie); only 3 % coarser than the next"),
    ([1.0, 2.0, 2.0], 2, "auto", "(tied with coronal; axial wins a tie)"),
    ([1.0, 2.0, 3.0], 1, 1, "--axis 1 given"),
])
def test_axis_reasons(spacing, axis, setting, words):
    assert words in axis_reason(spacing, axis, setting)


def test_plan_command_prints_and_writes_json_and_keeps_a_foreign_file(tmp_path, capsys):
    root = box_dataset(tmp_path / "d", n=2)
    (root / "s01" / "t2.nii.gz").unlink()
    (root / "s00" / "pd.nii.gz").write_bytes((root / "s00" / "t1.nii.gz").read_bytes())
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--size", "16", "--modalities", "t1", "t2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 subjects, 1 planned" in text and "s01: not planned, missing t2" in text
    assert "not used: pd" in text and "R-L crop -12/-12, A-P crop -7/-7" in text and "warning: s00:" in text
    plan = json.loads(out.read_text())
    assert plan["format"] == FORMAT and plan["per_subject"][0]["foreground_lost"] == 3440
    assert plan["slice_axes"] == {"axial (S-I)": 1} and plan["incomplete"] == {"s01": ["t2"]}
    assert main(["plan", str(root), "--size", "48", "--modalities", "t1", "--json", str(out)]) == 0  # a plan: replaced
    (tmp_path / "notes.json").write_text("{}")
    capsys.readouterr()
    assert main(["plan", str(root), "--modalities", "t1", "--json", str(tmp_path / "notes.json")]) == 2
    assert "exists and is not a plan" in capsys.readouterr().err


def test_mixed_slice_axes_are_a_warning(tmp_path):
    box_dataset(tmp_path / "d", n=1)
    box_dataset(tmp_path / "e", np.diag([3.0, 1.0, 1.0, 1.0]), n=1)
    (tmp_path / "e" / "s00").rename(tmp_path / "d" / "s01")
    subjects = find_subjects(tmp_path / "d")
    plan = dataset_plan(tmp_path / "d", "generic", subjects, ["t1"], VolumeSettings(["t1"], size=None))
    assert plan["slice_axes"] == {"axial (S-I)": 1, "sagittal (R-L)": 1}
    assert any("not sliced along one axis" in w for w in plan["warnings"])
    assert "warning: the subjects are not sliced along one axis" in format_plan(plan)


def test_prepare_says_what_its_crop_cuts_and_records_the_slice_axis(tmp_path, capsys):
    root = box_dataset(tmp_path / "d", n=3)
    assert main(["prepare", str(root), str(tmp_path / "p"), "--size", "16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s00: t1 t2" in out and "slices: axial (S-I)" in out and "cuts 3440 foreground voxels" in out
    assert not (tmp_path / "p").exists()
    assert main(["prepare", str(root), str(tmp_path / "p"), "--size", "16"]) == 0
    err = capsys.readouterr().err
    assert err.count("prepare: warning: s0") == 3 and "cuts 3440 foreground voxels (57.3 %" in err
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["slice_axis"] == {"axis": 2, "name": "axial (S-I)", "reoriented_to": "RAS",
                                      "subjects_per_axis": {"2": 3}}
    assert manifest["volumes"]["s00"]["orientation"] == "RAS"
    assert manifest["volumes"]["s00"]["foreground_lost"] == 3440
    assert main(["prepare", str(root), str(tmp_path / "q"), "--size", "48"]) == 0
    assert "warning" not in capsys.readouterr().err  # padding: nothing to say


def test_plan_takes_a_run_config_as_main_py_would_prepare(tiny_run, tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).parent / "training" / "tiny.yaml"
    assert main(["plan", str(tiny_run / "ph"), "--config", str(config), "--json", str(tmp_path / "p.json")]) == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["modalities"]["used"] == ["t1", "t2", "flair"] and plan["planned"] == 4
    assert plan["settings"]["size"] == 32  # tiny.yaml's data.resolution
