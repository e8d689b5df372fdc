"""Gaussian and Laplacian image pyramids (Burt & Adelson 1983) for 2D and 3D tensors.

Level 0 is the finest grid; level l is 2^l times coarser. All functions are pure:
tensors in, tensors out, shapes `(N, C, H, W)` or `(N, C, D, H, W)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Binomial (1 3 3 1)/8 filter: a 4-tap approximation of a Gaussian centred between two samples; it sums to 1,
# so a constant image stays exactly constant.
_BINOMIAL_EVEN = (1.0, 3.0, 3.0, 1.0)


def _spatial_dims(x: torch.Tensor) -> int:
    if x.dim() not in (4, 5):
        raise ValueError(
            f"Expected an image tensor of shape (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}."
        )
    return x.dim() - 2


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Anti-aliased 2x downsampling whose sample k sits at fine position 2k + 0.5, where `upsample` puts it.

    Binomial (1 3 3 1)/8 filter over samples 2k-1 .. 2k+2 with stride 2 (replicate padding at the borders):
    the filter is symmetric about 2k + 0.5, so up(down(ramp)) = ramp away from the borders. Keeping samples
    0, 2, 4 ... instead would shift the coarse grid by half a fine pixel against `upsample`.
    """
    dims = _spatial_dims(x)
    for s in x.shape[2:]:
        if s % 2:
            raise ValueError(f"Cannot downsample a grid of shape {tuple(x.shape[2:])}: every size must be even.")
    n, c = x.shape[:2]
    kernel = torch.tensor(_BINOMIAL_EVEN, dtype=x.dtype, device=x.device)
    kernel = kernel / kernel.sum()
    conv = F.conv2d if dims == 2 else F.conv3d
    y = x.reshape(n * c, 1, *x.shape[2:])  # (N*C, 1, *spatial)
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = len(_BINOMIAL_EVEN)
        stride = [1] * dims
        stride[axis] = 2
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = 1  # F.pad lists the last axis first
        y = conv(F.pad(y, pad, mode="replicate"), kernel.reshape(shape), stride=tuple(stride))
    return y.reshape(n, c, *y.shape[2:])  # (N, C, *spatial / 2)


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Upsample to `size` by (tri)linear interpolation (half-pixel centres, matching `downsample`)."""
    dims = _spatial_dims(x)
    if len(size) != dims:
        raise ValueError(f"upsample size {tuple(size)} has {len(size)} dimensions, expected {dims}.")
    mode = "bilinear" if dims == 2 else "trilinear"
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """Spatial shapes of levels 0..levels-1 for a spatial grid `shape` (H, W) or (D, H, W)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"level_shapes expects a spatial shape (H, W) or (D, H, W), got {shape}.")
    if levels < 1:
        raise ValueError(f"The number of pyramid levels must be at least 1, got {levels}.")
    factor = 2 ** (levels - 1)
    if any(s % factor for s in shape):
        raise ValueError(
            f"A grid of shape {shape} cannot hold {levels} pyramid levels: every size must be divisible by {factor}."
        )
    return [tuple(s // 2**l for s in shape) for l in range(levels)]


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Gaussian pyramid [x, down(x), down(down(x)), ...] with `levels` entries, finest first."""
    _spatial_dims(x)
    level_shapes(x.shape[2:], levels)
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(downsample(pyr[-1]))
    return pyr


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid: band-pass residuals g_l - up(g_{l+1}), then the coarsest Gaussian level."""
    gauss = gaussian_pyramid(x, levels)
    lap = [g - upsample(g_next, g.shape[2:]) for g, g_next in zip(gauss[:-1], gauss[1:])]
    lap.append(gauss[-1])
    return lap


def collapse(laplacian: Sequence[torch.Tensor]) -> torch.Tensor:
    """Invert `laplacian_pyramid` exactly: add each band to the upsampled coarser reconstruction."""
    if len(laplacian) == 0:
        raise ValueError("Cannot collapse an empty Laplacian pyramid.")
    x = laplacian[-1]
    for band in reversed(laplacian[:-1]):
        x = band + upsample(x, band.shape[2:])
    return x
