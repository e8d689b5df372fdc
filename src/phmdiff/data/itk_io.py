"""MetaImage (.mha/.mhd), NRRD and DICOM series through SimpleITK (the optional extra ``phmdiff[itk]``).

Two conventions differ from nibabel's and are converted here, once:
- axis order: SimpleITK's numpy view is (z, y, x); nibabel's is (x, y, z). Arrays leave and enter this module
  in nibabel's (x, y, z) order, so every other module sees one order.
- world frame: ITK's origin and direction are in LPS (DICOM) millimetres, NIfTI's affine in RAS. The affine
  this module returns is diag(-1, -1, 1, 1) @ [direction * spacing | origin], the same mapping nibabel uses for
  NIfTI files converted from DICOM, so a volume has one affine whichever format it came in.
The header (size, pixel type) is read before any voxel is decoded and checked against `limits.check_voxels`.
A header reads only what it was given: detached data (MetaIO ``ElementDataFile``, NRRD ``data file``) must be
one plain file in the header's own folder, checked from the header text before SimpleITK opens anything.
A DICOM series is a folder of ``.dcm`` files holding one series, with one orientation and evenly spaced slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phmdiff.limits import LimitError, check_affine, check_decode_bytes, check_voxels

ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class ItkInfo:
    """The geometry and voxel type of an ITK image, from its header: sizes in (x, y, z) order, LPS frame."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]  # row-major 3x3, columns are the voxel axes' directions in LPS
    dtype: np.dtype
    components: int = 1

    @property
    def affine(self) -> np.ndarray:
        """Voxel (x, y, z) -> RAS millimetres, as nibabel's affine."""
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(self.direction, dtype=float).reshape(3, 3) * np.asarray(self.spacing)[None, :]
        lps[:3, 3] = self.origin
        return LPS_TO_RAS @ lps


def is_dicom_dir(path: Path) -> bool:
    """A folder holding .dcm files (one DICOM series, one modality)."""
    return path.is_dir() and any(p.suffix.lower() == ".dcm" and p.is_file() for p in path.iterdir())


def is_itk_file(path: Path) -> bool:
    return path.name.lower().endswith(ITK_SUFFIXES)


