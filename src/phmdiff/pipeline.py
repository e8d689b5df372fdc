"""The per-volume translator: one subject's volumes -> its synthesized target, in small steps.

    read -> to the training grid (reorient, resample) -> normalize (plane slices) -> encode -> sample -> decode
         -> through-plane filter -> invert (crop, intensity units, the input's grid) -> write

Each step is a function; `VolumeTranslator` chains them for `phmdiff translate` and the Python API
(`phmdiff.api`), and `phmdiff.ceiling` chains the same steps with the autoencoder's round trip in place of
encode -> sample -> decode. The steps repeat training's per-volume transforms (`phmdiff.data.volume`); the
target's intensity map follows the subject's own sources (`target_norm_for`). Every random draw is seeded by
(seed, subject, sample, slice), so results do not depend on the batch size or on other subjects.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from phmdiff.consistency import joint_bilateral_z
from phmdiff.data import spacing as sp
from phmdiff.data import volume
from phmdiff.data.input_range import outside_range, range_sentence
from phmdiff.data.prepare import subject_norm
from phmdiff.data.readers import stored_dtype
from phmdiff.data.volume import NormParams, VolumeSettings, load_subject_volumes, relative_norm, slices_to_volume
from phmdiff.fingerprint import AXIS_NAMES
from phmdiff.inference import SamplingSettings, TrainedRun, decode_target, encode_sources, plane_multiple
from phmdiff.plane import Pads, crop_plane, plane_slices
from phmdiff.sampling_args import PRECISIONS

NII = ".nii.gz"
# The through-plane joint bilateral filter (`phmdiff.consistency`): slice distance sigma (0 = off) and source range
# h, in normalized units: chosen on the demo run's validation subject, confirmed on its test subjects
# (docs/benchmarks.md, "3D consistency").
Z_SIGMA, Z_H = 1.0, 0.06


def subject_seed(seed: int, subject: str, sample: int, index: int) -> int:
    """The seed of one slice of one sample of one subject: independent of batching and of other subjects."""
    return int(np.random.SeedSequence([seed, zlib.crc32(subject.encode()), sample, index]).generate_state(1)[0])


# -- read ------------------------------------------------------------------------------------------------------

def read_volumes(subject, modalities: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A subject's volumes of `modalities` on one shared grid, and that grid's affine."""
    volumes, affine, _ = load_subject_volumes(subject, modalities)
    return volumes, affine


