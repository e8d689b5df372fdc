"""Find subjects in the dataset layouts users arrive with, and load their volumes with clear errors.

Layouts (`detect_layout` picks one, `find_subjects(root, layout=...)` forces one):
- ``brats2021``: ``ROOT/<id>/<id>_t1 _t1ce _t2 _flair _seg .nii.gz``
- ``brats2023``: ``ROOT/<id>/<id>-t1n -t1c -t2w -t2f -seg .nii.gz``, mapped to t1 t1ce t2 flair seg
- ``synthrad``: ``ROOT/<id>/mr ct mask .nii.gz`` (SynthRAD pelvis / brain)
- ``generic``: ``ROOT/<subject>/<modality>.nii(.gz)``; a file named seg/mask/label becomes the mask
- ``bids``: ``ROOT/sub-<id>/[ses-<id>/]anat/sub-<id>[_ses-<id>]_T1w|_T2w|_FLAIR.nii.gz`` (`phmdiff.data.bids`)
- ``png``: ``ROOT/<modality>/<name>.png`` (8 or 16 bit grayscale). Each PNG is one slice. A name
  ``<subject>_<number>.png`` (e.g. ``pat07_042.png``) groups the file with the other slices of
  ``<subject>``, stacked in number order along the last axis; any other name is a one-slice subject.

Volumes may be NIfTI (``.nii``, ``.nii.gz``, read by nibabel), MetaImage (``.mha``, ``.mhd``), NRRD
(``.nrrd``, ``.nhdr``) or a DICOM series (a folder of ``.dcm`` files named like the modality, e.g.
``ROOT/<subject>/t1/``), the last three through SimpleITK (`phmdiff.data.itk_io`, extra ``phmdiff[itk]``).
Modality names go through one alias table (`phmdiff.data.names`): ``T1w``, ``t1n`` and ``t1`` are one modality.

Folders named ``noise_free`` (the phantom's clean references) are never subjects.
"""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from phmdiff.data import bids
from phmdiff.data.itk_io import is_dicom_dir, is_itk_file, read_itk
from phmdiff.data.names import BRATS2021, BRATS2023, canonical
from phmdiff.limits import LimitError, check_image_size, check_nifti

LAYOUTS = ("brats2021", "brats2023", "synthrad", "generic", "bids", "png")
MASK_NAMES = ("seg", "mask", "label", "labels")
SKIP_DIRS = ("noise_free",)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".mhd", ".nrrd", ".nhdr")
_PNG_SLICE = re.compile(r"^(?P<subject>.+)_(?P<number>\d+)$")


@dataclass
class Subject:
    """One subject: its modality files, an optional mask/segmentation and what is wrong with it."""

    id: str
    paths: dict[str, Path] = field(default_factory=dict)  # modality -> image file or DICOM series folder
    mask: Path | None = None
    problems: list[str] = field(default_factory=list)
    layout: str = "generic"
    png_slices: dict[str, list[Path]] = field(default_factory=dict)  # png layout: modality -> slice files

    @property
    def modalities(self) -> list[str]:
        return sorted(self.png_slices if self.layout == "png" else self.paths)


