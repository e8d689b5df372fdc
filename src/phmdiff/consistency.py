"""Through-plane consistency of slice-by-slice synthesis: a joint (cross) bilateral filter across the slices.

Slices are sampled independently, so their errors are independent from slice to slice and show as stripes in
the views across the slice axis. The sources, read as whole volumes, have no such stripes. Each predicted pixel
is replaced by a weighted mean of the same pixel in the neighbouring slices, with weights that fall with the
slice distance (Gaussian, `sigma` slices) and with the difference of the *sources* at that pixel (Gaussian,
`h` in normalized units): where the anatomy changes between slices (the sources change) nothing is mixed, where
it does not, the independent errors average out (Tomasi & Manduchi 1998; the joint form of Petschnigg et al.
2004 and Eisemann & Durand 2004, here along one axis).
"""

from __future__ import annotations

import numpy as np


def joint_bilateral_z(pred: np.ndarray, guide: np.ndarray, positions, sigma: float = 1.0, h: float = 0.05,
                      radius: int | None = None) -> np.ndarray:
    """Filter predicted slices (..., n, H, W) along the slice axis n, guided by the sources (n, C, H, W).

    `positions` (n,) are the slices' indices in the volume (kept slices need not be contiguous; a gap counts
    as distance). `sigma` <= 0 returns `pred` unchanged.
    """
    if sigma <= 0:
        return pred
    if h <= 0:
        raise ValueError(f"the guide's range h must be positive, got {h}.")
    pos = np.asarray(positions, dtype=np.float64)
    n = guide.shape[0]
    if pred.shape[-3] != n or len(pos) != n:
        raise ValueError(f"pred has {pred.shape[-3]} slices, the guide {n} and positions {len(pos)}; expected equal.")
    radius = int(np.ceil(2 * sigma)) if radius is None else radius
    guide = np.asarray(guide, dtype=np.float32)
    acc = np.zeros(pred.shape, dtype=np.float64)
    norm = np.zeros((n, *guide.shape[2:]), dtype=np.float64)
    for k in range(n):
        for j in range(max(0, k - radius), min(n, k + radius + 1)):
            dz = pos[j] - pos[k]
            if abs(dz) > radius:
                continue
            d2 = ((guide[j] - guide[k]) ** 2).mean(0)  # (H, W): mean over source channels
            w = np.exp(-(dz**2) / (2 * sigma**2) - d2 / (2 * h**2))  # (H, W)
            acc[..., k, :, :] += w * pred[..., j, :, :]
            norm[k] += w
    return (acc / norm).astype(pred.dtype, copy=False)
