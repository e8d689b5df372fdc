"""Size limits, checked from a file's header before any array is decoded.

A 1 MiB `.nii.gz` can claim a billion voxels and a PNG header 200 million pixels; decoding first and
checking afterwards needs the memory the check was meant to protect. Every reader asks here first: the
voxel count from the header against `max_voxels()` (env `PHMDIFF_MAX_VOXELS`, default 512**3), and for
gzip files the decompressed size, read in 1 MiB pieces, against what the header says the data needs.
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np

from phmdiff.argtypes import env_whole

DEFAULT_MAX_VOXELS = 512**3
MAX_MAX_VOXELS = 2**40  # a raised limit still has to fit a machine: 4 TiB of float32
ENV = "PHMDIFF_MAX_VOXELS"
_CHUNK = 1 << 20
_GZIP_SLACK = 1 << 20  # NIfTI extensions and padding beyond vox_offset + data


class LimitError(ValueError):
    """An input refused from its header (too large, or a voxel type the pipeline cannot use)."""


def max_voxels() -> int:
    """The largest voxel (or pixel) count any input may have: env PHMDIFF_MAX_VOXELS, default 512**3."""
    return env_whole(ENV, DEFAULT_MAX_VOXELS, 1, MAX_MAX_VOXELS)


def check_voxels(shape, source, what: str = "volume") -> int:
    """The voxel count of `shape`, or a ValueError sentence when it passes the limit or is not a shape."""
    try:
        dims = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise LimitError(f"{source}: {what} shape {shape!r} is not a list of whole sizes.") from None
    if any(d < 0 for d in dims):
        raise LimitError(f"{source}: {what} shape {tuple(dims)} has a negative size.")
    count = math.prod(dims)
    if count > max_voxels():
        raise LimitError(f"{source}: {what} shape {tuple(dims)} holds {count:,} voxels, more than the limit of "
                         f"{max_voxels():,}; raise {ENV} if this is a real image.")
    return count


def check_decode_bytes(count: int, dtype, source, what: str = "volume") -> None:
    """Refuse a decode that would hold more than 4 bytes x `max_voxels()` of stored voxels.

    Decoding holds the stored array and its float32 copy, so a decode's peak stays under 2 x 4 bytes x the
    voxel limit (1 GiB at the default); a float64 volume at the voxel limit would need half as much again.
    """
    need, budget = count * np.dtype(dtype).itemsize, 4 * max_voxels()
    if need > budget:
        raise LimitError(f"{source}: {what} of {count:,} {np.dtype(dtype)} voxels needs {need:,} bytes to decode, "
                         f"more than the limit of {budget:,} bytes ({max_voxels():,} float32 voxels); raise {ENV} "
                         "if this is a real image.")


def check_affine(affine, source) -> None:
    """Refuse a voxel-to-world matrix with NaN/Inf entries or a singular (flat, zero-spacing) linear part."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise LimitError(f"{source}: the affine (voxel-to-world matrix) has NaN or Inf entries; expected a valid "
                         "header.")
    linear = affine[:3, :3]
    scale = np.linalg.norm(linear, axis=0)
    if (scale == 0).any() or abs(np.linalg.det(linear)) <= 1e-6 * float(np.prod(scale)):
        raise LimitError(f"{source}: the affine (voxel-to-world matrix) is singular (voxel sizes "
                         f"{tuple(round(float(v), 6) for v in scale)} mm, axes not independent); expected a valid "
                         "header with non-zero spacing.")


def check_gzip_size(path, limit: int) -> None:
    """Refuse a gzip file that decompresses to more than `limit` bytes, reading at most 1 MiB at a time."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise LimitError(f"{path}: decompresses to more than {limit:,} bytes, beyond what its header "
                                     "declares; the file is damaged or crafted.")
    except (OSError, EOFError, zlib.error):
        return  # a truncated or corrupt stream: the reader names it when it decodes


def check_nifti(img, path) -> None:
    """Check a NIfTI image's header (loaded by nibabel, data still on disk): shape, voxel type, gzip size."""
    header = img.header
    shape = header.get_data_shape()
    count = check_voxels(shape, path)
    dtype = np.dtype(header.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "complex" if dtype.kind == "c" else ("RGB colour" if dtype.fields else str(dtype))
        raise LimitError(f"{path}: voxels are {kind} ({dtype}); expected real grayscale intensities.")
    check_decode_bytes(count, dtype, path)
    check_affine(img.affine, path)
    if str(path).endswith(".gz"):
        offset = int(header.get("vox_offset", 352)) if hasattr(header, "get") else 352
        check_gzip_size(path, max(offset, 352) + count * dtype.itemsize + _GZIP_SLACK)


def check_image_size(size, path) -> None:
    """Check a 2D image's (width, height) from its header before its pixels are decoded."""
    check_voxels(tuple(size), path, "image")
