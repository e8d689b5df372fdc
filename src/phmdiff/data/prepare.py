"""`phmdiff prepare`: NIfTI/PNG subjects -> normalized slice shards + manifest.json, split by subject.

Streams one subject at a time (memory bounded by one subject plus one shard per split), builds the whole
output in a temporary folder and swaps it in, reuses an output whose inputs and settings are unchanged and
rebuilds a stale one. Per-volume steps live in `phmdiff.data.volume` (shared with `translate`).

Input identity (for reuse): per file its size, mtime and the sha256 of its first MiB; hashing whole volumes
would cost as much as preparing them, and a change that keeps size, mtime and the first MiB is improbable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from nibabel import aff2axcodes

from phmdiff import __version__
from phmdiff.argtypes import SEED, finite_float, whole
from phmdiff.data.intensity import CT_WINDOW, IntensityUntrusted
from phmdiff.data.names import canonical_list
from phmdiff.data.readers import LAYOUTS, Subject, check_input_folder, detect_layout, find_subjects
from phmdiff.data.spacing import slice_plane, training_spacing
from phmdiff.data.volume import MR_NORMS, NormParams, VolumeSettings, load_subject_volumes, volume_to_slices
from phmdiff.fingerprint import AXIS_NAMES, crop_sentence, dataset_plan, foreground_cut, format_plan
from phmdiff.fsutil import atomic_dir, atomic_write_text, check_writable_dir
from phmdiff.options import add_overwrite
from phmdiff.schema import check_manifest, layout_digest

SPLITS = ("train", "val", "test")
FORMAT = "phmdiff-prepared/1"
HEAD_BYTES = 1 << 20
DEFAULT_MODALITIES = {"brats2021": ["t1", "t1ce", "t2", "flair"], "brats2023": ["t1", "t1ce", "t2", "flair"],
                      "synthrad": ["mr", "ct"]}


@dataclass
class PrepareSettings:
    """Dataset-level settings of `phmdiff prepare` (the per-volume ones are in `volume`)."""

    layout: str = "auto"
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_file: str | None = None
    seed: int = 0
    dtype: str = "float16"
    shard_mib: float = 64.0  # slices per shard file are chosen so one shard is about this size
    volume: VolumeSettings = field(default_factory=VolumeSettings)

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype '{self.dtype}' is unsupported; expected float16 or float32.")
        if len(self.split) != 3 or min(self.split) < 0 or not np.isclose(sum(self.split), 1.0, atol=1e-3):
            raise ValueError(f"split {list(self.split)} is invalid; expected three fractions >= 0 summing to 1.")


def file_identity(path: Path) -> dict:
    """Size, mtime and sha256 of the first MiB: a cheap content identity for reuse checks."""
    stat = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_head": head}


def _subject_files(sub: Subject, modalities: list[str]) -> dict[str, list[Path]]:
    if sub.layout == "png":
        return {m: list(sub.png_slices.get(m, [])) for m in modalities}
    return {m: [sub.paths[m]] for m in modalities if m in sub.paths}


def split_subjects(ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Seeded subject-level split: a permutation of the ids cut by the fractions (train gets at least one)."""
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    # Each split with a non-zero fraction gets at least one subject once there are three or more.
    n_val, n_test = (max(int(round(f * len(ids))), int(f > 0 and len(ids) >= 3)) for f in fractions[1:])
    n_train = max(len(ids) - n_val - n_test, min(1, len(ids)))
    n_val = min(n_val, len(ids) - n_train)
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {sid: name for name, group in cuts.items() for sid in group}


