"""Segmentations as they enter: whole-number labels in a small range, checked before anything is allocated per
label. A crafted segmentation with 16 K distinct labels once took 5 GB before failing; an all-Inf one was
scored as if every voxel were tumour."""

from __future__ import annotations

import numpy as np

MAX_LABELS = 16  # tumour labels one segmentation may hold (BraTS has 3): segcheck makes one network output each
MAX_LABEL = 255  # the largest label value (uint8 label maps)


def check_labels(raw: np.ndarray, path) -> np.ndarray:
    """A segmentation as whole-number labels 0..MAX_LABEL with at most MAX_LABELS tumour labels, checked before
    any per-label array or network output is allocated (16 K labels once took 5 GB before failing)."""
    finite = np.isfinite(raw)
    if not finite.all():
        raise ValueError(f"{path}: segmentation has {int(raw.size - np.count_nonzero(finite))} NaN or Inf voxels; "
                         "expected whole-number labels.")
    if raw.size and (raw.min() < 0 or raw.max() > MAX_LABEL):
        raise ValueError(f"{path}: segmentation labels run from {raw.min():g} to {raw.max():g}; expected whole "
                         f"numbers from 0 to {MAX_LABEL}.")
    seg = np.rint(raw).astype(np.int64)
    counts = np.bincount(seg.ravel(), minlength=1)  # at most MAX_LABEL + 1 bins: bounded by the check above
    n_labels = int(np.count_nonzero(counts[1:]))
    if n_labels > MAX_LABELS:
        raise ValueError(f"{path}: segmentation holds {n_labels} distinct labels; expected at most {MAX_LABELS} "
                         "tumour labels (BraTS: 1, 2, 4 or 3).")
    return seg
