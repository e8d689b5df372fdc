"""The std calibration's guard: a factor no sound fit gives is refused, said, and never applied.

Validation (`training.loop.validate`) fits `std_scale` = RMS error of the samples' mean / RMS of their std over
the validation slices' foreground; translate multiplies the std volume it writes by it, so that the reported
uncertainty matches the error seen on validation. That is a fit of one number, and it can be absurd: on real
scans whose intensities were broken (a zero background taken for brain, a median normalization fallen back to a
scale of 1) a run fitted 368.5 and printed it as any other, and translate would have written a std volume 368.5
times the samples' spread. An error that far from the spread is a bias (an intensity scale gone wrong, a target
the sources cannot predict), not an uncertainty that any multiple of a std describes; the guard refuses it, the
training log and translate say so in a sentence, and the std volume stays the samples' own spread.

The plausible range, STD_SCALE_RANGE = [0.1, 30], both ends included:
- 30 above: the measured factors are 2.4 (the demo, docs/benchmarks.md) and 3.5 (the raw spread against the
  error on the phantom); a diffusion model sampled in few steps is under-dispersed by a small factor, not by
  tens. 30 leaves almost an order of magnitude above the largest factor seen; 368.5 is two.
- 0.1 below: for samples drawn from the true posterior the error of their n-sample mean is about their std
  (sqrt(1 + 1/n) times), a factor near 1. A factor of 0.1 means samples scattering ten times farther than their
  mean errs: noise left in every sample, or a validation set the fit cannot speak for (a handful of empty
  slices); an order of magnitude from 1 on that side too.
"""

from __future__ import annotations

import math

STD_SCALE_RANGE = (0.1, 30.0)  # factors outside are refused (see the module docstring for the bounds)
WHY_REFUSED = ("a validation error that far from the samples' spread is a bias, such as an intensity scale gone "
               "wrong, not an uncertainty that a multiple of the std describes")


def std_scale_refusal(factor) -> str | None:
    """None when `factor` may calibrate the std volume; else why not, as a clause ("factor 368.5 outside
    [0.1, 30]")."""
    lo, hi = STD_SCALE_RANGE
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        return f"factor {factor!r} is not a positive finite number"
    if not lo <= factor <= hi:
        return f"factor {factor:.4g} outside [{lo:g}, {hi:g}]"
    return None


def recorded_std_scale(val) -> tuple[float | None, float | None]:
    """(the factor to apply, the factor refused) from a checkpoint's recorded validation: (None, None) when it
    records no calibration; a factor outside the range, or one the run recorded as not trusted, is refused (a run
    trained before the guard records 368.5 without a flag)."""
    factor = val.get("std_scale") if isinstance(val, dict) else None
    if factor is None:
        return None, None
    if std_scale_refusal(factor) is not None or val.get("std_scale_trusted") is False:
        return None, float(factor) if isinstance(factor, (int, float)) else math.nan
    return float(factor), None
