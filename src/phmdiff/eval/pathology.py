"""Pathology metrics: is the tumour synthesized at the right place *and* at the right brightness?

Lesion PSNR alone cannot tell a lesion that is noisy from one that is uniformly too dark. Beside it, the
mean-intensity ratio prediction / truth inside each BraTS tumour label (1 necrosis / NCR, 2 edema / ED,
4 enhancing / ET; BraTS 2023 writes the enhancing tumour as 3, both are read) and inside each healthy tissue
says which region comes out too bright (> 1) or too dark (< 1). Healthy tissues come from a tissue label map
where one is at hand (the brain phantom's `tissue` map, `phantom_brain.TISSUES`, rebuilt from the subject's
seed with `phantom_brain.brain_anatomy`); without one, the non-tumour foreground counts as one "healthy" region.

Pure numpy. Images are expected in the units a reader compares (the volume protocol's [0, 1] normalization of
the reference, `protocols.normalize_pair`): a ratio is only meaningful where the truth's mean is well above 0.
Lesion PSNR is the volume protocol's own (`protocols.evaluate_subject`'s "lesion_psnr": PSNR with data range 1
inside seg > 0); the tests check the two agree.
"""

from __future__ import annotations

import math

import numpy as np

from phmdiff.data.phantom_brain import TISSUES
from phmdiff.eval import metrics as M

# name -> the BraTS label values that mean it (2021: 1, 2, 4; 2023: 1, 2, 3)
TUMOUR_LABELS = {"necrosis": (1,), "edema": (2,), "enhancing": (3, 4)}
# healthy brain tissues of the phantom's tissue map, reported when a tissue map is given
HEALTHY_TISSUES = ("wm", "gm", "deep_gm", "csf", "ventricle")
MIN_TRUTH_MEAN = 1e-6  # below it a ratio is meaningless (NaN)


def _region_ratio(pred: np.ndarray, truth: np.ndarray, region: np.ndarray) -> float:
    """mean(pred[region]) / mean(truth[region]); NaN where the truth's mean is not positive."""
    t = float(truth[region].mean())
    return float(pred[region].mean()) / t if t > MIN_TRUTH_MEAN else math.nan


def lesion_psnr(pred, truth, seg, data_range: float = 1.0) -> float:
    """PSNR inside the whole tumour (seg > 0) with an explicit data range; NaN when seg holds no tumour."""
    pred, truth = M._pair(pred, truth)
    lesion = _seg(seg, truth.shape) > 0
    return M.psnr(pred, truth, data_range, lesion) if lesion.any() else math.nan


def label_intensity_ratios(pred, truth, seg, mask=None, tissue=None, tissues=HEALTHY_TISSUES) -> dict[str, float]:
    """Mean-intensity ratio prediction / truth per tumour label present and per healthy region.

    Keys: "necrosis", "edema", "enhancing" (labels present in seg only), then either each of `tissues` found in
    the tissue map outside the tumour (`tissue` given, labels as `phantom_brain.TISSUES`) or "healthy" (the
    foreground `mask`, default every voxel, outside the tumour).
    """
    pred, truth = M._pair(pred, truth)
    seg = _seg(seg, truth.shape)
    out: dict[str, float] = {}
    for name, values in TUMOUR_LABELS.items():
        region = np.isin(seg, values)
        if region.any():
            out[name] = _region_ratio(pred, truth, region)
    healthy = seg == 0
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != truth.shape:
            raise ValueError(f"tissue map shape {tissue.shape} differs from image shape {truth.shape}; "
                             "expected equal.")
        for name in tissues:
            if name not in TISSUES:
                raise ValueError(f"tissue {name!r} is not a phantom tissue; expected one of {', '.join(TISSUES)}.")
            region = healthy & (tissue == TISSUES[name])
            if region.any():
                out[name] = _region_ratio(pred, truth, region)
        return out
    region = healthy if mask is None else healthy & M._mask(mask, truth.shape)
    if region.any():
        out["healthy"] = _region_ratio(pred, truth, region)
    return out


def pathology_metrics(pred, truth, seg, mask=None, tissue=None, data_range: float = 1.0) -> dict[str, float]:
    """lesion_psnr and one "ratio_<region>" per region of `label_intensity_ratios`, as flat result keys."""
    out = {"lesion_psnr": lesion_psnr(pred, truth, seg, data_range)}
    ratios = label_intensity_ratios(pred, truth, seg, mask=mask, tissue=tissue)
    out.update({f"ratio_{k}": v for k, v in ratios.items()})
    return out


def _seg(seg, shape) -> np.ndarray:
    seg = np.asarray(seg)
    if seg.shape != tuple(shape):
        raise ValueError(f"segmentation shape {seg.shape} differs from image shape {tuple(shape)}; expected equal.")
    return np.rint(seg).astype(np.int64) if seg.dtype.kind == "f" else seg.astype(np.int64)
