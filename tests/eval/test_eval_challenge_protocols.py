"""syndiff, brasyn and synthrad protocols against line-by-line reimplementations of the code they follow,
on constructed images where their choices differ from ours."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from skimage.util import crop as sk_crop

from phmdiff.eval import metrics as M
from phmdiff.eval.evaluate import evaluate
from phmdiff.eval.protocols import brasyn_metrics, evaluate_subject, syndiff_slice, synthrad_metrics


def _syndiff_reference(fake: np.ndarray, real: np.ndarray, crop_hw) -> float:
    """icon-lab/SynDiff test.py, re-typed: x/x.max() on each, CenterCrop, psnr(fake, real) with img1.max()."""
    fake, real = torch.from_numpy(fake)[None, None], torch.from_numpy(real)[None, None]
    fake, real = fake / fake.max(), real / real.max()
    h, w = fake.shape[-2:]
    top, left = int(round((h - crop_hw[0]) / 2.0)), int(round((w - crop_hw[1]) / 2.0))  # torchvision CenterCrop
    fake = fake[..., top : top + crop_hw[0], left : left + crop_hw[1]]
    real = real[..., top : top + crop_hw[0], left : left + crop_hw[1]]
    mse = torch.mean((fake - real) ** 2)
    return float(20 * torch.log10(fake.max() / torch.sqrt(mse)))


def test_syndiff_peak_is_the_predictions_max_after_cropping():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 1.0, (16, 16))
    pred = ref * 0.7 + 0.05 * rng.standard_normal((16, 16))
    pred[0, 0] = 3.0  # the prediction's max lies outside the crop: after cropping its peak is < 1
    ours = syndiff_slice(pred, ref, crop=(8, 8))["psnr"]
    assert ours == pytest.approx(_syndiff_reference(pred, ref, (8, 8)), abs=1e-6)
    cropped_p = (pred / pred.max())[4:12, 4:12]
    cropped_r = (ref / ref.max())[4:12, 4:12]
    with_ref_peak = 20 * math.log10(cropped_r.max() / math.sqrt(np.mean((cropped_p - cropped_r) ** 2)))
    assert abs(ours - with_ref_peak) > 1.0  # the old choice (reference's max) is measurably different here


def test_syndiff_no_percentile_clipping_and_pooled_over_slices(tmp_path):
    rng = np.random.default_rng(1)
    ref = np.zeros((12, 12, 6))
    ref[2:10, 2:10] = rng.uniform(100, 200, (8, 8, 6))
    ref[5:7, 5:7, 2] = 2000.0  # a bright lesion far above the 99.5th percentile
    pred = ref.copy()
    pred[5:7, 5:7, 2] = 1000.0  # half as bright: clipping at the 99.5th percentile would hide the miss
    res = evaluate_subject(pred, ref, protocol="syndiff")
    row = next(r for r in res["slices"] if r["slice"] == 2)
    assert row["psnr"] == pytest.approx(_syndiff_reference(pred[..., 2], ref[..., 2], (12, 12)), abs=1e-6)
    assert row["psnr"] < 30  # the lesion counts
    # pooled over all slices, not over subjects: two subjects with 6 and 2 slices
    paths = []
    for k, depth in enumerate((6, 2)):
        r = ref[..., :depth] + k
        p = r * (1 + 0.05 * rng.standard_normal(r.shape))
        for name, vol in (("ref", r), ("pred", p)):
            nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(tmp_path / f"{name}{k}.nii.gz"))
        paths.append({"subject": f"s{k}", "prediction": str(tmp_path / f"pred{k}.nii.gz"),
                      "reference": str(tmp_path / f"ref{k}.nii.gz")})
    subject_rows, slice_rows, summary = evaluate(paths, "mr", ["syndiff"])
    values = [r["psnr"] for r in slice_rows]
    assert summary["syndiff"]["psnr"]["mean"] == pytest.approx(np.mean(values))
    assert summary["syndiff"]["n_slices"] == len(values) == 8
    assert summary["syndiff"]["psnr"]["mean"] != pytest.approx(np.mean([r["psnr"] for r in subject_rows]))


def _brasyn_reference(gt: np.ndarray, pred: np.ndarray, seg: np.ndarray):
    """hongweilibran/BraSyn ssim.py re-typed; voxels selected as its docstring says."""
    def clip(x):
        lo, hi = np.percentile(x, [0.5, 99.5])
        lo = 0 if lo < 0 else lo
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    gt, pred = clip(gt), clip(pred)
    mask = seg > 0
    out = []
    for region in (mask, ~mask):
        p, g = pred * region, gt * region
        rng = max(p.max() - p.min(), g.max() - g.min())
        full = structural_similarity(g, p, data_range=rng, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, full=True)[1]
        out.append(full[region].mean())
    return out


def test_brasyn_ssim_inside_and_outside_the_tumour():
    rng = np.random.default_rng(3)
    ref = np.zeros((24, 24, 24))
    ref[3:21, 3:21, 3:21] = rng.uniform(100, 300, (18, 18, 18))
    seg = np.zeros(ref.shape)
    seg[9:15, 9:15, 9:15] = 1
    pred = ref + 20 * rng.standard_normal(ref.shape) * (ref > 0)
    pred[seg > 0] = 150.0  # the tumour is missed
    out = brasyn_metrics(pred, ref, seg)
    tumour, healthy = _brasyn_reference(ref, pred, seg)
    assert out["ssim_tumour"] == pytest.approx(tumour, abs=1e-6)
    assert out["ssim_healthy"] == pytest.approx(healthy, abs=1e-6)
    assert out["ssim_tumour"] < out["ssim_healthy"]
    assert "ssim_tumour" not in brasyn_metrics(pred, ref, None)


def _synthrad_reference(gt, pred, mask):
    """SynthRAD2023/metrics image_metrics.py ImageMetrics re-typed: mae, psnr(use_population_range), ssim(mask)."""
    lo, hi = -1024.0, 3000.0
    m = np.where(mask > 0, 1.0, 0.0)
    mae = np.sum(np.abs(gt * m - pred * m)) / m.sum()
    g, p = np.clip(gt, lo, hi), np.clip(pred, lo, hi)
    mse = np.mean((g[m == 1] - p[m == 1]) ** 2)
    psnr = 10 * np.log10((hi - lo) ** 2 / mse)
    g, p = np.where(m == 0, lo, g) - lo, np.where(m == 0, lo, p) - lo
    _, smap = structural_similarity(g, p, data_range=hi - lo, full=True)
    ssim = sk_crop(smap, 3)[sk_crop(m, 3).astype(bool)].mean()
    return mae, psnr, ssim


def test_synthrad_matches_their_image_metrics():
    rng = np.random.default_rng(4)
    ct = np.full((20, 20, 20), -1000.0)
    ct[3:17, 3:17, 3:17] = 40 + 30 * rng.standard_normal((14, 14, 14))
    ct[8:12, 8:12, 8:12] = 3500.0  # above the 3000 HU population range: clipped for PSNR and SSIM, not MAE
    body = ct > -500
    pred = ct + 50 * rng.standard_normal(ct.shape)
    out = synthrad_metrics(pred, ct, body)
    mae, psnr, ssim = _synthrad_reference(ct, pred, body)
    assert out["mae"] == pytest.approx(mae) and out["psnr"] == pytest.approx(psnr)
    assert out["ssim"] == pytest.approx(ssim)
    assert out["ms_ssim"] is None and "MS-SSIM" in out["ms_ssim_note"]  # too small for 5 scales
    big = np.full((176, 176), -1000.0)
    big[20:156, 20:156] = 40.0
    body2 = big > -500
    value = synthrad_metrics(big + 10 * body2, big, body2)["ms_ssim"]
    shifted = np.where(body2, big + 10, -1024) + 1024, np.where(body2, big, -1024) + 1024
    assert value < 1 and value == pytest.approx(M.ms_ssim(*shifted, 4024.0)[0])
    mr = evaluate_subject(pred, ct, protocol="synthrad", modality="mr", mask=body)
    assert "psnr" not in mr and "CT" in mr["synthrad_note"]
