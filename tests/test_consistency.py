"""The through-plane joint bilateral filter against closed forms."""

import numpy as np
import pytest

from phmdiff.consistency import joint_bilateral_z


def test_a_flat_guide_gives_the_gaussian_mean_of_neighbouring_slices():
    rng = np.random.default_rng(0)
    pred = rng.random((2, 7, 3, 4)).astype(np.float32)  # (samples, n, H, W)
    guide = np.ones((7, 2, 3, 4), np.float32)
    pos = np.array([0, 1, 2, 3, 5, 6, 7])  # slice 4 was not kept: a gap counts as distance
    out = joint_bilateral_z(pred, guide, pos, sigma=1.0, h=0.1)
    for k in range(7):
        near = [j for j in range(7) if abs(pos[j] - pos[k]) <= 2]
        w = np.exp(-((pos[near] - pos[k]) ** 2) / 2.0)
        np.testing.assert_allclose(out[:, k], np.tensordot(w / w.sum(), pred[:, near], axes=([0], [1])), atol=1e-6)


def test_nothing_is_mixed_across_a_change_of_the_sources():
    pred = np.concatenate([np.zeros((3, 4, 4)), np.ones((3, 4, 4))]).astype(np.float32)  # (n, H, W)
    guide = pred[:, None] * 2.0  # the anatomy changes between slices 2 and 3
    out = joint_bilateral_z(pred, guide, range(6), sigma=1.5, h=0.05)
    np.testing.assert_allclose(out, pred, atol=1e-12)


def test_independent_slice_errors_shrink_and_sigma_zero_is_off():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.linspace(0, 1, 16)[:, None, None], 8, axis=1).repeat(8, axis=2)  # smooth along z
    pred = (truth + 0.1 * rng.standard_normal(truth.shape)).astype(np.float32)
    guide = truth[:, None].astype(np.float32)
    out = joint_bilateral_z(pred, guide, range(16), sigma=1.0, h=0.2)
    assert np.sqrt(np.mean((out - truth) ** 2)) < 0.7 * np.sqrt(np.mean((pred - truth) ** 2))
    assert joint_bilateral_z(pred, guide, range(16), sigma=0.0) is pred
    with pytest.raises(ValueError, match="expected equal"):
        joint_bilateral_z(pred[:5], guide, range(16))
