"""An interrupted atomic write leaves a hidden `.name.XXXX.tmp.nii.gz`; no reader may take it for data."""

import nibabel as nib
import numpy as np

from phmdiff.data.readers import find_subjects
from phmdiff.eval.evaluate import _subject_files


def _write(path, value):
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), value, np.float32), np.eye(4)), path)


def test_hidden_temp_files_are_not_subjects_or_modalities(tmp_path):
    sub = tmp_path / "s1"
    sub.mkdir()
    for mod in ("t1", "t2"):
        _write(sub / f"{mod}.nii.gz", 1.0)
    _write(sub / ".flair.abcd.tmp.nii.gz", 2.0)  # what a SIGKILL mid-write leaves behind
    (subject,) = find_subjects(tmp_path, layout="generic")
    assert sorted(subject.paths) == ["t1", "t2"]


def test_evaluate_skips_hidden_temp_files(tmp_path):
    sub = tmp_path / "s1"
    sub.mkdir()
    _write(sub / "s1_flair.nii.gz", 1.0)
    _write(sub / ".s1_flair.abcd.tmp.nii.gz", 2.0)
    _write(tmp_path / ".s2.efgh.tmp.nii.gz", 2.0)
    assert _subject_files(tmp_path, "flair") == {"s1": sub / "s1_flair.nii.gz"}
