"""Planes larger than the training size: the denoiser runs on Gaussian-blended sliding windows.

A diffusion sampler keeps one state for the whole plane; each denoiser call is split into overlapping windows
of the training grid (so the network sees the token grid and positions it was trained on), the windows go
through the network as one batch, and their outputs are blended with a Gaussian importance map (as
`monai.inferers.sliding_window_inference` does with mode="gaussian", sigma_scale=0.125). Blending the denoised
estimate at every step, not independently sampled windows at the end, leaves no seam: the sampler sees one
consistent image (Bar-Tal et al. 2023, MultiDiffusion). Where the whole plane fits one window the denoiser is
called unchanged.
"""

from __future__ import annotations

import torch

from phmdiff.plane import window_starts

SIGMA_SCALE = 0.125  # the Gaussian's sigma as a fraction of the window side (MONAI's default)


def gaussian_weights(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Importance map (h, w): a separable Gaussian centred on the window, floored at its smallest positive value."""

    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-(pos**2) / (2 * (SIGMA_SCALE * n) ** 2))

    g = axis(h)[:, None] * axis(w)[None, :]  # (h, w)
    return g.clamp(min=float(g[g > 0].min())).to(device=device, dtype=dtype)


class WindowedDenoiser:
    """D(x, sigma, **cond) over any plane from a denoiser trained on `window` x `window` grids at level 0.

    At pyramid level l the window is `window / 2^l`. Spatial kwargs (`cond`, `coarse`) are cut with `x`;
    per-sample ones (`avail`, `target_label`, sigma) are repeated per window. At most `max_batch` windows x
    samples go through the network at once.
    """

    SPATIAL = ("cond", "coarse")

    def __init__(self, denoiser, window: int, overlap: float = 0.25, max_batch: int = 256):
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"window overlap must be in [0, 1), got {overlap}.")
        self.denoiser, self.window, self.overlap, self.max_batch = denoiser, int(window), float(overlap), max_batch
        self.sigma_min = getattr(denoiser, "sigma_min", 0.0)
        self.sigma_max = getattr(denoiser, "sigma_max", float("inf"))
        self.round_sigma = getattr(denoiser, "round_sigma", torch.as_tensor)

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        n, _, H, W = x.shape
        level = kwargs.get("level") or 0
        win = max(1, self.window >> int(level))
        if H <= win and W <= win:
            out = self.denoiser(x, sigma, **kwargs)
            return out[0] if isinstance(out, tuple | list) else out
        wh, ww = min(win, H), min(win, W)
        boxes = [(i, j) for i in window_starts(H, wh, self.overlap) for j in window_starts(W, ww, self.overlap)]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1).expand(n)  # (N,)
        weight = gaussian_weights(wh, ww, x.device, x.dtype)  # (wh, ww)
        acc = torch.zeros_like(x)
        norm = torch.zeros(H, W, device=x.device, dtype=x.dtype)
        per_call = max(1, self.max_batch // n)
        for lo in range(0, len(boxes), per_call):
            part = boxes[lo : lo + per_call]
            b = len(part)

            def cut(t: torch.Tensor, part=part) -> torch.Tensor:  # (N, C, H, W) -> (b * N, C, wh, ww)
                return torch.cat([t[:, :, i : i + wh, j : j + ww] for i, j in part])  # window-major

            kw = {}
            for key, value in kwargs.items():
                if key in self.SPATIAL and isinstance(value, torch.Tensor):
                    kw[key] = cut(value)
                elif isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == n:
                    kw[key] = value.repeat(b, *([1] * (value.dim() - 1)))  # per-sample: one copy per window
                else:
                    kw[key] = value
            out = self.denoiser(cut(x), sigma.repeat(b), **kw)
            out = out[0] if isinstance(out, tuple | list) else out  # (b * N, C, wh, ww)
            for k, (i, j) in enumerate(part):
                acc[:, :, i : i + wh, j : j + ww] += out[k * n : (k + 1) * n].to(x.dtype) * weight
                norm[i : i + wh, j : j + ww] += weight
        return acc / norm
