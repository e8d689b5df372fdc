"""The copy-the-source baseline, region by region, and where the prediction scores below it.

A synthesized target has to beat the simplest answer: a source image copied and intensity-matched to the
reference (`protocols.matched_copy`). Which source is the hardest to beat depends on the region: T1 may match a
whole FLAIR best while T2 carries its bright edema. So each region has its own baseline source: for every
protocol, the source whose copy scores best in that region on average over the subjects. Regions: the whole
image (PSNR), the lesion (whole tumour, lesion PSNR) and each BraTS tumour label present (necrosis, edema,
enhancing: PSNR inside the label, the volume protocol's normalization). Every other baseline metric follows its
region's source (SSIM, MAE, ... the image's; lesion MAE and tumour SSIM the lesion's).

`below_baseline` lists, in words, every protocol and region where the prediction's mean scores below its
baseline's; `evaluate` prints it and `report` shows it.
"""

from __future__ import annotations

import math

import numpy as np

from phmdiff.eval import metrics as M
from phmdiff.eval.pathology import TUMOUR_LABELS
from phmdiff.eval.protocols import foreground_mask, normalize_pair

# region -> the metric (higher is better) that picks its source and is compared with the prediction's
REGIONS = {"image": "psnr", "lesion": "lesion_psnr", **{name: f"{name}_psnr" for name in TUMOUR_LABELS}}
REGION_TITLES = {"image": "whole image", "lesion": "lesion (whole tumour)", "necrosis": "necrosis (NCR)",
                 "edema": "edema (ED)", "enhancing": "enhancing tumour (ET)"}
# other baseline metrics and the region whose source they follow
FOLLOWS = {"lesion_mae": "lesion", "ssim_tumour": "lesion"}
LABEL_METRICS = tuple(f"{name}_psnr" for name in TUMOUR_LABELS)


def label_psnrs(pred, ref, mask, seg, modality: str = "mr") -> dict[str, float]:
    """PSNR inside each tumour label present in `seg`, both images in the reference's [0, 1] units (the volume
    protocol's normalization, data range 1); {} without a segmentation."""
    if seg is None:
        return {}
    region = foreground_mask(ref, modality) if mask is None else mask
    pred_n, ref_n, _ = normalize_pair(pred, ref, region, modality)
    seg = np.rint(np.asarray(seg)).astype(np.int64)
    out = {}
    for name, values in TUMOUR_LABELS.items():
        inside = np.isin(seg, values)
        if inside.any():
            out[f"{name}_psnr"] = M.psnr(pred_n, ref_n, 1.0, inside)
    return out


def _mean(values) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else -math.inf


def choose_sources(scores: list[dict[str, dict]]) -> dict[str, str]:
    """For one protocol: region -> the source whose copy scores best there on average over the subjects.
    `scores[i][source][metric]`: subject i's copy of `source` scored as a prediction; a region no copy scores
    (no segmentation, label absent) is left out."""
    sources = sorted({name for subject in scores for name in subject})
    chosen = {}
    for region, metric in REGIONS.items():
        means = {name: _mean([subject[name].get(metric) for subject in scores if name in subject])
                 for name in sources}
        best = max(means, key=lambda name: means[name], default=None)
        if best is not None and means[best] > -math.inf:
            chosen[region] = best
    return chosen


def baseline_row(scores: dict[str, dict], chosen: dict[str, str], metrics) -> dict:
    """One subject's baseline columns: each metric from its region's chosen source, and the source per region."""
    row = {}
    for metric in metrics:
        region = next((r for r, m in REGIONS.items() if m == metric), FOLLOWS.get(metric, "image"))
        source = chosen.get(region)
        if source in scores and metric in scores[source]:
            row[f"baseline_{metric}"] = scores[source][metric]
    row.update({f"baseline_source_{region}": source for region, source in chosen.items()})
    if "image" in chosen:
        row["baseline_source"] = chosen["image"]
    return row


def below_baseline(summary: dict, sources: dict[str, dict[str, str]]) -> list[dict]:
    """Every protocol and region whose prediction mean is below its baseline's mean, each with a sentence.
    `summary[protocol]`: the summary statistics; `sources[protocol]`: region -> chosen source."""
    flags = []
    for protocol, stats in summary.items():
        for region, metric in REGIONS.items():
            pred, base = stats.get(metric), stats.get(f"baseline_{metric}")
            if not pred or not base or pred.get("mean") is None or base.get("mean") is None:
                continue
            if pred["mean"] < base["mean"]:
                source = sources.get(protocol, {}).get(region, "a source")
                flags.append({
                    "protocol": protocol, "region": region, "metric": metric, "source": source,
                    "prediction": pred["mean"], "baseline": base["mean"],
                    "sentence": (f"{protocol} protocol, {REGION_TITLES[region]}: the prediction scores "
                                 f"{pred['mean']:.2f} dB, below the intensity-matched copy of {source} "
                                 f"({base['mean']:.2f} dB, {pred['mean'] - base['mean']:+.2f} dB).")})
    return flags


def subject_below(row: dict) -> str:
    """The regions where one subject's prediction scores below its baseline, as 'image lesion' ('' for none)."""
    return " ".join(region for region, metric in REGIONS.items()
                    if isinstance(row.get(metric), float) and isinstance(row.get(f"baseline_{metric}"), float)
                    and row[metric] < row[f"baseline_{metric}"])
