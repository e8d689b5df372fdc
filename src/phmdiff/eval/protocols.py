"""Named evaluation protocols, so a number always says how it was computed.

| protocol  | units                                   | data range    | region               | averaged over |
|-----------|-----------------------------------------|---------------|----------------------|---------------|
| `volume`  | reference's [0, 1] normalization (1)    | 1             | foreground, indexed  | 3D volume     |
| `slice`   | as `volume`                             | 1             | foreground per slice | slices        |
| `selfrdb` | slice / mean(slice), mask multiplied    | ref slice max | mask multiplied in   | slices        |
| `syndiff` | slice / max(slice)                      | 1 (ref max)   | whole slice          | slices        |

(1) MR: 0.5 and 99.5 percentiles of the reference inside the foreground map to 0 and 1
(the prediction is not clipped); CT: the HU window (-1024, 3071) maps to [0, 1].
Slice protocols average a subject's slices, then subjects.

`selfrdb`, as read in icon-lab/SelfRDB `utils.py` (`compute_metrics`, `mean_norm`,
`apply_mask_and_norm`) and `main.py` (`on_test_end`): slices in [0, 1]; when a mask is
used it is *multiplied* in; each slice is divided by the mean of its absolute value
(`norm='mean'`, the default); PSNR = skimage `peak_signal_noise_ratio(gt, pred,
data_range=gt.max())`; SSIM = skimage `structural_similarity(gt, pred,
data_range=gt.max())` with skimage's defaults (7x7 uniform window, sample covariance),
printed x100 in their tables (we store the fraction); nanmean over a subject's slices
(empty slices give NaN and drop out), then mean and population std over subjects.

`syndiff`, as read in icon-lab/SynDiff `test.py` (`psnr`, `sample_and_test`): each slice
is mapped from [-1, 1] to [0, 1] and divided by its own maximum (prediction and
reference separately), center-cropped to the IXI field of view (256x152, dataset
specific: pass `crop=(h, w)` to apply it), and PSNR = 20 log10(ref.max() / RMSE) over
the whole slice, background included; the mean is over all test slices. Their
released code computes PSNR only; SSIM under this protocol is ours: skimage's
default SSIM with data range 1 on the same images. Slices whose reference or
prediction maximum is 0 are skipped (their code would divide by 0).

CT: MAE and mean error in HU inside the body mask; PSNR and SSIM on the HU window
mapped to [0, 1]. Lesion metrics (PSNR, MAE inside seg > 0) when a tumour
segmentation is given. Through-plane consistency: mean |pred[k+1] - pred[k]| along
the slice axis inside the mask, beside the reference's own value.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from phmdiff.data.intensity import CT_FOREGROUND_HU, CT_WINDOW, MR_FOREGROUND_FRACTION, MR_PERCENTILES
from phmdiff.eval import metrics as M

PROTOCOLS = ("volume", "slice", "selfrdb", "syndiff")


def foreground_mask(ref: np.ndarray, modality: str = "mr") -> np.ndarray:
    """Head/body mask by threshold on the reference, holes filled, largest component kept."""
    ref = np.asarray(ref, dtype=np.float64)
    if modality == "ct":
        mask = ref > CT_FOREGROUND_HU
    else:
        positive = ref[ref > 0]
        if positive.size == 0:
            raise ValueError("the reference is empty (no positive voxel); cannot derive a foreground mask.")
        # A reference's background is 0 after registration: the rule of `intensity.foreground` on its positive
        # voxels, so a large empty field of view does not pull the percentile down.
        mask = ref > MR_FOREGROUND_FRACTION * np.percentile(positive, 99)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def normalize_pair(pred, ref, mask, modality: str = "mr", ct_window=CT_WINDOW, percentiles=MR_PERCENTILES):
    """Map both volumes with the reference's normalization to [0, 1] units (the prediction is not clipped)."""
    if modality == "ct":
        lo, hi = ct_window
        return np.clip((pred - lo) / (hi - lo), 0, 1), np.clip((ref - lo) / (hi - lo), 0, 1), (lo, hi)
    lo, hi = np.percentile(ref[mask], percentiles)
    if hi <= lo:
        raise ValueError(f"the reference is constant inside the mask ({lo}); cannot normalize it.")
    return (pred - lo) / (hi - lo), (ref - lo) / (hi - lo), (float(lo), float(hi))


def through_plane(x: np.ndarray, mask: np.ndarray, axis: int) -> float:
    """Mean |x[k+1] - x[k]| along `axis` over voxels inside the mask in both slices."""
    x, mask = np.moveaxis(x, axis, 0), np.moveaxis(mask, axis, 0)
    both = mask[1:] & mask[:-1]
    return float(np.abs(x[1:] - x[:-1])[both].mean()) if both.any() else math.nan


