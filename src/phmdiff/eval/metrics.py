"""Image-similarity metrics for 2D slices and 3D volumes: PSNR, SSIM, MS-SSIM, MAE, mean error.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to
structural similarity") with the constants most papers use: a Gaussian window of
11 taps (sigma 1.5, truncated at 3.5 sigma), K1 0.01, K2 0.03 and population
(co)variances. It equals scikit-image's
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=...)`, which the tests check. It is the project's one SSIM: written once in torch
(`ssim_maps`, differentiable, 2D or 3D, batched), used as is by the autoencoder's loss and through numpy here.
(The `selfrdb` and `syndiff` protocols call scikit-image's defaults on purpose: they reproduce those papers'
scripts, uniform 7-tap window and sample covariance, a different estimator.) `data_range` is never guessed: every
function takes it explicitly, because a data range read from each image is the
main reason published numbers disagree.

Masks select voxels by indexing (`x[mask]`), never by multiplying: a zeroed
background would count as perfectly predicted voxels and inflate every metric.
Identical images give PSNR `inf` (a float, kept as such in the data; tables
print "inf" and summaries count them apart).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

# torch is imported inside the SSIM functions: `phmdiff evaluate` must refuse an oversized file with little
# memory, before torch's start-up (some 300 MB) is paid.
if TYPE_CHECKING:
    import torch

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5, i.e. an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Wang, Simoncelli, Bovik 2003, "Multi-scale structural similarity", Table: 5 scales.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}; expected equal.")
    if pred.ndim not in (2, 3):
        raise ValueError(f"images must be 2D or 3D arrays, got {pred.ndim} dimensions.")
    return pred, ref


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {tuple(shape)}; expected equal.")
    if not mask.any():
        raise ValueError("the mask selects no voxel; expected a mask with at least one foreground voxel.")
    return mask


def _check_range(data_range) -> float:
    if data_range is None or not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range must be a positive number, got {data_range!r}.")
    return float(data_range)


def mse(pred, ref, mask=None) -> float:
    """Mean squared error over all voxels or over the mask's voxels."""
    pred, ref = _pair(pred, ref)
    mask = _mask(mask, ref.shape)
    diff = pred - ref if mask is None else pred[mask] - ref[mask]
    return float(np.mean(diff**2))


def psnr(pred, ref, data_range: float, mask=None) -> float:
    """PSNR = 10 log10(data_range^2 / MSE); `inf` when the images are identical."""
    data_range = _check_range(data_range)
    err = mse(pred, ref, mask)
    if err == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / err))


def mae(pred, ref, mask=None) -> float:
    """Mean absolute error (in the images' units, e.g. HU for CT)."""
    pred, ref = _pair(pred, ref)
    mask = _mask(mask, ref.shape)
    diff = pred - ref if mask is None else pred[mask] - ref[mask]
    return float(np.mean(np.abs(diff)))


def mean_error(pred, ref, mask=None) -> float:
    """Mean signed error pred - ref: the bias (positive = prediction too bright)."""
    pred, ref = _pair(pred, ref)
    mask = _mask(mask, ref.shape)
    diff = pred - ref if mask is None else pred[mask] - ref[mask]
    return float(np.mean(diff))


