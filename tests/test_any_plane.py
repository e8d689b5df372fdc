"""translate on planes larger than, and not multiples of, the training plane (16x16): every voxel predicted."""

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data.phantom import write_phantom
from phmdiff.fingerprint import AXIS_NAMES
from phmdiff.translate import translate

pytestmark = pytest.mark.slow  # end to end on the shared tiny run


@pytest.mark.parametrize("shape", [(23, 37, 16), (40, 48, 16)])
def test_larger_planes_are_predicted_whole_and_the_ceiling_loses_nothing(tiny_run, tmp_path, shape):
    subject = write_phantom(tmp_path / "ph", "brain", n_subjects=1, shape=shape, seed=5)[0]
    # The phantom keeps its field of view, so a larger plane has a finer spacing: resampling would bring it back
    # to 16x16; off, the model sees the whole larger plane (the path under test).
    meta = translate(tiny_run / "run", subject, tmp_path / "out", ceiling=True, progress=False, resample=False,
                     log=lambda m: None)
    entry = meta["subjects"][0]
    pred = nib.load(tmp_path / "out" / entry["prediction"]).get_fdata()
    ceiling = nib.load(tmp_path / "out" / entry["ceiling"]).get_fdata()
    ref = nib.load(entry["reference"]).get_fdata()
    assert pred.shape == ref.shape == shape
    # Slices below min_foreground are not kept (filled with background); in every kept slice a perfect model
    # (the identity autoencoder's ceiling) gives the target back to float precision, borders included.
    axis = AXIS_NAMES.index(entry["slice_axis"])  # the run's slice axis (phantom arrays are RAS)
    wrong = np.abs(ceiling - ref) > 1e-3 * np.abs(ref).max()
    per_slice = np.moveaxis(ceiling, axis, 0).reshape(shape[axis], -1)
    dropped = per_slice.min(1) == per_slice.max(1)
    assert dropped.sum() <= shape[axis] // 3
    assert not np.moveaxis(wrong, axis, 0)[~dropped].any()
    # The prediction is not constant anywhere on the foreground of kept slices (a centre crop left a constant).
    fg = np.moveaxis(ref > ref.min(), axis, 0)[~dropped]
    values = np.moveaxis(pred, axis, 0)[~dropped][fg]
    assert fg.sum() > 0.5 * fg.size and len(np.unique(values)) > 0.99 * values.size


def test_slices_below_the_training_foreground_rule_are_still_predicted(tiny_run, tmp_path):
    """Training keeps slices with >= 5 % foreground; translate predicts every slice with any: the identity
    pipeline ceiling gives back a slice holding a sliver of head (here 2 %) instead of background."""
    subject = write_phantom(tmp_path / "ph", "brain", n_subjects=1, shape=(16, 16, 16), seed=5)[0]
    t1 = next(subject.glob("*_t1.nii.gz"))
    axis = int(np.argmax(nib.load(t1).header.get_zooms()))  # the slice axis (the coarsest spacing)
    for path in subject.glob("*.nii.gz"):  # keep 5 voxels (2 % of the plane) of head in the last slice
        img = nib.load(path)
        vol = np.moveaxis(np.asarray(img.dataobj).astype(np.float32), axis, 0)
        keep = vol[-1, 6:11, 8].copy()
        vol[-1] = vol.min()
        vol[-1, 6:11, 8] = keep if path != t1 else np.maximum(keep, vol.max() / 2)
        nib.save(nib.Nifti1Image(np.moveaxis(vol, 0, axis), img.affine), path)
    meta = translate(tiny_run / "run", subject, tmp_path / "out", ceiling=True, progress=False, resample=False,
                     log=lambda m: None)
    entry = meta["subjects"][0]
    pred = np.moveaxis(nib.load(tmp_path / "out" / entry["prediction"]).get_fdata(), axis, 0)
    assert len(np.unique(pred[-1])) > 1  # predicted, not refilled with background
