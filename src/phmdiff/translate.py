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
import os
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from phmdiff.accounting import (
    DISK_ERRORS,
    LISTING,
    Interrupted,
    SignalGuard,
    checksums,
    is_complete,
    merge_listing,
    read_listing,
)
from phmdiff.argtypes import COUNT, SEED, finite_float, whole
from phmdiff.ceiling import oracle_volume
from phmdiff.checkpoint_io import resolve_weights
from phmdiff.data import bids
from phmdiff.data.names import ALIASES, canonical, output_stem
from phmdiff.data.readers import LAYOUTS, _nifti_stem, check_input_folder, detect_layout, find_subjects
from phmdiff.devices import run_device
from phmdiff.fingerprint import AXIS_NAMES
from phmdiff.finite import check_finite_numbers
from phmdiff.fsutil import (
    atomic_dir,
    check_inside,
    check_out_dir,
    check_writable_dir,
    claim_out_dir,
    safe_name,
)
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
    target_scale_kind,
    write_volume,
)
from phmdiff.sampling_args import SamplingChoices, add_sampling_arguments
from phmdiff.std_calibration import WHY_REFUSED, std_scale_refusal


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
    resume: bool = False  # --continue: keep the subjects translate.json lists as complete, redo the rest


class SkipSubject(ValueError):
    """A subject that translate cannot serve; the message says why. `failed` is False for a subject that needs
    nothing (an any-to-any subject with every modality): listed, but no reason to exit non-zero."""

    def __init__(self, message: str, failed: bool = True):
        super().__init__(message)
        self.failed = failed


