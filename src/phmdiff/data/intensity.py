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
MR_FOREGROUND_FRACTION = 0.1  # brain/body voxels of an MR: above 10 % of the bright end of the intensity range
MR_PERCENTILES = (0.5, 99.5)  # MR scale for scoring: these percentiles of the reference's foreground map to 0, 1


def foreground(v: np.ndarray, is_ct: bool) -> np.ndarray:
    """Body/brain voxels of a raw volume: above CT_FOREGROUND_HU for CT; for MR above MR_FOREGROUND_FRACTION of
    the way from the minimum to the 99th percentile (robust to a few hot voxels and to a non-zero background)."""
    if is_ct:
        return v > CT_FOREGROUND_HU
    lo = float(v.min())
    return v > lo + MR_FOREGROUND_FRACTION * (float(np.percentile(v, 99)) - lo)


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
