"""`phmdiff plan DATA`: what `prepare` will do to a dataset, shown before anything trains (nnU-Net's dataset
fingerprint and plan, in the same spirit).

Per subject: the voxel grid (shape, spacing, orientation codes), the slice axis chosen and why, the padding or
cropping of each plane axis (and how many foreground voxels a crop would cut), the slices kept, intensity
statistics of each modality's foreground, and the files found but not read. Per dataset: the modalities found
and used, the slice axes chosen, the subjects with foreground cut, the median spacing. The geometry comes from
`volume.volume_to_slices` itself, so the plan is what prepare does, not a second opinion. Written as JSON too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_lib

from phmdiff.data.intensity import IntensityUntrusted, foreground
from phmdiff.data.readers import Subject
from phmdiff.data.volume import VolumeSettings, VolumeSpec, load_subject_volumes, volume_to_slices
from phmdiff.fsutil import atomic_write_text

FORMAT = "phmdiff-plan/1"
AXIS_NAMES = ("sagittal (R-L)", "coronal (A-P)", "axial (S-I)")
PLANE_AXES = {0: ("A-P", "S-I"), 1: ("R-L", "S-I"), 2: ("R-L", "A-P")}  # the plane's two RAS axes per slice axis
PERCENTILES = (0.5, 50.0, 99.5)
NARROW_MARGIN = 0.10  # a coarsest spacing less than 10 % above the next one is a fragile choice


def ras_spacing(affine: np.ndarray, spec: VolumeSpec) -> list[float]:
    """Voxel spacing (mm) along R-L, A-P, S-I, whatever the array order."""
    zooms = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))  # per array axis
    order = np.asarray(spec.to_canonical)[:, 0].astype(int).argsort()
    return [float(z) for z in zooms[order]]


def axis_reason(spacing: list[float], axis: int, setting) -> str:
    """Why this slice axis: given, or the coarsest spacing (ties: axial, else the first), with a warning when
    the coarsest is barely coarser than the next (a small header change would switch the axis)."""
    if setting != "auto":
        return f"--axis {setting} given"
    names = [n.split()[0] for n in AXIS_NAMES]
    top = max(spacing)
    tied = [names[i] for i in range(3) if np.isclose(spacing[i], top)]
    if len(tied) == 3:
        return "auto: isotropic voxels, axial by default"
    others = [s for s in spacing if not np.isclose(s, top)]
    text = f"auto: the coarsest spacing, {top:.3g} mm along {names[axis]}"
    if len(tied) > 1:
        rule = "axial wins a tie" if axis == 2 else "the first wins a tie"
        text += f" (tied with {' and '.join(t for t in tied if t != names[axis])}; {rule})"
    margin = top / max(others) - 1
    if margin < NARROW_MARGIN:
        text += (f"; only {100 * margin:.0f} % coarser than the next axis, so a small change of the header's "
                 "spacing would switch it: --axis fixes it")
    return text


def foreground_cut(volumes: dict[str, np.ndarray], spec: VolumeSpec,
                   settings: VolumeSettings) -> tuple[list[list[int]], int, int]:
    """What a centred crop removes of the foreground: per plane axis the voxels in the cropped margins [before,
    after], the voxels lost in all (a corner counts once) and the foreground's size; zeros when nothing is
    cropped. The foreground is the union over modalities (`intensity.foreground`)."""
    cut = [[0, 0], [0, 0]]
    if spec.resized_from or not any(p < 0 for pair in spec.pad for p in pair):
        return cut, 0, 0
    fg = None
    for mod, volume in volumes.items():
        v = np.moveaxis(ornt_lib.apply_orientation(volume, np.asarray(spec.to_canonical)), spec.axis, 0)
        mask = foreground(v, mod in settings.ct_modalities)
        fg = mask if fg is None else fg | mask
    per_axis = [fg.sum(axis=(0, 2)), fg.sum(axis=(0, 1))]  # foreground count along each plane axis
    for i, (before, after) in enumerate(spec.pad):
        counts = per_axis[i]
        cut[i] = [int(counts[: max(-before, 0)].sum()), int(counts[len(counts) - max(-after, 0):].sum())
                  if after < 0 else 0]
    window = tuple(slice(max(-b, 0), n - max(-a, 0)) for n, (b, a) in zip(fg.shape[1:], spec.pad))
    total = int(fg.sum())
    return cut, total - int(fg[(slice(None), *window)].sum()), total


def crop_sentence(sid: str, spec: VolumeSpec, lost: int, total: int) -> str | None:
    """One sentence for a crop that cuts foreground; None when nothing of the subject is lost."""
    if not lost:
        return None
    names = PLANE_AXES[spec.axis]
    where = ", ".join(f"{-(b if b < 0 else 0)}+{-(a if a < 0 else 0)} voxels along {names[i]}"
                      for i, (b, a) in enumerate(spec.pad) if min(b, a) < 0)
    sides = [n + b + a for n, (b, a) in zip(spec.plane, spec.pad)]
    return (f"{sid}: the centred crop of the {spec.plane[0]}x{spec.plane[1]} plane to {sides[0]}x{sides[1]} ({where}) "
            f"cuts {lost} foreground voxels ({100 * lost / max(total, 1):.1f} % of the foreground); a larger "
            "data.resolution / --size, or --fit resize, keeps them.")


def intensity_stats(volume: np.ndarray, is_ct: bool) -> dict:
    """Statistics of one modality's foreground, in its stored units."""
    fg = foreground(volume, is_ct)
    values = volume[fg] if fg.any() else volume.ravel()
    lo, med, hi = (float(x) for x in np.percentile(values, PERCENTILES))
    return {"min": float(volume.min()), "p0.5": lo, "median": med, "p99.5": hi, "max": float(volume.max()),
            "mean": float(values.mean()), "std": float(values.std()), "foreground_fraction": float(fg.mean())}