def plan_subject(plan, present, target: str | None = None,
                 sources: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """Which target(s) to synthesize for one subject, each with the sources it is made from.

    A single-direction run makes its target from its sources. An any-to-any run makes every modality of the
    run the subject lacks (or only `target`, present or not, which lets a real one be scored) from exactly the
    run's modalities the subject has, optionally only those among `sources`. Raises SkipSubject with the reason
    when there is nothing to make or nothing to make it from. Names are canonical (`phmdiff.data.names`).
    `plan`: the run's `RunPlan` (its `sources`, `target` and `any_to_any`).
    """
    slots, present = list(plan.sources), set(present)
    if not plan.any_to_any:
        missing = [m for m in slots if m not in present]
        if missing:
            raise SkipSubject(f"missing source modality {', '.join(missing)} (the model needs {', '.join(slots)})")
        return [(plan.target, slots)]
    usable = [m for m in slots if m in present and (sources is None or m in sources)]
    targets = [target] if target is not None else [m for m in slots if m not in present]
    if not targets:
        raise SkipSubject(f"has every modality of the run ({', '.join(slots)}); nothing to synthesize "
                          "(pass --target to re-synthesize one)", failed=False)
    chosen = [(t, [m for m in usable if m != t]) for t in targets]
    for t, used in chosen:
        if not used:
            wanted = f" among {sources}" if sources is not None else ""
            raise SkipSubject(f"has none of the run's other modalities{wanted} to synthesize {t} from")
    return chosen


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
    `choices` on top); returns the translate.json content. `run`: a run folder (its best checkpoint), a checkpoint
    folder, or a weights file in one (`checkpoint_io.resolve_weights`).

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
    choice = resolve_weights(run)  # a run or checkpoint folder (EMA weights), or a weights file in one
    trained = load_trained(choice.folder, device, ema=choice.ema, state_dict=choice.state_dict)
    weights = str(choice.state_dict.resolve()) if choice.state_dict else "ema" if choice.ema else "model"
    for line in device_lines:
        say(line)
    sampling = opt.sampling.settings(trained)
    run_plan = trained.plan
    any_to_any = run_plan.any_to_any
    slots = list(run_plan.sources)  # the run's names are canonical (`plan.migrate`)
    if not slots:
        raise ValueError(f"{trained.checkpoint}: this is a generation run (no source modalities); sample it with "
                         "phmdiff generate.")
    run_target = run_plan.target
    target = canonical(opt.target) if opt.target else None
    use_sources = [canonical(m) for m in opt.use_sources] if opt.use_sources else None
    _check_direction_choice(run_plan, target, use_sources)
    check_finite_numbers({"target_norms": {m: asdict(n) for m, n in run_plan.target_norms.items()},
                          "target_gains": run_plan.target_gains}, "plan", trained.checkpoint / "meta.json")
    for name in [run_target or slots[0], *slots]:  # they become file names: none may lead outside --out
        safe_name(name, "modality name", trained.checkpoint / "meta.json")
    subjects = find_input_subjects(input_path, run_plan.layout, slots, any_to_any)
    base = run_plan.volume_settings(slots)
    plans, skipped, complete = {}, {}, set()
    for sub in subjects:
        try:
            _check_subject_name(sub.id)
            plans[sub.id] = plan_subject(run_plan, sub.paths, target, use_sources)
        except SkipSubject as exc:
            skipped[sub.id] = _with_problem(sub, str(exc)) if exc.failed else str(exc)
            if not exc.failed:
                complete.add(sub.id)
    subjects = [s for s in subjects if s.id in plans]
    out = check_writable_dir(check_out_dir(out, "translate", opt.overwrite or opt.resume))  # and dead stages gone
    listed_target, listed_sources = (target, slots) if any_to_any else (run_target, slots)
    earlier = _earlier_entries(out, listed_target, listed_sources, opt.overwrite)
    claim_out_dir(out, "translate", ["translate.json", *[s.id for s in subjects]])  # a killed run's out stays ours
    planned = {(s.id, t): _outputs(out, s.id, t, opt.n_samples, opt.ceiling and t in s.paths,
                                   output_suffix(s.paths[used[0]]), s.layout)
               for s in subjects for t, used in plans[s.id]}
    record = _settings_record(trained, sampling, opt, weights)
    kept = _finished_before(out, earlier, record, listed_target) if opt.resume else {}
    if not (opt.overwrite or opt.resume):  # refuse before any work, so nothing is half replaced
        for files in planned.values():
            for f in _files_of(files):
                if f.exists():
                    raise ValueError(_exists_sentence(f, out))
    check_voxels((base.size or 1,) * 2, trained.checkpoint / "meta.json", "volume_settings plane")
    if base.spacing is None:
        say("translate: note: this run records no training voxel spacing (its data was prepared before phmdiff "
            "recorded it); the inputs' spacing is not checked.")
    translator = VolumeTranslator(trained, sampling, opt, say)
    if opt.axis is not None:
        said = run_plan.training_axis
        say(f"translate: --axis {opt.axis}: every input is sliced along the {AXIS_NAMES[opt.axis]} axis" + (
            "" if said in (None, opt.axis) else f", where the run was trained on {AXIS_NAMES[said]} slices: the model "
            "sees planes it was not trained on") + ".")
    if opt.n_samples > 1:
        say(_std_sentence(trained.std_scale, trained.std_scale_refused))
    estimated = [t for t in run_plan.generated if target_scale_kind(run_plan.volume, t) == "estimated"]
    if estimated:
        say(f"translate: note: the run normalized {', '.join(estimated)} by its own median, so a subject's "
            f"{'/'.join(estimated)} scale is estimated from its sources through the training subjects' gain ratios: "
            "its contrast is the model's, its absolute intensity a guess (score it with evaluate --protocol "
            "scalefree; docs/benchmarks.md, real_scale).")
    work = [(s, t, used) for s in subjects for t, used in plans[s.id] if (s.id, t) not in kept]
    if kept:
        say(f"translate: --continue: {len(kept)} subject(s) already complete in {out} (checksums match), "
            f"{len(work)} to translate.")
    entries, not_done = list(kept.values()), []
    bar = tqdm(total=len(work), desc="translate", unit="subject", file=sys.stderr) if opt.progress else None

    def listing(interrupted: str | None = None) -> dict:
        made = [run_target] if run_target else sorted({e.get("target") for e in entries}) or slots[:1]
        kinds = {"ct" if t in base.ct_modalities else "mr" for t in made}
        meta = {"target": listed_target, "sources": listed_sources, "modality_kind": kinds.pop() if len(kinds) == 1
                else "mixed", "checkpoint": str(trained.checkpoint), "weights": weights, "sampler": sampling.sampler,
                "steps": sampling.num_steps, "fine_steps": sampling.fine_num_steps,
                "sigma_start": sampling.sigma_start, "churn": sampling.churn, "guidance": sampling.guidance,
                "through_plane_filter": {"sigma": opt.z_sigma, "h": opt.z_h}, "settings": record,
                "subjects": entries, "skipped": [{"subject": sid, "reason": why, "failed": sid not in complete}
                                                 for sid, why in sorted(skipped.items())],
                "not_done": not_done, **({"any_to_any": True} if any_to_any else {})}
        merged = merge_listing(out, meta)  # under a lock, merged with what other runs listed
        return {**merged, **({"interrupted": interrupted} if interrupted else {})}

    def skip(sid: str, target: str, exc: Exception) -> None:
        reason = _failure(exc)
        skipped[sid] = f"{target}: {reason}" if any_to_any else reason
        if log is not None:
            log(f"translate: {sid} skipped: {reason}")

    with SignalGuard() as guard:
        for i, (sub, target, sources) in enumerate(work):
            if guard.signum is not None:
                break
            guard.armed = True
            try:
                entries.append(_translate_subject(translator, sub, target, sources, planned[sub.id, target], out))
            except Interrupted:  # rolled back: the subject's staged files were never published
                break
            except OSError as exc:
                if exc.errno in DISK_ERRORS:  # the output disk, not this subject: the batch stops with a sentence
                    raise
                skip(sub.id, target, exc)
            except Exception as exc:  # noqa: BLE001 - this subject only: any failure lists it with its reason
                skip(sub.id, target, exc)
            else:
                if log is not None:  # --no-progress still says what was done, a line per subject
                    log(f"translate: {sub.id} ({i + 1}/{len(work)}) -> {planned[sub.id, target]['prediction']}")
            finally:
                guard.armed = False
                if bar is not None:  # the bar counts subjects (translated or skipped), not sample volumes
                    bar.update(1)
        if guard.signum is not None:
            name = signal.Signals(guard.signum).name
            finished = {(e["subject"], e.get("target")) for e in entries} | {(sid, None) for sid in skipped}
            not_done.extend({"subject": s.id, "target": t, "reason": f"not translated: interrupted by {name}"}
                            for s, t, _ in work if (s.id, t) not in finished and (s.id, None) not in finished)
        if bar is not None:
            bar.close()
        return listing(signal.Signals(guard.signum).name if guard.signum is not None else None)


