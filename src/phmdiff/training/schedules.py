"""Training schedules: the EDM learning-rate ramp-up and a final cool-down (the mask ratio's: `phmdiff.mask_ratio`)."""

from __future__ import annotations

import math

from phmdiff.mask_ratio import MASK_RATIO_FNS, get_mask_ratio_fn, mask_ratio_at  # noqa: F401 - their home


def cooldown_steps(max_num_steps: int, lr_cooldown: float) -> int:
    """How many of the last steps the learning-rate cool-down spans (0: none)."""
    return math.ceil(lr_cooldown * max_num_steps)


def lr_at(step: int, batchsize: int, lr: float, lr_rampup_kimg: float, max_num_steps: int = 0,
          lr_cooldown: float = 0.0) -> float:
    """Learning rate at `step`: EDM's linear ramp-up over the first `lr_rampup_kimg` thousand images, and over
    the last `lr_cooldown` share of `max_num_steps` a linear fall towards zero (the last step trains at lr / n
    for an n-step cool-down), which the EMA alone does not replace at a constant high rate."""
    factor = 1.0
    if lr_rampup_kimg > 0:
        factor = min(step * batchsize / (lr_rampup_kimg * 1000), 1.0)
    cool = cooldown_steps(max_num_steps, lr_cooldown)
    if cool > 0:
        factor *= min((max_num_steps - step) / cool, 1.0)
    return lr * factor