def subject_plan(sub: Subject, modalities: list[str], settings: VolumeSettings) -> dict:
    """What prepare does to one subject (it must have every modality)."""
    volumes, affine, _ = load_subject_volumes(sub, modalities)
    _, spec = volume_to_slices(volumes, affine, replace(settings, modalities=list(modalities)))
    spacing = ras_spacing(affine, spec)
    cut, lost, total = foreground_cut(volumes, spec, settings)
    stats = {m: intensity_stats(v, m in settings.ct_modalities) for m, v in volumes.items()}
    fit = "resize" if spec.resized_from else "keep" if settings.size is None else "pad/crop"
    return {
        "subject": sub.id, "shape": spec.shape, "spacing_ras_mm": spacing,
        "orientation": "".join(nib.aff2axcodes(affine)), "reoriented_to": "RAS",
        "slice_axis": spec.axis, "slice_axis_name": AXIS_NAMES[spec.axis],
        "slice_axis_reason": axis_reason(spacing, spec.axis, settings.axis),
        "plane": spec.plane, "plane_axes": list(PLANE_AXES[spec.axis]), "fit": fit, "pad": spec.pad,
        "resized_from": spec.resized_from, "foreground_cut": cut, "foreground_lost": lost,
        "foreground_voxels": total, "crop_warning": crop_sentence(sub.id, spec, lost, total),
        "slices": {"total": spec.n_slices, "kept": len(spec.indices), "min_foreground": settings.min_foreground},
        "intensity": stats, "normalized": spec.stats,
        "files": {m: str(sub.paths[m]) for m in modalities if m in sub.paths},
        "ignored": list(sub.problems),
    }


