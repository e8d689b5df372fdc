"""Per-volume transforms between a subject's NIfTI grid and model slices, each recorded so it can be undone.

Forward (`volume_to_slices`): reorient to RAS (nibabel orientation transforms), move the slice axis first,
normalize each modality (MR: foreground percentiles, or z-score; CT: a fixed HU window), keep slices with
enough foreground, add 2.5D context, pad/crop (or resize) the plane to the model size. Every parameter goes
into a `VolumeSpec`; `slices_to_volume` applies the inverse steps in reverse order, back to the input's grid,
orientation and intensity units. `translate` calls both, so training and inference share one code path.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_lib

from phmdiff.data.intensity import (
    CT_WINDOW,
    IntensityScheme,
    IntensityUntrusted,
    check_foreground,
    foreground,
    mr_background,
)
from phmdiff.data.readers import Subject, load_png_stack, load_volume
from phmdiff.fsutil import atomic_write_bytes

CANONICAL = ornt_lib.axcodes2ornt(("R", "A", "S"))
MR_NORMS = ("median", "percentile", "zscore")


@dataclass
class VolumeSettings:
    """How one volume becomes slices; saved in the manifest so `translate` repeats it exactly."""

    modalities: list[str] = field(default_factory=lambda: ["t1", "t2", "flair"])
    size: int | None = 256  # model plane size (square); None keeps the input plane
    axis: str | int = "auto"  # slice axis in RAS: 0 sagittal, 1 coronal, 2 axial; auto = coarsest spacing
    min_foreground: float = 0.05  # keep slices whose foreground fraction is at least this
    context: int = 0  # 2.5D: k neighbouring slices on each side, stored as extra channels per modality
    # MR normalization: median (default; the lesion cannot move it) | percentile | zscore
    norm: str = "median"
    percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = CT_WINDOW  # HU window mapped to [0, 1] for CT modalities
    ct_modalities: tuple[str, ...] = ("ct",)
    fit: str = "pad"  # pad | resize: centred pad/crop, or pad to square then bilinear resize
    # target -> sources: the target is normalized by its sources' parameters (`relative_norm`), not its own,
    # so a synthesized target is put back into scanner units exactly, with no guess of its own scale.
    relative: dict[str, list[str]] = field(default_factory=dict)
    # In-plane voxel spacing (mm) of the training volumes, recorded by prepare (`phmdiff.data.spacing`);
    # translate resamples new volumes to it. None: not recorded (data prepared before it was).
    spacing: list[float] | None = None

    def __post_init__(self) -> None:
        if self.norm not in MR_NORMS:
            raise ValueError(f"norm '{self.norm}' is unknown; expected one of {', '.join(MR_NORMS)}.")
        if self.fit not in ("pad", "resize"):
            raise ValueError(f"fit '{self.fit}' is unknown; expected pad or resize.")
        if self.axis not in ("auto", 0, 1, 2):
            raise ValueError(f"axis '{self.axis}' is invalid; expected auto, 0, 1 or 2.")
        if not 0.0 <= self.min_foreground <= 1.0:
            raise ValueError(f"min_foreground {self.min_foreground} is invalid; expected a fraction in [0, 1].")
        if self.context < 0:
            raise ValueError(f"context {self.context} is invalid; expected 0 or more neighbouring slices.")
        if self.size is not None and self.size < 8:
            raise ValueError(f"size {self.size} is too small; expected at least 8 pixels.")
        self.percentiles = tuple(float(p) for p in self.percentiles)
        self.ct_window = tuple(float(v) for v in self.ct_window)
        self.ct_modalities = tuple(self.ct_modalities)
        self.modalities = list(self.modalities)
        self.relative = {str(t): [str(m) for m in srcs] for t, srcs in dict(self.relative or {}).items()}
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]
            if len(self.spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in self.spacing):
                raise ValueError(f"spacing {self.spacing} is invalid; expected two positive in-plane sizes in mm.")
        for t, srcs in self.relative.items():
            if not srcs or t in srcs:
                raise ValueError(f"relative normalization of '{t}' needs other modalities as sources, got {srcs}.")

    @classmethod
    def from_dict(cls, d: dict) -> VolumeSettings:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def scheme(self, modality: str) -> IntensityScheme:
        """The intensity scheme these settings give `modality`."""
        if modality in self.ct_modalities:
            return IntensityScheme("ct_window", *self.ct_window)
        if modality in self.relative:
            return IntensityScheme("mr_relative", sources=tuple(self.relative[modality]))
        return IntensityScheme(f"mr_{self.norm}")


@dataclass
class NormParams:
    """Linear intensity map x = (v - offset) / scale, optionally clipped to [0, 1]."""

    kind: str  # percentile | zscore | window
    offset: float
    scale: float
    clip: bool = False

    def forward(self, v: np.ndarray) -> np.ndarray:
        x = (v - np.float32(self.offset)) / np.float32(self.scale)
        return np.clip(x, 0.0, 1.0) if self.clip else x

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) * self.scale + self.offset


@dataclass
class VolumeSpec:
    """Everything needed to put model slices back into the original volume."""

    shape: list[int]  # original voxel grid
    affine: list[list[float]]  # original affine
    to_canonical: list[list[float]]  # nibabel ornt transform, original -> RAS
    axis: int  # slice axis in RAS
    n_slices: int
    indices: list[int]  # kept slices along `axis`
    plane: list[int]  # in-plane shape before fitting
    pad: list[list[int]]  # per plane dim [before, after]; negative = cropped
    resized_from: list[int] | None  # square shape before the bilinear resize, when fit == resize
    norm: dict[str, NormParams]
    background: dict[str, float]  # original-unit value for slices that were not kept
    context: int = 0
    # per modality, its foreground in model units: share of the volume, 0.5 / 50 / 99.5 percentiles
    # (`normalized_stats`); a run records their training range and translate compares each input's
    stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VolumeSpec:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}  # manifests add split, reference
        d["norm"] = {m: p if isinstance(p, NormParams) else NormParams(**p) for m, p in d["norm"].items()}
        return cls(**d)


def load_subject_volumes(
    subject: Subject, modalities: list[str], atol: float = 1e-3
) -> tuple[dict[str, np.ndarray], np.ndarray, nib.Nifti1Header]:
    """Load the given modalities of one subject; they must share one shape and affine (within `atol` mm)."""
    volumes: dict[str, np.ndarray] = {}
    affine, header, first = None, None, None
    for mod in modalities:
        if subject.layout == "png":
            if mod not in subject.png_slices:
                raise ValueError(f"subject {subject.id}: missing modality file ({mod}); found {subject.modalities}.")
            data, aff, hdr, where = load_png_stack(subject.png_slices[mod]), np.eye(4), nib.Nifti1Header(), mod
        else:
            if mod not in subject.paths:
                named = [p for p in subject.problems if f"({mod})" in p]
                raise ValueError(named[0] if named else f"subject {subject.id}: missing modality file ({mod}).")
            data, aff, hdr = load_volume(subject.paths[mod])
            where = str(subject.paths[mod])
        if first is None:
            affine, header, first = aff, hdr, (mod, where, data.shape)
        elif data.shape != first[2]:
            raise ValueError(
                f"subject {subject.id}: {mod} ({where}) has shape {tuple(data.shape)} but {first[0]} has "
                f"{tuple(first[2])}; the modalities of a subject must share one voxel grid."
            )
        elif not np.allclose(aff, affine, atol=atol, rtol=0):
            diff = float(np.abs(aff - affine).max())
            raise ValueError(
                f"subject {subject.id}: {mod} ({where}) has an affine that differs from {first[0]}'s by up to "
                f"{diff:.4g} (tolerance {atol}); the modalities of a subject must be co-registered."
            )
        volumes[mod] = data
    return volumes, affine, header


def _norm_params(inside: np.ndarray, bg: tuple[float, bool], mod: str, s: VolumeSettings) -> NormParams:
    """The map of one modality (its foreground voxels `inside`, non-empty: `check_foreground` passed) to model
    units; `IntensityUntrusted` (one sentence) when no scale can be found."""
    if s.scheme(mod).fixed:
        lo, hi = s.ct_window
        return NormParams("window", lo, hi - lo, clip=True)
    if s.norm == "zscore":  # mean -/+ 3 std -> [0, 1]
        mean, std = float(inside.mean()), float(inside.std())
        if not std > 0:
            raise IntensityUntrusted(f"{mod}: the foreground is one constant value ({mean:.4g}); it has no scale.")
        return NormParams("zscore", mean - 3.0 * std, 6.0 * std)
    if s.norm == "median":
        # Background level -> 0, foreground median -> 0.5. A lesion (1-10 % of the foreground) barely moves the
        # median, while an upper percentile falls inside it: the scale would follow the unknown pathology. A
        # background inside the tissue's range (two-sided) gives way to the foreground's low percentile.
        level, two_sided = bg
        lo = float(np.percentile(inside, s.percentiles[0])) if two_sided else level
        median = float(np.median(inside))
        if not median > lo:
            raise IntensityUntrusted(f"{mod}: the foreground median {median:.4g} is not above the background level "
                                     f"{lo:.4g}, so the median scale cannot be trusted.")
        return NormParams("median", lo, 2.0 * (median - lo))
    lo, hi = (float(p) for p in np.percentile(inside, s.percentiles))
    if not hi > lo:
        raise IntensityUntrusted(f"{mod}: the foreground's {s.percentiles[0]:g} and {s.percentiles[1]:g} "
                                 f"percentiles are equal ({lo:.4g}); it has no scale.")
    # No clipping: voxels beyond the percentiles stay linear, so the export is exact.
    return NormParams("percentile", lo, hi - lo)


def normalized_stats(raw: dict[str, float], norm: NormParams) -> dict[str, float]:
    """Foreground statistics in model units: the linear map of the raw percentiles, the share unchanged."""
    return {k: (v if k == "fraction" else float(norm.forward(np.float64(v)))) for k, v in raw.items()}


def relative_norm(source_norms: dict[str, NormParams], sources: list[str]) -> NormParams:
    """A target's normalization from its sources' own: mean offset, geometric-mean scale.

    Training normalizes the target this way and `translate` inverts a prediction with the same parameters,
    which it has (the sources are present): the inversion is exact by construction. The model learns the
    fixed contrast ratio between target and sources; a per-subject gain shared by all modalities cancels.
    """
    norms = [source_norms[m] for m in sources]
    if any(p.kind == "window" for p in norms):
        raise ValueError(f"sources {sources} include a fixed-window (CT) modality; a target cannot be normalized "
                         "relative to a window.")
    scales = [p.scale for p in norms]
    if not all(v > 0 and np.isfinite(v) for v in scales):
        raise IntensityUntrusted(f"sources {sources} have scales {scales}; a target cannot be normalized relative to "
                                 "a scale that is not positive.")
    scale = float(np.exp(np.mean(np.log(scales))))
    return NormParams("relative", float(np.mean([p.offset for p in norms])), scale)


def _pads(plane: tuple[int, ...], target: tuple[int, ...]) -> list[list[int]]:
    return [[(t - n) // 2, (t - n) - (t - n) // 2] for n, t in zip(plane, target)]


def _apply_pad(x: np.ndarray, pads: list[list[int]], value: float) -> np.ndarray:
    """Centred pad (positive) or crop (negative) of the last two axes of (n, A, B)."""
    crop = tuple(slice(max(-b, 0), x.shape[i + 1] - max(-a, 0)) for i, (b, a) in enumerate(pads))
    x = x[(slice(None), *crop)]
    width = [(0, 0)] + [(max(b, 0), max(a, 0)) for b, a in pads]
    return np.pad(x, width, constant_values=value) if any(w != (0, 0) for w in width) else x


def _undo_pad(x: np.ndarray, pads: list[list[int]], value: float) -> np.ndarray:
    return _apply_pad(x, [[-b, -a] for b, a in pads], value)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]  # (n, 1, A, B)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()


def volume_to_slices(
    volumes: dict[str, np.ndarray], affine: np.ndarray, settings: VolumeSettings
) -> tuple[np.ndarray, VolumeSpec]:
    """Model slices (n, n_mod * (2k+1), H, W) in about [0, 1] and the spec that undoes every step."""
    mods = [m for m in settings.modalities if m in volumes]
    shape = next(iter(volumes.values())).shape
    to_canonical = ornt_lib.ornt_transform(ornt_lib.io_orientation(affine), CANONICAL)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))[to_canonical[:, 0].astype(int).argsort()]
    if settings.axis == "auto":  # the coarsest spacing is the acquisition's slice direction; ties -> axial
        axis = 2 if np.isclose(zooms.max(), zooms[2]) else int(zooms.argmax())
    else:
        axis = int(settings.axis)
    # Pass 1: parameters and per-slice foreground only; pass 2 normalizes just the kept slices (bounded memory).
    canonical, norm, background, fg_count, raw = {}, {}, {}, None, {}
    for mod in mods:
        v = np.moveaxis(ornt_lib.apply_orientation(volumes[mod], to_canonical), axis, 0)  # (n, A, B), a view
        is_ct = settings.scheme(mod).fixed
        bg = (float(settings.ct_window[0]), False) if is_ct else mr_background(v)
        fg = foreground(v, is_ct, bg)
        share = check_foreground(fg, mod) if not is_ct else float(fg.mean())
        inside = v[fg] if fg.any() else v.ravel()  # a CT of air alone has no body: its window needs none
        norm[mod] = _norm_params(inside, bg, mod, settings)
        background[mod] = bg[0]
        lo, mid, hi = (float(x) for x in np.percentile(inside, (0.5, 50.0, 99.5)))
        raw[mod] = {"fraction": share, "p0.5": lo, "median": mid, "p99.5": hi}
        per_slice = fg.reshape(fg.shape[0], -1).mean(1)  # (n,)
        fg_count = per_slice if fg_count is None else np.maximum(fg_count, per_slice)
        canonical[mod] = v
    for target, sources in settings.relative.items():
        if target in norm and not settings.scheme(target).fixed and all(m in norm for m in sources):
            norm[target] = relative_norm(norm, sources)
    stats = {mod: normalized_stats(raw[mod], norm[mod]) for mod in mods}
    n_slices, plane = canonical[mods[0]].shape[0], canonical[mods[0]].shape[1:]
    indices = np.flatnonzero(fg_count >= settings.min_foreground)
    k = settings.context
    if settings.size is None:
        target, resized_from = tuple(plane), None
    elif settings.fit == "resize":
        side = max(plane)
        target, resized_from = (side, side), [side, side]
    else:
        target, resized_from = (settings.size, settings.size), None
    pads = _pads(plane, target)
    out_hw = (settings.size, settings.size) if resized_from else target
    slices = np.empty((len(indices), len(mods) * (2 * k + 1), *out_hw), dtype=np.float32)
    for m, mod in enumerate(mods):
        fill = float(norm[mod].forward(np.float32(background[mod])))
        for j, offset in enumerate(range(-k, k + 1)):
            picked = canonical[mod][np.clip(indices + offset, 0, n_slices - 1)]  # (n_kept, A, B), edges replicate
            picked = _apply_pad(norm[mod].forward(picked).astype(np.float32, copy=False), pads, fill)
            if resized_from:
                picked = _resize(picked, out_hw)
            slices[:, m * (2 * k + 1) + j] = picked
    spec = VolumeSpec(
        shape=[int(s) for s in shape],
        affine=np.asarray(affine, dtype=float).tolist(),
        to_canonical=to_canonical.tolist(),
        axis=axis,
        n_slices=int(n_slices),
        indices=[int(i) for i in indices],
        plane=[int(p) for p in plane],
        pad=pads,
        resized_from=resized_from,
        norm=norm,
        background=background,
        context=k,
        stats=stats,
    )
    return slices, spec


def slices_to_volume(slices: np.ndarray, spec: VolumeSpec, modality: str, norm: NormParams | None = None) -> np.ndarray:
    """Invert `volume_to_slices` for one modality: (n, H, W) in [0, 1] -> original grid, orientation and units.

    A synthesized modality has no parameters of its own in `spec`: pass `norm` (`prepare.subject_norm`).
    """
    if isinstance(spec, dict):
        spec = VolumeSpec.from_dict(spec)
    if norm is not None:
        d = spec.to_dict()
        d["norm"][modality] = asdict(norm)
        d["background"].setdefault(modality, float(norm.inverse(np.float32(0.0))))  # normalized 0 for dropped slices
        spec = VolumeSpec.from_dict(d)
    if modality not in spec.norm:
        raise ValueError(
            f"modality '{modality}' has no normalization parameters in this volume's spec (it has "
            f"{', '.join(spec.norm)}); pass norm=, e.g. prepare.reference_norm(manifest, '{modality}')."
        )
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3 or slices.shape[0] != len(spec.indices):
        raise ValueError(
            f"slices have shape {tuple(slices.shape)}; expected ({len(spec.indices)}, H, W) for this volume."
        )
    norm = spec.norm[modality]
    fill = float(norm.forward(np.float32(spec.background[modality])))
    if spec.resized_from:
        slices = _resize(slices, tuple(spec.resized_from))
    x = _undo_pad(slices, spec.pad, fill)  # (n_kept, A, B)
    full = np.full((spec.n_slices, *spec.plane), fill, dtype=np.float32)
    full[spec.indices] = x
    v = np.moveaxis(norm.inverse(full), 0, spec.axis)  # canonical (RAS) grid, original units
    from_canonical = ornt_lib.ornt_transform(CANONICAL, ornt_lib.io_orientation(np.asarray(spec.affine)))
    v = ornt_lib.apply_orientation(v, from_canonical)
    assert list(v.shape) == list(spec.shape), (v.shape, spec.shape)
    return np.ascontiguousarray(v, dtype=np.float32)


def write_like(array: np.ndarray, reference_path: str | Path, out_path: str | Path, dtype=np.float32) -> Path:
    """Write `array` with the reference's geometry, atomically, in the format `out_path` names.

    NIfTI out: the reference's affine and header (a NIfTI reference) or its ITK geometry as an affine (an MHA,
    NRRD or DICOM reference). MHA/NRRD out: the reference's origin, spacing and direction (`itk_io`). `dtype`
    is the voxel type written (float32; an integer type for CT kept in whole HU, rounded by the caller).
    A `.nii.gz` is compressed with gzip mtime 0 and no file name, so the same array always gives the same bytes
    (a plain nibabel save records the time and the random temporary file name in the gzip header).
    """
    from phmdiff.data import itk_io
    from phmdiff.data.readers import is_nifti

    out_path = Path(out_path)
    dtype = np.dtype(dtype)
    values = np.asarray(array).astype(dtype, copy=False)
    if not is_nifti(reference_path):
        info = itk_io.read_info(reference_path)
        if array.ndim != 3 or tuple(array.shape) != tuple(info.size):
            raise ValueError(f"{reference_path}: reference has shape {info.size}; the array to write has "
                             f"{array.shape}.")
        if not is_nifti(out_path):
            itk_io.write_itk(values, info, out_path)
            return out_path
        img = nib.Nifti1Image(values, info.affine)
        img.header.set_qform(info.affine, code=1)
        img.header.set_sform(info.affine, code=1)
    else:
        ref = nib.load(reference_path)
        if tuple(array.shape) != tuple(ref.shape[: array.ndim]) or array.ndim != 3:
            raise ValueError(f"{reference_path}: reference has shape {ref.shape}; the array to write has "
                             f"{array.shape}.")
        if not is_nifti(out_path):
            itk_io.write_itk(values, itk_io.info_from_affine(ref.affine, array.shape, dtype), out_path)
            return out_path
        header = ref.header.copy()
        header.set_data_dtype(dtype)
        img = type(ref)(values, ref.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    data = img.to_bytes()
    if out_path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(out_path, data)
    return out_path