def selfrdb_slice(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """SelfRDB's per-slice PSNR/SSIM (see module docstring); NaN for an empty reference slice."""
    if mask is not None:
        pred, ref = pred * mask, ref * mask  # SelfRDB multiplies the mask in; reproduced on purpose
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_n = np.abs(ref) / np.abs(ref).mean()
        pred_n = np.abs(pred) / np.abs(pred).mean()
    if not np.isfinite(ref_n).all() or ref_n.max() <= 0 or not np.isfinite(pred_n).all():
        return {"psnr": math.nan, "ssim": math.nan}
    data_range = float(ref_n.max())
    return {
        "psnr": float(peak_signal_noise_ratio(ref_n, pred_n, data_range=data_range)),
        "ssim": float(structural_similarity(ref_n, pred_n, data_range=data_range)),
    }


def syndiff_slice(pred: np.ndarray, ref: np.ndarray, crop: tuple[int, int] | None = None) -> dict:
    """SynDiff's per-slice PSNR = 20 log10(ref.max()/RMSE) on max-normalized slices (module docstring)."""
    if pred.max() <= 0 or ref.max() <= 0:
        return {"psnr": math.nan, "ssim": math.nan}
    pred, ref = pred / pred.max(), ref / ref.max()
    if crop is not None:
        h0, w0 = (ref.shape[0] - crop[0]) // 2, (ref.shape[1] - crop[1]) // 2
        pred, ref = pred[h0 : h0 + crop[0], w0 : w0 + crop[1]], ref[h0 : h0 + crop[0], w0 : w0 + crop[1]]
    rmse = math.sqrt(float(np.mean((pred - ref) ** 2)))
    value = math.inf if rmse == 0 else 20 * math.log10(ref.max() / rmse)
    ssim = float(structural_similarity(ref, pred, data_range=1.0)) if min(ref.shape) >= 7 else math.nan
    return {"psnr": value, "ssim": ssim}


def _slice_rows(pred_n, ref_n, mask, axis, protocol, crop):
    rows = []
    for k in range(ref_n.shape[axis]):
        p, r, m = (np.take(a, k, axis=axis) for a in (pred_n, ref_n, mask))
        if not m.any():
            continue
        if protocol == "selfrdb":
            row = selfrdb_slice(np.clip(p, 0, 1), np.clip(r, 0, 1), m)
        elif protocol == "syndiff":
            row = syndiff_slice(np.clip(p, 0, 1), np.clip(r, 0, 1), crop)
        else:
            row = {"psnr": M.psnr(p, r, 1.0, m), "ssim": M.ssim(p, r, 1.0, m), "mae": M.mae(p, r, m)}
        rows.append({"slice": k, **row})
    return rows


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def evaluate_subject(pred, ref, mask=None, seg=None, protocol: str = "volume", modality: str = "mr",
                     slice_axis: int = -1, ct_window=CT_WINDOW, crop=None) -> dict:
    """Metrics of one subject's prediction under one protocol; `slices` holds the per-slice rows."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol '{protocol}'; expected one of {', '.join(PROTOCOLS)}.")
    if modality not in ("mr", "ct"):
        raise ValueError(f"unknown modality '{modality}'; expected 'mr' or 'ct'.")
    pred, ref = M._pair(pred, ref)
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise ValueError("the prediction or the reference holds NaN or infinite voxels; expected finite values.")
    mask = foreground_mask(ref, modality) if mask is None else M._mask(mask, ref.shape)
    pred_n, ref_n, (lo, hi) = normalize_pair(pred, ref, mask, modality, ct_window)
    out: dict = {"protocol": protocol, "modality": modality, "norm_low": lo, "norm_high": hi,
                 "n_voxels": int(mask.sum())}
    rows = _slice_rows(pred_n, ref_n, mask, slice_axis, protocol, crop) if pred.ndim == 3 else []
    if protocol == "volume" or pred.ndim == 2:
        out["psnr"] = M.psnr(pred_n, ref_n, 1.0, mask)
        out["ssim"] = M.ssim(pred_n, ref_n, 1.0, mask)
        box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))
        out["ms_ssim"], out["ms_ssim_note"] = M.ms_ssim(pred_n[box], ref_n[box], 1.0)
    else:
        out["psnr"] = _mean(r["psnr"] for r in rows)
        out["ssim"] = _mean(r["ssim"] for r in rows)
    units = (pred, ref) if modality == "ct" else (pred_n, ref_n)  # CT errors in HU
    out["mae"] = M.mae(*units, mask)
    out["mean_error"] = M.mean_error(*units, mask)
    if seg is not None:
        lesion = np.asarray(seg) > 0
        if lesion.shape != ref.shape:
            raise ValueError(f"segmentation shape {lesion.shape} differs from image shape {ref.shape}.")
        if lesion.any():
            out["lesion_psnr"] = M.psnr(pred_n, ref_n, 1.0, lesion)
            out["lesion_mae"] = M.mae(*units, lesion)
    if pred.ndim == 3:
        out["through_plane_pred"] = through_plane(units[0], mask, slice_axis)
        out["through_plane_ref"] = through_plane(units[1], mask, slice_axis)
    out["slices"] = rows
    return out
