"""BIDS datasets (issue 29 item 4): read by prepare, translate and evaluate, with real NIfTI files; outputs named
in the input's convention; a target listed among the sources refused."""

import json
import shutil

import pytest

from phmdiff.cli import main
from phmdiff.data.names import bids_modality, output_stem
from phmdiff.data.readers import detect_layout, find_subjects
from phmdiff.translate import translate

BIDS = {"t1": "T1w", "t1ce": "ce-gadolinium_T1w", "t2": "T2w", "flair": "FLAIR", "seg": "dseg"}


def to_bids(phantom, root, sessions=False, anat=True):
    """The phantom's BraTS 2021 subjects as a BIDS tree: sub-NN/[ses-01/]anat/sub-NN[_ses-01]_T1w.nii.gz, ...,
    with a JSON sidecar and a T2*-weighted image (read by nothing) beside them."""
    subjects = sorted(p for p in phantom.iterdir() if p.is_dir())
    for k, sub in enumerate(subjects, start=1):
        sid = f"sub-{k:02d}"
        folder, stem = root / sid, sid
        if sessions:
            folder, stem = folder / "ses-01", f"{sid}_ses-01"
        if anat:
            folder = folder / "anat"
        folder.mkdir(parents=True)
        for mod, suffix in BIDS.items():
            shutil.copy(sub / f"{sub.name}_{mod}.nii.gz", folder / f"{stem}_{suffix}.nii.gz")
        (folder / f"{stem}_T1w.json").write_text("{}")
        shutil.copy(sub / f"{sub.name}_t2.nii.gz", folder / f"{stem}_T2starw.nii.gz")
    return root


@pytest.mark.parametrize("stem, modality", [
    ("sub-01_T1w", "t1"), ("sub-01_ses-2_ce-gadolinium_T1w", "t1ce"), ("sub-01_ce-Gd_run-1_T1w", "t1ce"),
    ("sub-01_acq-3d_T2w", "t2"), ("sub-01_FLAIR", "flair"), ("sub-01_T2FLAIR", "flair"), ("sub-01_T1Gd", "t1ce"),
    ("sub-01_dseg", "seg"), ("sub-01_desc-tumor_mask", "seg"), ("sub-01_T2starw", None), ("sub-01_bold", None),
])
def test_bids_suffixes_and_contrast_entities_name_the_modality(stem, modality):
    assert bids_modality(stem) == modality


def test_outputs_are_named_in_the_inputs_convention():
    assert output_stem("BraTS-GLI-00000-000", "flair", "brats2023") == "BraTS-GLI-00000-000-t2f"
    assert output_stem("BraTS-GLI-00000-000", "t1ce", "brats2023") == "BraTS-GLI-00000-000-t1c"
    assert output_stem("BraTS2021_00000", "flair", "brats2021") == "BraTS2021_00000_flair"
    assert output_stem("sub-01_ses-02", "flair", "bids") == "sub-01_ses-02_FLAIR"
    assert output_stem("sub-01", "t1ce", "bids") == "sub-01_ce-gadolinium_T1w"
    assert bids_modality(output_stem("sub-01", "t1ce", "bids")) == "t1ce"
    assert output_stem("pat1", "ct", "synthrad") == "pat1_ct"


@pytest.mark.parametrize("sessions, anat", [(False, True), (True, True), (False, False)])
def test_bids_trees_are_found_with_sessions_and_without_anat(tiny_run, tmp_path, sessions, anat):
    root = to_bids(tiny_run / "ph", tmp_path / "bids", sessions, anat)
    assert detect_layout(root) == "bids"
    subjects = find_subjects(root)
    suffix = "_ses-01" if sessions else ""
    assert [s.id for s in subjects] == [f"sub-{k:02d}{suffix}" for k in range(1, 5)]
    s = subjects[0]
    assert s.layout == "bids" and sorted(s.paths) == ["flair", "t1", "t1ce", "t2"]
    assert s.paths["t1ce"].name == f"sub-01{suffix}_ce-gadolinium_T1w.nii.gz"
    assert s.mask.name == f"sub-01{suffix}_dseg.nii.gz"
    assert len(s.problems) == 1 and "T2starw" in s.problems[0] and "ignored" in s.problems[0]


def test_prepare_reads_bids_and_its_dry_run_lists_the_ignored_files(tiny_run, tmp_path, capsys):
    root = to_bids(tiny_run / "ph", tmp_path / "bids", sessions=True)
    assert main(["prepare", str(root), str(tmp_path / "p"), "--size", "16", "--modalities", "T1w", "T2w", "FLAIR",
                 "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "layout bids" in out.out + out.err and "T2starw" in out.out + out.err
    assert main(["prepare", str(root), str(tmp_path / "p"), "--size", "16", "--modalities", "T1w", "T2w",
                 "FLAIR"]) == 0
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert sorted(manifest["volumes"]) == [f"sub-{k:02d}_ses-01" for k in range(1, 5)]
    assert manifest["modalities"] == ["t1", "t2", "flair"]


def test_translate_and_evaluate_read_bids_and_name_outputs_bids_like(tiny_run, tmp_path, capsys):
    root = to_bids(tiny_run / "ph", tmp_path / "bids")
    meta = translate(tiny_run / "run", root, tmp_path / "out", steps=1, progress=False)
    assert [s["subject"] for s in meta["subjects"]] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert (tmp_path / "out" / "sub-01" / "sub-01_FLAIR.nii.gz").is_file()
    one = translate(tiny_run / "run", root / "sub-02", tmp_path / "one", steps=1, progress=False)
    assert [s["subject"] for s in one["subjects"]] == ["sub-02"]
    # evaluate: the BIDS-like predictions (without translate.json) against a BIDS reference tree, by --target
    preds = tmp_path / "preds"
    for k in range(1, 5):
        (preds / f"sub-0{k}").mkdir(parents=True)
        shutil.copy(tmp_path / "out" / f"sub-0{k}" / f"sub-0{k}_FLAIR.nii.gz", preds / f"sub-0{k}")
    assert main(["evaluate", str(preds), str(root), "--target", "FLAIR", "--out", str(tmp_path / "ev")]) == 0
    rows = (tmp_path / "ev" / "per_subject.csv").read_text()
    assert all(f"sub-0{k}" in rows for k in range(1, 5))
    capsys.readouterr()
    assert main(["evaluate", str(preds), str(root), "--out", str(tmp_path / "ev2")]) == 2
    assert "pass --target NAME" in capsys.readouterr().err


def test_brats_2023_input_gives_brats_2023_output_names(tiny_run, tmp_path):
    names = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    sub = tiny_run / "ph" / "PHANTOM_00000"
    dst = tmp_path / "b23" / "BraTS-GLI-00000-000"
    dst.mkdir(parents=True)
    for mod, new in names.items():
        shutil.copy(sub / f"PHANTOM_00000_{mod}.nii.gz", dst / f"{dst.name}-{new}.nii.gz")
    translate(tiny_run / "run", tmp_path / "b23", tmp_path / "out", steps=1, progress=False)
    assert (tmp_path / "out" / dst.name / f"{dst.name}-t2f.nii.gz").is_file()


def test_a_target_listed_among_the_sources_is_refused(tiny_run, tmp_path, capsys):
    rc = main(["translate", "--run", str(tiny_run / "run"), "--input", str(tiny_run / "ph"), "--out",
               str(tmp_path / "o"), "--target", "flair", "--sources", "t1", "FLAIR"])
    err = capsys.readouterr().err
    assert rc == 2 and "--target flair is also listed in --sources t1 flair" in err
    assert not (tmp_path / "o").exists()
