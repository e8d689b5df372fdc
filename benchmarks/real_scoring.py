"""What real_mri.py measures on one predicted volume of a real subject: two protocols, a lesion region and its
intensity ratio.

Protocols (every number says which one it is under):
- `volume` (`phmdiff.eval.protocols`, the default protocol): prediction and reference both mapped by the
  *reference's* foreground 0.5 / 99.5 percentiles (the prediction not clipped); PSNR / SSIM with data range 1 over
  the reference's foreground. It scores the synthesized modality's absolute intensity scale too.
- `scalefree` (`phmdiff.eval.protocols`, issue 35 item 3): *each* image mapped to [0, 1] by its own 0.5 / 99.5
  percentiles over the reference's foreground, clipped to [0, 1] (`own_scale`); PSNR / SSIM over that foreground,
  data range 1. A prediction whose contrast is right but whose scanner gain is off loses nothing here (as SynDiff
  and BraSyn score).

Both protocols are computed as `evaluate_subject` computes them, with its foreground (`protocols.foreground_mask`
of the reference), normalizations and metric functions (`phmdiff.eval.metrics`), without its MS-SSIM and slice
rows; the volumes are cropped to the foreground's box plus a margin wider than the SSIM window
first, which leaves every masked value as on the whole volume (a test checks this against `evaluate_subject`) and
makes a 240 x 240 x 155 SSIM about three times cheaper.

Lesion region. Where the subject has a segmentation: the whole tumour (seg > 0) for lesion PSNR and the edema
(label 2) for the edema ratio. Where none exists, the FLAIR-hyperintensity region (`hyperintensity_region`) for
both: reference-FLAIR foreground voxels with a robust z-score above 3 (median + 3 x 1.4826 x MAD over the
foreground), 3 voxels in from the foreground's edge (the bright rim and the partial-volume border of a
skull-stripped brain are not lesions), opened once, components of 100 voxels or more. On the one segmented
subject (TCGA_DU_7294) 97 % of this region lies inside the whole tumour and its Dice with the whole tumour is
0.65 (it leaves out the non-hyperintense core): it is the hyperintense lesion, the part of a tumour FLAIR shows.
Every subject also gets `hyper_psnr` / `hyper_ratio` over this region, so the folds can be read on one definition.

The edema (or region) ratio is mean(prediction) / mean(reference) over the region, in the protocol's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PROTOCOLS = ("volume", "scalefree")
HYPER_Z = 3.0  # robust z-score threshold of the FLAIR-hyperintensity region
HYPER_ERODE = 3  # voxels in from the foreground's edge
HYPER_MIN_VOXELS = 100  # smallest connected component kept
MAD_TO_STD = 1.4826  # MAD of a normal distribution x this = its standard deviation
BOX_MARGIN = 8  # voxels around the foreground box: more than the SSIM window's radius (5)


def hyperintensity_region(flair: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The FLAIR-hyperintensity region of a reference FLAIR inside its foreground `mask` (see the module docstring)."""
    values = flair[mask]
    median = float(np.median(values))
    spread = MAD_TO_STD * float(np.median(np.abs(values - median)))
    inner = ndimage.binary_erosion(mask, iterations=HYPER_ERODE)
    region = ndimage.binary_opening((flair > median + HYPER_Z * spread) & inner)
    labels, count = ndimage.label(region)
    if count == 0:
        return region
    sizes = ndimage.sum(region, labels, index=range(1, count + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes >= HYPER_MIN_VOXELS))


def foreground_box(mask: np.ndarray, margin: int = BOX_MARGIN) -> tuple[slice, ...]:
    """The box of the mask's voxels, `margin` wider on every side (within the volume)."""
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