def _symmetric_index(n: int, pad: int) -> torch.Tensor:
    import torch

    """Indices of a half-sample symmetric extension by `pad` (scipy's "reflect", numpy's "symmetric")."""
    i = torch.arange(-pad, n + pad)
    i = torch.remainder(i, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _gaussian_filter(x: torch.Tensor) -> torch.Tensor:
    import torch

    """Separable 11-tap Gaussian (sigma 1.5) with half-sample symmetric borders over the spatial axes of
    (N, C, *spatial)."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / SSIM_SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    for axis in range(2, x.ndim):
        idx = _symmetric_index(x.shape[axis], radius).to(x.device)
        x = x.index_select(axis, idx).unfold(axis, 2 * radius + 1, 1) @ kernel  # window axis last, summed
    return x


def ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps (Wang et al. 2004, eq. 13) of (N, C, *spatial) tensors, same shape."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _gaussian_filter(x), _gaussian_filter(y)
    var_x = _gaussian_filter(x * x) - mu_x * mu_x
    var_y = _gaussian_filter(y * y) - mu_y * mu_y
    cov_xy = _gaussian_filter(x * y) - mu_x * mu_y
    cs = (2 * cov_xy + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return luminance * cs, cs


def inner(values, spatial_dims: int):
    """The map without the window radius at the borders, as scikit-image averages it (sides too short: kept)."""
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    lead = values.ndim - spatial_dims
    return values[(slice(None),) * lead + tuple(slice(pad, n - pad) if n > 2 * pad else slice(None)
                                                for n in values.shape[lead:])]


def ssim_map(pred, ref, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    import torch

    """SSIM and contrast-structure maps, Wang et al. 2004 eq. 13, same shape as the input."""
    pred, ref = _pair(pred, ref)
    data_range = _check_range(data_range)
    full, cs = ssim_maps(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None], data_range)
    return full[0, 0].numpy(), cs[0, 0].numpy()


def _mean_of_map(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is not None:
        return float(values[mask].mean())
    # Without a mask, drop the window radius at the borders as scikit-image does,
    # so padded values never enter the mean.
    return float(inner(values, values.ndim).mean())


def ssim(pred, ref, data_range: float, mask=None) -> float:
    """Mean SSIM; with a mask, the SSIM map is averaged over the mask's voxels."""
    values, _ = ssim_map(pred, ref, data_range)
    return _mean_of_map(values, _mask(mask, values.shape))


def ms_ssim_min_size(scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side for which the coarsest MS-SSIM scale still holds one 11-tap window."""
    return 11 * 2 ** (scales - 1)


def ms_ssim(pred, ref, data_range: float) -> tuple[float | None, str]:
    """MS-SSIM (Wang et al. 2003): cs at 4 fine scales, SSIM at the coarsest, weighted product.

    Returns (value, "") or (None, reason) when the image is too small for 5 scales.
    Negative contrast-structure terms are clipped at 0 before the fractional power.
    """
    pred, ref = _pair(pred, ref)
    data_range = _check_range(data_range)
    need = ms_ssim_min_size()
    if min(ref.shape) < need:
        return None, f"MS-SSIM needs every side >= {need} voxels for 5 scales, got shape {ref.shape}"
    value = 1.0
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        full, cs = ssim_map(pred, ref, data_range)
        last = level == len(MS_SSIM_WEIGHTS) - 1
        term = _mean_of_map(full if last else cs, None)
        value *= max(term, 0.0) ** weight
        if not last:
            pred, ref = _downsample2(pred), _downsample2(ref)
    return float(value), ""


def view_scores(pred, ref, data_range: float, axis: int, mask=None) -> dict:
    """Mean PSNR and SSIM of a volume's 2D slices along `axis` (for an axially synthesized volume, its coronal or
    sagittal views, where slice-by-slice stripes show). Slices without a mask voxel are skipped; with a mask, each
    slice's PSNR and SSIM map are taken over its mask voxels."""
    import torch

    pred, ref = _pair(pred, ref)
    if pred.ndim != 3:
        raise ValueError(f"view_scores needs 3D volumes, got {pred.ndim} dimensions.")
    data_range = _check_range(data_range)
    mask = _mask(mask, pred.shape)
    p, r = np.moveaxis(pred, axis, 0), np.moveaxis(ref, axis, 0)  # (n, A, B)
    m = np.ones(p.shape, bool) if mask is None else np.moveaxis(mask, axis, 0)
    keep = m.reshape(len(m), -1).any(1)
    p, r, m = p[keep], r[keep], m[keep]
    full, _ = ssim_maps(torch.from_numpy(np.ascontiguousarray(p))[:, None],
                        torch.from_numpy(np.ascontiguousarray(r))[:, None], data_range)  # (n, 1, A, B)
    psnrs = [psnr(a, b, data_range, None if mask is None else k) for a, b, k in zip(p, r, m)]
    ssims = [_mean_of_map(v, None if mask is None else k) for v, k in zip(full[:, 0].numpy(), m)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "n_slices": int(keep.sum())}


def gradient_error(pred, ref, axis: int, mask=None) -> float:
    """RMS error of the finite difference along `axis`: sqrt(mean((d pred - d ref)^2)) with d x = x[k+1] - x[k],
    over neighbour pairs inside the mask. Along the slice axis it measures stripes between synthesized slices."""
    pred, ref = _pair(pred, ref)
    d = np.diff(pred, axis=axis) - np.diff(ref, axis=axis)
    mask = _mask(mask, pred.shape)
    if mask is None:
        return float(np.sqrt(np.mean(d**2)))
    both = np.moveaxis(np.moveaxis(mask, axis, 0)[1:] & np.moveaxis(mask, axis, 0)[:-1], 0, axis)
    return float(np.sqrt(np.mean(d[both] ** 2))) if both.any() else math.nan


def through_plane_scores(pred, ref, data_range: float, slice_axis: int, mask=None) -> dict:
    """3D consistency of a volume synthesized slice by slice along `slice_axis`: PSNR and SSIM of the views across
    it (mean over the two other axes), and the gradient error through the slices beside the in-plane one."""
    slice_axis = slice_axis % 3
    others = [a for a in range(3) if a != slice_axis]
    views = [view_scores(pred, ref, data_range, a, mask) for a in others]
    return {"psnr_through": float(np.mean([v["psnr"] for v in views])),
            "ssim_through": float(np.mean([v["ssim"] for v in views])),
            "grad_error_through": gradient_error(pred, ref, slice_axis, mask),
            "grad_error_inplane": float(np.mean([gradient_error(pred, ref, a, mask) for a in others]))}


def _downsample2(x: np.ndarray) -> np.ndarray:
    """2x average pooling along every axis (odd trailing voxels dropped)."""
    x = x[tuple(slice(0, (n // 2) * 2) for n in x.shape)]
    if x.ndim == 2:
        return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean(axis=(1, 3))  # (H/2, W/2)
    return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, x.shape[2] // 2, 2).mean(axis=(1, 3, 5))  # (D/2, H/2, W/2)


def format_value(value) -> str:
    """How a metric appears in tables and CSV: 'inf' for identical images, '' for missing."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