def dataset_plan(root: Path, layout: str, subjects: list[Subject], modalities: list[str],
                 settings: VolumeSettings, progress: bool = False) -> dict:
    """The plan of every subject that has all `modalities`, and the dataset's summary."""
    from tqdm.auto import tqdm

    complete = [s for s in subjects if all(m in s.modalities for m in modalities)]
    rows, untrusted = [], {}
    for s in tqdm(complete, desc="plan", unit="subject", disable=not progress or None):
        try:
            rows.append(subject_plan(s, modalities, settings))
        except IntensityUntrusted as exc:  # prepare and translate skip it: the plan says so now
            untrusted[s.id] = f"{s.id}: {exc}"
    found = sorted({m for s in subjects for m in s.modalities})
    axes = Counter(r["slice_axis_name"] for r in rows)
    spacing = np.median([r["spacing_ras_mm"] for r in rows], axis=0).tolist() if rows else None
    warnings = [r["crop_warning"] for r in rows if r["crop_warning"]]
    if len(axes) > 1:
        warnings.append(f"the subjects are not sliced along one axis ({dict(axes)}); set --axis (data.axis) to "
                        "slice them all alike.")
    return {
        "format": FORMAT, "root": str(root), "layout": layout,
        "modalities": {"used": modalities, "found": found, "not_used": [m for m in found if m not in modalities]},
        "settings": {"size": settings.size, "fit": settings.fit, "axis": settings.axis,
                     "min_foreground": settings.min_foreground, "norm": settings.norm, "context": settings.context},
        "subjects": len(subjects), "planned": len(rows),
        "incomplete": {s.id: [m for m in modalities if m not in s.modalities] for s in subjects if s not in complete},
        "skipped": untrusted,
        "slice_axes": dict(axes), "stored_orientations": dict(Counter(r["orientation"] for r in rows)),
        "median_spacing_ras_mm": spacing,
        "ignored_files": sum(len(s.problems) for s in subjects), "warnings": warnings, "per_subject": rows,
    }


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def format_plan(plan: dict) -> str:
    """The plan as text a person reads before training."""
    m = plan["modalities"]
    lines = [f"{plan['root']}: layout {plan['layout']}, {plan['subjects']} subjects, {plan['planned']} planned "
             f"(with every one of {' '.join(m['used'])})",
             f"  modalities found: {' '.join(m['found'])}" + (f"; not used: {' '.join(m['not_used'])}"
                                                              if m["not_used"] else ""),
             f"  slice axes: {', '.join(f'{k} x{n}' for k, n in plan['slice_axes'].items()) or '-'}; stored as "
             f"{', '.join(f'{k} x{n}' for k, n in plan['stored_orientations'].items()) or '-'}, all read as RAS; "
             "median spacing "
             f"(R-L, A-P, S-I) {_mm(plan['median_spacing_ras_mm']) if plan['median_spacing_ras_mm'] else '-'}"]
    for sid, missing in plan["incomplete"].items():
        lines.append(f"  {sid}: not planned, missing {' '.join(missing)}")
    for why in plan.get("skipped", {}).values():
        lines.append(f"  skipped: {why}")
    for r in plan["per_subject"]:
        pads = ", ".join(f"{name} {'pad' if min(p) >= 0 else 'crop'} {p[0]:+d}/{p[1]:+d}"
                         for name, p in zip(r["plane_axes"], r["pad"]))
        fit = f"resized from {r['resized_from']}" if r["resized_from"] else pads if r["fit"] != "keep" else "kept"
        lines.append(f"  {r['subject']}: {'x'.join(map(str, r['shape']))} voxels, {_mm(r['spacing_ras_mm'])} "
                     f"(R-L, A-P, S-I), stored {r['orientation']}, read as RAS")
        lines.append(f"    slices: {r['slice_axis_name']} ({r['slice_axis_reason']}); plane "
                     f"{r['plane'][0]}x{r['plane'][1]}: {fit}; {r['slices']['kept']}/{r['slices']['total']} slices "
                     f"kept (foreground >= {r['slices']['min_foreground']:g})")
        for mod, st in r["intensity"].items():
            normed = r.get("normalized", {}).get(mod)
            lines.append(f"    {mod}: foreground {100 * st['foreground_fraction']:.0f} %, median {st['median']:.4g}, "
                         f"0.5-99.5 % {st['p0.5']:.4g} .. {st['p99.5']:.4g}, range {st['min']:.4g} .. "
                         f"{st['max']:.4g}" + (f"; normalized 0.5-50-99.5 % {normed['p0.5']:.2f} "
                                               f"{normed['median']:.2f} {normed['p99.5']:.2f}" if normed else ""))
        lines += [f"    ignored: {p}" for p in r["ignored"]]
    lines += [f"  warning: {w}" for w in plan["warnings"]]
    return "\n".join(lines)


def write_plan(plan: dict, path: Path, overwrite: bool = False) -> Path:
    """Write the plan as JSON; an existing file that is not a plan is kept unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        try:
            ours = json.loads(path.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise ValueError(f"{path}: exists and is not a plan; pass --overwrite to replace it or --json another "
                             "file.")
    atomic_write_text(path, json.dumps(plan, indent=1))
    return path