# -- to the training grid --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """Where a subject's slices are predicted: its settings with the slice axis fixed, its input in-plane spacing,
    and the in-plane resampling to the training spacing (None: predicted on the input's own grid)."""

    settings: VolumeSettings
    in_plane: list[float]
    resampling: sp.Resampling | None = None

    def back(self, vol: np.ndarray) -> np.ndarray:
        """A volume on the prediction grid -> the input's grid."""
        return vol if self.resampling is None else self.resampling.back(vol)


def to_training_grid(volumes: dict, affine, settings: VolumeSettings, resample: bool = True, say=print,
                     name: str = "input") -> tuple[dict, np.ndarray, Grid]:
    """Fix the slice axis and resample the slice plane to the run's training spacing (`phmdiff.data.spacing`).

    Returns the volumes and affine to slice, and the `Grid` that undoes it. Without `resample`, a spacing more
    than 10 % off the training spacing is a warning through `say`.
    """
    axis, _, in_plane = sp.slice_plane(affine, settings.axis)
    # Resampling the plane must not change which axis is sliced; every slice with any foreground is predicted
    # (training's min_foreground keeps nearly empty slices out of the training set, not out of a volume).
    settings = replace(settings, axis=axis, min_foreground=1e-12)
    plan = sp.plan(next(iter(volumes.values())).shape, affine, axis, settings.spacing) if settings.spacing else None
    if plan is not None and resample:
        say(f"translate: {name}: in-plane spacing {sp.mm(plan.spacing)}, training {sp.mm(settings.spacing)}: "
            f"resampled to {sp.mm(plan.new_spacing)} and the prediction back onto the input's grid.")
        volumes, affine = resample_to(volumes, plan)
    elif plan is not None and any(abs(a / b - 1) > sp.TOLERANCE for a, b in zip(plan.spacing, settings.spacing)):
        say(f"translate: warning: {name}: in-plane spacing {sp.mm(plan.spacing)} differs by more than "
            f"{sp.TOLERANCE:.0%} from the training spacing {sp.mm(settings.spacing)} and resampling is off "
            "(--no-resample): the model sees anatomy at a scale it was not trained on.")
    return volumes, affine, Grid(settings, in_plane, plan if resample else None)


def resample_to(volumes: dict, plan: sp.Resampling | None) -> tuple[dict, np.ndarray | None]:
    """Volumes on the input's grid -> on `plan`'s resampled grid, with that grid's affine (None: no plan)."""
    if plan is None:
        return volumes, None
    return {m: sp.resize(v, plan.new_shape) for m, v in volumes.items()}, plan.affine


# -- normalize: the target's intensity map ---------------------------------------------------------------------

def target_scale_kind(settings, target: str) -> str:
    """How a synthesized target's intensity scale is set: `window` (a fixed HU window), `relative` (its sources'
    parameters, as in training: exact) or `estimated` (its own median in training; a new subject's scale from its
    sources through the training gain ratios, `prepare.subject_norm`)."""
    if settings.scheme(target).fixed:
        return "window"
    return "relative" if settings.relative.get(target) else "estimated"


def target_norm_for(settings, target: str, sources: list[str], source_norms: dict, reference, gain) -> NormParams:
    """The synthesized target's intensity map for one subject, from its own sources' normalization.

    Runs prepared with `relative` normalization trained on exactly this map, so the inversion is exact; older
    runs scale the training median by the subject's source scales (`prepare.subject_norm`), a guess.
    """
    rel = settings.relative.get(target)
    if not rel:
        return subject_norm(reference, gain, source_norms)
    missing = [m for m in rel if m not in source_norms]
    if missing:
        raise ValueError(f"the run normalizes {target} relative to {rel}, but {missing} are not among its sources "
                         f"{sources}; prepare the data with the run's own sources.")
    return relative_norm(source_norms, rel)


# -- encode -> sample -> decode --------------------------------------------------------------------------------

@torch.no_grad()
def translate_samples(trained: TrainedRun, src: np.ndarray, seeds: list[list[int]], settings: SamplingSettings,
                      batch_size: int = 16, precision: str = "fp32", target: str | None = None,
                      sources: list[str] | None = None) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> predicted target slices (n_samples, n, H, W), in normalized units.

    `seeds[j][i]` seeds sample j of slice i. Each batch of `batch_size` slices is encoded once and all its samples
    are drawn in one batched sampling run (the network sees slices x samples together; `WindowedDenoiser` bounds
    one call). `precision="bf16"` runs the denoiser under bf16 autocast. An any-to-any run takes the `target` to
    synthesize and the names of the `sources` in `src`: they fill their slots of the run, every other slot is
    unavailable (black, masked out by the model).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    dev, n_samples = trained.device, len(seeds)
    slots = list(trained.plan.sources)  # canonical names (`plan.migrate`)
    pick = [slots.index(m) for m in (slots if sources is None else sources)]  # slot of each given source
    avail = torch.zeros(len(slots), device=dev)
    avail[pick] = 1.0
    out = np.empty((n_samples, src.shape[0], *src.shape[2:]), dtype=np.float32)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for lo in range(0, src.shape[0], batch_size):
        given = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch_size], dtype=np.float32)).to(dev) * 2 - 1
        n = given.shape[0]
        x = given.new_full((n, len(slots), *given.shape[2:]), -1.0)  # (n, n_slots, H, W)
        x[:, pick] = given
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)  # once for every sample
        cond = cond.repeat(n_samples, 1, 1, 1)  # (n_samples * n, n_slots * C, h, w), sample-major
        batch_seeds = [s for per_sample in seeds for s in per_sample[lo : lo + n]]
        with autocast:
            z = trained.sample(cond, avail.expand(n_samples * n, -1), batch_seeds, settings, target)
        pred = decode_target(trained.autoencoder, z.float(), trained.latent_scale)[:, 0]  # (n_samples * n, H, W)
        out[:, lo : lo + n] = pred.reshape(n_samples, n, *pred.shape[1:]).cpu().numpy()
    return out