def _check_subject_name(sid: str) -> None:
    """A subject whose folder name cannot name its outputs is skipped with the reason (the batch goes on)."""
    if len(sid) > 200:
        raise SkipSubject(f"its folder name is {len(sid)} characters long; output names are limited to 200 "
                          "characters; rename the folder", failed=True)
    try:
        safe_name(sid, "subject folder name")
    except ValueError as exc:
        raise SkipSubject(f"{exc} Rename the folder", failed=True) from None


def _failure(exc: Exception) -> str:
    """One line saying why a subject failed: the sentence of a ValueError, else the error's kind and text."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return "out of memory (the volume is too big for this machine)"
    text = " ".join(str(exc).split()) or "no message"
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


def _settings_record(trained, sampling, opt: TranslateOptions, weights: str = "ema") -> dict:
    """What decides the outputs' values: a --continue must use the same, or its subjects would not match.
    `weights`: "ema" (the default, left out of the record), "model" or a state dict file."""
    return {"checkpoint": str(trained.checkpoint), **({"weights": weights} if weights != "ema" else {}),
            **sampling.to_dict(), "seed": opt.seed, "n_samples": opt.n_samples, "precision": opt.precision,
            "z_sigma": opt.z_sigma, "z_h": opt.z_h, "resample": opt.resample, "ceiling": opt.ceiling,
            **({"axis": opt.axis} if opt.axis is not None else {})}


def _finished_before(out: Path, earlier: list[dict], record: dict, target) -> dict:
    """--continue: the entries of translate.json whose files still have their recorded checksums, by (subject,
    target); a listing made with other settings is refused with a sentence."""
    old = read_listing(out)
    if old is None:
        return {}
    if old.get("settings") not in (None, record):
        changed = sorted(k for k in record if (old.get("settings") or {}).get(k) != record[k])
        raise ValueError(f"{out / LISTING}: was made with other settings ({', '.join(changed)}); --continue needs the "
                         "same run and options, or pass --overwrite to redo every subject.")
    return {(e.get("subject"), e.get("target", target)): e for e in earlier if is_complete(out, e)}


def _exists_sentence(path: Path, out: Path) -> str:
    """Why an existing output stops the batch, and how to go on."""
    old = read_listing(out)
    if old is not None and (old.get("subjects") or old.get("not_done")):
        return (f"{path}: output exists from an earlier translate into {out} (translate.json lists "
                f"{len(old.get('subjects') or [])} subject(s) done, {len(old.get('not_done') or [])} not done); "
                "pass --continue to keep the finished subjects and translate the rest, or --overwrite to redo them.")
    return f"{path}: output exists; pass --continue to keep finished subjects, or --overwrite to replace it."


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
    reference = sub.paths[sources[0]]
    dtype = output_dtype(target, pred.grid.settings, sub.paths.get(target, reference))
    folder = out / sub.id
    with atomic_dir(folder) as stage:  # published whole, or (failure, kill, Ctrl-C) not at all
        if folder.is_dir():  # the folder's other files (another target's) stay: linked into the stage
            shutil.copytree(folder, stage, symlinks=True, copy_function=os.link, dirs_exist_ok=True)
        _write_subject(translator, sub, sources, target, pred, reference, dtype,
                       {k: _in_stage(v, folder, stage) for k, v in files.items()})
    return _entry(sub, target, sources, files, out, pred, dtype, translator.options)


def _in_stage(value, folder: Path, stage: Path):
    """An output path (or list of them) under `folder` -> the same path under the stage folder."""
    if isinstance(value, list):
        return [stage / p.relative_to(folder) for p in value]
    return stage / value.relative_to(folder)


def _write_subject(translator, sub, sources, target, pred, reference, dtype, files: dict) -> None:
    """Write one subject's prediction (mean), std, samples and ceiling to `files`."""
    settings, n_samples = pred.grid.settings, translator.options.n_samples
    if n_samples > 1:
        for j, sample in enumerate(pred.samples):
            write_volume(sample, reference, files["samples"][j], dtype, settings.ct_window)
    write_volume(pred.mean, reference, files["prediction"], dtype, settings.ct_window)
    if n_samples > 1:
        write_volume(pred.std, reference, files["std"])
    if "ceiling" in files:
        oracle = oracle_volume(translator.trained, sub, settings, sources, target, pred.norm, pred.grid.resampling)
        write_volume(oracle, reference, files["ceiling"], dtype, settings.ct_window)


