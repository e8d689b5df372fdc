"""Intensity conventions shared by prepare, translate and evaluate: the CT window, the foreground rules.

One place, so that a slice prepared for training, a translated volume and the reference it is scored against
agree on what HU window maps to [0, 1] and which voxels are body or brain.
"""

from __future__ import annotations

import numpy as np

CT_WINDOW = (-1024.0, 3071.0)  # HU mapped to [0, 1]: air to the 12-bit scanner maximum
CT_FOREGROUND_HU = -500.0  # body voxels of a CT: denser than half-way from air to water
MR_FOREGROUND_FRACTION = 0.1  # brain/body voxels of an MR: above 10 % of the bright end of the intensity range
MR_PERCENTILES = (0.5, 99.5)  # MR scale for scoring: these percentiles of the reference's foreground map to 0, 1


def foreground(v: np.ndarray, is_ct: bool) -> np.ndarray:
    """Body/brain voxels of a raw volume: above CT_FOREGROUND_HU for CT; for MR above MR_FOREGROUND_FRACTION of
    the way from the minimum to the 99th percentile (robust to a few hot voxels and to a non-zero background)."""
    if is_ct:
        return v > CT_FOREGROUND_HU
    lo = float(v.min())
    return v > lo + MR_FOREGROUND_FRACTION * (float(np.percentile(v, 99)) - lo)