def translate_slices(trained: TrainedRun, src: np.ndarray, seeds: list[int], settings: SamplingSettings,
                     batch_size: int = 16, precision: str = "fp32", target: str | None = None,
                     sources: list[str] | None = None) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> one predicted sample (n, H, W), in normalized units (about [0, 1])."""
    return translate_samples(trained, src, [list(seeds)], settings, batch_size, precision, target, sources)[0]


# -- invert ----------------------------------------------------------------------------------------------------

def invert(pred: np.ndarray, spec, pads: Pads, target: str, norm: NormParams, grid: Grid) -> np.ndarray:
    """Predicted slices (n, H, W) in normalized units -> a volume on the input's grid, in the target's units."""
    return grid.back(slices_to_volume(crop_plane(pred, pads), spec, target, norm=norm))


# -- write -----------------------------------------------------------------------------------------------------

def output_suffix(reference: Path) -> str:
    """Outputs are written in the input's format: .nii.gz for NIfTI and DICOM series, .mha, .nrrd."""
    name = Path(reference).name.lower()
    if name.endswith((".mha", ".mhd")):
        return ".mha"
    if name.endswith((".nrrd", ".nhdr")):
        return ".nrrd"
    return NII


def output_dtype(target: str, settings, reference: Path) -> np.dtype:
    """int16 for a CT target when the subject's CT (or first source) is stored in integers, else float32."""
    if target not in settings.ct_modalities:
        return np.dtype(np.float32)
    try:
        kind = stored_dtype(reference).kind
    except Exception:  # noqa: BLE001 - an unreadable header was already reported by the reader
        return np.dtype(np.float32)
    lo, hi = settings.ct_window
    fits = np.iinfo(np.int16).min <= lo and hi <= np.iinfo(np.int16).max
    return np.dtype(np.int16 if kind in "iu" and fits else (np.int32 if kind in "iu" else np.float32))


def to_output(vol: np.ndarray, dtype: np.dtype, window) -> np.ndarray:
    """A float prediction in the written type: integer CT rounded to whole HU and clipped to the HU window."""
    if np.dtype(dtype).kind in "iu":
        return np.clip(np.rint(vol), window[0], window[1]).astype(dtype)
    return vol.astype(dtype, copy=False)


def write_volume(vol: np.ndarray, reference: Path, path: Path, dtype=np.float32, window=(0.0, 0.0)) -> None:
    """Write one output volume atomically with the reference's geometry and format (`volume.write_like`)."""
    volume.write_like(to_output(vol, np.dtype(dtype), window), reference, path, np.dtype(dtype))


# -- the chain -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeOptions:
    """How each volume is translated: samples, seed, slices per batch, arithmetic, through-plane filter and
    whether the plane is resampled to the training spacing."""

    n_samples: int = 1
    seed: int = 0
    batch_size: int = 16
    precision: str = "fp32"
    z_sigma: float = Z_SIGMA
    z_h: float = Z_H
    resample: bool = True
    axis: int | None = None  # the RAS axis to slice along (0 sagittal, 1 coronal, 2 axial); None: the run's

    def __post_init__(self) -> None:
        if self.axis not in (None, 0, 1, 2):
            raise ValueError(f"--axis is {self.axis!r}; expected 0 (sagittal), 1 (coronal) or 2 (axial).")
        if self.n_samples < 1:
            raise ValueError(f"--n-samples is {self.n_samples}; expected 1 or more.")
        if self.seed < 0:
            raise ValueError(f"--seed is {self.seed}; expected a whole number of at least 0.")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size is {self.batch_size}; expected 1 or more.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision is {self.precision!r}; expected one of {', '.join(PRECISIONS)}.")
        if not (self.z_sigma >= 0 and self.z_h > 0):
            raise ValueError(f"--z-sigma {self.z_sigma} and --z-h {self.z_h}: expected z-sigma >= 0 (0 = off) and "
                             "z-h > 0.")