def _entry(sub, target, sources, files: dict, out: Path, pred, dtype, options) -> dict:
    """A subject's translate.json entry, with the checksums of its published files."""
    is_brats = (sub.layout or "").startswith("brats")
    seed, n_samples, settings = options.seed, options.n_samples, pred.grid.settings
    entry = {
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
        "std_scale": pred.std_scale if n_samples > 1 else None,
        "outside_training": pred.outside_training,
        "target_norm": asdict(pred.norm),
        "target_scale": target_scale_kind(settings, target),
        "dtype": str(dtype),
        "slice_axis": AXIS_NAMES[settings.axis],
        "spacing": {"input": pred.grid.in_plane, "training": settings.spacing,
                    "resampled": pred.grid.resampling is not None},
    }
    entry["checksums"] = checksums(out, entry)
    return entry


def _std_sentence(scale: float | None, refused: float | None = None) -> str:
    """What the std volume is: the samples' spread, calibrated on the run's validation slices, or not (none fitted,
    or a fitted factor refused as implausible, `std_calibration`)."""
    if refused is not None:
        return (f"translate: warning: the std volume is the samples' own spread, uncalibrated: the run's validation "
                f"std calibration was refused ({std_scale_refusal(refused) or 'recorded as refused by training'}: "
                f"{WHY_REFUSED}).")
    if scale is None:
        return ("translate: note: the std volume is the samples' own spread, uncalibrated: this checkpoint records "
                "no validation std calibration (train with eval.n_samples >= 2 and validation on to fit one).")
    return (f"translate: the std volume is the samples' spread x {scale:.2f}, the factor that matched it to the "
            "error on the run's validation slices (std_scale in translate.json).")


