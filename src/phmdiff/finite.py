"""Finiteness where weights and numbers enter from files: a NaN, an overflow-sized or a boolean weight, or a
NaN intensity scale, would otherwise turn every prediction into NaN and still exit 0."""

from __future__ import annotations

import math

import torch

# Trained weights and buffers of these networks stay far below this; 1e38 in a float32 weight overflows
# the first matmul. The bound is loose on purpose: it catches corruption, not unusual training.
MAX_ABS_WEIGHT = 1e12


def check_weights(tensors: dict, source) -> None:
    """Every tensor of a state dict is floating point (not integer, bool or complex), finite and below
    MAX_ABS_WEIGHT: an integer weight would be cast silently into the float model."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if not t.is_floating_point():
            if name.endswith("num_batches_tracked") and t.dtype == torch.int64 and t.numel() == 1:
                continue  # torch's own integer counter of a batch norm, the one integer a state dict may hold
            raise ValueError(f"{source}: weight {name} has dtype {t.dtype}; expected floating-point numbers.")
        if t.numel() == 0:
            continue
        values = t.detach().float()
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise ValueError(f"{source}: weight {name} has {bad} NaN or Inf values; the file is damaged.")
        peak = float(values.abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise ValueError(f"{source}: weight {name} reaches {peak:.3g}, beyond {MAX_ABS_WEIGHT:g}; "
                             "the file is damaged or crafted.")


def check_finite_numbers(value, what: str, source) -> None:
    """Every number in a JSON-like value (dict, list, float) is finite; bools and strings are not numbers."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite_numbers(v, f"{what}.{k}", source)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite_numbers(v, f"{what}[{i}]", source)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, (int, float)) and not math.isfinite(value):
        raise ValueError(f"{source}: {what} is {value}; expected a finite number.")
