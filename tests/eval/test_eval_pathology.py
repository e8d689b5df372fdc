"""Pathology metrics against hand-computed values and against the volume protocol's lesion PSNR."""

import math

import numpy as np
import pytest

from phmdiff.data.phantom_brain import TISSUES
from phmdiff.eval.pathology import label_intensity_ratios, lesion_psnr, pathology_metrics
from phmdiff.eval.protocols import evaluate_subject


def _case():
    """A 4x4 slice: a row of edema (2), one necrosis (1) and one enhancing (4) voxel, the rest healthy."""
    truth = np.full((4, 4), 0.5)
    seg = np.zeros((4, 4), np.uint8)
    seg[0, :] = 2
    seg[1, 0] = 1
    seg[1, 1] = 4
    truth[0, :] = 0.8
    truth[1, 0], truth[1, 1] = 0.9, 0.6
    pred = truth.copy()
    pred[0, :] = [0.4, 0.4, 0.6, 0.6]  # edema mean 0.5 against 0.8
    pred[1, 0] = 0.9  # necrosis exact
    pred[1, 1] = 0.9  # enhancing 0.9 against 0.6
    pred[2:, :] = 0.55  # healthy rows 0.55 against 0.5; row 1's two healthy voxels exact
    return pred, truth, seg


def test_ratios_hand_computed():
    pred, truth, seg = _case()
    r = label_intensity_ratios(pred, truth, seg)
    assert r["edema"] == pytest.approx(0.5 / 0.8)
    assert r["necrosis"] == pytest.approx(1.0)
    assert r["enhancing"] == pytest.approx(1.5)
    assert r["healthy"] == pytest.approx((2 * 0.5 + 8 * 0.55) / 10 / 0.5)  # 10 healthy voxels


def test_brats_2023_enhancing_label_and_absent_labels():
    pred, truth, seg = _case()
    seg[seg == 4] = 3
    seg[seg == 1] = 0  # no necrosis: the key is absent, not NaN
    r = label_intensity_ratios(pred, truth, seg)
    assert r["enhancing"] == pytest.approx(1.5)
    assert "necrosis" not in r


def test_healthy_respects_mask_and_tissue_map():
    pred, truth, seg = _case()
    mask = np.zeros((4, 4), bool)
    mask[3, :] = True
    pred[3, :] = 1.0
    assert label_intensity_ratios(pred, truth, seg, mask=mask)["healthy"] == pytest.approx(2.0)
    tissue = np.full((4, 4), TISSUES["gm"])
    tissue[3, :] = TISSUES["wm"]
    r = label_intensity_ratios(pred, truth, seg, tissue=tissue)
    assert r["wm"] == pytest.approx(2.0)
    assert r["gm"] == pytest.approx((2 * 0.5 + 4 * 0.55) / 6 / 0.5)
    assert "healthy" not in r and "csf" not in r


def test_lesion_psnr_hand_computed_and_equals_volume_protocol():
    pred, truth, seg = _case()
    errs = np.array([0.4, 0.4, 0.2, 0.2, 0.0, 0.3])
    expected = 10 * math.log10(1.0 / np.mean(errs**2))
    assert lesion_psnr(pred, truth, seg) == pytest.approx(expected)
    assert lesion_psnr(pred, truth, seg, data_range=2.0) == pytest.approx(expected + 20 * math.log10(2.0))
    rng = np.random.default_rng(0)
    ref = rng.uniform(100, 200, (12, 12, 6))
    p = ref + rng.normal(0, 5, ref.shape)
    s = np.zeros(ref.shape, np.uint8)
    s[3:7, 3:7, 2:4] = 2
    r = evaluate_subject(p, ref, mask=np.ones(ref.shape, bool), seg=s, protocol="volume")
    lo, hi = r["norm_low"], r["norm_high"]
    assert lesion_psnr((p - lo) / (hi - lo), (ref - lo) / (hi - lo), s) == pytest.approx(r["lesion_psnr"])


def test_no_tumour_and_dark_truth_give_nan():
    pred, truth, seg = _case()
    assert math.isnan(lesion_psnr(pred, truth, np.zeros_like(seg)))
    truth[0, :] = 0.0
    assert math.isnan(label_intensity_ratios(pred, truth, seg)["edema"])


def test_flat_keys():
    pred, truth, seg = _case()
    m = pathology_metrics(pred, truth, seg)
    assert set(m) == {"lesion_psnr", "ratio_necrosis", "ratio_edema", "ratio_enhancing", "ratio_healthy"}


@pytest.mark.parametrize("bad", ["seg", "tissue", "name"])
def test_errors(bad):
    pred, truth, seg = _case()
    with pytest.raises(ValueError):
        if bad == "seg":
            label_intensity_ratios(pred, truth, seg[:3])
        elif bad == "tissue":
            label_intensity_ratios(pred, truth, seg, tissue=np.zeros((3, 3)))
        else:
            label_intensity_ratios(pred, truth, seg, tissue=np.zeros((4, 4)), tissues=("liver",))