def is_nifti(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str | None:
    """The name of a volume without its suffix (.nii.gz, .mha, ...; a DICOM series folder's own name); None for
    other files and hidden ones (an interrupted atomic write's temp)."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        return path.name if is_dicom_dir(path) else None
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), None)
    return path.name[: -len(suffix)] if suffix and path.is_file() and len(path.name) > len(suffix) else None


def _subject_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SKIP_DIRS and not p.name.startswith("."))


def check_input_folder(root: Path, expected: str = "a folder of subjects") -> None:
    """A missing input folder, or a file given where a folder is expected, in one sentence."""
    if root.is_file():
        raise ValueError(f"{root}: is a file, not a folder; expected {expected}.")
    if not root.is_dir():
        raise ValueError(f"{root}: input folder not found; expected {expected}.")


def detect_layout(root: str | Path) -> str:
    """The layout of `root`, judged from the file names of its subject folders."""
    root = Path(root)
    check_input_folder(root)
    dirs = _subject_dirs(root)
    pngs = [d for d in dirs if any(p.suffix.lower() == ".png" for p in d.iterdir())]
    if pngs and len(pngs) == len(dirs):
        return "png"
    if bids.is_bids(root):
        return "bids"
    stems = [(d.name, s) for d in dirs for s in map(_nifti_stem, d.iterdir()) if s]
    if not stems:
        raise ValueError(f"{root}: no subjects found (expected subject folders of .nii/.nii.gz/.mha/.nrrd files, "
                         "DICOM series folders or PNG folders).")
    if any(s.startswith(f"{sid}_") and s[len(sid) + 1 :].lower() in BRATS2021 for sid, s in stems):
        return "brats2021"
    if any(s.startswith(f"{sid}-") and s[len(sid) + 1 :].lower() in BRATS2023 for sid, s in stems):
        return "brats2023"
    if any(s.lower() in ("mr", "ct") for _, s in stems):
        return "synthrad"
    return "generic"


def _nifti_subject(folder: Path, layout: str) -> Subject:
    sub = Subject(id=folder.name, layout=layout)
    names = {"brats2021": BRATS2021, "brats2023": BRATS2023}.get(layout)
    sep = "_" if layout == "brats2021" else "-"
    for path in sorted(folder.iterdir()):
        stem = _nifti_stem(path)
        if stem is None:
            continue
        if names is not None:  # BraTS: `<id><sep><suffix>`, the suffix names the modality
            suffix = stem[len(folder.name) + 1 :] if stem.startswith(folder.name + sep) else stem.rsplit(sep, 1)[-1]
            suffix = suffix.lower()
            if suffix in MASK_NAMES:
                sub.mask = path
            elif suffix in names:
                sub.paths[names[suffix]] = path
            else:
                sub.problems.append(f"{path}: unexpected file name for the {layout} layout, ignored.")
        elif stem.lower() in MASK_NAMES:
            sub.mask = path
        elif canonical(stem) in sub.paths:
            sub.problems.append(f"{path}: a second file of modality {canonical(stem)} (beside "
                                f"{sub.paths[canonical(stem)].name}), ignored.")
        else:
            sub.paths[canonical(stem)] = path
    if names is not None:
        for suffix, mod in names.items():
            if mod not in sub.paths:
                sub.problems.append(f"{folder / f'{folder.name}{sep}{suffix}.nii.gz'}: missing modality file ({mod}).")
    elif layout == "synthrad":
        for mod in ("mr", "ct"):
            if mod not in sub.paths:
                sub.problems.append(f"{folder / f'{mod}.nii.gz'}: missing modality file ({mod}).")
    if not sub.paths:
        sub.problems.append(f"{folder}: no volumes (.nii.gz, .mha, .nrrd, DICOM) in this subject folder.")
    return sub


def _bids_subject(sid: str, folder: Path) -> Subject:
    stems = [(p, s) for p in sorted(folder.iterdir()) for s in [_nifti_stem(p)] if s]
    paths, mask, problems = bids.sort_files(folder, stems)
    return Subject(id=sid, paths=paths, mask=mask, problems=problems, layout="bids")


def _png_subjects(root: Path) -> list[Subject]:
    subjects: dict[str, Subject] = {}
    numbered: dict[tuple[str, str], list[tuple[int, Path]]] = {}
    for mod_dir in _subject_dirs(root):
        for path in sorted(mod_dir.iterdir()):
            if path.suffix.lower() != ".png" or path.name.startswith("."):
                continue
            match = _PNG_SLICE.match(path.stem)
            sid, number = (match.group("subject"), int(match.group("number"))) if match else (path.stem, 0)
            numbered.setdefault((sid, mod_dir.name), []).append((number, path))
    for (sid, mod), files in sorted(numbered.items()):
        sub = subjects.setdefault(sid, Subject(id=sid, layout="png"))
        sub.png_slices[mod] = [p for _, p in sorted(files)]
    mods = sorted({m for s in subjects.values() for m in s.png_slices})
    for sub in subjects.values():
        counts = {m: len(v) for m, v in sub.png_slices.items()}
        for mod in mods:
            if mod not in sub.png_slices:
                sub.problems.append(f"{root / mod / (sub.id + '*.png')}: missing modality file ({mod}).")
        if len(set(counts.values())) > 1:
            sub.problems.append(f"subject {sub.id}: modalities have different slice counts {counts}.")
    return list(subjects.values())


def find_subjects(root: str | Path, layout: str = "auto") -> list[Subject]:
    """All subjects under `root`, sorted by id, each with the problems found while reading names."""
    root = Path(root)
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout '{layout}' is unknown; expected one of auto, {', '.join(LAYOUTS)}.")
    layout = detect_layout(root) if layout == "auto" else layout
    check_input_folder(root)
    if layout == "png":
        subjects = _png_subjects(root)
    elif layout == "bids":
        subjects = [_bids_subject(sid, folder) for sid, folder in bids.subject_folders(root)]
    else:
        subjects = [_nifti_subject(d, layout) for d in _subject_dirs(root)]
        subjects = [s for s in subjects if s.paths or any(_nifti_stem(p) for p in (s.mask,) if p)]
    if not subjects:
        raise ValueError(f"{root}: no subjects found for the {layout} layout.")
    return sorted(subjects, key=lambda s: s.id)


def _check_values(data: np.ndarray, path: Path) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise ValueError(f"{path}: volume has {bad} NaN or Inf voxels; expected finite intensities.")
    if data.size and data.min() == data.max():
        raise ValueError(f"{path}: volume is constant (every voxel is {data.flat[0]:g}); expected an image.")


def load_volume(path: str | Path, ndim: int = 3) -> tuple[np.ndarray, np.ndarray, object]:
    """Read a 3D volume as float32 (x, y, z) with its RAS affine and header (a nibabel header for NIfTI, an
    `itk_io.ItkInfo` for MHA/NRRD/DICOM), or raise a one-sentence ValueError."""
    path = Path(path)
    if not path.is_file() and not (path.is_dir() and is_dicom_dir(path)):
        raise ValueError(f"{path}: file not found.")
    if path.is_dir() or is_itk_file(path):
        data, affine, info = read_itk(path)
        _check_values(data, path)
        return data, affine, info
    try:
        img = nib.load(path)
        check_nifti(img, path)  # shape, voxel type and gzip size from the header, before decoding
        data = img.get_fdata(dtype=np.float32)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: truncated or corrupt gzip data ({exc}).") from None
    except nib.filebasedimages.ImageFileError:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":  # gzip magic: a compressed file cut before its header ends
                raise ValueError(f"{path}: truncated or corrupt gzip data (the NIfTI header is incomplete).") from None
        raise ValueError(f"{path}: not a NIfTI file (the header cannot be read).") from None
    except LimitError:
        raise
    except (nib.spatialimages.HeaderDataError, nib.spatialimages.ImageDataError) as exc:  # a crafted header
        raise ValueError(f"{path}: invalid NIfTI header ({' '.join(str(exc).split())[:160]}).") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the NIfTI volume ({' '.join(str(exc).split())}).") from None
    if data.ndim == ndim + 1 and data.shape[-1] == 1:  # (X, Y, Z, 1) is a 3D volume stored as 4D
        data = data[..., 0]
    if data.ndim != ndim:
        raise ValueError(f"{path}: volume has {data.ndim} dimensions {tuple(data.shape)}; expected a {ndim}D volume.")
    _check_values(data, path)
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def load_png(path: str | Path) -> np.ndarray:
    """Read one 8- or 16-bit grayscale PNG as a float32 (H, W) array in its stored units."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found.")
    try:
        with Image.open(path) as im:
            check_image_size(im.size, path)  # from the header, before the pixels are decoded
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                raise ValueError(f"{path}: PNG is in colour mode {im.mode}; expected an 8 or 16 bit grayscale image.")
            data = np.asarray(im).astype(np.float32)
    except LimitError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: unreadable PNG ({' '.join(str(exc).split())}).") from None
    if data.ndim != 2:
        raise ValueError(f"{path}: PNG has shape {data.shape}; expected a single-channel image.")
    if not np.isfinite(data).all():  # a float TIFF named .png can hold NaN
        raise ValueError(f"{path}: image has {int(data.size - np.isfinite(data).sum())} NaN or Inf pixels; "
                         "expected finite intensities.")
    return data


def load_png_stack(paths: list[Path]) -> np.ndarray:
    """Stack the slices of one PNG subject along the last axis: (H, W, n_slices)."""
    slices = [load_png(p) for p in paths]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ValueError(f"{paths[0].parent}: PNG slices of one subject differ in size {sorted(shapes)}.")
    volume = np.stack(slices, axis=-1)  # (H, W, n)
    finite_ok = volume.min() != volume.max() or volume.size <= 1
    if not finite_ok:
        raise ValueError(f"{paths[0]}: image is constant (every pixel is {volume.flat[0]:g}); expected an image.")
    return volume


def stored_dtype(path: str | Path) -> np.dtype:
    """The voxel type a volume is stored in, from its header (float32 when a NIfTI scales its integers)."""
    path = Path(path)
    if path.is_dir() or is_itk_file(path):
        from phmdiff.data.itk_io import read_info

        return read_info(path).dtype
    header = nib.load(path).header
    slope, inter = header.get_slope_inter() if hasattr(header, "get_slope_inter") else (None, None)
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        return np.dtype(np.float32)
    return np.dtype(header.get_data_dtype())
