"""Plane geometry (`phmdiff.plane`): the whole input plane padded to what the model tiles, never cropped, and back."""

import subprocess
import sys

import numpy as np
import pytest

from phmdiff.data.volume import VolumeSettings, volume_to_slices
from phmdiff.plane import crop_plane, pad_plane, plane_slices


@pytest.mark.parametrize("shape, side, multiple, padded, pads", [
    ((10, 13), 8, 4, (12, 16), [[1, 1], [1, 2]]),  # multiples of 4, at least 8: centred, the odd voxel after
    ((5, 6), 16, 8, (16, 16), [[5, 6], [5, 5]]),  # smaller than the training side: padded up to it
    ((24, 16), 16, 8, (24, 16), [[0, 0], [0, 0]]),  # already fits: unchanged, nothing cropped
])
def test_pad_plane_pads_centred_to_the_side_and_multiple_and_crop_undoes_it(shape, side, multiple, padded, pads):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, *shape), dtype=np.float32)
    out, got = pad_plane(x, [0.0, 1.0, 2.0], side, multiple)
    assert out.shape == (2, 3, *padded) and got == pads
    for c, fill in enumerate([0.0, 1.0, 2.0]):  # each channel padded with its own background
        border = np.ones(padded, bool)
        border[pads[0][0] : pads[0][0] + shape[0], pads[1][0] : pads[1][0] + shape[1]] = False
        assert (out[:, c][:, border] == fill).all()
    np.testing.assert_array_equal(crop_plane(out[:, 1], got), x[:, 1])


def test_plane_slices_keep_the_whole_plane_and_pad_with_each_modalitys_background():
    rng = np.random.default_rng(1)
    vol = {m: rng.random((20, 12, 6), dtype=np.float32) + 1 for m in ("t1", "t2")}
    affine = np.diag([1.0, 1.0, 3.0, 1.0])  # axial slices: the plane is 20 x 12
    settings = VolumeSettings(["t1", "t2"], size=16, min_foreground=0.0)
    slices, spec, pads = plane_slices(vol, affine, settings, multiple=8)
    assert slices.shape[2:] == (24, 16) and pads == [[2, 2], [2, 2]]
    whole, _ = volume_to_slices(vol, affine, VolumeSettings(["t1", "t2"], size=None, min_foreground=0.0))
    for c in range(2):  # inside the pads the slices are training's own, uncropped
        np.testing.assert_array_equal(crop_plane(slices[:, c], pads), whole[:, c])
        fill = spec.norm[("t1", "t2")[c]].forward(np.float32(spec.background[("t1", "t2")[c]]))
        assert np.allclose(slices[:, c, :2], fill)
    resized, _, none = plane_slices(vol, affine, VolumeSettings(["t1", "t2"], size=16, fit="resize",
                                                                min_foreground=0.0), multiple=8)
    assert resized.shape[2:] == (16, 16) and none == [[0, 0], [0, 0]]  # resize: the model size, nothing to undo


def test_plane_geometry_imports_no_torch():
    code = "import sys, phmdiff.plane; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
