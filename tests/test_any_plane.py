"""translate on planes larger than, and not multiples of, the training plane (16x16): every voxel predicted."""

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data.phantom import write_phantom
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
    axis = int(np.argmax(nib.load(entry["reference"]).header.get_zooms()))
    wrong = np.abs(ceiling - ref) > 1e-3 * np.abs(ref).max()
    per_slice = np.moveaxis(ceiling, axis, 0).reshape(shape[axis], -1)
    dropped = per_slice.min(1) == per_slice.max(1)
    assert dropped.sum() <= shape[axis] // 3
    assert not np.moveaxis(wrong, axis, 0)[~dropped].any()
    # The prediction is not constant anywhere on the foreground of kept slices (a centre crop left a constant).
    fg = np.moveaxis(ref > ref.min(), axis, 0)[~dropped]
    values = np.moveaxis(pred, axis, 0)[~dropped][fg]
    assert fg.sum() > 0.5 * fg.size and len(np.unique(values)) > 0.99 * values.size