def read_split_file(path: str | Path, ids: list[str]) -> dict[str, str]:
    """A fixed split: JSON {"train": [ids], "val": [...], "test": [...]} or text lines `<id> <split>`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: split file not found.")
    text = path.read_text()
    try:
        groups = json.loads(text)
        pairs = [(str(sid), name) for name, group in groups.items() for sid in group]
    except (json.JSONDecodeError, AttributeError, TypeError):
        pairs = []
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.replace(",", " ").split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}: line {n} is '{line}'; expected '<subject> <split>'.") from None
            pairs.append((parts[0], parts[1]))
    mapping: dict[str, str] = {}
    for sid, name in pairs:  # one subject in two splits would train on a test subject: never silently
        if sid in mapping and mapping[sid] != name:
            raise ValueError(f"{path}: subject {sid} is assigned to both {mapping[sid]} and {name}; a subject "
                             "belongs to one split.")
        mapping[sid] = name
    bad = sorted({s for s in mapping.values() if s not in SPLITS})
    if bad:
        raise ValueError(f"{path}: unknown split names {bad}; expected train, val or test.")
    missing = sorted(set(ids) - set(mapping))
    if missing:
        raise ValueError(f"{path}: subjects {missing[:5]} are not assigned to a split; every subject must be.")
    return {sid: mapping[sid] for sid in ids}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _ShardWriter:
    """Accumulates slices of one split and writes `shards/<split>-NNNNN.npy` whenever a shard is full."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_mib: float):
        self.folder, self.split, self.dtype, self.shard_mib = folder, split, np.dtype(dtype), shard_mib
        self.buffer: list[np.ndarray] = []
        self.buffered, self.shards = 0, []

    def add(self, slices: np.ndarray) -> None:
        self.buffer.append(slices.astype(self.dtype))
        self.buffered += len(slices)
        if sum(b.nbytes for b in self.buffer) >= self.shard_mib * 2**20:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shards/{self.split}-{len(self.shards):05d}.npy"
        np.save(self.folder / name, np.concatenate(self.buffer))  # (n, C, H, W)
        self.shards.append({"file": name, "n": self.buffered, "sha256": _sha256(self.folder / name)})
        self.buffer, self.buffered = [], 0


