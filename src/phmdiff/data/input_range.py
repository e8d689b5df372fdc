"""The guard between training and use: the normalized input statistics a run was trained on, and a new input's.

Prepare records, per volume and modality, its foreground in model units (`volume.normalized_stats`: the share of
the volume, the 0.5 / 50 / 99.5 percentiles). A run keeps their range over its training subjects
(`training_ranges`, in the run plan); translate compares each input's (`outside_range`) and says, per subject,
which statistic lies outside, so a scan from another scanner, an unstripped head or a z-scored volume is
translated with a sentence instead of silently. The model extrapolates there; it may still be right.
"""

from __future__ import annotations

import numpy as np

STATS = ("fraction", "p0.5", "median", "p99.5")
# The statistics an input is checked on: its low percentile sits at the foreground threshold, so it follows that
# rule more than the scan (a real subject's 0.075 against 0.11-0.13 for two others of the same kind).
CHECKED = ("fraction", "median", "p99.5")
# A statistic is outside when it lies beyond the training range by more than this margin: half the range's width,
# at least 10 % of its magnitude and 0.02 (a range of two training subjects is narrow by chance).
MARGIN_OF_WIDTH, MARGIN_OF_SIZE, MARGIN_MIN = 0.5, 0.1, 0.02
NAMES = {"fraction": "foreground share", "p0.5": "0.5th percentile", "median": "median", "p99.5": "99.5th percentile"}


def training_ranges(manifest: dict, split: str = "train") -> dict[str, dict[str, list[float]]]:
    """Per modality and statistic, [min, max] over the split's volumes; {} when a volume records no statistics
    (prepared before they were recorded: nothing to compare against)."""
    volumes = [v for v in manifest.get("volumes", {}).values() if v.get("split") == split]
    if not volumes or not all(v.get("stats") for v in volumes):
        return {}
    out: dict[str, dict[str, list[float]]] = {}
    for mod in volumes[0]["stats"]:
        rows = [v["stats"][mod] for v in volumes if mod in v["stats"]]
        out[mod] = {k: [float(min(r[k] for r in rows)), float(max(r[k] for r in rows))] for k in STATS}
    return out


def margin(lo: float, hi: float) -> float:
    return max(MARGIN_OF_WIDTH * (hi - lo), MARGIN_OF_SIZE * max(abs(lo), abs(hi)), MARGIN_MIN)


def outside_range(stats: dict[str, dict[str, float]], ranges: dict) -> list[dict]:
    """Each checked statistic of `stats` (one input's, per modality) beyond its training range plus `margin`."""
    found = []
    for mod, row in stats.items():
        for key in CHECKED:
            if key not in ranges.get(mod, {}) or key not in row:
                continue
            lo, hi = ranges[mod][key]
            value, m = float(row[key]), margin(lo, hi)
            if np.isfinite(value) and (value < lo - m or value > hi + m):
                found.append({"modality": mod, "statistic": key, "value": value, "training": [lo, hi]})
    return found


def range_sentence(name: str, found: list[dict]) -> str:
    """One sentence for an input whose normalized statistics lie outside the training range."""
    shown = "; ".join(f"{f['modality']} {NAMES[f['statistic']]} {_fmt(f)} (trained on {_fmt(f, f['training'])})"
                      for f in found[:4])
    more = f"; and {len(found) - 4} more" if len(found) > 4 else ""
    return (f"translate: warning: {name}: its normalized inputs lie outside what the run was trained on ({shown}"
            f"{more}): the model extrapolates, so check this subject's intensities (phmdiff plan shows them).")


def _fmt(f: dict, value=None) -> str:
    pct = f["statistic"] == "fraction"
    if value is None:
        return f"{100 * f['value']:.1f} %" if pct else f"{f['value']:.3g}"
    lo, hi = value
    return f"{100 * lo:.1f}-{100 * hi:.1f} %" if pct else f"{lo:.3g}-{hi:.3g}"
