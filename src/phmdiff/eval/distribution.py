"""Distribution metrics between sets of 2D images: MS-SWD (no weights needed), FID and KID.

MS-SWD is the multi-scale sliced Wasserstein distance of Karras et al. 2018
("Progressive growing of GANs", appendix D): 7x7 patches from every level of a
Laplacian pyramid, each level's descriptors normalized per channel, the 1D
Wasserstein distance along random directions averaged. FID (Heusel et al. 2017)
and KID (Binkowski et al. 2018) need an Inception feature extractor: the user gives
a TorchScript file (e.g. StyleGAN's `inception-2015-12-05.pt`), loaded from disk
only; nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5-tap binomial blur with reflect borders, the Burt-Adelson pyramid filter."""
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x)[None, None]  # (1, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k)


def laplacian_levels(images: torch.Tensor, min_size: int = 16) -> list[torch.Tensor]:
    """Laplacian pyramid of (N, 1, H, W) images, finest first, down to `min_size`."""
    levels, x = [], images
    while min(x.shape[-2:]) >= 2 * min_size:
        low = _blur(x)[..., ::2, ::2]
        levels.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))
        x = low
    levels.append(x)
    return levels


def _patches(level: torch.Tensor, patch: int, count: int, seed: int) -> torch.Tensor:
    """`count` patch descriptors (count, patch*patch) at seeded positions shared by both sets."""
    cols = F.unfold(level, patch, stride=max(1, patch // 2))  # (N, P*P, L)
    cols = cols.permute(0, 2, 1).reshape(-1, patch * patch)  # (N*L, P*P)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(cols.shape[0], generator=g)[:count]
    return cols[idx]


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_dirs: int, seed: int) -> float:
    """Mean over random unit directions of the 1D Wasserstein-1 distance of projections."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_dirs, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float((pa - pb).abs().mean())


def ms_swd(set_a, set_b, patch: int = 7, n_patches: int = 4096, n_dirs: int = 128, seed: int = 0) -> dict:
    """MS-SWD between two sets of (N, H, W) images in the same units; per level and mean, x1e3 as in ProGAN."""
    a = torch.as_tensor(np.asarray(set_a), dtype=torch.float64)[:, None]  # (N, 1, H, W)
    b = torch.as_tensor(np.asarray(set_b), dtype=torch.float64)[:, None]  # (N, 1, H, W)
    if a.ndim != 4 or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"MS-SWD needs two sets of equal-size 2D images, got {tuple(a.shape)} and {tuple(b.shape)}.")
    per_level = []
    for lvl, (la, lb) in enumerate(zip(laplacian_levels(a), laplacian_levels(b))):
        if min(la.shape[-2:]) < patch:
            break
        count = min(n_patches, la.shape[0] * _n_windows(la, patch), lb.shape[0] * _n_windows(lb, patch))
        da, db = _patches(la, patch, count, seed + lvl), _patches(lb, patch, count, seed + lvl)
        # Normalize each level by the pooled statistics so levels weigh alike.
        both = torch.cat([da, db])
        mean, std = both.mean(), both.std().clamp_min(1e-12)
        per_level.append(1e3 * sliced_wasserstein((da - mean) / std, (db - mean) / std, n_dirs, seed + 100 + lvl))
    return {"ms_swd": float(np.mean(per_level)), "ms_swd_levels": per_level}


def _n_windows(level: torch.Tensor, patch: int) -> int:
    stride = max(1, patch // 2)
    return ((level.shape[-2] - patch) // stride + 1) * ((level.shape[-1] - patch) // stride + 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), Heusel et al. 2017 eq. 6."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    with warnings.catch_warnings():  # a singular product is handled just below
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # near-singular product: regularize as is common practice
        eps = 1e-6 * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kid(feat_a: np.ndarray, feat_b: np.ndarray, n_subsets: int = 10, subset_size: int = 1000, seed: int = 0) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, averaged over subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(feat_a), len(feat_b))
    d = feat_a.shape[1]
    values = []
    for _ in range(n_subsets):
        x = feat_a[rng.choice(len(feat_a), m, replace=False)]
        y = feat_b[rng.choice(len(feat_b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values))


def load_feature_extractor(path) -> torch.jit.ScriptModule:
    """Load a TorchScript Inception feature extractor from a local file, or say what is missing."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise ValueError(
            f"FID/KID need a TorchScript Inception feature extractor file; '{path}' does not exist. "
            "Give one with --inception PATH (e.g. StyleGAN's inception-2015-12-05.pt); nothing is downloaded."
        )
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream but is the portable format here
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a TorchScript module ({str(exc).splitlines()[0]}).") from None


@torch.no_grad()
def inception_features(model, images, size: int = 299, scale: float = 255.0, batch: int = 16) -> np.ndarray:
    """Features (N, D) of (N, H, W) images in [0, 1]: grey to RGB, resized to `size`, times `scale`."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None]  # (N, 1, H, W)
    feats = []
    for chunk in x.split(batch):
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
        out = model(chunk.repeat(1, 3, 1, 1) * scale)  # (n, 3, size, size)
        out = out[0] if isinstance(out, (tuple, list)) else out
        feats.append(out.reshape(out.shape[0], -1).double())  # (n, D)
    return torch.cat(feats).numpy()


def fid_kid(extractor_path, set_a, set_b, **kwargs) -> dict:
    """FID and KID between two image sets with the user's TorchScript feature extractor."""
    model = load_feature_extractor(extractor_path)
    fa, fb = inception_features(model, set_a, **kwargs), inception_features(model, set_b, **kwargs)
    fid = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    return {"fid": fid, "kid": kid(fa, fb)}
