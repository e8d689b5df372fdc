"""Named evaluation protocols, so a number always says how it was computed.

| protocol  | units                                   | data range    | region               | averaged over |
|-----------|-----------------------------------------|---------------|----------------------|---------------|
| `volume`  | reference's [0, 1] normalization (1)    | 1             | foreground, indexed  | 3D volume     |
| `slice`   | as `volume`                             | 1             | foreground per slice | slices        |
| `selfrdb` | slice / mean(slice), mask multiplied    | ref slice max | mask multiplied in   | slices        |
| `syndiff` | slice / max(slice), no upper clip       | pred max      | whole slice          | all slices    |
| `brasyn`  | own 0.5-99.5 pct clip to [0, 1]         | ref range     | tumour / the rest    | 3D volume     |
| `synthrad`| HU clipped to [-1024, 3000], +1024      | 4024 HU       | body mask            | 3D volume     |
| `scalefree`| each its own [0, 1] pcts, clipped (2)  | 1             | foreground, indexed  | 3D volume     |

(1) MR: 0.5 and 99.5 percentiles of the reference inside the foreground map to 0 and 1
(the prediction is not clipped); CT: the HU window (-1024, 3071) maps to [0, 1].
(2) MR only: prediction and reference each by its own 0.5 and 99.5 percentiles over the reference's foreground.
Slice protocols average a subject's slices, then subjects (`syndiff`: all slices pooled).

`selfrdb`, as read in icon-lab/SelfRDB `utils.py` (`compute_metrics`, `mean_norm`,
`apply_mask_and_norm`) and `main.py` (`on_test_end`): slices in [0, 1]; when a mask is
used it is *multiplied* in; each slice is divided by the mean of its absolute value
(`norm='mean'`, the default); PSNR = skimage `peak_signal_noise_ratio(gt, pred,
data_range=gt.max())`; SSIM = skimage `structural_similarity(gt, pred,
data_range=gt.max())` with skimage's defaults (7x7 uniform window, sample covariance),
printed x100 in their tables (we store the fraction); nanmean over a subject's slices
(empty slices give NaN and drop out), then mean and population std over subjects.

`syndiff` follows icon-lab/SynDiff `test.py`, functions `psnr(img1, img2)` and
`sample_and_test` (called as `psnr(fake_sample, real_data)`): each slice is divided by
its own maximum (prediction and reference separately; their images are in [0, 1], so
the only clipping here is of negative values at 0, and there is no percentile
clipping), then center-cropped to the IXI field of view (256x152, dataset specific: pass
`crop=(h, w)` to apply it), and PSNR = 20 log10(max(prediction after cropping) / RMSE)
over the whole slice, background included: `img1` is the prediction, so the peak is the
*prediction's* maximum after cropping, not the reference's. The reported figure is
`np.nanmean` over all test slices pooled (not per subject first): `evaluate` summarizes
this protocol over slices. Their released code computes PSNR only; SSIM under this
protocol is ours: skimage's default SSIM with data range 1 on the same images. Slices
whose reference or prediction maximum is 0 give NaN (their code would divide by 0), and
drop out of the nanmean as in theirs.

`scalefree` is the protocol to read for real MRI, whose synthesized modality's absolute scale (the scanner's gain
for it) is unknown: it scores the image's contrast, not its scale, as SynDiff and BraSyn score without one. Each
image, prediction and reference alike, is mapped to [0, 1] by *its own* 0.5 and 99.5 percentiles computed over the
*reference's* foreground mask (the same voxels for both, so a background that differs cannot move either scale),
and clipped to [0, 1] (BraSyn clips; a bright tail would otherwise weigh on PSNR as the scale would); PSNR with
data range 1, SSIM (the project's, averaged over the foreground), MAE and mean error over that foreground, lesion
PSNR and MAE inside seg > 0 where a segmentation exists, one 3D volume per subject (no per-slice rows: they would
double its cost on a 240 x 240 x 155 volume and say what `slice` says), averaged over subjects. A
prediction equal to a * reference + b (a > 0) scores like the reference itself; a prediction noisier than the
reference widens its own percentiles, which compresses its contrast, and pays for it here as BraSyn makes it pay.
`volume`, by contrast, maps both images by the *reference's* percentiles: the reference intensity scale, where a
wrong gain costs PSNR. A prediction
constant inside the foreground has no contrast to scale: it maps to 0 (with `scalefree_note`). CT has a physical
scale (HU): the protocol leaves it blank with its note.

`brasyn` follows the BraSyn challenge's evaluation (hongweilibran/BraSyn `ssim.py`,
`compute_metrics` and `__percentile_clip`; PSNR as BraTS-inpainting/2023_challenge
`evaluation/evaluation_utils.py`, `compute_metrics`): each volume is clipped to its *own*
0.5 and 99.5 percentiles over the whole volume (lower bound raised to 0 if negative) and
mapped to [0, 1]; SSIM (11-tap Gaussian, sigma 1.5, as torchmetrics' default, data range
the larger of the two images' ranges) is computed on both images zeroed outside the
tumour (seg > 0) and averaged over tumour voxels (`ssim_tumour`), and on both zeroed
inside it, averaged over the other voxels (`ssim_healthy`); PSNR = 10 log10((max - min
of the reference)^2 / MSE) over the whole volume. Two deliberate differences: their
`ssim_idx_full_image[mask]` indexes with an int64 tensor (it selects along the batch
axis, not the voxels); we select the voxels, which is what their docstring says; and our
SSIM borders are half-sample symmetric where torchmetrics reflects (border voxels only).
Without a segmentation `ssim_tumour` is blank and `ssim_healthy` covers the whole volume.

`synthrad` follows SynthRAD2023/metrics `functions/image_metrics.py`, class
`ImageMetrics` (`mae`, `psnr(use_population_range=True)`, `ssim` with a mask), for CT in
HU: MAE in HU inside the body mask (no clipping); PSNR inside the mask on images clipped
to the population range [-1024, 3000] HU with data range 4024; SSIM: images clipped to
that range, voxels outside the mask set to -1024, shifted by +1024 to a non-negative
range, skimage's default SSIM (7-tap uniform window, sample covariance) with data range
4024 over the volume, its map averaged inside the mask after cropping 3 voxels from
every border (skimage's own crop). MS-SSIM is computed on those same shifted images with
data range 4024 (our Wang 2003 MS-SSIM over the whole volume): the SynthRAD2023
code holds no MS-SSIM, so that column is ours. For MR the protocol gives blanks with a
note (`synthrad_note`).

CT: MAE and mean error in HU inside the body mask; PSNR and SSIM on the HU window
mapped to [0, 1]. Lesion metrics (PSNR, MAE inside seg > 0) when a tumour
segmentation is given. Through-plane consistency: mean |pred[k+1] - pred[k]| along
the slice axis inside the mask, beside the reference's own value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from phmdiff.data.intensity import CT_WINDOW, MR_PERCENTILES, foreground
from phmdiff.eval import metrics as M


@dataclass(frozen=True)
class Protocol:
    """One protocol's facts: what evaluate and the report need to know of it without branching on its name."""

    normalization: str  # how intensities reach the scored units
    averaging: str  # over what the mean +- std runs (the report's "averaged over" column)
    metrics: tuple[str, ...]  # what it scores
    columns: tuple[str, ...] = ()  # the report's protocol-specific columns
    challenge: bool = False  # whole-volume challenge metrics, no per-slice rows
    pooled_slices: bool = False  # the summary pools all slices (psnr, ssim) instead of averaging subject means
    volume_extras: bool = False  # per-label PSNRs, through-plane steps and ensemble calibration are scored beside it
    only_modality: str | None = None  # scores this modality only (others: blanks with its note)
    units: str | None = None  # forced error units; None: HU for CT, normalized units for MR
    volume_scores: bool = False  # PSNR and SSIM over the whole 3D foreground, not the mean of its slices'
    own_scale: bool = False  # each image mapped by its own percentiles over the reference's foreground (scale-free)
    slice_rows: bool = True  # per-slice rows (per_slice.csv) beside a 3D subject's scores (challenges: never)
    note: str = ""  # `{name}_note` of an evaluation it does not score (`only_modality`)

    def scores(self, kind: str) -> bool:
        """Whether it scores a `kind` ("mr" or "ct") evaluation."""
        return self.only_modality in (None, kind)

    def error_units(self, kind: str) -> str:
        return self.units or ("HU" if kind == "ct" else "norm. units")


