"""Ensembles of N diffusion samples: single-sample vs mean metrics, and whether uncertainty points at errors.

The per-voxel standard deviation over samples is the uncertainty map; a useful
map correlates with the actual error |mean - reference| inside the mask
(Pearson on values, Spearman on ranks).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from phmdiff.eval.protocols import evaluate_subject, foreground_mask

_KEYS = ("psnr", "ssim", "mae", "mean_error")


def uncertainty_error_correlation(std: np.ndarray, error: np.ndarray, mask: np.ndarray) -> dict:
    """Pearson and Spearman correlation of the predicted std with |error| over the mask's voxels."""
    s, e = np.asarray(std, np.float64)[mask], np.abs(np.asarray(error, np.float64))[mask]
    if s.std() == 0 or e.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(stats.pearsonr(s, e)[0]), "spearman": float(stats.spearmanr(s, e)[0])}


def evaluate_ensemble(samples, ref, mask=None, protocol: str = "volume", modality: str = "mr", **kwargs) -> dict:
    """Metrics of each sample, of their mean, and the std-vs-error correlation, for one subject."""
    samples = np.stack([np.asarray(s, np.float64) for s in samples])  # (S, *volume)
    if samples.shape[0] < 2:
        raise ValueError(f"an ensemble needs at least 2 samples, got {samples.shape[0]}.")
    mean, std = samples.mean(0), samples.std(0)
    of_mean = evaluate_subject(mean, ref, mask=mask, protocol=protocol, modality=modality, **kwargs)
    singles = [evaluate_subject(s, ref, mask=mask, protocol=protocol, modality=modality, **kwargs) for s in samples]
    region = foreground_mask(ref, modality) if mask is None else np.asarray(mask, bool)
    out = {"n_samples": int(samples.shape[0])}
    for key in _KEYS:
        values = np.array([r[key] for r in singles], np.float64)
        out[f"single_{key}_mean"] = float(values.mean())
        out[f"single_{key}_std"] = float(values.std())
        out[f"mean_{key}"] = of_mean[key]
    corr = uncertainty_error_correlation(std, mean - np.asarray(ref, np.float64), region)
    out["std_error_pearson"], out["std_error_spearman"] = corr["pearson"], corr["spearman"]
    return out
