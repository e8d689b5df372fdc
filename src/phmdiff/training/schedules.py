"""Training schedules: the mask-ratio schedules of MaskDiT, the EDM learning-rate ramp-up and a final cool-down."""

from __future__ import annotations

import math
from collections.abc import Callable

MASK_RATIO_FNS = ("constant", "linear", "exp", "cosine2", "cosine3", "cosine4", "cosine5", "cosine6")


def get_mask_ratio_fn(
    name: str = "constant", ratio_scale: float = 0.5, ratio_min: float = 0.0
) -> Callable[[float], float]:
    """Mask ratio as a function of training progress x in [0, 1] (MaskDiT, Zheng et al. 2023).

    `constant` keeps `ratio_scale`; `linear` rises from `ratio_min` to `ratio_scale`; `exp` and
    `cosineK` fall from `ratio_scale` towards `ratio_min` (exp(-7x) and cos(pi x / 2)^K).
    """
    span = ratio_scale - ratio_min
    if name == "constant":
        return lambda x: ratio_scale
    if name == "linear":
        return lambda x: span * x + ratio_min
    if name == "exp":
        return lambda x: span * math.exp(-7.0 * x) + ratio_min
    if name.startswith("cosine") and name[len("cosine") :] in ("2", "3", "4", "5", "6"):
        power = int(name[len("cosine") :])
        return lambda x: span * math.cos(math.pi * x / 2) ** power + ratio_min
    raise ValueError(f"mask ratio schedule {name!r} is unknown; expected one of {', '.join(MASK_RATIO_FNS)}.")


def mask_ratio_at(
    step: int,
    max_num_steps: int,
    unmasked_finetune_steps: int = 0,
    name: str = "constant",
    ratio_scale: float = 0.5,
    ratio_min: float = 0.0,
) -> float:
    """The mask ratio at `step`: the schedule over the masked phase, then 0 for the unmasked fine-tune.

    MaskDiT ends with a short phase without masking so the model sees whole token sets, as at inference.
    """
    masked_steps = max(max_num_steps - unmasked_finetune_steps, 0)
    if step >= masked_steps:
        return 0.0
    progress = step / max(masked_steps, 1)
    return float(min(max(get_mask_ratio_fn(name, ratio_scale, ratio_min)(progress), 0.0), 1.0))


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
