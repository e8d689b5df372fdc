"""The Python API: load a run once, translate volumes held in memory, generate slices, score a prediction.

    translator = Translator.from_run("runs/BraTS240")
    result = translator.translate({"t1": t1, "t2": t2}, n_samples=4)    # nibabel, SimpleITK or numpy + affine
    result.mean, result.std, result.samples                             # in the input's own geometry and type
    score(result.mean, flair)                                           # evaluate's metrics

Volumes go through the same per-volume translator as `phmdiff translate` (`phmdiff.pipeline`) and slices
through the same sampler as `phmdiff generate` (`generate.sample_images`); scores are `phmdiff evaluate`'s
(`eval.protocols.evaluate_subject`). An image comes back in the type it came in: a nibabel image with the
input's affine and header, a SimpleITK image with its origin, spacing and direction, or a numpy array on the
input's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from phmdiff.data.itk_io import ItkInfo
from phmdiff.data.names import canonical
from phmdiff.eval.protocols import evaluate_subject
from phmdiff.generate import sample_images
from phmdiff.inference import TrainedRun, load_trained
from phmdiff.pipeline import Z_H, Z_SIGMA, VolumeOptions, VolumeTranslator
from phmdiff.sampling_args import SamplingChoices
from phmdiff.translate import SkipSubject, plan_subject


@dataclass(frozen=True)
class Image:
    """A volume in memory: voxels (x, y, z) as float32, its RAS affine, and the object it came from."""

    array: np.ndarray
    affine: np.ndarray
    like: object = None

    def wrap(self, array: np.ndarray):
        """`array` (on this image's grid) in the type this image came in, with its geometry."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if isinstance(self.like, nib.spatialimages.SpatialImage):
            header = self.like.header.copy()
            header.set_data_dtype(np.float32)
            return type(self.like)(array, self.like.affine, header)
        if _is_sitk(self.like):
            import SimpleITK as sitk  # the optional extra phmdiff[itk]: only for its images

            out = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))  # (z, y, x) view
            out.CopyInformation(self.like)
            return out
        return array


def _is_sitk(obj) -> bool:
    return type(obj).__module__.startswith("SimpleITK") and hasattr(obj, "GetSpacing")


def as_image(image, affine=None, spacing=None, what: str = "image") -> Image:
    """A nibabel image, a SimpleITK image, or a numpy array (x, y, z) with its `affine` (RAS, as nibabel's) or
    its voxel `spacing` in mm (axis-aligned, origin 0) -> `Image`."""
    if isinstance(image, nib.spatialimages.SpatialImage):
        array, aff = np.asarray(image.dataobj, dtype=np.float32), image.affine
    elif _is_sitk(image):
        import SimpleITK as sitk  # the optional extra phmdiff[itk]: only for its images

        array = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)), dtype=np.float32)
        aff = ItkInfo(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                      tuple(image.GetDirection()), array.dtype).affine
    elif isinstance(image, np.ndarray):
        if affine is None and spacing is None:
            raise ValueError(f"{what} is a numpy array without geometry; pass affine= (4x4, RAS) or spacing= (mm).")
        array = np.asarray(image, dtype=np.float32)
        aff = np.diag([*map(float, spacing), 1.0]) if affine is None else np.asarray(affine, dtype=float)
    else:
        raise ValueError(f"{what} is a {type(image).__name__}; expected a nibabel image, a SimpleITK image or a "
                         "numpy array.")
    aff = np.asarray(aff, dtype=float)
    if array.ndim != 3 or aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{what} has shape {array.shape} and affine shape {aff.shape}; expected a 3D volume with an "
                         "invertible, finite 4x4 affine.")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite voxels; expected finite values.")
    return Image(array, aff, image)


@dataclass
class Translation:
    """A translated volume in the input's geometry and type: the mean of the samples, their per-voxel std (times
    the run's validation std calibration when it records one, as translate writes it) and each sample; `target`
    and `sources` name the modalities."""

    mean: object
    std: object
    samples: list
    target: str
    sources: list[str]


