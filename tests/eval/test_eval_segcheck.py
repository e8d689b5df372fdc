"""`phmdiff segcheck` on a tiny phantom: a perfect synthesis scores the real image's Dice, a blank one clearly less."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.data.phantom import write_phantom
from phmdiff.eval.segcheck import dice, segcheck


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("segcheck")
    write_phantom(root / "ph", "brain", n_subjects=4, shape=(32, 32, 16), seed=1)
    return root


def _translate(root, phantom, fill=None, seg=True):
    """A translate folder for the last phantom subject whose 'prediction' is its real FLAIR, or a constant."""
    sid = sorted(p.name for p in (phantom / "ph").iterdir() if p.is_dir())[-1]
    d = phantom / "ph" / sid
    root.mkdir()
    ref = nib.load(str(d / f"{sid}_flair.nii.gz"))
    data = np.asarray(ref.dataobj) if fill is None else np.full(ref.shape, fill, np.float32)
    nib.save(nib.Nifti1Image(data, ref.affine), str(root / f"{sid}_flair.nii.gz"))
    subject = {"subject": sid, "prediction": f"{sid}_flair.nii.gz", "reference": str(d / f"{sid}_flair.nii.gz"),
               "seg": str(d / f"{sid}_seg.nii.gz") if seg else None,
               "source_images": {m: str(d / f"{sid}_{m}.nii.gz") for m in ("t1", "t2")}}
    (root / "translate.json").write_text(json.dumps({"target": "flair", "sources": ["t1", "t2"],
                                                     "modality_kind": "mr", "subjects": [subject]}))
    return root


def test_dice_closed_forms():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, b) == pytest.approx(0.5) and dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0  # nothing to find, nothing found


def test_perfect_synthesis_scores_the_real_dice_and_a_blank_one_less(phantom, tmp_path):
    perfect = segcheck(_translate(tmp_path / "perfect", phantom), steps=60, batch_size=8)
    assert perfect["train_subjects"] and perfect["test_subjects"] not in perfect["train_subjects"]
    for row in perfect["table"]:
        assert row["dice_synth"] == row["dice_real"]  # the same input gives the same segmentation
    whole = next(r for r in perfect["table"] if r["label"] == "whole tumour")
    assert whole["dice_real"] > 0.3  # the network learned something, so a worse input can show
    blank = segcheck(_translate(tmp_path / "blank", phantom, fill=0.0), steps=60, batch_size=8)
    whole_blank = next(r for r in blank["table"] if r["label"] == "whole tumour")
    assert whole_blank["dice_real"] == pytest.approx(whole["dice_real"])  # same seed, same training
    assert whole_blank["dice_synth"] < whole_blank["dice_real"] - 0.2


def test_cli_writes_its_table_and_refuses_a_folder_without_segmentations(phantom, tmp_path, capsys):
    tr = _translate(tmp_path / "tr", phantom)
    assert main(["segcheck", str(tr), "--steps", "2", "--batch-size", "4"]) == 0
    rows = list(csv.DictReader((tr / "segcheck" / "segcheck.csv").open()))
    assert {r["label"] for r in rows} >= {"edema", "whole tumour"} and all(r["dice_real"] for r in rows)
    assert "whole tumour" in capsys.readouterr().out
    bad = _translate(tmp_path / "bad", phantom, seg=False)
    assert main(["segcheck", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "tumour segmentation" in err and len(err.strip().splitlines()) == 1
    assert not (bad / "segcheck").exists()
