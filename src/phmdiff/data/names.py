"""One table of modality names: BraTS 2021 and 2023 spellings, and the common ones, to one canonical name.

PHMDiff names modalities internally as BraTS 2021 does (``t1 t1ce t2 flair``, ``seg`` for the segmentation);
SynthRAD's ``mr ct mask`` are their own canonical names. Every place a modality name comes from a user or a
file name (``prepare --modalities``, a run's sources and target met in a folder of the other naming,
``evaluate --target``, generic ``subject/<modality>.nii.gz`` files) goes through `canonical`, so
``t1n``, ``T1w`` and ``t1`` are one modality and a model trained on 2021 names reads a 2023 folder.
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
