"""One table of modality names: BraTS 2021 and 2023 spellings, and the common ones, to one canonical name.

PHMDiff names modalities internally as BraTS 2021 does (``t1 t1ce t2 flair``, ``seg`` for the segmentation);
SynthRAD's ``mr ct mask`` are their own canonical names. Every place a modality name comes from a user or a
file name (``prepare --modalities``, a run's sources and target met in a folder of the other naming,
``evaluate --target``, generic ``subject/<modality>.nii.gz`` files) goes through `canonical`, so
``t1n``, ``T1w`` and ``t1`` are one modality and a model trained on 2021 names reads a 2023 folder.

BIDS file names (``sub-01[_ses-01][_ce-gadolinium]..._T1w.nii.gz``) name the modality by their suffix and, for a
contrast-enhanced T1, by a ``ce-`` entity (`bids_modality`). Outputs are named in the input's convention
(`output_stem`): a BraTS 2023 subject gets ``<id>-t2f``, a BIDS subject ``<id>_FLAIR``.
"""

from __future__ import annotations

# canonical name -> its spellings (compared lower-case, with '-', '_' and spaces removed)
ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1native", "nativet1"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1wce", "t1post", "t1contrast", "t1wgd"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2flair", "t2wflair"),
    "seg": ("seg", "label", "labels", "segmentation"),
}
# BraTS file suffixes of each release -> canonical name (a file is `<id>_<suffix>` or `<id>-<suffix>`).
BRATS2021 = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2023 = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}

_LOOKUP = {alias: name for name, spellings in ALIASES.items() for alias in spellings}

# BIDS: canonical name -> the file name's ending (entities and suffix) a BIDS-like output gets.
BIDS_NAMES = {"t1": "T1w", "t1ce": "ce-gadolinium_T1w", "t2": "T2w", "flair": "FLAIR"}
# BIDS suffixes of a segmentation or mask (discrete segmentation, mask, and common hand-made names).
BIDS_MASKS = ("dseg", "mask", "seg", "label", "labels")


def _key(name: str) -> str:
    return "".join(c for c in str(name).strip().lower() if c not in "-_ ")


def canonical(name: str) -> str:
    """The canonical name of a modality spelling (``T1Gd`` -> ``t1ce``); an unknown name, lower-cased."""
    return _LOOKUP.get(_key(name), str(name).strip().lower())


def canonical_list(names) -> list[str]:
    """`canonical` of each name, in order; a ValueError sentence when two names are one modality."""
    out = [canonical(n) for n in names]
    seen: dict[str, str] = {}
    for given, name in zip(names, out):
        if name in seen:
            raise ValueError(f"modalities '{seen[name]}' and '{given}' are the same modality ({name}); list it once.")
        seen[name] = given
    return out


def same_modality(a: str, b: str) -> bool:
    """Whether two spellings name one modality (``t2f`` and ``FLAIR``)."""
    return canonical(a) == canonical(b)


def spellings(name: str) -> tuple[str, ...]:
    """Every spelling of the modality `name` names (for finding files by name), canonical first."""
    name = canonical(name)
    return (name, *[a for a in ALIASES.get(name, ()) if a != name])


def bids_parts(stem: str) -> tuple[dict[str, str], str]:
    """A BIDS file stem's entities and suffix: ``sub-01_ce-Gd_T1w`` -> ({'sub': '01', 'ce': 'Gd'}, 'T1w')."""
    parts = stem.split("_")
    entities = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    return entities, parts[-1]


def bids_modality(stem: str) -> str | None:
    """The canonical modality of a BIDS file stem (``seg`` for a segmentation or mask), or None when its suffix
    names no modality PHMDiff knows. A T1w with a contrast-agent entity (``ce-gadolinium``, ``ce-Gd``, any
    ``ce-`` value) is ``t1ce``; suffixes such as ``T1Gd`` or ``T2FLAIR`` go through the alias table."""
    entities, suffix = bids_parts(stem)
    if suffix.lower() in BIDS_MASKS:
        return "seg"
    name = _LOOKUP.get(_key(suffix))
    if name is None or name == "seg":
        return None
    if name == "t1" and entities.get("ce"):
        return "t1ce"
    return name


def output_stem(subject: str, modality: str, layout: str = "generic") -> str:
    """A subject's output file name without suffix, in its input's convention: ``<id>_flair`` (BraTS 2021,
    generic), ``<id>-t2f`` (BraTS 2023), ``<id>_FLAIR`` or ``<id>_ce-gadolinium_T1w`` (BIDS)."""
    name = canonical(modality)
    if layout == "brats2023":
        suffix = {v: k for k, v in BRATS2023.items()}.get(name)
        if suffix:
            return f"{subject}-{suffix}"
    if layout == "bids" and name in BIDS_NAMES:
        return f"{subject}_{BIDS_NAMES[name]}"
    return f"{subject}_{modality}"
