"""What quality.py and ablation.py measure on one predicted volume, the same for every method.

- the volume protocol (`phmdiff.eval.protocols`, PSNR / SSIM / MAE on the reference's [0, 1] units, lesion PSNR);
- pathology (`phmdiff.eval.pathology`): the mean-intensity ratio prediction / truth per BraTS label and per
  healthy tissue (the phantom's tissue map, rebuilt from the subject's seed in phantom.json);
- whole-tumour Dice of a segmentation network (`phmdiff.eval.segcheck`'s, trained once per task on the training
  subjects' real images) run on the sources + the prediction, beside its Dice on the real target;
- single-sample realism: MS-SWD of the predicted slices against the real target slices of the same subjects.

The through-plane filter (`consistency.joint_bilateral_z`, translate's default sigma and h) is applied here, by
the benchmark, to every method's prediction alike, guided by the sources in their own foreground percentile
units; each method is scored with it and without it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

SLICE_AXIS = -1  # the phantoms' slices are axial, the last array axis


def load(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)


def z_filter(pred: np.ndarray, sources: list[np.ndarray], sigma: float, h: float) -> np.ndarray:
    """translate's through-plane joint bilateral filter on a whole volume, guided by the source volumes."""
    from phmdiff.consistency import joint_bilateral_z
    from phmdiff.eval.segcheck import normalize

    if sigma <= 0:
        return pred
    guide = np.stack([np.moveaxis(normalize(s), SLICE_AXIS, 0) for s in sources], axis=1)  # (n, C, X, Y)
    p = np.moveaxis(pred, SLICE_AXIS, 0)  # (n, X, Y)
    out = joint_bilateral_z(p, guide, np.arange(p.shape[0]), sigma, h)
    return np.moveaxis(out, 0, SLICE_AXIS)


@lru_cache(maxsize=64)
def tissue_map(phantom_root: str, subject: str) -> np.ndarray | None:
    """The brain phantom's tissue labels of one subject, rebuilt from its seed (None for other data)."""
    meta_path = Path(phantom_root) / "phantom.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    seeds = {s["id"]: s["seed"] for s in meta.get("subjects", [])}
    if meta.get("kind") != "brain" or subject not in seeds:
        return None
    from phmdiff.data.phantom_brain import brain_anatomy

    labels, _ = brain_anatomy(seeds[subject], tuple(meta["shape"]), tumour=meta.get("tumour", True))
    return labels


def score_volume(pred: np.ndarray, ref: np.ndarray, modality: str, seg: np.ndarray | None = None,
                 tissue: np.ndarray | None = None) -> dict:
    """Volume-protocol metrics, lesion PSNR and the per-label intensity ratios of one prediction."""
    from phmdiff.eval.pathology import label_intensity_ratios
    from phmdiff.eval.protocols import evaluate_subject, foreground_mask

    r = evaluate_subject(pred, ref, seg=seg, protocol="volume", modality=modality)
    out = {k: r[k] for k in ("psnr", "ssim", "mae") if k in r}
    if seg is not None and (seg > 0).any():
        out["lesion_psnr"] = r["lesion_psnr"]
        lo, hi = r["norm_low"], r["norm_high"]
        if modality != "ct":  # ratios of [0, 1] MR units; CT's HU offset makes a ratio meaningless
            ratios = label_intensity_ratios((pred - lo) / (hi - lo), (ref - lo) / (hi - lo), seg,
                                            mask=foreground_mask(ref, modality), tissue=tissue)
            out.update({f"ratio_{k}": v for k, v in ratios.items()})
    return out


def normalized_slices(pred: np.ndarray, ref: np.ndarray, modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices (n, X, Y) holding foreground, of prediction and reference in the reference's [0, 1] units."""
    from phmdiff.eval.protocols import foreground_mask, normalize_pair

    mask = foreground_mask(ref, modality)
    p, r, _ = normalize_pair(pred, ref, mask, modality)
    keep = np.moveaxis(mask, SLICE_AXIS, 0).reshape(mask.shape[SLICE_AXIS], -1).mean(1) > 0.05
    return (np.clip(np.moveaxis(p, SLICE_AXIS, 0)[keep], 0, 1), np.clip(np.moveaxis(r, SLICE_AXIS, 0)[keep], 0, 1))


def realism(pred_slices: list[np.ndarray], real_slices: list[np.ndarray], seed: int = 0) -> float:
    """MS-SWD x1e3 (`eval.distribution.ms_swd`) of pooled single-sample predicted slices against real ones."""
    from phmdiff.eval.distribution import ms_swd

    return ms_swd(np.concatenate(pred_slices), np.concatenate(real_slices), seed=seed)["ms_swd"]


class Segmenter:
    """segcheck's 2D U-Net, trained once on the real sources + target of the training subjects."""

    def __init__(self, subjects, sources: list[str], target: str, steps: int, seed: int = 0):
        from phmdiff.eval.segcheck import BRATS_LABELS, _stack, train_segmenter

        cases = [(_stack([load(s.paths[m]) for m in [*sources, target]]), np.rint(load(s.mask)).astype(np.int64))
                 for s in subjects if s.mask]
        self.labels = sorted(BRATS_LABELS)
        self.model, self.losses = train_segmenter(cases, self.labels, steps=steps, seed=seed)
        self.sources = sources

    def whole_tumour_dice(self, source_volumes: list[np.ndarray], image: np.ndarray, seg: np.ndarray) -> float:
        from phmdiff.eval.segcheck import _stack, dice, segment

        return dice(segment(self.model, _stack([*source_volumes, image])) > 0, seg > 0)