def sitk_module(path):
    """SimpleITK, or a sentence naming the extra that installs it."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ValueError(f"{path}: reading or writing this format needs SimpleITK, which is not installed; "
                         "install it with pip install 'phmdiff[itk]'.") from None
    return sitk


def _dicom_files(path: Path) -> list[str]:
    sitk = sitk_module(path)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise ValueError(f"{path}: no readable DICOM series in this folder.")
    if len(series) > 1:
        raise ValueError(f"{path}: holds {len(series)} DICOM series; expected one series per modality folder.")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))


_HEADER_BYTES = 1 << 20  # a header longer than this is not one we read


def _header_lines(path: Path) -> tuple[bool, list[tuple[str, str]]]:
    """Whether a header is NRRD (by its magic, as the readers decide), and its (key, value) pairs, read as
    text up to where its data begins."""
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    nrrd = head.startswith(b"NRRD")
    pairs = []
    for raw in head.split(b"\n")[1 if nrrd else 0 :]:
        line = raw.rstrip(b"\r").decode("latin-1")
        if nrrd and not line.strip():
            return nrrd, pairs  # a blank line ends a NRRD header; attached data follows
        if nrrd and (line.startswith("#") or ":=" in line):  # comments and key/value pairs name no data
            continue
        key, _, value = line.partition(":" if nrrd else "=")
        key = key.strip().lower().replace(" ", "")
        pairs.append((key, value.strip()))
        if not nrrd and key == "elementdatafile":
            return nrrd, pairs  # the last MetaIO field: binary data may follow
    raise ValueError(f"{path}: image header does not end within its first {_HEADER_BYTES:,} bytes "
                     f"({'no blank line' if nrrd else 'no ElementDataFile field'}); expected a MetaImage or NRRD "
                     "header.")


def check_detached(path: str | Path) -> None:
    """Refuse a MetaIO/NRRD header whose data is not in the file itself or one plain file beside it.

    `ElementDataFile = /etc/passwd` or `data file: ../x.raw` would make the reader take any file on the disk
    as voxels; a list or a pattern of files, a link, a folder or a name with a separator are refused too.
    """
    path = Path(path)
    nrrd, pairs = _header_lines(path)
    field, name = ("datafile", "data file") if nrrd else ("elementdatafile", "ElementDataFile")
    values = [v for k, v in pairs if k == field]
    if not values or (not nrrd and values[-1].upper() == "LOCAL"):
        return  # the data is in the file itself
    value, folder = values[-1], path.parent
    target = folder / value
    plain = (len(values) == 1 and value not in ("", ".", "..") and not any(c in value for c in "/\\\0 %")
             and value.upper() not in ("LIST", "LOCAL"))
    if not plain:
        raise ValueError(f"{path}: {name} is {value!r}; expected the plain name of one data file in the header's "
                         "own folder (no path, list or pattern).")
    if target.is_symlink() or not target.is_file() or target.resolve().parent != folder.resolve():
        raise ValueError(f"{path}: {name} {value!r} is not a plain file in the header's own folder ({folder}); "
                         "expected the data file beside its header.")


def _check_series(path: Path, files: list[str], reader_cls) -> None:
    """Refuse a DICOM series whose slices are not one evenly spaced stack (a gap, mixed orientations, mixed
    sizes, a tilted or repeated slice): one uniform spacing would misplace them without a word."""
    positions, directions, shapes = [], [], []
    for name in files:
        r = reader_cls()
        r.SetFileName(name)
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise ValueError(f"{name}: unreadable DICOM header ({_one_line(exc)}).") from None
        positions.append(r.GetOrigin()[:3])
        directions.append(np.asarray(r.GetDirection(), dtype=float).reshape(r.GetDimension(), -1)[:3, :3])
        shapes.append((tuple(r.GetSize()[:2]), tuple(round(v, 4) for v in r.GetSpacing()[:2])))
    if len(set(shapes)) > 1:
        raise ValueError(f"{path}: DICOM slices differ in size or pixel spacing ({sorted(set(shapes))[:2]}); "
                         "expected one series of equal slices.")
    if any(np.abs(d - directions[0]).max() > 1e-3 for d in directions):
        raise ValueError(f"{path}: DICOM slices have different orientations; expected one series with one "
                         "orientation.")
    if len(files) < 2:
        return
    normal = directions[0][:, 2]
    pos = np.asarray(positions, dtype=float)
    dist = np.sort(pos @ normal)
    steps = np.diff(dist)
    off_axis = pos - pos[0] - np.outer((pos - pos[0]) @ normal, normal)
    if not np.isfinite(pos).all() or np.abs(off_axis).max() > 1e-2 * max(float(np.median(steps)), 1e-3) + 1e-3:
        raise ValueError(f"{path}: DICOM slice positions do not lie on one line along the slice normal (a tilted "
                         "or mixed series); expected one stack of parallel slices.")
    median = float(np.median(steps))
    if median <= 0 or np.abs(steps - median).max() > 0.01 * median + 1e-3:
        i = int(np.argmax(np.abs(steps - median)))
        raise ValueError(f"{path}: DICOM slices are not evenly spaced (steps from {steps.min():.3g} to "
                         f"{steps.max():.3g} mm, {steps[i]:.3g} mm between slices {i} and {i + 1}: a gap, a "
                         "repeated or a missing slice); expected a uniformly spaced series.")


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = next((s for s in lines if not s.startswith(("/", "sitk::", "Exception thrown"))), lines[-1] if lines else "")
    return " ".join(text.split())[:200]


def read_info(path: str | Path) -> ItkInfo:
    """The header of an ITK file or DICOM series folder, without decoding voxels (size-checked)."""
    path = Path(path)
    sitk = sitk_module(path)
    files = _dicom_files(path) if path.is_dir() else [str(path)]
    if path.is_dir():
        _check_series(path, files, sitk.ImageFileReader)
    else:
        check_detached(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{path}: unreadable image header ({_one_line(exc)}).") from None
    size = tuple(int(s) for s in reader.GetSize())
    spacing, origin, direction = reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()
    if path.is_dir():  # one file per slice (sorted along the normal): the series' extent and slice spacing
        size = (*size[:2], len(files))
        if len(files) > 1:
            last = sitk.ImageFileReader()
            last.SetFileName(files[-1])
            try:
                last.ReadImageInformation()
            except RuntimeError as exc:
                raise ValueError(f"{files[-1]}: unreadable DICOM header ({_one_line(exc)}).") from None
            normal = np.asarray(direction, dtype=float).reshape(3, 3)[:, 2]
            step = float(np.dot(np.subtract(last.GetOrigin(), origin), normal)) / (len(files) - 1)
            spacing = (*spacing[:2], abs(step) if step else spacing[2])
            if step < 0:  # slices run against the plane's normal: the third axis points from first to last
                flipped = np.asarray(direction, dtype=float).reshape(3, 3)
                flipped[:, 2] *= -1
                direction = tuple(flipped.ravel())
    if len(size) == 4 and size[3] == 1:
        size, spacing, origin = size[:3], spacing[:3], origin[:3]
        direction = tuple(np.asarray(direction).reshape(4, 4)[:3, :3].ravel())
    count = check_voxels(size, path)
    if len(size) != 3:
        raise ValueError(f"{path}: image has {len(size)} dimensions {size}; expected a 3D volume.")
    components = int(reader.GetNumberOfComponents())
    if components != 1:
        raise LimitError(f"{path}: voxels have {components} components; expected real grayscale intensities.")
    pixel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
    dtype = np.dtype(sitk.GetArrayViewFromImage(pixel).dtype)
    if dtype.kind not in "biuf":
        raise LimitError(f"{path}: voxels are {reader.GetPixelIDTypeAsString()}; expected real grayscale intensities.")
    check_decode_bytes(count, dtype, path)
    info = ItkInfo(size, tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction)), dtype)
    if not all(np.isfinite(v) and v > 0 for v in info.spacing):
        raise LimitError(f"{path}: voxel spacing {info.spacing} is not positive and finite; expected a valid header.")
    check_affine(info.affine, path)
    return info


def read_itk(path: str | Path) -> tuple[np.ndarray, np.ndarray, ItkInfo]:
    """Voxels (x, y, z) as float32, the RAS affine and the header of an ITK file or DICOM series folder."""
    path = Path(path)
    sitk = sitk_module(path)
    info = read_info(path)  # the size is checked before decoding
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_files(path))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: truncated or corrupt image data ({_one_line(exc)}).") from None
    arr = sitk.GetArrayViewFromImage(img)  # (z, y, x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    data = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)), dtype=np.float32)  # (x, y, z)
    if path.is_dir():  # the series reader sorts the slices and measures their spacing: take its geometry
        info = ItkInfo(tuple(int(s) for s in img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                       tuple(img.GetDirection()), info.dtype)
    return data, info.affine, info


def info_from_affine(affine: np.ndarray, shape, dtype) -> ItkInfo:
    """The ITK geometry of a NIfTI-style (RAS) affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing[None, :]
    return ItkInfo(tuple(int(s) for s in shape), tuple(spacing), tuple(lps[:3, 3]), tuple(direction.ravel()),
                   np.dtype(dtype))


def write_itk(array: np.ndarray, info: ItkInfo, out_path: str | Path) -> None:
    """Write (x, y, z) `array` (in its own dtype) with `info`'s geometry to `out_path` (.mha, .nrrd, ...)."""
    from phmdiff.fsutil import atomic_path

    out_path = Path(out_path)
    sitk = sitk_module(out_path)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))  # (z, y, x) view
    img.SetSpacing(info.spacing)
    img.SetOrigin(info.origin)
    img.SetDirection(info.direction)
    with atomic_path(out_path) as tmp:  # a single file: .mha, .nrrd (never .mhd, which needs a second file)
        sitk.WriteImage(img, str(tmp), True)