@dataclass
class Prediction:
    """A translated volume: every sample on the input's grid in the target's units, the intensity map used and
    the grid it was predicted on."""

    samples: np.ndarray  # (n_samples, X, Y, Z)
    norm: NormParams
    grid: Grid
    std_scale: float | None = None  # the run's validation std calibration; None: the samples' own spread
    # the input's normalized statistics beyond the run's training range (`input_range`); None: the run records none
    outside_training: list[dict] | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.samples.mean(0)

    @property
    def std(self) -> np.ndarray:
        """The per-voxel uncertainty: the samples' std, times the run's calibration when it has one."""
        spread = self.samples.std(0)
        return spread if self.std_scale is None else spread * np.float32(self.std_scale)


@dataclass
class VolumeTranslator:
    """A loaded run, its sampling settings and the per-volume options: `predict` runs the chain on volumes held in
    memory, `read` reads a subject's."""

    trained: TrainedRun
    sampling: SamplingSettings
    options: VolumeOptions = field(default_factory=VolumeOptions)
    say: Callable[[str], None] = print

    read = staticmethod(read_volumes)

    def settings(self, sources: list[str]) -> VolumeSettings:
        """The run's per-volume settings for a subject translated from `sources`. The slice axis: `options.axis`
        when given, else the run's; an `auto` one becomes the axis prepare sliced the training data along, when it
        recorded one: the model knows that plane's anatomy, whatever the input's own coarsest spacing."""
        settings = self.trained.plan.volume_settings(sources)
        if self.options.axis is not None:
            return replace(settings, axis=self.options.axis)
        trained = self.trained.plan.training_axis
        return settings if trained is None else replace(settings, axis=trained)

    def predict(self, volumes: dict, affine, target: str, sources: list[str], name: str,
                on_sample: Callable[[int], None] | None = None) -> Prediction:
        """The sources' `volumes` (one shared grid, `affine`) -> `options.n_samples` samples of `target`.

        `name` seeds the samples (a subject's id); `on_sample(j)` is called as sample j is done.
        """
        o = self.options
        settings = self.settings(sources)
        own = sp.slice_plane(affine)[0]
        if o.axis is None and settings.axis != "auto" and own != settings.axis:
            self.say(f"translate: {name}: sliced along the {AXIS_NAMES[settings.axis]} axis, as the run's training "
                     f"data was, although this input's coarsest spacing is along the {AXIS_NAMES[own]} axis.")
        volumes, affine, grid = to_training_grid({m: volumes[m] for m in sources}, affine, settings, o.resample,
                                                 self.say, name)
        slices, spec, pads = plane_slices(volumes, affine, grid.settings, plane_multiple(self.trained.cfg))
        del volumes
        outside = outside_range(spec.stats, self.trained.plan.input_ranges)
        if outside:
            self.say(range_sentence(name, outside))
        k = 2 * spec.context + 1
        norm = target_norm_for(grid.settings, target, sources, spec.norm,
                               *self.trained.plan.target_scale(target, sources))
        src = slices[:, spec.context :: k]  # centre slice of each source (n, n_src, H, W)
        seeds = [[subject_seed(o.seed, name, j, int(i)) for i in spec.indices] for j in range(o.n_samples)]
        preds = translate_samples(self.trained, src, seeds, self.sampling, o.batch_size, o.precision, target, sources)
        preds = joint_bilateral_z(preds, src, spec.indices, o.z_sigma, o.z_h)  # (n_samples, n, H, W), through-plane
        samples = []
        for j in range(o.n_samples):
            samples.append(invert(preds[j], spec, pads, target, norm, grid))
            if on_sample is not None:
                on_sample(j)
        return Prediction(np.stack(samples), norm, grid, self.trained.std_scale,
                          None if not self.trained.plan.input_ranges else outside)
