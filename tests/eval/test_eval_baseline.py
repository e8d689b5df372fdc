"""The copy-the-source baseline per region (issue 26 item 4): T1 is the better copy of the whole image, T2 of
the lesion; each region gets its own, and evaluate and report say in words where the prediction scores below."""

import json

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.eval.baseline import REGIONS, below_baseline, choose_sources, label_psnrs
from phmdiff.eval.protocols import evaluate_subject, foreground_mask, matched_copy

SHAPE = (24, 24, 12)


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))
    return str(path)


def _case(rng):
    """ref: brain 100 with a bright edema (200); t1: exact but its lesion shifted 3 voxels (a good copy of the
    image, a bad one of the lesion); t2: noisy everywhere (sd 20) but its lesion in place; the prediction: nearly
    exact outside the lesion, the lesion 60 too dark."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    brain = (z - 12) ** 2 + (y - 12) ** 2 + 4 * (x - 6) ** 2 < 100
    lesion = brain & ((z - 12) ** 2 + (y - 10) ** 2 + 4 * (x - 6) ** 2 < 12)
    ref = np.where(brain, 100 + 5 * rng.standard_normal(SHAPE), 0.0)
    ref[lesion] += 100
    t1 = np.where(brain, ref, 0.0)
    t1[lesion] -= 100
    t1[np.roll(lesion, 3, axis=0) & brain] += 100
    t2 = np.where(brain, ref + 20 * rng.standard_normal(SHAPE), 0.0)
    pred = np.where(brain, ref + 3 * rng.standard_normal(SHAPE), 0.0)
    pred[lesion] -= 60
    seg = np.where(lesion, 2, 0)
    return ref, t1, t2, pred, seg


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    rng = np.random.default_rng(0)
    subjects = []
    for sid in ("a", "b"):
        ref, t1, t2, pred, seg = _case(rng)
        subjects.append({"subject": sid, "prediction": f"{sid}_flair.nii.gz",
                         "reference": _save(root / "ref" / f"{sid}.nii.gz", ref),
                         "seg": _save(root / "ref" / f"{sid}_seg.nii.gz", seg), "mask": None, "samples": [],
                         "source_images": {"t1": _save(root / "ref" / f"{sid}_t1.nii.gz", t1),
                                           "t2": _save(root / "ref" / f"{sid}_t2.nii.gz", t2)}})
        _save(root / "tr" / f"{sid}_flair.nii.gz", pred)
    (root / "tr" / "translate.json").write_text(json.dumps(
        {"target": "flair", "sources": ["t1", "t2"], "modality_kind": "mr", "subjects": subjects}))
    return root


def test_each_region_gets_the_source_that_copies_it_best(evaluated, capsys):
    assert main(["evaluate", str(evaluated / "tr"), "--protocol", "volume", "--protocol", "slice"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((evaluated / "tr" / "evaluation" / "summary.json").read_text())
    volume = summary["protocols"]["volume"]
    assert volume["baseline_sources"] == {"image": "t1", "lesion": "t2", "edema": "t2"}
    # a second implementation: the copy of t2 scored directly; the baseline's lesion PSNR is its mean
    direct = []
    for sid in ("a", "b"):
        ref = nib.load(str(evaluated / "ref" / f"{sid}.nii.gz")).get_fdata()
        t2 = nib.load(str(evaluated / "ref" / f"{sid}_t2.nii.gz")).get_fdata()
        seg = nib.load(str(evaluated / "ref" / f"{sid}_seg.nii.gz")).get_fdata()
        copy = matched_copy(t2, ref, foreground_mask(ref, "mr"))
        direct.append(evaluate_subject(copy, ref, seg=seg, protocol="volume")["lesion_psnr"])
        assert label_psnrs(copy, ref, None, seg)["edema_psnr"] == pytest.approx(direct[-1])  # edema is the lesion
    assert volume["baseline_lesion_psnr"]["mean"] == pytest.approx(np.mean(direct))
    assert volume["psnr"]["mean"] > volume["baseline_psnr"]["mean"]  # the prediction wins the whole image
    flagged = {(f["protocol"], f["region"]) for f in summary["below_baseline"]}
    assert {r for p, r in flagged if p == "volume"} == {"lesion", "edema"} and ("slice", "lesion") in flagged
    assert "Below the baseline: volume protocol, lesion (whole tumour): the prediction scores" in printed
    assert "below the intensity-matched copy of t2" in printed
    rows = (evaluated / "tr" / "evaluation" / "per_subject.csv").read_text()
    assert "lesion edema" in rows and "baseline_source_lesion" in rows


def test_the_report_says_where_the_prediction_is_below_the_baseline(evaluated):
    assert main(["evaluate", str(evaluated / "tr"), "--protocol", "volume", "--out", str(evaluated / "ev"),
                 "--overwrite"]) == 0
    assert main(["report", str(evaluated / "ev"), "--out", str(evaluated / "rep")]) == 0
    page = (evaluated / "rep" / "index.html").read_text()
    assert "Below the copy-the-source baseline" in page
    assert "volume protocol, edema (ED): the prediction scores" in page
    assert "best source per region (whole image: t1; lesion (whole tumour): t2; edema (ED): t2)" in page


def test_choose_sources_and_flags_by_hand():
    scores = [{"t1": {"psnr": 30.0, "lesion_psnr": 10.0}, "t2": {"psnr": 25.0, "lesion_psnr": 14.0}},
              {"t1": {"psnr": 28.0, "lesion_psnr": float("nan")}, "t2": {"psnr": 29.0, "lesion_psnr": 12.0}}]
    assert choose_sources(scores) == {"image": "t1", "lesion": "t2"}  # image 29 vs 27; lesion 10 vs 13 (NaN out)
    summary = {"volume": {"psnr": {"mean": 31.0}, "baseline_psnr": {"mean": 29.0},
                          "lesion_psnr": {"mean": 12.5}, "baseline_lesion_psnr": {"mean": 13.0}}}
    flags = below_baseline(summary, {"volume": {"image": "t1", "lesion": "t2"}})
    assert [(f["region"], f["source"]) for f in flags] == [("lesion", "t2")]
    assert flags[0]["sentence"] == ("volume protocol, lesion (whole tumour): the prediction scores 12.50 dB, below "
                                    "the intensity-matched copy of t2 (13.00 dB, -0.50 dB).")
    assert set(REGIONS) == {"image", "lesion", "necrosis", "edema", "enhancing"}
