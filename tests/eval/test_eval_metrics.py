"""Metrics against scikit-image and closed forms (PSNR of Gaussian noise, identical images, masks)."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from phmdiff.eval import metrics as M


def _sk_ssim(pred, ref, data_range):
    return structural_similarity(ref, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range)


@pytest.mark.parametrize("shape", [(240, 240), (64, 64, 64)])
def test_psnr_ssim_match_scikit_image_on_real_sizes(shape):
    rng = np.random.default_rng(0)
    ref = ndimage.gaussian_filter(rng.random(shape), 2.0) * 3.0  # smooth structure, range ~ [1, 2]
    pred = ref + 0.05 * rng.standard_normal(shape)
    for data_range in (1.0, 2.5):
        assert abs(M.psnr(pred, ref, data_range) - peak_signal_noise_ratio(ref, pred, data_range=data_range)) < 1e-4
        assert abs(M.ssim(pred, ref, data_range) - _sk_ssim(pred, ref, data_range)) < 1e-4


def test_ssim_map_matches_scikit_image_full_map():
    rng = np.random.default_rng(1)
    ref = rng.random((40, 50))
    pred = ref + 0.1 * rng.standard_normal(ref.shape)
    _, sk_map = structural_similarity(ref, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      data_range=1.0, full=True)
    ours, _ = M.ssim_map(pred, ref, 1.0)
    assert np.abs(ours - sk_map).max() < 1e-6


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1])
def test_gaussian_noise_gives_minus_20_log10_sigma(sigma):
    rng = np.random.default_rng(2)
    ref = rng.random((240, 240))
    pred = ref + sigma * rng.standard_normal(ref.shape)
    assert M.psnr(pred, ref, data_range=1.0) == pytest.approx(-20 * math.log10(sigma), abs=0.05)


def test_identical_images_inf_psnr_unit_ssim_zero_errors():
    ref = np.random.default_rng(3).random((32, 32, 32))
    assert M.psnr(ref, ref, 1.0) == math.inf
    assert M.format_value(M.psnr(ref, ref, 1.0)) == "inf"
    assert M.ssim(ref, ref, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert M.mae(ref, ref) == 0.0 and M.mean_error(ref, ref) == 0.0


def test_masked_metrics_ignore_a_large_background():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:240, :240]
    mask = (yy - 120) ** 2 + (xx - 120) ** 2 < 30**2  # small disc, ~5% of the image
    ref = rng.random((240, 240))
    pred = ref.copy()
    pred[mask] += 0.1
    far = ~ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=6)  # beyond the SSIM window's reach
    garbage = pred.copy()
    garbage[far] = rng.normal(50, 20, far.sum())
    assert M.psnr(garbage, ref, 1.0, mask) == pytest.approx(20.0, abs=1e-9)  # error 0.1 on every mask voxel
    assert M.mae(garbage, ref, mask) == pytest.approx(0.1)
    assert M.mean_error(garbage, ref, mask) == pytest.approx(0.1)
    assert M.ssim(garbage, ref, 1.0, mask) == pytest.approx(M.ssim(pred, ref, 1.0, mask), abs=1e-12)
    assert M.psnr(garbage, ref, 1.0) < 0  # without the mask the background dominates


def test_masked_ssim_averages_the_map_over_mask_voxels():
    rng = np.random.default_rng(5)
    ref, pred = rng.random((30, 30)), rng.random((30, 30))
    mask = np.zeros((30, 30), bool)
    mask[3:9, 20:28] = True
    full, _ = M.ssim_map(pred, ref, 1.0)
    assert M.ssim(pred, ref, 1.0, mask) == pytest.approx(full[mask].mean())


def test_ms_ssim_needs_size_and_is_one_for_identical():
    rng = np.random.default_rng(6)
    ref = ndimage.gaussian_filter(rng.random((240, 240)), 1.0)
    assert M.ms_ssim(ref, ref, 1.0) == (pytest.approx(1.0), "")
    noisy, _ = M.ms_ssim(ref + 0.05 * rng.standard_normal(ref.shape), ref, 1.0)
    assert 0.0 < noisy < 1.0
    value, reason = M.ms_ssim(rng.random((64, 64, 64)), rng.random((64, 64, 64)), 1.0)
    assert value is None and "176" in reason


def test_data_range_is_required_and_checked():
    a = np.zeros((16, 16))
    with pytest.raises(TypeError):
        M.ssim(a, a)  # no default data range, on purpose
    for bad in (None, 0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="data_range"):
            M.psnr(a, a + 1, bad)
    with pytest.raises(ValueError, match="shape"):
        M.psnr(a, np.zeros((16, 15)), 1.0)
    with pytest.raises(ValueError, match="no voxel"):
        M.mae(a, a, np.zeros((16, 16), bool))