_SLICE = ("psnr", "ssim", "mae", "mean_error", "lesion_psnr", "lesion_mae")
# The named protocols, one entry each (a new protocol: its entry, its branch in `evaluate_subject`, its test).
PROTOCOL_SPECS = {
    "volume": Protocol("reference foreground percentiles", "subjects (3D volume each)", (*_SLICE, "ms_ssim"),
                       columns=("ms_ssim",), volume_extras=True, volume_scores=True),
    "slice": Protocol("reference foreground percentiles", "slices, then subjects", _SLICE),
    "selfrdb": Protocol("reference foreground percentiles, clipped to [0, 1]", "slices, then subjects", _SLICE),
    "syndiff": Protocol("each slice by its own maximum", "all slices pooled (as SynDiff)", _SLICE,
                        pooled_slices=True),
    "brasyn": Protocol("BraSyn's percentile window", "subjects (3D volume each)",
                       ("psnr", "ssim_tumour", "ssim_healthy"), columns=("ssim_tumour", "ssim_healthy"),
                       challenge=True),
    "synthrad": Protocol("HU (SynthRAD2023 dynamic range)", "subjects (3D volume each)",
                         ("mae", "psnr", "ssim", "ms_ssim"), columns=("mae", "ms_ssim"), challenge=True,
                         only_modality="ct", units="HU", note="synthrad scores CT in HU; this evaluation is MR"),
    # Its errors are in its own units, so they are its own columns, not the report's "same under every protocol".
    "scalefree": Protocol("each image's own foreground percentiles, clipped to [0, 1]", "subjects (3D volume each)",
                          _SLICE, columns=("mae", "mean_error", "lesion_psnr", "lesion_mae"), only_modality="mr",
                          units="scale-free units",
                          volume_scores=True, own_scale=True, slice_rows=False,
                          note="scalefree scores MR, whose scale is unknown; a CT is in HU: read volume or synthrad"),
}
# A protocol's note column (`{name}_note`) when it can leave a subject's metrics blank with a sentence.
NOTE_COLUMNS = tuple(f"{name}_note" for name, p in PROTOCOL_SPECS.items() if p.challenge or p.note)
PROTOCOLS = tuple(PROTOCOL_SPECS)
SYNTHRAD_RANGE = (-1024.0, 3000.0)  # SynthRAD2023 ImageMetrics.dynamic_range (HU)
BRASYN_PERCENTILES = (0.5, 99.5)


