"""One figure per held-out subject of real_mri.py: T1 | T2 | real FLAIR | synthesized | error | std.

The axial slice is the one with the largest lesion area (segmentation, or the FLAIR-hyperintensity region where
there is none; the caption says which), shown in the RAS orientation whatever the file's (anterior up, the
subject's left on the left: the neurological view). Every image is in its own scale-free [0, 1] units (its own
0.5 / 99.5 foreground percentiles, the `scalefree` protocol's); the error is |synthesized - real| in those units
and the std is the samples' per-voxel standard deviation over the real FLAIR's percentile range, both shown inside
the reference's foreground (the scored region) only; the view is cropped to it. The lesion region is outlined in
red.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The volume's voxel axes reordered and flipped to RAS."""
    import nibabel as nib

    return nib.orientations.apply_orientation(volume, nib.orientations.io_orientation(affine))


def lesion_slice(region: np.ndarray, mask: np.ndarray) -> int:
    """The axial (RAS last axis) index with the largest region area, else the one with the most foreground."""
    area = region.reshape(-1, region.shape[-1]).sum(0)
    if area.max() == 0:
        area = mask.reshape(-1, mask.shape[-1]).sum(0)
    return int(np.argmax(area))


def draw_panel(path: Path, images: dict, affine: np.ndarray, mask: np.ndarray, region: np.ndarray, title: str,
               region_name: str) -> Path:
    """Write the panel PNG; `images`: T1, T2, real FLAIR, synthesized and (optional) std, whole volumes on the
    reference's grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phmdiff.eval.protocols import own_scale
    from phmdiff.fsutil import atomic_path

    ras = {k: to_ras(np.asarray(v, dtype=np.float64), affine) for k, v in images.items()}
    mask, region = to_ras(mask, affine).astype(bool), to_ras(region, affine).astype(bool)
    k = lesion_slice(region, mask)
    view = {name: own_scale(v, mask)[0] for name, v in ras.items() if name != "std"}
    ref = ras["real FLAIR"]
    lo, hi = np.percentile(ref[mask], (0.5, 99.5))
    error = np.where(mask, np.abs(view["synthesized"] - view["real FLAIR"]), 0.0)
    std = np.where(mask, ras["std"], 0.0) / max(float(hi - lo), 1e-12) if "std" in ras else None
    panels = [*((n, view[n], "gray", 1.0) for n in ("T1", "T2", "real FLAIR", "synthesized")),
              ("|error| (scale-free)", error, "magma", 0.5)]
    if std is not None:
        panels.append(("std of samples", std, "viridis", max(float(np.percentile(std[mask], 99.5)), 1e-6)))
    rows, cols = np.nonzero(np.rot90(mask[:, :, k]))
    crop = (slice(max(rows.min() - 4, 0), rows.max() + 5), slice(max(cols.min() - 4, 0), cols.max() + 5))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.8))
    for ax, (name, vol, cmap, vmax) in zip(axes, panels):
        plane = np.rot90(vol[:, :, k])[crop]  # (A, R) with anterior up, cropped to the foreground
        ax.imshow(plane, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        if name in ("real FLAIR", "synthesized") and region[:, :, k].any():
            ax.contour(np.rot90(region[:, :, k])[crop].astype(float), levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}; axial slice {k}; red: {region_name}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