def _fingerprint(settings: PrepareSettings, modalities: list[str], inputs: dict, split: dict) -> str:
    blob = json.dumps({"v": __version__, "s": asdict(settings), "m": modalities, "i": inputs, "split": split},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_manifest(prepared_dir: str | Path) -> dict:
    """The manifest of a prepared folder, with a sentence when it is not one."""
    path = Path(prepared_dir) / "manifest.json"
    if not path.is_file():
        raise ValueError(f"{prepared_dir}: not a prepared folder (no manifest.json); run phmdiff prepare first.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: manifest is not valid JSON ({exc.msg}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: manifest format {_format_of(manifest)!r} is not {FORMAT!r}.")
    return check_manifest(manifest, path)  # hand-edited or crafted: a sentence naming the key


def _format_of(manifest):
    return manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__


def settings_from_manifest(manifest: dict) -> VolumeSettings:
    """The per-volume settings a prepared folder was made with (for translate)."""
    return VolumeSettings.from_dict(manifest["config"]["volume"])


def reference_norm(manifest: dict, modality: str, split: str = "train") -> NormParams:
    """Normalization for a synthesized `modality`: the median offset and scale over the split's volumes."""
    params = [v["norm"][modality] for v in manifest["volumes"].values()
              if v.get("split") == split and modality in v["norm"]]
    if not params:
        raise ValueError(f"modality '{modality}' has no {split} volumes in the manifest; cannot invert its scale.")
    return NormParams(params[0]["kind"], float(np.median([p["offset"] for p in params])),
                      float(np.median([p["scale"] for p in params])), bool(params[0]["clip"]))


def gain_ratios(manifest: dict, target: str, sources: list[str], split: str = "train") -> dict | None:
    """How the target's normalization follows each source's scale over the split's subjects.

    Model: one multiplicative gain per subject (receive coil, bias field, tissue mix) scales all its
    modalities, so the target's offset and scale are fixed multiples of a source's scale. Returns per source
    the median of target offset / source scale and target scale / source scale; None when the target or a
    source has a fixed window (CT), whose scale carries no gain, or a source scale is not positive.
    """
    out = {}
    for src in sources:
        pairs = [(v["norm"][target], v["norm"][src]) for v in manifest["volumes"].values()
                 if v.get("split") == split and target in v["norm"] and src in v["norm"]]
        if not pairs or any("window" in (t["kind"], s["kind"]) or not s["scale"] > 0 for t, s in pairs):
            return None
        out[src] = {"offset": float(np.median([t["offset"] / s["scale"] for t, s in pairs])),
                    "scale": float(np.median([t["scale"] / s["scale"] for t, s in pairs]))}
    return out


def subject_norm(reference: NormParams, ratios: dict | None, source_norms: dict[str, NormParams]) -> NormParams:
    """A new subject's target normalization from its own sources' scales (`gain_ratios`), averaged over the
    sources (scale geometrically); `reference` (the training median) when there are no ratios or a source
    carries no scale (a constant volume)."""
    scales = {s: source_norms[s].scale for s in ratios or {}}
    if not ratios or not all(v > 0 and np.isfinite(v) for v in scales.values()):
        return reference
    offset = float(np.mean([scales[s] * r["offset"] for s, r in ratios.items()]))
    scale = float(np.exp(np.mean([np.log(scales[s] * r["scale"]) for s, r in ratios.items()])))
    return NormParams(reference.kind, offset, scale, reference.clip)


def prepared_id(prepared_dir: str | Path) -> str:
    """Identity of prepared data: sha256 of its manifest (which holds the input hashes and settings)."""
    return hashlib.sha256((Path(prepared_dir) / "manifest.json").read_bytes()).hexdigest()


def resolve_subjects(root: Path, settings: PrepareSettings, modalities: list[str] | None):
    """(layout, subjects, canonical modality names) of a dataset for these settings."""
    layout = detect_layout(root) if settings.layout == "auto" else settings.layout
    subjects = find_subjects(root, layout)
    if not modalities:
        modalities = DEFAULT_MODALITIES.get(layout) or sorted({m for s in subjects for m in s.modalities})
    return layout, subjects, canonical_list(modalities)  # BraTS 2023 and other spellings: one name each


def _missing_sentence(root: Path, sub: Subject, mod: str, subjects: list[Subject]) -> str:
    """Name the file that should exist: from the reader's problems, or by analogy with another subject's file."""
    named = [p for p in sub.problems if f"({mod})" in p]
    if named:
        return named[0]
    other = next((s for s in subjects if mod in s.paths), None)
    if other is None:
        return f"subject {sub.id}: missing modality file ({mod}); no subject has it."
    expected = root / sub.id / other.paths[mod].name.replace(other.id, sub.id)
    return f"{expected}: missing modality file ({mod}) of subject {sub.id}."


def dry_run_report(root: Path, settings: PrepareSettings, modalities: list[str] | None) -> str:
    layout, subjects, modalities = resolve_subjects(root, settings, modalities)
    lines = [f"{root}: layout {layout}, {len(subjects)} subjects, modalities {' '.join(modalities)}"]
    for s in subjects:
        lines.append(f"  {s.id}: {' '.join(s.modalities)}" + (f"  mask {s.mask.name}" if s.mask else ""))
        lines += [f"    problem: {p}" for p in s.problems]
        lines += [f"    problem: missing modality {m}" for m in modalities if m not in s.modalities
                  and not any(f"({m})" in p for p in s.problems)]
    return "\n".join(lines)


def prepare(root: str | Path, out: str | Path, settings: PrepareSettings, modalities: list[str] | None = None,
            overwrite: bool = False, progress: bool = True, skip_incomplete: bool = False, log=None) -> str:
    """Build (or reuse) the prepared folder `out` from `root`; returns 'built' or 'reused'.

    A subject missing a requested modality stops the run with a sentence naming the file, or, with
    `skip_incomplete`, is left out: each one is reported through `log` and listed in the manifest's "skipped".
    """
    root, out = Path(root), Path(out)
    check_input_folder(root)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: output path is a file; expected a folder for the prepared data.")
    check_writable_dir(out.parent)
    layout, subjects, modalities = resolve_subjects(root, settings, modalities)
    settings.volume.modalities = modalities
    settings.volume.spacing = None  # measured from the data below, never an input of the fingerprint
    skipped = {}
    for s in subjects:  # a requested modality missing anywhere stops here, before any work
        for m in modalities:
            if m not in s.modalities:
                if not skip_incomplete:
                    raise ValueError(_missing_sentence(root, s, m, subjects) + " Pass --skip-incomplete to leave "
                                     "incomplete subjects out.")
                skipped.setdefault(s.id, _missing_sentence(root, s, m, subjects))
    if skipped:
        subjects = [s for s in subjects if s.id not in skipped]
        if log is not None:
            log(f"prepare: {len(skipped)} incomplete subject(s) left out (--skip-incomplete):")
            for sid, why in skipped.items():
                log(f"  {sid}: {why}")
        if not subjects:
            raise ValueError(f"{root}: every subject misses one of the modalities {modalities}; nothing to prepare.")
    ids = [s.id for s in subjects]
    split = (read_split_file(settings.split_file, ids) if settings.split_file
             else split_subjects(ids, settings.split, settings.seed))
    inputs = {s.id: {m: [file_identity(p) for p in files] for m, files in _subject_files(s, modalities).items()}
              for s in subjects}
    fingerprint = _fingerprint(settings, modalities, inputs, split)
    old = {}
    if (out / "manifest.json").is_file():
        try:
            old = load_manifest(out)
        except ValueError:
            old = {}
        shards_ok = all((out / sh["file"]).is_file() for sp in old.get("splits", {}).values() for sh in sp["shards"])
        if old.get("fingerprint") == fingerprint and shards_ok and not overwrite:
            return "reused"
    if out.is_dir() and not overwrite and any(out.iterdir()):  # rebuilt only when all of it is prepare's
        others = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.json", "shards"))
        if others or not old:
            shown = ", ".join(others[:3]) if others else "no manifest.json that phmdiff prepare wrote"
            raise ValueError(f"{out}: folder exists and is not a prepared folder; pass --overwrite to replace it "
                             f"(it holds {shown}).")

    from tqdm.auto import tqdm

    volumes_meta, slice_map = {}, {name: [] for name in SPLITS}
    split, assigned = dict(split), set(split.values())
    with atomic_dir(out) as tmp:
        (tmp / "shards").mkdir()
        writers = {name: _ShardWriter(tmp, name, settings.dtype, settings.shard_mib) for name in SPLITS}
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        for sub in tqdm(subjects, desc="prepare", unit="subject", disable=not progress or None):
            volumes, affine, _ = load_subject_volumes(sub, modalities)
            try:
                slices, spec = volume_to_slices(volumes, affine, settings.volume)
            except IntensityUntrusted as exc:  # listed with its sentence, never normalized with a made-up scale
                skipped[sub.id] = f"{sub.id}: {exc}"
                say(f"prepare: skipped {skipped[sub.id]}")
                split.pop(sub.id)
                continue
            cut, lost, total = foreground_cut(volumes, spec, settings.volume)  # nothing cropped silently
            if lost:
                say(f"prepare: warning: {crop_sentence(sub.id, spec, lost, total)}")
            del volumes
            writers[split[sub.id]].add(slices)
            slice_map[split[sub.id]] += [[sub.id, i] for i in spec.indices]
            volumes_meta[sub.id] = {"split": split[sub.id], "reference": str(next(iter(
                _subject_files(sub, modalities).values()))[0]), **spec.to_dict(),
                "spacing": slice_plane(affine, spec.axis)[2],  # in-plane mm, the RAS order of the slice plane
                "orientation": "".join(aff2axcodes(affine)), "foreground_cut": cut, "foreground_lost": lost}
        if not volumes_meta:
            raise ValueError(f"{root}: no subject could be normalized ({len(skipped)} skipped, reasons above); "
                             "nothing to prepare.")
        for name in sorted(assigned - set(split.values())):
            say(f"prepare: warning: the {name} split is empty: its subjects were skipped.")
        for w in writers.values():
            w.flush()
        settings.volume.spacing = training_spacing(volumes_meta)  # the run carries it; translate resamples to it
        manifest = {
            "format": FORMAT,
            "package_version": __version__,
            "fingerprint": fingerprint,
            "input_hash": "per file: size, mtime_ns, sha256 of the first MiB",
            "root": str(root),
            "layout": layout,
            "modalities": modalities,
            "channels_per_modality": 2 * settings.volume.context + 1,
            "config": asdict(settings),
            "split": split,
            "splits": {name: {"n": sum(s["n"] for s in w.shards), "shards": w.shards} for name, w in writers.items()},
            "slices": slice_map,
            "inputs": inputs,
            "volumes": volumes_meta,
            "slice_axis": slice_axis_record(volumes_meta),
            "skipped": skipped,
        }
        manifest["integrity"] = layout_digest(manifest, "file")  # modality order + shard checksums, checked on read
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    return "built"


def slice_axis_record(volumes_meta: dict) -> dict:
    """How the run slices: every volume is read as RAS, then sliced along one RAS axis; `axis` is None when the
    subjects were sliced along different axes (the plan warns; --axis fixes it)."""
    counts = Counter(int(v["axis"]) for v in volumes_meta.values())
    axis = next(iter(counts)) if len(counts) == 1 else None
    return {"axis": axis, "name": AXIS_NAMES[axis] if axis is not None else None, "reoriented_to": "RAS",
            "subjects_per_axis": {str(k): n for k, n in sorted(counts.items())}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="input folder (BraTS 2021/2023, BIDS, SynthRAD, generic subject/modality "
                        ".nii.gz/.mha/.nrrd/DICOM, PNG folders)")
    parser.add_argument("out", help="output folder for shards and manifest.json")
    add_settings_arguments(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (subjects, problems, geometry, slice axis, crops, intensities) only")
    add_overwrite(parser, "rebuild even when up to date")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="leave out subjects missing a requested modality (each one reported) instead of stopping")


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of prepare (and of `phmdiff plan`, which shows what they do)."""
    parser.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS),
                        help="naming of the input folder; auto detects it from the file names")
    parser.add_argument("--modalities", nargs="+", default=None,
                        help="default: all of the layout's modalities; BraTS 2021 or 2023 names "
                        "(t1n = t1, t2f = flair)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--split", nargs=3, type=finite_float(0, 1), default=(0.8, 0.1, 0.1),
                       metavar=("TRAIN", "VAL", "TEST"),
                       help="fractions of the subjects (never of slices) in the train, val and test splits")
    group.add_argument("--split-file", default=None, help="JSON {split: [ids]} or lines '<id> <split>'")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random split")
    parser.add_argument("--size", type=whole(0, 8192), default=256, help="model plane size; 0 keeps the input plane")
    parser.add_argument("--fit", default="pad", choices=("pad", "resize"),
                        help="bring the plane to --size by padding (cropping a larger one) or by resizing")
    parser.add_argument("--axis", default="auto", choices=("auto", "0", "1", "2"),
                        help="slice axis once the volume is read as RAS: 0 sagittal, 1 coronal, 2 axial; auto: the "
                        "coarsest spacing (ties: axial)")
    parser.add_argument("--min-foreground", type=finite_float(0, 1), default=0.05,
                        help="keep slices whose foreground covers at least this fraction of the plane")
    parser.add_argument("--context", type=whole(0, 32), default=0, help="2.5D: neighbouring slices on each side")
    parser.add_argument("--norm", default="median", choices=MR_NORMS, help="MR normalization (default median)")
    parser.add_argument("--relative", nargs="+", default=[], metavar="TARGET=SRC[,SRC]",
                        help="normalize a target by its sources' parameters (what a translation run needs)")
    parser.add_argument("--ct-window", nargs=2, type=finite_float(-100_000, 100_000), default=CT_WINDOW,
                        metavar=("LOW", "HIGH"),
                        help="CT normalization: the fixed Hounsfield window mapped to [0, 1]")
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                        help="storage type of the normalized slices")


def _relative(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        target, _, sources = item.partition("=")
        if not target or not sources:
            raise ValueError(f"--relative '{item}' is invalid; expected TARGET=SOURCE[,SOURCE], e.g. flair=t1,t2.")
        out[target] = sources.split(",")
    return out


def settings_from_args(args: argparse.Namespace) -> PrepareSettings:
    volume = VolumeSettings(
        size=args.size or None, axis=args.axis if args.axis == "auto" else int(args.axis),
        min_foreground=args.min_foreground, context=args.context, norm=args.norm, ct_window=tuple(args.ct_window),
        fit=args.fit, relative=_relative(args.relative),
    )
    return PrepareSettings(layout=args.layout, split=tuple(args.split), split_file=args.split_file, seed=args.seed,
                           dtype=args.dtype, volume=volume)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.dry_run:
        root = Path(args.root)
        print(dry_run_report(root, settings, args.modalities))
        layout, subjects, modalities = resolve_subjects(root, settings, args.modalities)
        print(format_plan(dataset_plan(root, layout, subjects, modalities, settings.volume)))
        return 0
    status = prepare(args.root, args.out, settings, args.modalities, overwrite=args.overwrite,
                     skip_incomplete=args.skip_incomplete, log=lambda msg: print(msg, file=sys.stderr))
    print(f"{args.out}: {'up to date, reused' if status == 'reused' else 'prepared'}.", file=sys.stderr)
    return 0
