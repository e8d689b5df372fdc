"""Spacing: the slice plane of an affine, and a resampled grid whose affine puts every voxel where it was."""

import numpy as np
import pytest

from phmdiff.data.spacing import plan, resize, slice_plane, training_spacing


def test_slice_plane_follows_the_ras_axes_of_a_permuted_affine():
    # array axes (i, j, k) -> (-y, -x, z) with 1 x 1.2 x 2.5 mm voxels: axial slices, plane axes R (j) and A (i)
    affine = np.array([[0.0, -1.2, 0.0, 90.0], [-1.0, 0.0, 0.0, 120.0], [0.0, 0.0, 2.5, -60.0], [0, 0, 0, 1]])
    assert slice_plane(affine) == (2, [1, 0], [1.2, 1.0])
    assert slice_plane(affine, 0) == (0, [0, 2], [1.0, 2.5])


@pytest.mark.parametrize("target", [(1.5, 0.75), (0.8, 2.0)])
def test_resampled_voxels_hold_the_value_of_a_linear_field_at_their_world_position(target):
    affine = np.array([[0.9, 0.1, 0.0, -5.0], [-0.1, 1.1, 0.0, 3.0], [0.0, 0.0, 3.0, 10.0], [0, 0, 0, 1]])
    shape = (30, 24, 5)
    coef = np.array([0.7, -1.3, 0.4])

    def field(aff, shp):  # a linear function of world position on a grid
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shp], indexing="ij"), -1)
        return ((ijk @ aff[:3, :3].T + aff[:3, 3]) @ coef).astype(np.float32)

    p = plan(shape, affine, 2, list(target))
    _, axes, _ = slice_plane(affine, 2)
    assert p.new_shape[2] == 5 and [p.new_shape[i] for i in axes] == [round(shape[i] * s / t) for i, s, t in
                                                                       zip(axes, [0.9055, 1.1045], target)]
    np.testing.assert_allclose(p.new_spacing, target, rtol=0.05)
    moved = resize(field(affine, shape), p.new_shape)
    inner = (slice(2, -2), slice(2, -2), slice(None))  # linear interpolation is exact away from the clamped border
    np.testing.assert_allclose(moved[inner], field(p.affine, p.new_shape)[inner], atol=1e-3)
    back = p.back(moved)
    assert back.shape == shape
    np.testing.assert_allclose(back[4:-4, 4:-4], field(affine, shape)[4:-4, 4:-4], atol=1e-3)
    assert plan(shape, affine, 2, [float(np.hypot(0.9, 0.1)), float(np.hypot(0.1, 1.1))]) is None


def test_training_spacing_is_the_median_of_the_training_volumes():
    meta = {"a": {"split": "train", "spacing": [1.0, 1.0]}, "b": {"split": "train", "spacing": [3.0, 2.0]},
            "c": {"split": "train", "spacing": [2.0, 5.0]}, "d": {"split": "val", "spacing": [9.0, 9.0]}}
    assert training_spacing(meta) == [2.0, 2.0]
    assert training_spacing({"a": {"split": "train"}}) is None
