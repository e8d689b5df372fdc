"""Protocols on hand-computed examples: SelfRDB and SynDiff definitions, volume units, CT in HU."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from phmdiff.eval.protocols import PROTOCOL_SPECS, evaluate_subject, foreground_mask, selfrdb_slice, syndiff_slice


def _block_pair():
    """8x8 slices: reference 0.5 on a 4x4 block; prediction 0.25 on its top half, 0.75 on its bottom half."""
    ref = np.zeros((8, 8))
    ref[2:6, 2:6] = 0.5
    pred = np.zeros((8, 8))
    pred[2:4, 2:6], pred[4:6, 2:6] = 0.25, 0.75
    mask = ref > 0
    return pred, ref, mask


def test_selfrdb_hand_computed():
    pred, ref, mask = _block_pair()
    out = selfrdb_slice(pred, ref, mask)
    # mean |ref| over 64 voxels = 16 * 0.5 / 64 = 0.125 -> ref block 4; pred mean 0.125 -> 2 and 6.
    # data_range = ref max = 4; MSE over all 64 voxels = 16 * 2^2 / 64 = 1 -> PSNR = 10 log10(16).
    assert out["psnr"] == pytest.approx(10 * math.log10(16.0), abs=1e-9)
    ref_n, pred_n = np.where(mask, 4.0, 0.0), np.where(mask, np.where(np.arange(8)[:, None] < 4, 2.0, 6.0), 0.0)
    assert out["ssim"] == pytest.approx(structural_similarity(ref_n, pred_n, data_range=4.0), abs=1e-12)
    # the mask is multiplied in: prediction outside it does not count
    noisy = pred.copy()
    noisy[0, 0] = 9.0
    assert selfrdb_slice(noisy, ref, mask)["psnr"] == pytest.approx(out["psnr"])
    assert math.isnan(selfrdb_slice(pred, np.zeros((8, 8)), mask)["psnr"])  # empty slice -> NaN, dropped


def test_syndiff_hand_computed():
    pred, ref, _ = _block_pair()
    out = syndiff_slice(pred, ref)
    # each slice / its max: pred 1/3 and 1, ref 1; MSE = 8 * (2/3)^2 / 64 = 1/18 -> PSNR = 10 log10(18).
    assert out["psnr"] == pytest.approx(10 * math.log10(18.0), abs=1e-9)
    pred_n = np.where(ref > 0, np.where(np.arange(8)[:, None] < 4, 1 / 3, 1.0), 0.0)
    assert out["ssim"] == pytest.approx(structural_similarity(ref / 0.5, pred_n, data_range=1.0), abs=1e-12)
    # center crop to the block: MSE = 8 * 4/9 / 16 = 2/9 -> 10 log10(4.5)
    assert syndiff_slice(pred, ref, crop=(4, 4))["psnr"] == pytest.approx(10 * math.log10(4.5), abs=1e-9)


def _head(shape=(24, 24, 12), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (z**2 + y**2 + x**2) < 0.7
    ref = np.where(head, 100 + 300 * rng.random(shape), 0.0)
    return ref, head


def test_volume_protocol_units_and_identity():
    ref, head = _head()
    res = evaluate_subject(ref.copy(), ref, mask=head)
    assert res["psnr"] == math.inf and res["ssim"] == pytest.approx(1.0) and res["mae"] == 0.0
    lo, hi = np.percentile(ref[head], (0.5, 99.5))
    pred = ref + 0.02 * (hi - lo) * head  # 0.02 in normalized units inside the head
    res = evaluate_subject(pred, ref, mask=head)
    assert res["psnr"] == pytest.approx(-20 * math.log10(0.02), abs=1e-6)
    assert res["mae"] == pytest.approx(0.02) and res["mean_error"] == pytest.approx(0.02)
    assert res["ms_ssim"] is None and "MS-SSIM" in res["ms_ssim_note"]
    assert len(res["slices"]) == sum(head[..., k].any() for k in range(head.shape[-1]))


def test_slice_selfrdb_syndiff_average_their_slices():
    ref, head = _head(seed=1)
    pred = ref * (1 + 0.1 * np.random.default_rng(2).standard_normal(ref.shape))
    for protocol in ("slice", "selfrdb", "syndiff"):
        res = evaluate_subject(pred, ref, mask=head, protocol=protocol)
        values = [r["psnr"] for r in res["slices"] if not math.isnan(r["psnr"])]
        assert res["psnr"] == pytest.approx(np.mean(values)) and len(values) > 3


def test_ct_errors_in_hu_and_lesion_and_through_plane():
    ref = np.full((20, 20, 10), -1000.0)
    ref[4:16, 4:16, :] = 40.0
    ref[8:12, 8:12, :] = 700.0  # bone
    pred = ref.copy()
    body = foreground_mask(ref, "ct")
    pred[body] += 10.0
    seg = np.zeros(ref.shape)
    seg[8:12, 8:12, 2:5] = 1
    res = evaluate_subject(pred, ref, seg=seg, modality="ct")
    assert res["mae"] == pytest.approx(10.0) and res["mean_error"] == pytest.approx(10.0)  # HU
    assert res["lesion_mae"] == pytest.approx(10.0)
    assert res["psnr"] == pytest.approx(20 * math.log10(4095 / 10.0), abs=1e-6)  # window width / error
    assert res["through_plane_pred"] == 0.0 and res["through_plane_ref"] == 0.0
    ramp = pred + np.arange(10)[None, None, :] * 2.0
    assert evaluate_subject(ramp, ref, modality="ct")["through_plane_pred"] == pytest.approx(2.0)


def test_errors_are_sentences():
    ref, head = _head()
    with pytest.raises(ValueError, match="unknown protocol 'fid'"):
        evaluate_subject(ref, ref, protocol="fid")
    with pytest.raises(ValueError, match="shape"):
        evaluate_subject(ref[:-1], ref)
    bad = ref.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_subject(bad, ref)


@pytest.mark.parametrize("name", list(PROTOCOL_SPECS))
@pytest.mark.parametrize("modality", ["mr", "ct"])
def test_each_protocol_scores_what_its_entry_says(name, modality):
    """A protocol's entry (its metrics, report columns, per-slice rows, modality) against what it computes."""
    spec = PROTOCOL_SPECS[name]
    (ref, _), (pred, _) = _head(seed=1), _head(seed=2)
    if modality == "ct":
        ref, pred = ref * 10 - 1000, pred * 10 - 1000
    seg = np.zeros(ref.shape, dtype=np.uint8)
    seg[10:14, 10:14, 4:8] = 1
    out = evaluate_subject(pred, ref, seg=seg, protocol=name, modality=modality, slice_axis=2)
    assert set(spec.columns) <= set(spec.metrics)
    if not spec.scores(modality):
        assert out.get(f"{name}_note") and not any(k in out for k in spec.metrics), out
        return
    # a metric is a finite number, or blank with its note (MS-SSIM needs a larger volume than this one)
    missing = [m for m in spec.metrics if not (isinstance(out.get(m), float) and math.isfinite(out[m])
                                               or m in out and out.get(f"{m}_note"))]
    assert not missing, (name, missing)
    assert (out["slices"] == []) == (spec.challenge or not spec.slice_rows)
