"""MaskDiT's mask-ratio schedules (Zheng et al. 2023): the one home of their names and formulas.

Torch-free and outside the training package, so the config can check `model.mask_ratio_fn` against the same
table the training loop calls without importing training code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# name -> the schedule's shape f(x) in [0, 1] over training progress x in [0, 1]; the ratio is min + span * f(x).
MASK_RATIO_SHAPES: dict[str, Callable[[float], float] | None] = {
    "constant": None,  # the ratio itself, whatever the minimum
    "linear": lambda x: x,
    "exp": lambda x: math.exp(-7.0 * x),
    **{f"cosine{k}": (lambda x, k=k: math.cos(math.pi * x / 2) ** k) for k in (2, 3, 4, 5, 6)},
}
MASK_RATIO_FNS = tuple(MASK_RATIO_SHAPES)


def get_mask_ratio_fn(
    name: str = "constant", ratio_scale: float = 0.5, ratio_min: float = 0.0
) -> Callable[[float], float]:
    """Mask ratio as a function of training progress x in [0, 1] (MaskDiT, Zheng et al. 2023).

    `constant` keeps `ratio_scale`; `linear` rises from `ratio_min` to `ratio_scale`; `exp` and
    `cosineK` fall from `ratio_scale` towards `ratio_min` (exp(-7x) and cos(pi x / 2)^K).
    """
    if name not in MASK_RATIO_SHAPES:
        raise ValueError(f"mask ratio schedule {name!r} is unknown; expected one of {', '.join(MASK_RATIO_FNS)}.")
    shape = MASK_RATIO_SHAPES[name]
    if shape is None:
        return lambda x: ratio_scale
    span = ratio_scale - ratio_min
    return lambda x: span * shape(x) + ratio_min


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