def foreground_mask(ref: np.ndarray, modality: str = "mr") -> np.ndarray:
    """Head/body mask of the reference: `intensity.foreground` (the one rule prepare and translate use, robust to
    a z-scored or shifted background and to interpolation undershoot), largest component kept, holes filled."""
    ref = np.asarray(ref, dtype=np.float64)
    mask = np.asarray(foreground(ref, modality == "ct"), dtype=bool)
    if not mask.any():
        raise ValueError("the reference holds no foreground (it is constant or empty); cannot derive a foreground "
                         "mask.")
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


def own_scale(x: np.ndarray, mask: np.ndarray, percentiles=MR_PERCENTILES) -> tuple[np.ndarray, float, float]:
    """`scalefree`'s map: `x` by its own percentiles over `mask` (the reference's foreground) to [0, 1], clipped;
    an image constant there maps to 0 (no contrast to scale). Returns the image and its (low, high)."""
    lo, hi = (float(v) for v in np.percentile(x[mask], percentiles))
    if hi <= lo:
        return np.zeros_like(x), lo, hi
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0), lo, hi


def matched_copy(source: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Copy-the-source baseline: the source in the reference's units, its foreground 0.5/99.5 percentiles mapped
    onto the reference's (the same intensity matching `phmdiff demo` uses)."""
    s_lo, s_hi = np.percentile(source[mask], MR_PERCENTILES)
    r_lo, r_hi = np.percentile(ref[mask], MR_PERCENTILES)
    return (source - s_lo) / max(s_hi - s_lo, 1e-12) * (r_hi - r_lo) + r_lo


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
    """SynDiff's per-slice PSNR = 20 log10(pred.max() / RMSE) after max-normalization and crop (SynDiff test.py)."""
    pred, ref = np.maximum(pred, 0), np.maximum(ref, 0)  # their images are in [0, 1]: negatives clip at 0
    if pred.max() <= 0 or ref.max() <= 0:
        return {"psnr": math.nan, "ssim": math.nan}
    pred, ref = pred / pred.max(), ref / ref.max()  # normalized before cropping, as in sample_and_test
    if crop is not None:
        h0, w0 = (ref.shape[0] - crop[0]) // 2, (ref.shape[1] - crop[1]) // 2
        pred, ref = pred[h0 : h0 + crop[0], w0 : w0 + crop[1]], ref[h0 : h0 + crop[0], w0 : w0 + crop[1]]
    rmse = math.sqrt(float(np.mean((pred - ref) ** 2)))
    value = math.inf if rmse == 0 else 20 * math.log10(pred.max() / rmse)  # psnr(img1=prediction, img2=reference)
    ssim = float(structural_similarity(ref, pred, data_range=1.0)) if min(ref.shape) >= 7 else math.nan
    return {"psnr": value, "ssim": ssim}


def brasyn_percentile_clip(x: np.ndarray, percentiles=BRASYN_PERCENTILES) -> np.ndarray:
    """BraSyn's `__percentile_clip`: clip to the volume's own percentiles (low bound >= 0), map to [0, 1]."""
    lo, hi = np.percentile(x, percentiles)
    lo = max(float(lo), 0.0)
    if hi <= lo:
        return np.zeros_like(x)
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def brasyn_metrics(pred: np.ndarray, ref: np.ndarray, seg: np.ndarray | None = None) -> dict:
    """BraSyn's SSIM inside and outside the tumour and PSNR over the volume (module docstring)."""
    pred_n, ref_n = brasyn_percentile_clip(pred), brasyn_percentile_clip(ref)
    tumour = np.zeros(ref.shape, bool) if seg is None else np.asarray(seg) > 0
    out = {}
    for name, region in (("ssim_tumour", tumour), ("ssim_healthy", ~tumour)):
        if not region.any():
            continue
        p, r = pred_n * region, ref_n * region  # zeroed outside the region, as their masked SSIM
        data_range = max(float(p.max() - p.min()), float(r.max() - r.min())) or 1.0
        out[name] = float(M.ssim_map(p, r, data_range)[0][region].mean())
    err = float(np.mean((pred_n - ref_n) ** 2))
    span = float(ref_n.max() - ref_n.min())
    out["psnr"] = math.inf if err == 0 else 10 * math.log10(span**2 / err) if span > 0 else math.nan
    return out


def synthrad_metrics(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray, hu_range=SYNTHRAD_RANGE) -> dict:
    """SynthRAD2023's MAE (HU), PSNR and masked SSIM on the HU range shifted positive, plus MS-SSIM (docstring)."""
    lo, hi = hu_range
    span = hi - lo
    out = {"mae": float(np.abs(ref[mask] - pred[mask]).mean())}
    ref_c, pred_c = np.clip(ref, lo, hi), np.clip(pred, lo, hi)
    err = float(np.mean((ref_c[mask] - pred_c[mask]) ** 2))
    out["psnr"] = math.inf if err == 0 else 10 * math.log10(span**2 / err)
    ref_s, pred_s = np.where(mask, ref_c, lo) - lo, np.where(mask, pred_c, lo) - lo  # background -1024, then +1024
    if min(ref.shape) >= 7:
        _, smap = structural_similarity(ref_s, pred_s, data_range=span, full=True)
        pad = 3  # skimage's crop before its mean, applied to the map and the mask alike
        inner = tuple(slice(pad, n - pad) for n in ref.shape)
        out["ssim"] = float(smap[inner][mask[inner]].mean()) if mask[inner].any() else math.nan
    out["ms_ssim"], out["ms_ssim_note"] = M.ms_ssim(pred_s, ref_s, span)  # whole volume, background at 0
    return out


def _slice_rows(pred_n, ref_n, mask, axis, protocol, crop):
    rows = []
    for k in range(ref_n.shape[axis]):
        p, r, m = (np.take(a, k, axis=axis) for a in (pred_n, ref_n, mask))
        if not m.any():
            continue
        if protocol == "selfrdb":
            row = selfrdb_slice(np.clip(p, 0, 1), np.clip(r, 0, 1), m)
        elif protocol == "syndiff":
            row = syndiff_slice(p, r, crop)
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
    spec = PROTOCOL_SPECS[protocol]
    mask = foreground_mask(ref, modality) if mask is None else M._mask(mask, ref.shape)
    pred_n, ref_n, (lo, hi) = normalize_pair(pred, ref, mask, modality, ct_window)
    out: dict = {"protocol": protocol, "modality": modality, "norm_low": lo, "norm_high": hi,
                 "n_voxels": int(mask.sum())}
    if not spec.scores(modality):
        return {**out, f"{protocol}_note": spec.note, "slices": []}
    if spec.challenge:
        return _challenge(out, pred, ref, mask, seg, protocol, modality)
    if spec.own_scale:  # each image by its own percentiles over the reference's foreground
        pred_n, out["pred_norm_low"], out["pred_norm_high"] = own_scale(pred, mask)
        ref_n = own_scale(ref, mask)[0]
        if out["pred_norm_high"] <= out["pred_norm_low"]:
            out[f"{protocol}_note"] = "the prediction is constant inside the reference's foreground: mapped to 0"
    if protocol == "syndiff":  # SynDiff normalizes each slice by its own max: no percentile window, no upper clip
        pred_n, ref_n = pred, ref
    rows = _slice_rows(pred_n, ref_n, mask, slice_axis, protocol, crop) if pred.ndim == 3 and spec.slice_rows else []
    if protocol == "syndiff" and pred.ndim == 2:
        one = syndiff_slice(pred, ref, crop)
        out.update(psnr=one["psnr"], ssim=one["ssim"])
    elif spec.volume_scores or pred.ndim == 2:
        out["psnr"] = M.psnr(pred_n, ref_n, 1.0, mask)
        out["ssim"] = M.ssim(pred_n, ref_n, 1.0, mask)
        if "ms_ssim" in spec.metrics:
            box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(mask))
            out["ms_ssim"], out["ms_ssim_note"] = M.ms_ssim(pred_n[box], ref_n[box], 1.0)
    else:
        out["psnr"] = _mean(r["psnr"] for r in rows)
        out["ssim"] = _mean(r["ssim"] for r in rows)
    if protocol == "syndiff":
        pred_n, ref_n = normalize_pair(pred, ref, mask, modality, ct_window)[:2]  # MAE and lesion: usual units
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


def _challenge(out: dict, pred, ref, mask, seg, protocol: str, modality: str) -> dict:
    """The `brasyn` and `synthrad` protocols: whole-volume challenge metrics, no per-slice rows."""
    if protocol == "brasyn":
        out.update(brasyn_metrics(pred, ref, seg))
        if seg is None or not (np.asarray(seg) > 0).any():
            out["brasyn_note"] = "no tumour segmentation: ssim_tumour not computed, ssim_healthy is the whole volume"
    else:
        out.update(synthrad_metrics(pred, ref, mask))
    out["slices"] = []
    return out