class Translator:
    """A trained run loaded once, with sampling choices on top of its `eval` settings (`SamplingChoices`)."""

    def __init__(self, trained: TrainedRun, sampling: SamplingChoices | None = None, say=lambda msg: None):
        self.trained, self.say = trained, say
        self.sampling = (sampling or SamplingChoices()).settings(trained)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", which: str = "best", say=lambda msg: None,
                 **sampling) -> Translator:
        """Load a run folder's best (or `which="last"`) checkpoint, or a checkpoint folder; `sampling`: sampler,
        steps, fine_steps, sigma_start, churn, guidance (default: the run's eval settings)."""
        return cls(load_trained(run, device, which), SamplingChoices(**sampling), say)

    @property
    def sources(self) -> list[str]:
        return list(self.trained.plan.sources)

    def translate(self, images: dict, target: str | None = None, n_samples: int = 1, seed: int = 0,
                  affine=None, spacing=None, name: str = "volume", batch_size: int = 16, precision: str = "fp32",
                  resample: bool = True, z_sigma: float = Z_SIGMA, z_h: float = Z_H,
                  axis: int | None = None) -> Translation:
        """Synthesize `target` (default: the run's target; an any-to-any run: the one modality missing) from the
        modalities in `images` ({name: image}, one shared grid; numpy arrays take `affine` or `spacing`).
        `name` and `seed` seed the samples as `phmdiff translate` seeds a subject of that id; `axis` (RAS 0, 1, 2)
        overrides the slice axis the run was trained on, as `translate --axis` does."""
        given = {canonical(m): as_image(im, affine, spacing, f"image '{m}'") for m, im in images.items()}
        try:
            plan = plan_subject(self.trained.plan, given, canonical(target) if target else None)
        except SkipSubject as exc:
            raise ValueError(f"cannot translate these images: {exc}.") from None
        if len(plan) != 1:
            raise ValueError(f"these images miss {', '.join(t for t, _ in plan)}; choose one with target=.")
        target, used = plan[0]
        first = given[used[0]]
        for m in used:
            if given[m].array.shape != first.array.shape or not np.allclose(given[m].affine, first.affine, atol=1e-3):
                raise ValueError(f"image '{m}' is not on the grid of image '{used[0]}'; the sources must share one "
                                 "voxel grid (co-registered, same shape and affine).")
        options = VolumeOptions(n_samples, seed, batch_size, precision, z_sigma, z_h, resample, axis)
        translator = VolumeTranslator(self.trained, self.sampling, options, self.say)
        pred = translator.predict({m: given[m].array for m in used}, first.affine, target, used, name)
        return Translation(first.wrap(pred.mean), first.wrap(pred.std), [first.wrap(s) for s in pred.samples],
                           target, used)

    def generate(self, label: str | None = None, seeds=range(4), batch_size: int = 16,
                 precision: str = "fp32") -> np.ndarray:
        """One slice per seed of modality `label` (default: the run's target), without sources: (N, H, W) in
        normalized units (about [0, 1]; `phmdiff generate` clips them for its PNGs), seeded per slice."""
        label = canonical(label) if label else self.trained.plan.target
        if label not in self.trained.generated:
            raise ValueError(f"label {label}: this run generates {', '.join(self.trained.generated)} only.")
        index = self.trained.label_of(label)
        return sample_images(self.trained, [int(s) for s in seeds], self.sampling, index, batch_size, precision)


def score(prediction, reference, mask=None, protocol: str = "volume", modality: str = "mr", **geometry) -> dict:
    """`phmdiff evaluate`'s metrics of a prediction against its reference (images of any kind `as_image` takes,
    on one grid); `mask`: a foreground mask (default: the reference's). Returns the subject's scores."""
    pred = as_image(prediction, what="prediction", **geometry)
    ref = as_image(reference, what="reference", **geometry)
    if pred.array.shape != ref.array.shape:
        raise ValueError(f"prediction has shape {pred.array.shape}, reference {ref.array.shape}; expected one grid.")
    m = None if mask is None else as_image(mask, what="mask", **geometry).array > 0
    scores = evaluate_subject(pred.array, ref.array, m, protocol=protocol, modality=modality)
    return {k: v for k, v in scores.items() if k != "slices"}


__all__ = ["Image", "Translation", "Translator", "as_image", "score"]
