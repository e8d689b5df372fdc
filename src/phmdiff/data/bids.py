"""BIDS datasets: ``ROOT/sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_...]_<suffix>.nii.gz``.

Each session is one subject (``sub-01_ses-02``); a subject without sessions is ``sub-01``. Images are read from
the ``anat`` folder, or from the subject (session) folder itself when it holds them directly
(``sub-01/sub-01_T1w.nii.gz``). The suffix names the modality (``T1w``, ``T2w``, ``FLAIR``; a ``T1w`` with a
``ce-`` entity is the contrast-enhanced T1), a ``dseg`` or ``mask`` file is the segmentation, and every other
file is listed as ignored with its reason (`phmdiff.data.names.bids_modality`). Pure path logic: the volume
readers (`phmdiff.data.readers`) turn these into subjects.
"""

from __future__ import annotations

from pathlib import Path

from phmdiff.data.names import bids_modality, bids_parts

SUBJECT_PREFIX = "sub-"
SESSION_PREFIX = "ses-"


def _dirs(folder: Path, prefix: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(prefix))


def is_bids(root: Path) -> bool:
    """Whether `root` is a BIDS dataset: `sub-*` folders holding files named `sub-<label>_..._<suffix>` (a
    generic `sub-01/T1.nii.gz` tree is not)."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(p.name.startswith(SUBJECT_PREFIX) and "_" in p.name
               for _, folder in subject_folders(root) if folder.is_dir() for p in folder.iterdir())


def subject_folders(root: Path) -> list[tuple[str, Path]]:
    """(subject id, folder holding its images) for every subject and session under a BIDS root."""
    found = []
    for sub in _dirs(Path(root), SUBJECT_PREFIX):
        for ses in _dirs(sub, SESSION_PREFIX) or [None]:
            here = ses or sub
            sid = f"{sub.name}_{ses.name}" if ses else sub.name
            found.append((sid, here / "anat" if (here / "anat").is_dir() else here))
    return found


def sort_files(folder: Path, stems: list[tuple[Path, str]]) -> tuple[dict[str, Path], Path | None, list[str]]:
    """A subject's volumes (path, file stem) sorted into {modality: path}, the segmentation and the problems
    (each ignored file with its reason)."""
    paths: dict[str, Path] = {}
    mask, problems = None, []
    for path, stem in stems:
        modality = bids_modality(stem)
        if modality is None:
            problems.append(f"{path}: BIDS suffix '{bids_parts(stem)[1]}' is not an image PHMDiff reads "
                            "(T1w, T1w with ce-, T2w, FLAIR, dseg/mask), ignored.")
        elif modality == "seg":
            mask = mask or path
        elif modality in paths:
            problems.append(f"{path}: a second {modality} image (beside {paths[modality].name}), ignored.")
        else:
            paths[modality] = path
    if not paths:
        problems.append(f"{folder}: no T1w, T2w or FLAIR image in this BIDS subject.")
    return paths, mask, problems
