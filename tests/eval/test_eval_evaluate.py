"""`phmdiff evaluate` on real NIfTI files: pairs, folders, translate folders, refusals."""

import csv
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main


def _write(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), str(path))
    return path


def _subject(seed, shape=(24, 24, 12)):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    ref = np.where(z**2 + y**2 + x**2 < 0.7, 100 + 300 * rng.random(shape), 0.0)
    return ref, ref + 5 * rng.standard_normal(shape) * (ref > 0)


def test_two_files_all_protocols(tmp_path, capsys):
    ref, pred = _subject(0)
    r, p = _write(tmp_path / "ref.nii.gz", ref), _write(tmp_path / "pred.nii.gz", pred)
    out = tmp_path / "ev"
    assert main(["evaluate", str(p), str(r), "--protocol", "all", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    every = ["volume", "slice", "selfrdb", "syndiff", "brasyn", "synthrad", "scalefree"]
    assert list(summary["protocols"]) == every
    assert summary["protocols"]["volume"]["psnr"]["n"] == 1 and summary["distribution"]["ms_swd"] > 0
    assert summary["protocols"]["scalefree"]["psnr"]["n"] == 1
    assert "--inception" in summary["distribution"]["fid_note"]
    rows = list(csv.DictReader((out / "per_subject.csv").open()))
    assert [r["protocol"] for r in rows] == every
    assert rows[-2]["synthrad_note"] and rows[-3]["ssim_healthy"] and not rows[-3]["ssim_tumour"]
    assert rows[-1]["pred_norm_high"] and not rows[-1]["scalefree_note"]  # MR: scored, the prediction's own scale
    assert len(list(csv.DictReader((out / "per_slice.csv").open()))) > 4 * 8
    assert "volume" in capsys.readouterr().out


def test_identical_volumes_report_inf(tmp_path):
    ref, _ = _subject(1)
    r = _write(tmp_path / "ref.nii.gz", ref)
    out = tmp_path / "ev"
    assert main(["evaluate", str(r), str(r), "--out", str(out)]) == 0
    row = next(csv.DictReader((out / "per_subject.csv").open()))
    assert row["psnr"] == "inf" and float(row["ssim"]) == pytest.approx(1.0)
    st = json.loads((out / "summary.json").read_text())["protocols"]["volume"]["psnr"]
    assert st == {"mean": None, "std": None, "n": 1, "n_inf": 1}


def test_folders_matched_by_subject_and_translate_folder(tmp_path):
    for i, sid in enumerate(["s1", "s2", "s3"]):
        ref, pred = _subject(i)
        _write(tmp_path / "refs" / sid / f"{sid}_flair.nii.gz", ref)
        _write(tmp_path / "refs" / sid / f"{sid}_t1.nii.gz", ref * 0.5)
        if sid != "s3":
            _write(tmp_path / "preds" / f"{sid}.nii.gz", pred)
    out = tmp_path / "ev"
    argv = ["evaluate", str(tmp_path / "preds"), str(tmp_path / "refs"), "--target", "flair", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["protocols"]["volume"]["n_subjects"] == 2
    tr = tmp_path / "translate"
    samples = [f"s1_sample{k}.nii.gz" for k in range(3)]
    for k, name in enumerate(samples):
        _write(tr / name, _subject(0)[1] + k)
    _write(tr / "s1_flair.nii.gz", _subject(0)[1])
    meta = {"target": "flair", "sources": ["t1"], "modality_kind": "mr",
            "subjects": [{"subject": "s1", "prediction": "s1_flair.nii.gz", "std": None, "samples": samples,
                          "reference": str(tmp_path / "refs/s1/s1_flair.nii.gz"), "mask": None, "seg": None},
                         {"subject": "s9", "prediction": "x.nii.gz", "reference": None}]}
    (tr / "translate.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(tr)]) == 0
    row = next(csv.DictReader((tr / "evaluation" / "per_subject.csv").open()))
    assert row["subject"] == "s1" and row["n_samples"] == "3"
    assert float(row["mean_mae"]) < float(row["single_mae_mean"])  # samples offset by 0, 1, 2: mean is closer


def test_mismatches_are_refused_with_a_sentence(tmp_path, capsys):
    ref, pred = _subject(0)
    r = _write(tmp_path / "ref.nii.gz", ref)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    p = _write(tmp_path / "pred.nii.gz", pred, shifted)
    assert main(["evaluate", str(p), str(r), "--out", str(tmp_path / "ev")]) == 2
    assert "affine differs" in capsys.readouterr().err
    p = _write(tmp_path / "small.nii.gz", pred[:-1])
    assert main(["evaluate", str(p), str(r), "--out", str(tmp_path / "ev")]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["evaluate", str(r), str(r), "--protocol", "psnr"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists() or not any((tmp_path / "ev").iterdir())


def test_cli_process_prints_one_line_for_a_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "phmdiff", "evaluate", str(tmp_path / "a.nii.gz"),
                           str(tmp_path / "b.nii.gz")], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_modality_is_read_from_translate_json_and_a_contradiction_refused(tmp_path, capsys):
    ref, pred = _subject(0)
    tr = tmp_path / "translate"
    _write(tr / "s1_flair.nii.gz", pred)
    meta = {"target": "flair", "sources": ["t1"], "modality_kind": "mr",
            "subjects": [{"subject": "s1", "prediction": "s1_flair.nii.gz",
                          "reference": str(_write(tmp_path / "ref.nii.gz", ref))}]}
    (tr / "translate.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(tr), "--modality", "ct"]) == 2
    err = capsys.readouterr().err
    assert "records the modality as 'mr'" in err and len(err.strip().splitlines()) == 1
    assert not (tr / "evaluation").exists()
    assert main(["evaluate", str(tr), "--modality", "mr"]) == 0
    assert json.loads((tr / "evaluation" / "summary.json").read_text())["modality"] == "mr"
    prov = json.loads((tr / "evaluation" / "evaluation.json").read_text())["provenance"]
    assert prov["target"] == "flair" and prov["sources"] == ["t1"] and prov["n_samples"] == 1
    assert prov["n_subjects"] == 1 and prov["phmdiff_version"] and prov["evaluated"].endswith("UTC")
    # --overwrite: a folder holding another's file is refused, then written into with the file kept
    other = tmp_path / "shared"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["evaluate", str(tr), "--out", str(other)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", str(tr), "--out", str(other), "--overwrite"]) == 0
    assert (other / "notes.txt").read_text() == "mine" and (other / "summary.json").is_file()
    assert main(["evaluate", str(tr), "--out", str(other)]) == 0  # its own earlier output: no flag needed


def test_baseline_is_the_best_source_intensity_matched(tmp_path):
    ref, pred = _subject(2)
    tr = tmp_path / "translate"
    _write(tr / "s1_flair.nii.gz", pred)
    sources = {"t1": str(_write(tmp_path / "t1.nii.gz", 3 * ref + 7)),  # a linear map of the truth: matched exactly
               "t2": str(_write(tmp_path / "t2.nii.gz", ref[::-1]))}
    meta = {"target": "flair", "sources": ["t1", "t2"], "modality_kind": "mr",
            "subjects": [{"subject": "s1", "prediction": "s1_flair.nii.gz", "source_images": sources,
                          "reference": str(_write(tmp_path / "ref.nii.gz", ref))}]}
    (tr / "translate.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(tr)]) == 0
    row = next(csv.DictReader((tr / "evaluation" / "per_subject.csv").open()))
    assert row["baseline_source"] == "t1" and float(row["baseline_psnr"]) > 100  # float32 rounding only
