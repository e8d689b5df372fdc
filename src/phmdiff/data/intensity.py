"""Intensity conventions shared by prepare, translate and evaluate: the schemes, the CT window, the foreground.

One place, so that a slice prepared for training, a translated volume and the reference it is scored against
agree on what HU window maps to [0, 1] and which voxels are body or brain. Each modality of a run has one
intensity scheme (`IntensityScheme`, recorded in the run plan); the facts of a scheme's kind live in its
`INTENSITY_SCHEMES` entry, so a new kind (a CBCT or PET window) is one entry and its test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CT_WINDOW = (-1024.0, 3071.0)  # HU mapped to [0, 1]: air to the 12-bit scanner maximum
CT_FOREGROUND_HU = -500.0  # body voxels of a CT: denser than half-way from air to water
MR_FOREGROUND_FRACTION = 0.1  # brain/body voxels of an MR: above 10 % of the way from background to the bright end
MR_PERCENTILES = (0.5, 99.5)  # MR scale for scoring: these percentiles of the reference's foreground map to 0, 1
# A background that one exact value holds on more than this share of the volume's border (0 after skull stripping,
# a scanner's constant fill, the negative constant of a z-scored volume).
CONSTANT_BORDER_SHARE = 0.5
# Voxels below such a constant background, as a share of the voxels off it, that are still interpolation
# undershoot (registration leaves 0.1-1 % of the brain slightly negative; a one-voxel ring around a brain is 4-5 %
# of it); above it, the background lies inside the tissue's range (a z-score inside a brain mask with 0 outside
# puts 40-50 % of the brain below 0) and the foreground is every voxel off it.
UNDERSHOOT_SHARE = 0.25
# A constant border above more than this share of the other voxels is tissue cut by the field of view (a tight
# crop), not a background: the noise floor rule applies instead.
TISSUE_SHARE = 0.9
# The foreground share of a volume that normalization trusts: outside it the threshold found the background (or
# nothing), and a scale from it would be wrong without a sign.
PLAUSIBLE_FOREGROUND = (0.01, 0.99)


class IntensityUntrusted(ValueError):
    """A volume whose background, foreground or scale cannot be found: its subject is listed, never normalized
    with a made-up scale."""


def _border(v: np.ndarray) -> np.ndarray:
    """The voxels on the faces of the array (every axis' first and last index)."""
    faces = [v[(slice(None),) * a + (i,)].ravel() for a in range(v.ndim) for i in (0, -1)]  # views, then copies
    return np.concatenate(faces) if faces else v.ravel()


def constant_background(v: np.ndarray) -> float | None:
    """The exact value that more than CONSTANT_BORDER_SHARE of the border holds, or None (a noisy background, or
    tissue at the border). A value that holds half of the border is its median, so no sort is needed."""
    b = _border(v)
    if not b.size:
        return None
    c = b[np.argpartition(b, b.size // 2)[b.size // 2]]
    return float(c) if np.count_nonzero(b == c) > CONSTANT_BORDER_SHARE * b.size else None


def mr_background(v: np.ndarray) -> tuple[float, bool]:
    """(background level, two-sided) of a raw MR volume, found so that a handful of outliers cannot move it.

    A constant background (`constant_background`) is that value; whether it lies below the tissue (one-sided: the
    usual) or inside the tissue's range (two-sided: a z-score inside a brain mask) is read from the share of the
    other voxels below it, so interpolation undershoot (a few thousand slightly negative voxels beside a zero
    background) counts as neither; a constant above nearly all the other voxels is tissue that the field of view
    cuts, not a background. Without a constant border, the 0.5th percentile: the noise floor of an
    unstripped head's air, which no single hot or cold voxel moves.
    """
    c = constant_background(v)
    off = v[v != c] if c is not None else v[:0]
    below = float((off < c).mean()) if off.size else 0.0
    if c is None or below > TISSUE_SHARE:  # a constant brighter than (nearly) all else is tissue at the border
        return float(np.percentile(v, 0.5)), False
    return c, below > UNDERSHOOT_SHARE


def foreground(v: np.ndarray, is_ct: bool, background: tuple[float, bool] | None = None) -> np.ndarray:
    """Body/brain voxels of a raw volume: above CT_FOREGROUND_HU for CT; for MR above MR_FOREGROUND_FRACTION of
    the way from the background level (`mr_background`) to the 99th percentile of the voxels above it, or, when
    the background is a constant inside the tissue's range, every voxel off it. Never from the minimum, which
    one undershooting voxel sets. `background`: `mr_background(v)`, when the caller has it already."""
    if is_ct:
        return v > CT_FOREGROUND_HU
    bg, two_sided = background or mr_background(v)
    if two_sided:
        return v != bg
    above = v[v > bg]
    if not above.size:
        return np.zeros(v.shape, dtype=bool)
    return v > bg + MR_FOREGROUND_FRACTION * (float(np.percentile(above, 99)) - bg)


def check_foreground(fg: np.ndarray, what: str) -> float:
    """The foreground's share of the volume; `IntensityUntrusted` when it lies outside PLAUSIBLE_FOREGROUND."""
    share = float(fg.mean()) if fg.size else 0.0
    lo, hi = PLAUSIBLE_FOREGROUND
    if not lo <= share <= hi:
        raise IntensityUntrusted(
            f"{what}: the foreground found is {100 * share:.3g} % of the volume (expected {100 * lo:g}-{100 * hi:g} "
            "%), so its intensity scale cannot be trusted; check that the volume holds a head or body with a "
            "background around it.")
    return share


@dataclass(frozen=True)
class SchemeKind:
    """The facts of one kind of intensity scheme."""

    fixed: bool  # a fixed window in physical units (HU): no per-volume scale, no gain to follow, foreground by value
    units: str  # what an intensity error is measured in after inversion
    params: tuple[str, ...] = ()  # the scheme's parameters, besides its kind
    doc: str = ""


INTENSITY_SCHEMES = {
    "mr_median": SchemeKind(False, "normalized units", (), "background -> 0, foreground median -> 0.5"),
    "mr_percentile": SchemeKind(False, "normalized units", (), "foreground percentiles -> 0, 1"),
    "mr_zscore": SchemeKind(False, "normalized units", (), "foreground mean -/+ 3 std -> 0, 1"),
    "mr_relative": SchemeKind(False, "normalized units", ("sources",),
                              "the sources' median offsets and scales (inverted exactly, no guess of its own)"),
    "ct_window": SchemeKind(True, "HU", ("lo", "hi"), "a fixed HU window lo..hi -> 0, 1, clipped"),
}


@dataclass(frozen=True)
class IntensityScheme:
    """How one modality's voxels map to [0, 1]: a kind of `INTENSITY_SCHEMES` and its parameters."""

    kind: str
    lo: float | None = None  # ct_window
    hi: float | None = None
    sources: tuple[str, ...] = ()  # mr_relative

    def __post_init__(self) -> None:
        if self.kind not in INTENSITY_SCHEMES:
            raise ValueError(f"intensity scheme '{self.kind}' is unknown; expected one of "
                             f"{', '.join(INTENSITY_SCHEMES)}.")
        need = INTENSITY_SCHEMES[self.kind].params
        if "sources" in need and not self.sources:
            raise ValueError(f"intensity scheme '{self.kind}' needs its source modalities.")
        if "lo" in need and not (self.lo is not None and self.hi is not None and self.lo < self.hi):
            raise ValueError(f"intensity scheme '{self.kind}' needs a window lo < hi, got {self.lo}..{self.hi}.")
        object.__setattr__(self, "sources", tuple(self.sources))

    @property
    def fixed(self) -> bool:
        return INTENSITY_SCHEMES[self.kind].fixed

    @property
    def units(self) -> str:
        return INTENSITY_SCHEMES[self.kind].units

    def to_dict(self) -> dict:
        need = INTENSITY_SCHEMES[self.kind].params
        out: dict = {"kind": self.kind}
        if "lo" in need:
            out.update(lo=self.lo, hi=self.hi)
        if "sources" in need:
            out["sources"] = list(self.sources)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> IntensityScheme:
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"an intensity scheme is {d!r}; expected a mapping with a 'kind'.")
        return cls(str(d["kind"]), d.get("lo"), d.get("hi"), tuple(d.get("sources") or ()))
