"""N4 bias-field correction of phantom MR volumes (`phmdiff phantom --n4`): what a BraTS-style preprocessing does
before a model sees the images (Tustison et al. 2010, "N4ITK: improved N3 bias correction", IEEE TMI 29:1310),
through SimpleITK's `N4BiasFieldCorrectionImageFilter` (the `itk` extra).

The field is estimated on the noisy image inside the head and divided out of the noisy and the noise-free image
alike, so the noise-free folder stays the noisy image's clean counterpart. The field is scaled to mean 1 inside
the head, so intensities keep their scale.
"""

from __future__ import annotations

import numpy as np

SHRINK = 2  # N4 runs on a grid shrunk by this factor (ITK's usual speed-up); the field is smooth
ITERATIONS = (50, 50, 30)  # per fitting level


def n4_field(image: np.ndarray, mask: np.ndarray, shrink: int = SHRINK, iterations=ITERATIONS) -> np.ndarray:
    """The multiplicative bias field N4 estimates for `image` inside `mask`, at full resolution, mean 1 in the mask."""
    try:
        import SimpleITK as sitk  # optional (the itk extra): imported only when --n4 asks for it
    except ImportError as err:
        raise ValueError("--n4 needs SimpleITK, which is not installed; install phmdiff's itk extra "
                         "(pip install 'phmdiff[itk]').") from err
    if image.shape != mask.shape or not mask.any():
        raise ValueError(f"N4 needs a non-empty head mask of the image's shape {image.shape}, got {mask.shape}.")
    img = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    msk = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    small_img, small_msk = sitk.Shrink(img, [shrink] * 3), sitk.Shrink(msk, [shrink] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(iterations))
    n4.Execute(small_img, small_msk)
    field = np.exp(sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img))).astype(np.float32)
    return field / np.float32(field[mask].mean())


def n4_correct(volumes: dict[str, np.ndarray], modalities, head: np.ndarray) -> dict[str, np.ndarray]:
    """Each modality and its `<m>_noise_free` divided by the field N4 estimates on the noisy one (new dict)."""
    out = dict(volumes)
    for m in modalities:
        field = n4_field(volumes[m], head)
        out[m] = np.rint(volumes[m] / field).astype(np.float32)  # whole numbers, as the phantom stores noisy MR
        out[f"{m}_noise_free"] = (np.rint(volumes[f"{m}_noise_free"] / field * 16.0) / 16.0).astype(np.float32)
    return out
