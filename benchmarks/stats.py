"""Paired comparisons that can tell: differences per (subject, seed), a seeded percentile bootstrap interval of
their mean, and the verdict a table prints.

Two methods scored on the same held-out subjects with the same training seeds give one difference per
(subject, seed). Subjects differ far more than the methods (the phantom's subjects spread by about 1 dB), so
the pairs, not the two means, carry the comparison. The interval resamples *subjects* (each with all its
seeds), the units that were drawn at random, unless `groups` is None, when every difference is its own unit
(Efron & Tibshirani 1993, ch. 13: the percentile interval). A difference whose interval holds 0 is "not
resolved"; a target "difference >= t" counts as met only when the interval's lower end clears t.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 10_000


def paired_differences(a: Mapping[tuple, float], b: Mapping[tuple, float]) -> tuple[np.ndarray, list]:
    """a - b per shared key (subject, seed), in sorted key order, and those keys; both must hold the same keys."""
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b), key=str)[:4]
        raise ValueError(f"paired scores must cover the same (subject, seed) pairs; these are in one only: {missing}.")
    if not a:
        raise ValueError("paired scores are empty; expected at least one (subject, seed) pair.")
    keys = sorted(a, key=str)
    return np.array([float(a[k]) - float(b[k]) for k in keys]), keys


def bootstrap_ci(values, groups: Sequence[Hashable] | None = None, level: float = LEVEL, n_boot: int = N_BOOT,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole groups (e.g. subjects) when given.

    Seeded, so a table is reproducible. A single group (or a single value) says nothing about the spread
    between groups: its interval is (-inf, inf), so it never reads as resolved.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"bootstrap needs finite values, got {values.size} values with non-finite ones among them.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level} is not valid; expected a fraction between 0 and 1.")
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        if len(groups) != values.size:
            raise ValueError(f"{len(groups)} group labels for {values.size} values; expected one label per value.")
        _, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        sums, counts = np.bincount(index, weights=values), np.bincount(index).astype(np.float64)
    if sums.size == 1:
        return -math.inf, math.inf
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, sums.size, size=(n_boot, sums.size))  # (n_boot, n_groups)
    means = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def verdict(ci: tuple[float, float]) -> str:
    """"resolved" when the interval excludes 0, else "not resolved"."""
    return "resolved" if ci[0] > 0.0 or ci[1] < 0.0 else "not resolved"


def target_met(ci: tuple[float, float], target: float) -> bool:
    """A target "difference >= target" is met only when the whole interval clears it."""
    return bool(ci[0] >= target)


def compare(a: Mapping[tuple, float], b: Mapping[tuple, float], target: float | None = None,
            level: float = LEVEL, seed: int = 0) -> dict:
    """Mean paired difference a - b over (subject, seed) keys, its subject-bootstrap interval, verdict and target.

    Keys are (subject, seed) tuples; the first element is the resampled group. Non-finite pairs (a PSNR of inf
    from an exact copy, a NaN ratio) are dropped and counted.
    """
    diffs, keys = paired_differences(a, b)
    finite = np.isfinite(diffs)
    diffs, keys = diffs[finite], [k for k, f in zip(keys, finite) if f]
    out = {"n_pairs": int(diffs.size), "n_dropped": int((~finite).sum()), "level": level}
    if diffs.size == 0:
        return {**out, "mean": math.nan, "ci": [math.nan, math.nan], "verdict": "not resolved",
                **({"target": target, "target_met": False} if target is not None else {})}
    groups = [k[0] if isinstance(k, tuple) else k for k in keys]
    ci = bootstrap_ci(diffs, groups, level=level, seed=seed)
    out.update({"mean": float(diffs.mean()), "ci": [ci[0], ci[1]], "verdict": verdict(ci),
                "n_subjects": len(set(map(str, groups)))})
    if target is not None:
        out.update({"target": target, "target_met": target_met(ci, target)})
    return out


def describe(c: dict, unit: str = "dB") -> str:
    """One line: '+0.14 dB [-0.30, +0.52] not resolved (target >= +0.30: missed)'."""
    text = f"{c['mean']:+.2f} {unit} [{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}] {c['verdict']}"
    if "target" in c:
        text += f" (target >= {c['target']:+.2f}: {'met' if c['target_met'] else 'missed'})"
    return text
