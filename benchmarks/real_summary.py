"""real_mri.py's summary: per protocol each method's means over folds and seeds and per fold, the paired
differences of PHMDiff's n-sample mean against every other method and the best U-Net (`stats.compare`, keys
(subject, seed), folds resampled), and issue 35's targets, per fold and on the intervals."""

from __future__ import annotations

import numpy as np
import real_scoring
import stats

# issue 35's targets for PHMDiff's n-sample mean, per held-out fold (scale-free) and against the best U-Net
FOLD_TARGETS = {"psnr": 20.0, "lesion_psnr": 16.0, "edema_ratio": (0.85, 1.15), "volume_within_db": 2.0}
PAIR_TARGETS = {("scalefree", "psnr"): 0.3, ("scalefree", "lesion_psnr"): 0.0}
METRICS = ("psnr", "ssim", "mae", "lesion_psnr", "edema_ratio", "hyper_psnr", "hyper_ratio")
COMPARED = ("psnr", "lesion_psnr", "edema_ratio", "hyper_psnr")
UNETS = ("unet_l1", "unet_l2")


def _keyed(rows, method: str, protocol: str, key: str) -> dict:
    return {(r["subject"], r["seed"]): r[key] for r in rows if r["method"] == method and r["protocol"] == protocol
            and key in r and np.isfinite(r[key])}


def summarise(rows: list[dict], ours: str) -> dict:
    """Per protocol: each method's means (over folds and seeds) and per-fold means; paired differences of PHMDiff's
    mean against every other method and the best U-Net, with issue 35's targets; per-fold target checks."""
    out = {}
    for protocol in real_scoring.PROTOCOLS:
        pr = [r for r in rows if r["protocol"] == protocol]
        methods = {}
        for m in dict.fromkeys(r["method"] for r in pr):
            mr = [r for r in pr if r["method"] == m]
            means = {k: float(np.mean(v)) for k in METRICS if (v := [r[k] for r in mr if k in r and np.isfinite(r[k])])}
            folds = {f: {k: float(np.mean(v)) for k in METRICS
                         if (v := [r[k] for r in mr if r["fold"] == f and k in r and np.isfinite(r[k])])}
                     for f in dict.fromkeys(r["fold"] for r in mr)}
            methods[m] = {**means, "per_fold": folds, "n_seeds": len({r["seed"] for r in mr}), "n_folds": len(folds)}
        unets = [u for u in UNETS if u in methods]
        best = max(unets, key=lambda u: methods[u]["psnr"]) if unets else None
        comparisons = {}
        if ours in methods:
            others = [m for m in methods if m not in (ours, "ceiling")]
            for other in [*others, *(["best_unet"] if best else [])]:
                comp = {}
                for k in COMPARED:
                    a, b = _keyed(pr, ours, protocol, k), _keyed(pr, best if other == "best_unet" else other,
                                                                 protocol, k)
                    shared = set(a) & set(b)
                    if shared:
                        target = PAIR_TARGETS.get((protocol, k)) if other == "best_unet" else None
                        comp[k] = stats.compare({x: a[x] for x in shared}, {x: b[x] for x in shared}, target=target)
                comparisons[other] = comp
        out[protocol] = {"methods": methods, "best_unet": best, "comparisons": comparisons}
    out["fold_targets"] = fold_targets(out, ours)
    return out


def fold_targets(summary: dict, ours: str) -> dict:
    """issue 35's per-fold targets for PHMDiff's mean: scale-free PSNR, lesion PSNR, edema ratio, and the volume
    protocol's PSNR within 2 dB of the scale-free one."""
    sf = summary["scalefree"]["methods"].get(ours, {}).get("per_fold", {})
    vol = summary["volume"]["methods"].get(ours, {}).get("per_fold", {})
    t, out = FOLD_TARGETS, {}
    for f, v in sf.items():
        lo, hi = t["edema_ratio"]
        checks = {"psnr": {"value": v["psnr"], "target": f">= {t['psnr']:g}", "met": v["psnr"] >= t["psnr"]}}
        if "lesion_psnr" in v:
            checks["lesion_psnr"] = {"value": v["lesion_psnr"], "target": f">= {t['lesion_psnr']:g}",
                                     "met": v["lesion_psnr"] >= t["lesion_psnr"]}
        if "edema_ratio" in v:
            checks["edema_ratio"] = {"value": v["edema_ratio"], "target": f"{lo:g}-{hi:g}",
                                     "met": lo <= v["edema_ratio"] <= hi}
        if f in vol:
            gap = v["psnr"] - vol[f]["psnr"]
            checks["volume_gap"] = {"value": gap, "target": f"<= {t['volume_within_db']:g} dB",
                                    "met": abs(gap) <= t["volume_within_db"]}
        out[f] = checks
    return out