@dataclass
class RealReference:
    """A held-out subject's reference FLAIR, its foreground and its lesion regions, cropped to the foreground box
    once (every prediction is scored against it)."""

    ref: np.ndarray  # the reference, cropped
    mask: np.ndarray
    lesion: np.ndarray  # seg > 0, or the hyperintensity region
    edema: np.ndarray  # label 2, or the hyperintensity region
    hyper: np.ndarray
    box: tuple[slice, ...]
    region: str  # "segmentation" | "flair_hyperintensity"
    hyper_dice_wt: float | None  # the hyperintensity region's Dice with the whole tumour, where a seg exists

    @classmethod
    def build(cls, ref: np.ndarray, seg: np.ndarray | None = None, regions: bool = True) -> RealReference:
        """`regions` False: the foreground alone (no lesion scores), for a validation subject scored by PSNR."""
        from phmdiff.eval.protocols import foreground_mask

        ref = np.asarray(ref, dtype=np.float64)
        mask = foreground_mask(ref, "mr")
        hyper = hyperintensity_region(ref, mask) if regions else np.zeros_like(mask)
        box = foreground_box(mask)
        if seg is not None and (seg > 0).any():
            wt, edema = seg > 0, np.rint(seg) == 2
            dice = 2.0 * float((wt & hyper).sum()) / max(float(wt.sum() + hyper.sum()), 1.0)
            return cls(ref[box], mask[box], wt[box], (edema if edema.any() else wt)[box], hyper[box], box,
                       "segmentation", dice)
        return cls(ref[box], mask[box], hyper[box], hyper[box], hyper[box], box, "flair_hyperintensity", None)

    def facts(self) -> dict:
        return {"lesion_region": self.region, "foreground_voxels": int(self.mask.sum()),
                "lesion_voxels": int(self.lesion.sum()), "edema_voxels": int(self.edema.sum()),
                "hyperintensity_voxels": int(self.hyper.sum()), "hyperintensity_dice_wt": self.hyper_dice_wt}


def normalized(pred: np.ndarray, r: RealReference, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Prediction (cropped to the reference's box) and reference in the protocol's [0, 1] units."""
    from phmdiff.eval.protocols import normalize_pair, own_scale

    if protocol == "volume":
        p, ref, _ = normalize_pair(pred, r.ref, r.mask, "mr")
        return p, ref
    if protocol == "scalefree":
        return own_scale(pred, r.mask)[0], own_scale(r.ref, r.mask)[0]
    raise ValueError(f"protocol {protocol!r} is not one real_mri scores; expected one of {', '.join(PROTOCOLS)}.")


def _ratio(p: np.ndarray, ref: np.ndarray, region: np.ndarray) -> float:
    """mean(prediction) / mean(reference) over the region (NaN for an empty or non-positive one)."""
    if not region.any():
        return math.nan
    t = float(ref[region].mean())
    return float(p[region].mean()) / t if t > 1e-6 else math.nan


def score(pred: np.ndarray, r: RealReference, ssim: bool = True) -> list[dict]:
    """One row per protocol: PSNR, SSIM (unless `ssim` is False), MAE, lesion PSNR, edema ratio and the
    hyperintensity region's PSNR and ratio; `pred` is the whole volume on the reference's grid."""
    from phmdiff.eval import metrics as M

    pred = np.asarray(pred, dtype=np.float64)[r.box]
    if not np.isfinite(pred).all():
        raise ValueError("the prediction holds NaN or infinite voxels; expected finite values.")
    rows = []
    for protocol in PROTOCOLS:
        p, ref = normalized(pred, r, protocol)
        row = {"protocol": protocol, "psnr": M.psnr(p, ref, 1.0, r.mask), "mae": M.mae(p, ref, r.mask)}
        if ssim:
            row["ssim"] = M.ssim(p, ref, 1.0, r.mask)
        if r.lesion.any():
            row["lesion_psnr"] = M.psnr(p, ref, 1.0, r.lesion)
            row["edema_ratio"] = _ratio(p, ref, r.edema)
        if r.hyper.any():
            row["hyper_psnr"] = M.psnr(p, ref, 1.0, r.hyper)
            row["hyper_ratio"] = _ratio(p, ref, r.hyper)
        rows.append(row)
    return rows
