"""`phmdiff translate`: synthesize the missing modality of subjects' volumes with a trained PHMDiff run.

This module finds the input subjects, plans what each one gets (`plan_subject`) and accounts for every one
in OUT/translate.json; each volume goes through the per-volume translator (`phmdiff.pipeline`): the same
per-volume steps as training, the source slices encoded with the run's autoencoder, the target latents
sampled coarse to fine, decoded, and put back on the input's grid, orientation and intensity units. Every
random draw is seeded by (seed, subject, sample, slice), so reruns are identical and the batch size does not
matter. Each output is written atomically, in the input's format (NIfTI; MHA and NRRD through SimpleITK; a
DICOM series gives NIfTI) with its geometry; a CT target stored in integers stays integer HU, clipped to the
run's window. Nothing is overwritten without `--overwrite`. OUT/translate.json lists the outputs in the format
`phmdiff evaluate` reads, and every subject left out ("skipped": missing source, unreadable, NaN voxels, too
big) with its reason; one bad subject never stops the others, and the command exits 1 when any was left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from phmdiff.argtypes import COUNT, SEED, finite_float, whole
from phmdiff.ceiling import oracle_volume
from phmdiff.data import bids
from phmdiff.data.names import ALIASES, canonical, output_stem
from phmdiff.data.readers import LAYOUTS, _nifti_stem, check_input_folder, detect_layout, find_subjects
from phmdiff.data.volume import VolumeSettings
from phmdiff.devices import run_device
from phmdiff.finite import check_finite_numbers
from phmdiff.fsutil import atomic_write_text, check_inside, check_out_dir, check_writable_dir, claim_out_dir, safe_name
from phmdiff.inference import load_trained
from phmdiff.limits import check_voxels
from phmdiff.options import add_device, add_overwrite, add_progress
from phmdiff.pipeline import (
    NII,
    Z_H,
    Z_SIGMA,
    VolumeOptions,
    VolumeTranslator,
    output_dtype,
    output_suffix,
    target_norm_for,  # noqa: F401 - imported from here by callers older than pipeline.py
    write_volume,
)
from phmdiff.sampling_args import SamplingChoices, add_sampling_arguments


@dataclass(frozen=True)
class TranslateOptions(VolumeOptions):
    """What a batch is asked for: the per-volume options, the sampling choices on top of the run's `cfg.eval`
    (None: the run's), the device, and which targets, sources and extra outputs."""

    sampling: SamplingChoices = field(default_factory=SamplingChoices)
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    ceiling: bool = False
    target: str | None = None
    use_sources: list[str] | None = None


class SkipSubject(ValueError):
    """A subject that translate cannot serve; the message says why. `failed` is False for a subject that needs
    nothing (an any-to-any subject with every modality): listed, but no reason to exit non-zero."""

    def __init__(self, message: str, failed: bool = True):
        super().__init__(message)
        self.failed = failed


def plan_subject(identity: dict, present, target: str | None = None,
                 sources: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """Which target(s) to synthesize for one subject, each with the sources it is made from.

    A single-direction run makes its target from its sources. An any-to-any run makes every modality of the
    run the subject lacks (or only `target`, present or not, which lets a real one be scored) from exactly the
    run's modalities the subject has, optionally only those among `sources`. Raises SkipSubject with the reason
    when there is nothing to make or nothing to make it from. Names are canonical (`phmdiff.data.names`).
    """
    slots, present = list(identity["sources"]), set(present)
    if not identity.get("any_to_any"):
        missing = [m for m in slots if m not in present]
        if missing:
            raise SkipSubject(f"missing source modality {', '.join(missing)} (the model needs {', '.join(slots)})")
        return [(identity["target"], slots)]
    usable = [m for m in slots if m in present and (sources is None or m in sources)]
    targets = [target] if target is not None else [m for m in slots if m not in present]
    if not targets:
        raise SkipSubject(f"has every modality of the run ({', '.join(slots)}); nothing to synthesize "
                          "(pass --target to re-synthesize one)", failed=False)
    plan = [(t, [m for m in usable if m != t]) for t in targets]
    for t, used in plan:
        if not used:
            wanted = f" among {sources}" if sources is not None else ""
            raise SkipSubject(f"has none of the run's other modalities{wanted} to synthesize {t} from")
    return plan


def find_input_subjects(path: str | Path, layout: str | None, sources: list[str], any_to_any: bool = False):
    """Subjects under a dataset root, or the one subject whose folder is `path`; all of them, complete or not
    (`plan_subject` says what each one gets).

    The folder's own naming is detected (a run trained on BraTS 2021 names reads a 2023 folder: both map to
    one set of names, `phmdiff.data.names`); the run's `layout` is the fallback for an ambiguous folder.
    A ValueError when no subject could be translated (no subject has every source, or for an any-to-any run
    any of its modalities: the wrong folder or run).
    """
    path = Path(path)
    check_input_folder(path, "a subject folder or a folder of subjects")
    # volumes (or DICOM series) right here, or a BIDS subject's folder: one subject
    single = any(_nifti_stem(p) for p in path.iterdir()) or path.name.startswith(bids.SUBJECT_PREFIX)
    root = path.parent if single else path
    try:
        layout = detect_layout(root)
    except ValueError:
        layout = layout if layout in LAYOUTS and layout != "png" else "auto"
    if layout == "png":
        layout = "auto"
    subjects = find_subjects(root, layout)
    if single:  # a BIDS subject's sessions are subjects of their own (sub-01_ses-02)
        subjects = [s for s in subjects if s.id == path.name or s.id.startswith(f"{path.name}_{bids.SESSION_PREFIX}")]
    servable = any if any_to_any else all
    if not any(servable(m in s.paths for m in sources) for s in subjects):
        missing = sorted({m for s in subjects for m in sources if m not in s.paths})
        raise ValueError(f"{path}: no subject has all source modalities {sources} (missing {missing}).")
    return subjects


def _outputs(out: Path, sid: str, target: str, n_samples: int, ceiling: bool = False, suffix: str = NII,
             layout: str = "generic") -> dict:
    """A subject's output files, named in its input's convention (`names.output_stem`: `<id>-t2f` for BraTS 2023)."""
    folder, stem = out / sid, output_stem(sid, target, layout)
    files = {"prediction": folder / f"{stem}{suffix}"}
    if ceiling:
        files["ceiling"] = folder / f"{stem}_ceiling{suffix}"
    if n_samples > 1:
        files["std"] = folder / f"{stem}_std{suffix}"
        files["samples"] = [folder / "samples" / f"{stem}_sample{j}{suffix}" for j in range(n_samples)]
    return files


def _files_of(files: dict) -> list[Path]:
    return [f for f in [files["prediction"], files.get("std"), files.get("ceiling"), *files.get("samples", [])] if f]


def translate(run: str | Path, input_path: str | Path, out: str | Path, options: TranslateOptions | None = None,
              log=None, **choices) -> dict:
    """Translate every subject under `input_path` with `options` (or `TranslateOptions(**choices)`, or those with
    `choices` on top); returns the translate.json content.

    An any-to-any run synthesizes each subject's missing modalities (or only `target`) from the ones it has
    (or only those among `use_sources`), as `plan_subject` decides; each entry of translate.json names its
    target and the sources used, and subjects with nothing to do are listed under "skipped" with the reason.

    With `ceiling`, subjects whose real target is present also get the pipeline ceiling (`phmdiff.ceiling`):
    their true target sent through normalization, autoencoder and translate's inverse.
    With `resample` (default), each input's slice plane is resampled to the run's training spacing and the
    prediction back to the input's grid (`phmdiff.data.spacing`); without it, a spacing more than 10 % off is
    a warning. Notes and warnings go to `log` (stderr when None).
    """
    opt = options or TranslateOptions()
    sampling_choices = {k: choices.pop(k) for k in [f.name for f in fields(SamplingChoices)] if k in choices}
    opt = replace(opt, sampling=replace(opt.sampling, **sampling_choices), **choices)
    out = Path(out)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    # Which device, in one line once the run has loaded (bad input stays one sentence); a GPU asked for but
    # absent is a warning and the run goes on on the CPU.
    device_lines = []
    device = str(run_device(opt.device, "translate", device_lines.append, origin="--device"))
    trained = load_trained(run, device)
    for line in device_lines:
        say(line)
    sampling = opt.sampling.settings(trained)
    ident = trained.identity
    any_to_any = bool(ident.get("any_to_any"))
    slots = list(ident["sources"])  # the run's names are canonical (`inference.canonical_identity`)
    if not slots:
        raise ValueError(f"{trained.checkpoint}: this is a generation run (no source modalities); sample it with "
                         "phmdiff generate.")
    run_target = ident.get("target")
    target = canonical(opt.target) if opt.target else None
    use_sources = [canonical(m) for m in opt.use_sources] if opt.use_sources else None
    _check_direction_choice(ident, target, use_sources)
    check_finite_numbers({k: ident.get(k) for k in ("target_norm", "target_gain", "target_norms", "target_gains")},
                         "identity", trained.checkpoint / "meta.json")
    for name in [run_target or slots[0], *slots]:  # they become file names: none may lead outside --out
        safe_name(name, "modality name", trained.checkpoint / "meta.json")
    subjects = find_input_subjects(input_path, ident.get("layout"), slots, any_to_any)
    for sub in subjects:
        safe_name(sub.id, "subject id", input_path)
    base = VolumeSettings.from_dict({**ident["volume_settings"], "modalities": slots})
    plans, skipped, complete = {}, {}, set()
    for sub in subjects:
        try:
            plans[sub.id] = plan_subject(ident, sub.paths, target, use_sources)
        except SkipSubject as exc:
            skipped[sub.id] = _with_problem(sub, str(exc)) if exc.failed else str(exc)
            if not exc.failed:
                complete.add(sub.id)
    subjects = [s for s in subjects if s.id in plans]
    check_writable_dir(check_out_dir(out, "translate", opt.overwrite))
    listed_target, listed_sources = (target, slots) if any_to_any else (run_target, slots)
    earlier = _earlier_entries(out, listed_target, listed_sources, opt.overwrite)
    claim_out_dir(out, "translate", ["translate.json", *[s.id for s in subjects]])  # a killed run's out stays ours
    planned = {(s.id, t): _outputs(out, s.id, t, opt.n_samples, opt.ceiling and t in s.paths,
                                   output_suffix(s.paths[used[0]]), s.layout)
               for s in subjects for t, used in plans[s.id]}
    if not opt.overwrite:  # refuse before any work, so nothing is half replaced
        for files in planned.values():
            for f in _files_of(files):
                if f.exists():
                    raise ValueError(f"{f}: output exists; pass --overwrite to replace it.")
    check_voxels((base.size or 1,) * 2, trained.checkpoint / "meta.json", "volume_settings plane")
    if base.spacing is None:
        say("translate: note: this run records no training voxel spacing (its data was prepared before phmdiff "
            "recorded it); the inputs' spacing is not checked.")
    translator = VolumeTranslator(trained, sampling, opt, say)
    entries = []
    bar = None
    if opt.progress:
        bar = tqdm(total=sum(len(p) for p in plans.values()), desc="translate", unit="subject",
                   file=sys.stderr)
    for sub, (target, sources) in ((s, p) for s in subjects for p in plans[s.id]):
        files = planned[sub.id, target]
        try:
            entry = _translate_subject(translator, sub, target, sources, files, out)
        except (ValueError, MemoryError, torch.OutOfMemoryError) as exc:  # this subject only: unreadable, NaN,
            # too big, mismatched grids, out of (GPU) memory
            oom = isinstance(exc, (MemoryError, torch.OutOfMemoryError))
            if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            reason = "out of memory (the volume is too big for this machine)" if oom else " ".join(str(exc).split())
            skipped[sub.id] = f"{target}: {reason}" if any_to_any else reason
            for f in _files_of(files):  # nothing half-written: this subject's new files go
                if f.exists() and not any(e.get("subject") == sub.id for e in earlier):
                    f.unlink()
            if log is not None:
                log(f"translate: {sub.id} skipped: {reason}")
            continue
        finally:  # the bar counts subjects (translated or skipped), not sample volumes
            if bar is not None:
                bar.update(1)
        entries.append(entry)
        if log is not None:  # --no-progress still says what was done, a line per subject
            log(f"translate: {sub.id} ({len(entries)}/{len(planned)}) -> {files['prediction']}")
    if bar is not None:
        bar.close()
    done = {(n["subject"], n.get("target")) for n in entries}
    made = [run_target] if run_target else [t for _, t in done] or slots[:1]  # an any-to-any run may make both
    kinds = {"ct" if t in base.ct_modalities else "mr" for t in made}
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    meta = {"target": listed_target, "sources": listed_sources, "modality_kind": kind,
            "checkpoint": str(trained.checkpoint), "sampler": sampling.sampler, "steps": sampling.num_steps,
            "fine_steps": sampling.fine_num_steps, "sigma_start": sampling.sigma_start, "churn": sampling.churn,
            "guidance": sampling.guidance, "through_plane_filter": {"sigma": opt.z_sigma, "h": opt.z_h},
            "subjects": [e for e in earlier
                         if (e.get("subject"), e.get("target", listed_target)) not in done] + entries,
            "skipped": [{"subject": sid, "reason": why, "failed": sid not in complete}
                        for sid, why in sorted(skipped.items())]}
    if any_to_any:
        meta["any_to_any"] = True
    atomic_write_text(out / "translate.json", json.dumps(meta, indent=1))
    return meta


def _with_problem(sub, reason: str) -> str:
    """A skip reason with the reader's problem about a missing modality, when it named one."""
    named = [p for p in sub.problems if any(f"({m})" in p and m not in sub.paths for m in ALIASES)]
    return reason + (f": {named[0]}" if named else ".")


def _translate_subject(translator: VolumeTranslator, sub, target: str, sources: list[str], files: dict,
                       out: Path) -> dict:
    """Translate one subject and write its files; returns its translate.json entry (ValueError: skip it).

    read -> `VolumeTranslator.predict` -> write; a planned ceiling file gets the true target through the same steps.
    """
    for f in _files_of(files):  # a subject folder that is a link would carry the writes out of --out
        check_inside(out, f)
    volumes, affine = translator.read(sub, sources)
    pred = translator.predict(volumes, affine, target, sources, sub.id)
    del volumes
    settings, n_samples = pred.grid.settings, translator.options.n_samples
    reference = sub.paths[sources[0]]
    dtype = output_dtype(target, settings, sub.paths.get(target, reference))
    if n_samples > 1:
        for j, sample in enumerate(pred.samples):
            write_volume(sample, reference, files["samples"][j], dtype, settings.ct_window)
    write_volume(pred.mean, reference, files["prediction"], dtype, settings.ct_window)
    if n_samples > 1:
        write_volume(pred.std, reference, files["std"])
    if "ceiling" in files:
        oracle = oracle_volume(translator.trained, sub, settings, sources, target, pred.norm, pred.grid.resampling)
        write_volume(oracle, reference, files["ceiling"], dtype, settings.ct_window)
    is_brats = (sub.layout or "").startswith("brats")
    seed = translator.options.seed
    return {
        "subject": sub.id,
        "target": target,
        "sources": sources,
        "prediction": str(files["prediction"].relative_to(out)),
        "std": str(files["std"].relative_to(out)) if n_samples > 1 else None,
        "ceiling": str(files["ceiling"].relative_to(out)) if "ceiling" in files else None,
        "samples": [str(p.relative_to(out)) for p in files.get("samples", [])],
        "reference": str(sub.paths[target].resolve()) if target in sub.paths else None,
        "mask": str(sub.mask.resolve()) if sub.mask and not is_brats else None,
        "seg": str(sub.mask.resolve()) if sub.mask and is_brats else None,
        "source_images": {m: str(sub.paths[m].resolve()) for m in sources},
        "seeds": {"seed": seed, "n_samples": n_samples},
        "target_norm": asdict(pred.norm),
        "dtype": str(dtype),
        "spacing": {"input": pred.grid.in_plane, "training": settings.spacing,
                    "resampled": pred.grid.resampling is not None},
    }


def _check_direction_choice(ident: dict, target: str | None, use_sources: list[str] | None) -> None:
    """--target and --sources name modalities of an any-to-any run; a single-direction run takes only its own."""
    slots = list(ident["sources"])
    if target and use_sources and target in use_sources:
        raise ValueError(f"--target {target} is also listed in --sources {' '.join(use_sources)}; the target is the "
                         "modality to synthesize: list only the modalities it is made from.")
    if not ident.get("any_to_any"):
        if target not in (None, ident["target"]) or use_sources not in (None, slots):
            raise ValueError(f"this run translates {slots} -> {ident['target']} only; --target and --sources "
                             "choose among the modalities of an any-to-any run.")
        return
    for name in [*([target] if target else []), *(use_sources or [])]:
        if name not in slots:
            raise ValueError(f"'{name}' is not a modality of this any-to-any run; expected one of {', '.join(slots)}.")


def _earlier_entries(out: Path, target: str, sources: list[str], overwrite: bool) -> list[dict]:
    """The subjects an earlier translate into `out` listed: a second run adds to translate.json, never drops."""
    path = out / "translate.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
        entries = [e for e in old["subjects"] if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError):
        if overwrite:
            return []
        raise ValueError(f"{path}: unreadable translate.json; pass --overwrite to replace it.") from None
    if (old.get("target"), old.get("sources")) != (target, sources):
        if overwrite:
            return []
        raise ValueError(f"{path}: lists {old.get('target')} from {old.get('sources')}, this run makes {target} from "
                         f"{sources}; choose another --out or pass --overwrite to replace the listing.")
    return entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder (its best checkpoint) or a checkpoint folder")
    parser.add_argument("--input", required=True, help="a subject folder or a folder of subjects")
    parser.add_argument("--out", required=True, help="output folder for NIfTI volumes and translate.json")
    parser.add_argument("--n-samples", type=whole(1, 1000), default=1, help="samples per subject: mean and std volumes")
    parser.add_argument("--seed", type=SEED, default=0, help="base seed (each subject, sample and slice its own)")
    parser.add_argument("--batch-size", type=COUNT, default=16,
                        help="slices per batch, each with all its samples (results do not depend on it)")
    add_device(parser)
    add_overwrite(parser, "replace existing outputs")
    parser.add_argument("--ceiling", action="store_true",
                        help="also write the pipeline ceiling (the true target through the pipeline) where it exists")
    parser.add_argument("--z-sigma", type=finite_float(0, 32), default=Z_SIGMA,
                        help="through-plane joint bilateral filter guided by the sources: slice distance (0 = off)")
    parser.add_argument("--z-h", type=finite_float(0, 100, lo_open=True), default=Z_H,
                        help="the filter's source range (normalized units)")
    add_progress(parser, "one line per subject instead")
    parser.add_argument("--no-resample", action="store_true",
                        help="keep each input's in-plane spacing (default: resample to the training spacing and back)")
    add_sampling_arguments(parser)
    parser.add_argument("--target", default=None,
                        help="any-to-any runs: synthesize only this modality (default: each one a subject lacks)")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="any-to-any runs: use only these of the modalities a subject has")


def options_from_args(args: argparse.Namespace) -> TranslateOptions:
    """The command line's choices as `TranslateOptions`."""
    names = {f.name for f in fields(TranslateOptions)} - {"sampling", "progress", "resample", "use_sources"}
    return TranslateOptions(**{n: getattr(args, n) for n in names}, sampling=SamplingChoices.from_args(args),
                            progress=not args.no_progress, resample=not args.no_resample, use_sources=args.sources)


def run(args: argparse.Namespace) -> int:
    meta = translate(args.run, args.input, args.out, options_from_args(args),
                     log=(lambda msg: print(msg, file=sys.stderr)) if args.no_progress else None)
    made = sorted({e.get("target", meta["target"]) for e in meta["subjects"]})
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {', '.join(made)}.", file=sys.stderr)
    if meta["skipped"]:  # every subject is accounted for: the ones left out, each with its reason
        print(f"{args.out}: {len(meta['skipped'])} subject(s) not translated (listed in translate.json):",
              file=sys.stderr)
        for s in meta["skipped"]:
            print(f"  {s['subject']}: {s['reason']}", file=sys.stderr)
    return 1 if any(s["failed"] for s in meta["skipped"]) else 0  # 1: a subject that needed a volume got none
