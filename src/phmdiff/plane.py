"""Plane geometry of inference: the whole input plane as slices, padded to what the model tiles, and back.

Training padded or cropped every plane to `VolumeSettings.size`. Inference never crops: it pads the plane
centred to at least that size and to a multiple of the run's `plane_multiple` (the coarsest pyramid level's
tokens must tile it), predicts the whole padded plane (larger planes in blended windows of the training size,
`phmdiff.windows`, placed by `window_starts`), and `crop_plane` removes the padding again. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from phmdiff.data.volume import VolumeSpec, volume_to_slices

Pads = list[list[int]]  # [before, after] per plane axis


def pad_plane(x: np.ndarray, fills: list[float], side: int, multiple: int) -> tuple[np.ndarray, Pads]:
    """Pad slices (n, C, A, B) centred to at least `side` x `side` and to multiples of `multiple`, channel c with
    `fills[c]` (as training padded planes smaller than its size); returns the padded slices and [before, after]
    per plane axis, which `crop_plane` undoes. Nothing is ever cropped."""
    shape = x.shape[2:]
    target = [max(side, -(-s // multiple) * multiple) for s in shape]
    pads = [[(t - s) // 2, (t - s) - (t - s) // 2] for s, t in zip(shape, target)]
    if not any(b or a for b, a in pads):
        return x, pads
    out = np.empty((*x.shape[:2], *target), dtype=np.float32)  # (n, C, A', B')
    out[:] = np.asarray(fills, dtype=np.float32)[None, :, None, None]
    out[:, :, pads[0][0] : pads[0][0] + shape[0], pads[1][0] : pads[1][0] + shape[1]] = x
    return out, pads


def crop_plane(x: np.ndarray, pads: Pads) -> np.ndarray:
    """Undo `pad_plane` on predicted slices (n, H, W)."""
    (b0, a0), (b1, a1) = pads
    return x[:, b0 : x.shape[1] - a0, b1 : x.shape[2] - a1]


def plane_slices(volumes: dict, affine, settings, multiple: int) -> tuple[np.ndarray, VolumeSpec, Pads]:
    """`volume_to_slices` over the whole input plane: where training padded or cropped planes to `settings.size`,
    inference pads to at least that size and to a multiple of `multiple` (the run's `plane_multiple`), and never
    crops (a larger plane is sampled in blended windows, `phmdiff.windows`). Returns the slices, the spec and
    the pads `crop_plane` undoes.
    """
    if settings.fit == "resize" and settings.size is not None:  # the plane is resized to the model size: no crop
        slices, spec = volume_to_slices(volumes, affine, settings)
        return slices, spec, [[0, 0], [0, 0]]
    slices, spec = volume_to_slices(volumes, affine, replace(settings, size=None))
    k = 2 * spec.context + 1
    mods = [m for m in settings.modalities if m in volumes]
    fills = [float(spec.norm[m].forward(np.float32(spec.background[m]))) for m in mods for _ in range(k)]
    slices, pads = pad_plane(slices, fills, settings.size or 0, multiple)
    return slices, spec, pads


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """First index of each window along an axis of `size`: evenly spaced, at least `overlap` shared, covering all."""
    if window >= size:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / stride) + 1
    return sorted({round(i * (size - window) / (n - 1)) for i in range(n)})