def _check_direction_choice(plan, target: str | None, use_sources: list[str] | None) -> None:
    """--target and --sources name modalities of an any-to-any run; a single-direction run takes only its own."""
    slots = list(plan.sources)
    if target and use_sources and target in use_sources:
        raise ValueError(f"--target {target} is also listed in --sources {' '.join(use_sources)}; the target is the "
                         "modality to synthesize: list only the modalities it is made from.")
    if not plan.any_to_any:
        if target not in (None, plan.target) or use_sources not in (None, slots):
            raise ValueError(f"this run translates {slots} -> {plan.target} only; --target and --sources "
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
    parser.add_argument("--run", required=True, help="run folder (its best checkpoint), checkpoint folder, or a "
                        "weights file: a checkpoint's model.safetensors / ema.safetensors, or a state dict (.pth, .pt) "
                        "in a run or checkpoint folder")
    parser.add_argument("--input", required=True, help="a subject folder or a folder of subjects")
    parser.add_argument("--out", required=True, help="output folder for NIfTI volumes and translate.json")
    parser.add_argument("--n-samples", type=whole(1, 1000), default=1, help="samples per subject: mean and std volumes")
    parser.add_argument("--seed", type=SEED, default=0, help="base seed (each subject, sample and slice its own)")
    parser.add_argument("--batch-size", type=COUNT, default=16,
                        help="slices per batch, each with all its samples (results do not depend on it)")
    add_device(parser)
    add_overwrite(parser, "replace existing outputs")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="go on with an interrupted batch: keep the subjects translate.json lists as complete "
                        "(their files' checksums match) and translate the rest")
    parser.add_argument("--ceiling", action="store_true",
                        help="also write the pipeline ceiling (the true target through the pipeline) where it exists")
    parser.add_argument("--z-sigma", type=finite_float(0, 32), default=Z_SIGMA,
                        help="through-plane joint bilateral filter guided by the sources: slice distance (0 = off)")
    parser.add_argument("--z-h", type=finite_float(0, 100, lo_open=True), default=Z_H,
                        help="the filter's source range (normalized units)")
    add_progress(parser, "one line per subject instead")
    parser.add_argument("--no-resample", action="store_true",
                        help="keep each input's in-plane spacing (default: resample to the training spacing and back)")
    parser.add_argument("--axis", type=whole(0, 2), default=None,
                        help="RAS axis to slice every input along: 0 sagittal, 1 coronal, 2 axial (default: the axis "
                             "the run's training data was sliced along)")
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
    if meta.get("interrupted"):  # one sentence: what was done, and how to go on
        left = len(meta.get("not_done") or [])
        print(f"phmdiff translate: interrupted by {meta['interrupted']}: {len(meta['subjects'])} subject(s) "
              f"translated and listed in {Path(args.out) / LISTING}, {left} not done; run the same command with "
              "--continue to translate the rest.", file=sys.stderr)
        return 143 if meta["interrupted"] == "SIGTERM" else 130
    made = sorted({str(e.get("target", meta["target"])) for e in meta["subjects"]})
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {', '.join(made)}.", file=sys.stderr)
    if meta["skipped"]:  # every subject is accounted for: the ones left out, each with its reason
        print(f"{args.out}: {len(meta['skipped'])} subject(s) not translated (listed in translate.json):",
              file=sys.stderr)
        for s in meta["skipped"]:
            print(f"  {s['subject']}: {s['reason']}", file=sys.stderr)
    return 1 if any(s.get("failed") for s in meta["skipped"]) else 0  # 1: a subject that needed a volume got none
