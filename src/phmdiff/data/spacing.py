"""Voxel spacing: the in-plane spacing a run was trained on, and resampling a new volume to it and back.

A model sees pixels, not millimetres: a 0.5 mm volume shown to a model trained at 1 mm looks like an organ
twice its size. As nnU-Net does, `translate` resamples each input's slice plane to the training spacing
(linear interpolation), predicts there, and resamples the prediction back onto the input's own grid, so
the output keeps the input's shape and geometry. The slice axis is never resampled (slices are predicted
one by one). `prepare` records each volume's in-plane spacing and the training split's median
(`VolumeSettings.spacing`), which the run carries in its identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as ornt_lib

TOLERANCE = 0.10  # a spacing ratio beyond 1 +/- this, with resampling off, is worth a warning
_EXACT = 1e-3  # below this relative difference the grids are the same: no resampling


def slice_plane(affine: np.ndarray, axis="auto") -> tuple[int, list[int], list[float]]:
    """The slice axis in RAS (the rule of `volume.volume_to_slices`: the coarsest spacing, ties -> axial), the
    two array axes of the slice plane (in RAS order) and their spacings in mm."""
    from phmdiff.data.volume import CANONICAL

    affine = np.asarray(affine, dtype=float)
    to_canonical = ornt_lib.ornt_transform(ornt_lib.io_orientation(affine), CANONICAL)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))  # per array axis
    canon = zooms[to_canonical[:, 0].astype(int).argsort()]  # per RAS axis
    if axis == "auto":
        axis = 2 if np.isclose(canon.max(), canon[2]) else int(canon.argmax())
    axis = int(axis)
    array_axes = [int(np.flatnonzero(to_canonical[:, 0] == c)[0]) for c in range(3) if c != axis]
    return axis, array_axes, [float(zooms[i]) for i in array_axes]


def mm(spacing) -> str:
    """In-plane spacing as text: '0.9 x 1.1 mm'."""
    return " x ".join(f"{v:.3g}" for v in spacing) + " mm"


@dataclass
class Resampling:
    """A volume's slice plane resampled to the training spacing, and the way back to its own grid."""

    shape: tuple[int, ...]  # the input's grid
    new_shape: tuple[int, ...]  # the resampled grid
    affine: np.ndarray  # the resampled grid's affine (for the per-volume steps)
    spacing: list[float]  # in-plane spacing of the input (mm)
    new_spacing: list[float]  # in-plane spacing after resampling (mm; the training spacing up to rounding)

    def back(self, volume: np.ndarray) -> np.ndarray:
        """A volume on the resampled grid -> the input's grid (linear)."""
        return resize(volume, self.shape)


def resize(volume: np.ndarray, shape) -> np.ndarray:
    """Trilinear resize of (X, Y, Z) to `shape` (align_corners=False: an unchanged axis is copied exactly)."""
    import torch
    import torch.nn.functional as F

    if tuple(volume.shape) == tuple(shape):
        return volume
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]  # (1, 1, X, Y, Z)
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def plan(shape, affine: np.ndarray, axis, target: list[float]) -> Resampling | None:
    """How to resample a volume's slice plane to `target` spacing; None when it already has it."""
    _, array_axes, spacing = slice_plane(affine, axis)
    if all(abs(s / t - 1) <= _EXACT for s, t in zip(spacing, target)):
        return None
    new_shape = list(shape)
    scale = np.eye(4)
    for i, s, t in zip(array_axes, spacing, target):
        new_shape[i] = max(1, int(round(shape[i] * s / t)))
        r = shape[i] / new_shape[i]  # old voxels per new voxel
        scale[i, i], scale[i, 3] = r, 0.5 * (r - 1)  # align_corners=False: new j sits at old (j + 0.5) r - 0.5
    new_spacing = [s * shape[i] / new_shape[i] for i, s in zip(array_axes, spacing)]
    return Resampling(tuple(int(n) for n in shape), tuple(new_shape), np.asarray(affine, float) @ scale, spacing,
                      new_spacing)


def training_spacing(volumes_meta: dict, split: str = "train") -> list[float] | None:
    """The median in-plane spacing of a prepared folder's `split` volumes (all volumes when it has none)."""
    rows = [v["spacing"] for v in volumes_meta.values() if v.get("split") == split and v.get("spacing")]
    rows = rows or [v["spacing"] for v in volumes_meta.values() if v.get("spacing")]
    return [float(x) for x in np.median(np.asarray(rows, dtype=float), axis=0)] if rows else None
