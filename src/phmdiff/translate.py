"""`phmdiff translate`: synthesize the missing modality of subjects' volumes with a trained PHMDiff run.

Each subject goes through the same per-volume steps as training (`phmdiff.data.volume`), its source slices
are encoded with the run's autoencoder, the target latents are sampled coarse to fine, decoded, and the
slices are put back on the input's grid, orientation and intensity units (the target's scale follows the
subject's own source scales, `prepare.subject_norm`). Every random draw is seeded by
(seed, subject, sample, slice), so reruns are identical and the batch size does not matter. Each output is
written atomically, in the input's format (NIfTI; MHA and NRRD through SimpleITK; a DICOM series gives NIfTI)
with its geometry; a CT target stored in integers stays integer HU, clipped to the run's window. Nothing is
overwritten without `--overwrite`. OUT/translate.json lists the outputs in the format `phmdiff evaluate`
reads, and every subject left out ("skipped": missing source, unreadable, NaN voxels, too big) with its
reason; one bad subject never stops the others, and the command exits 1 when any was left out.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from phmdiff.consistency import joint_bilateral_z
from phmdiff.data.names import ALIASES, canonical, output_stem
from phmdiff.devices import run_device
from phmdiff.finite import check_finite_numbers
from phmdiff.fsutil import atomic_write_text, check_inside, check_out_dir, check_writable_dir, claim_out_dir, safe_name
from phmdiff.inference import (
    SamplingSettings,
    TrainedRun,
    crop_plane,
    decode_target,
    encode_sources,
    load_trained,
    pad_plane,
    plane_multiple,
)
from phmdiff.limits import check_voxels
from phmdiff.options import add_device, add_overwrite, add_progress
from phmdiff.sample import SAMPLERS

NII = ".nii.gz"


def subject_seed(seed: int, subject: str, sample: int, index: int) -> int:
    """The seed of one slice of one sample of one subject: independent of batching and of other subjects."""
    return int(np.random.SeedSequence([seed, zlib.crc32(subject.encode()), sample, index]).generate_state(1)[0])


PRECISIONS = ("fp32", "bf16")
# The through-plane joint bilateral filter (`phmdiff.consistency`): slice distance sigma (0 = off) and source range
# h, in normalized units: chosen on the demo run's validation subject, confirmed on its test subjects
# (docs/benchmarks.md, "3D consistency").
Z_SIGMA, Z_H = 1.0, 0.06


@torch.no_grad()
def translate_samples(trained: TrainedRun, src: np.ndarray, seeds: list[list[int]], settings: SamplingSettings,
                      batch_size: int = 16, precision: str = "fp32", target: str | None = None,
                      sources: list[str] | None = None) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> predicted target slices (n_samples, n, H, W), in normalized units.

    `seeds[j][i]` seeds sample j of slice i. Each batch of `batch_size` slices is encoded once and all its samples
    are drawn in one batched sampling run (the network sees slices x samples together; `WindowedDenoiser` bounds
    one call). `precision="bf16"` runs the denoiser under bf16 autocast. An any-to-any run takes the `target` to
    synthesize and the names of the `sources` in `src`: they fill their slots of the run, every other slot is
    unavailable (black, masked out by the model).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    dev, n_samples = trained.device, len(seeds)
    slots = list(trained.identity["sources"])  # canonical names (`inference.canonical_identity`)
    pick = [slots.index(m) for m in (slots if sources is None else sources)]  # slot of each given source
    avail = torch.zeros(len(slots), device=dev)
    avail[pick] = 1.0
    out = np.empty((n_samples, src.shape[0], *src.shape[2:]), dtype=np.float32)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for lo in range(0, src.shape[0], batch_size):
        given = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch_size], dtype=np.float32)).to(dev) * 2 - 1
        n = given.shape[0]
        x = given.new_full((n, len(slots), *given.shape[2:]), -1.0)  # (n, n_slots, H, W)
        x[:, pick] = given
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)  # once for every sample
        cond = cond.repeat(n_samples, 1, 1, 1)  # (n_samples * n, n_slots * C, h, w), sample-major
        batch_seeds = [s for per_sample in seeds for s in per_sample[lo : lo + n]]
        with autocast:
            z = trained.sample(cond, avail.expand(n_samples * n, -1), batch_seeds, settings, target)
        pred = decode_target(trained.autoencoder, z.float(), trained.latent_scale)[:, 0]  # (n_samples * n, H, W)
        out[:, lo : lo + n] = pred.reshape(n_samples, n, *pred.shape[1:]).cpu().numpy()
    return out


def translate_slices(trained: TrainedRun, src: np.ndarray, seeds: list[int], settings: SamplingSettings,
                     batch_size: int = 16, precision: str = "fp32", target: str | None = None,
                     sources: list[str] | None = None) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> one predicted sample (n, H, W), in normalized units (about [0, 1])."""
    return translate_samples(trained, src, [list(seeds)], settings, batch_size, precision, target, sources)[0]


def plane_slices(volumes: dict, affine, settings, multiple: int) -> tuple[np.ndarray, object, list[list[int]]]:
    """`volume_to_slices` over the whole input plane: where training padded or cropped planes to `settings.size`,
    inference pads to at least that size and to a multiple of `multiple` (the run's `plane_multiple`), and never
    crops (a larger plane is sampled in blended windows, `phmdiff.windows`). Returns the slices, the spec and
    the pads `crop_plane` undoes.
    """
    from phmdiff.data.volume import volume_to_slices

    if settings.fit == "resize" and settings.size is not None:  # the plane is resized to the model size: no crop
        slices, spec = volume_to_slices(volumes, affine, settings)
        return slices, spec, [[0, 0], [0, 0]]
    slices, spec = volume_to_slices(volumes, affine, replace(settings, size=None))
    k = 2 * spec.context + 1
    mods = [m for m in settings.modalities if m in volumes]
    fills = [float(spec.norm[m].forward(np.float32(spec.background[m]))) for m in mods for _ in range(k)]
    slices, pads = pad_plane(slices, fills, settings.size or 0, multiple)
    return slices, spec, pads


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
    from phmdiff.data import bids
    from phmdiff.data.readers import LAYOUTS, _nifti_stem, check_input_folder, detect_layout, find_subjects

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


def output_suffix(reference: Path) -> str:
    """Outputs are written in the input's format: .nii.gz for NIfTI and DICOM series, .mha, .nrrd."""
    name = reference.name.lower()
    if name.endswith((".mha", ".mhd")):
        return ".mha"
    if name.endswith((".nrrd", ".nhdr")):
        return ".nrrd"
    return NII


def output_dtype(target: str, settings, reference: Path) -> np.dtype:
    """int16 for a CT target when the subject's CT (or first source) is stored in integers, else float32."""
    from phmdiff.data.readers import stored_dtype

    if target not in settings.ct_modalities:
        return np.dtype(np.float32)
    try:
        kind = stored_dtype(reference).kind
    except Exception:  # noqa: BLE001 - an unreadable header was already reported by the reader
        return np.dtype(np.float32)
    lo, hi = settings.ct_window
    fits = np.iinfo(np.int16).min <= lo and hi <= np.iinfo(np.int16).max
    return np.dtype(np.int16 if kind in "iu" and fits else (np.int32 if kind in "iu" else np.float32))


def to_output(volume: np.ndarray, dtype: np.dtype, window) -> np.ndarray:
    """A float prediction in the written type: integer CT rounded to whole HU and clipped to the HU window."""
    if np.dtype(dtype).kind in "iu":
        return np.clip(np.rint(volume), window[0], window[1]).astype(dtype)
    return volume.astype(dtype, copy=False)


def target_norm_for(settings, target: str, sources: list[str], source_norms: dict, reference, gain) -> object:
    """The synthesized target's intensity map for one subject, from its own sources' normalization.

    Runs prepared with `relative` normalization trained on exactly this map, so the inversion is exact; older
    runs scale the training median by the subject's source scales (`prepare.subject_norm`), a guess.
    """
    from phmdiff.data.prepare import subject_norm
    from phmdiff.data.volume import relative_norm

    rel = settings.relative.get(target)
    if not rel:
        return subject_norm(reference, gain, source_norms)
    missing = [m for m in rel if m not in source_norms]
    if missing:
        raise ValueError(f"the run normalizes {target} relative to {rel}, but {missing} are not among its sources "
                         f"{sources}; prepare the data with the run's own sources.")
    return relative_norm(source_norms, rel)


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


def translate(run: str | Path, input_path: str | Path, out: str | Path, steps: int | None = None,
              sampler: str | None = None, guidance: float | None = None, n_samples: int = 1, seed: int = 0,
              overwrite: bool = False, batch_size: int = 16, device: str = "auto", progress: bool = True,
              ceiling: bool = False, log=None, resample: bool = True, target: str | None = None,
              use_sources: list[str] | None = None, precision: str = "fp32", z_sigma: float = Z_SIGMA,
              z_h: float = Z_H) -> dict:
    """Translate every subject under `input_path`; returns the translate.json content.

    An any-to-any run synthesizes each subject's missing modalities (or only `target`) from the ones it has
    (or only those among `use_sources`), as `plan_subject` decides; each entry of translate.json names its
    target and the sources used, and subjects with nothing to do are listed under "skipped" with the reason.

    With `ceiling`, subjects whose real target is present also get the pipeline ceiling (`phmdiff.ceiling`):
    their true target sent through normalization, autoencoder and translate's inverse.
    With `resample` (default), each input's slice plane is resampled to the run's training spacing and the
    prediction back to the input's grid (`phmdiff.data.spacing`); without it, a spacing more than 10 % off is
    a warning. Notes and warnings go to `log` (stderr when None).
    """
    from phmdiff.data.volume import VolumeSettings

    if steps is not None and steps < 1:
        raise ValueError(f"--steps is {steps}; expected a positive number of sampling steps.")
    if n_samples < 1:
        raise ValueError(f"--n-samples is {n_samples}; expected 1 or more.")
    if seed < 0:
        raise ValueError(f"--seed is {seed}; expected a whole number of at least 0.")
    if batch_size < 1:
        raise ValueError(f"--batch-size is {batch_size}; expected 1 or more.")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if not (z_sigma >= 0 and z_h > 0):
        raise ValueError(f"--z-sigma {z_sigma} and --z-h {z_h}: expected z-sigma >= 0 (0 = off) and z-h > 0.")
    out = Path(out)
    # Which device, in one line once the run has loaded (bad input stays one sentence); a GPU asked for but
    # absent is a warning and the run goes on on the CPU.
    device_lines = []
    device = str(run_device(device, "translate", device_lines.append, origin="--device"))
    trained = load_trained(run, device)
    for line in device_lines:
        (log or (lambda msg: print(msg, file=sys.stderr, flush=True)))(line)
    sampling = trained.settings(sampler, steps, guidance)
    ident = trained.identity
    any_to_any = bool(ident.get("any_to_any"))
    slots = list(ident["sources"])  # the run's names are canonical (`inference.canonical_identity`)
    if not slots:
        raise ValueError(f"{trained.checkpoint}: this is a generation run (no source modalities); sample it with "
                         "phmdiff generate.")
    run_target = ident.get("target")
    target = canonical(target) if target else None
    use_sources = [canonical(m) for m in use_sources] if use_sources else None
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
    check_writable_dir(check_out_dir(out, "translate", overwrite))
    listed_target, listed_sources = (target, slots) if any_to_any else (run_target, slots)
    earlier = _earlier_entries(out, listed_target, listed_sources, overwrite)
    claim_out_dir(out, "translate", ["translate.json", *[s.id for s in subjects]])  # a killed run's out stays ours
    planned = {(s.id, t): _outputs(out, s.id, t, n_samples, ceiling and t in s.paths, output_suffix(s.paths[used[0]]),
                                   s.layout) for s in subjects for t, used in plans[s.id]}
    if not overwrite:  # refuse before any work, so nothing is half replaced
        for files in planned.values():
            for f in _files_of(files):
                if f.exists():
                    raise ValueError(f"{f}: output exists; pass --overwrite to replace it.")
    check_voxels((base.size or 1,) * 2, trained.checkpoint / "meta.json", "volume_settings plane")
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if base.spacing is None:
        say("translate: note: this run records no training voxel spacing (its data was prepared before phmdiff "
            "recorded it); the inputs' spacing is not checked.")
    entries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(p) for p in plans.values()), desc="translate", unit="subject",
                   file=sys.stderr)
    for sub, (target, sources) in ((s, p) for s in subjects for p in plans[s.id]):
        files = planned[sub.id, target]
        settings = VolumeSettings.from_dict({**ident["volume_settings"], "modalities": sources})
        target_norm, gain = _target_scale(ident, target, sources)
        try:
            entry = _translate_subject(trained, sub, sources, target, settings, target_norm, sampling, files,
                                       n_samples, seed, batch_size, out, gain, bar, resample, say,
                                       precision=precision, z_sigma=z_sigma, z_h=z_h)
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
            "guidance": sampling.guidance, "through_plane_filter": {"sigma": z_sigma, "h": z_h},
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


def _translate_subject(trained, sub, sources, target, settings, target_norm, sampling, files, n_samples, seed,
                       batch_size, out, gain, bar, resample=True, say=print, precision="fp32", z_sigma=Z_SIGMA,
                       z_h=Z_H) -> dict:
    """Translate one subject and write its files; returns its translate.json entry (ValueError: skip it).

    The whole plane is predicted (`plane_slices`), all samples of a batch of slices in one sampling run
    (`translate_samples`), then filtered through the plane (`joint_bilateral_z`, guided by the sources).
    """
    from phmdiff.data import spacing as sp
    from phmdiff.data.volume import load_subject_volumes, slices_to_volume, write_like

    for f in _files_of(files):  # a subject folder that is a link would carry the writes out of --out
        check_inside(out, f)
    volumes, affine, _ = load_subject_volumes(sub, sources)
    axis, _, in_plane = sp.slice_plane(affine, settings.axis)
    # Resampling the plane must not change which axis is sliced; every slice with any foreground is predicted
    # (training's min_foreground keeps nearly empty slices out of the training set, not out of a volume).
    settings = replace(settings, axis=axis, min_foreground=1e-12)
    plan = sp.plan(next(iter(volumes.values())).shape, affine, axis, settings.spacing) if settings.spacing else None
    if plan is not None and resample:
        say(f"translate: {sub.id}: in-plane spacing {sp.mm(plan.spacing)}, training {sp.mm(settings.spacing)}: "
            f"resampled to {sp.mm(plan.new_spacing)} and the prediction back onto the input's grid.")
        volumes = {m: sp.resize(v, plan.new_shape) for m, v in volumes.items()}
        affine = plan.affine
    elif plan is not None and any(abs(a / b - 1) > sp.TOLERANCE for a, b in zip(plan.spacing, settings.spacing)):
        say(f"translate: warning: {sub.id}: in-plane spacing {sp.mm(plan.spacing)} differs by more than "
            f"{sp.TOLERANCE:.0%} from the training spacing {sp.mm(settings.spacing)} and resampling is off "
            "(--no-resample): the model sees anatomy at a scale it was not trained on.")
    back = plan.back if plan is not None and resample else (lambda v: v)
    slices, spec, pads = plane_slices(volumes, affine, settings, plane_multiple(trained.cfg))
    del volumes
    k = 2 * spec.context + 1
    norm = target_norm_for(settings, target, sources, spec.norm, target_norm, gain)
    src = slices[:, spec.context :: k]  # centre slice of each source (n, n_src, H, W)
    reference = sub.paths[sources[0]]
    dtype = output_dtype(target, settings, sub.paths.get(target, reference))
    seeds = [[subject_seed(seed, sub.id, j, int(i)) for i in spec.indices] for j in range(n_samples)]
    preds = translate_samples(trained, src, seeds, sampling, batch_size, precision, target, sources)
    preds = joint_bilateral_z(preds, src, spec.indices, z_sigma, z_h)  # (n_samples, n, H, W), through-plane
    samples = []
    for j in range(n_samples):
        samples.append(back(slices_to_volume(crop_plane(preds[j], pads), spec, target, norm=norm)))
        if n_samples > 1:
            write_like(to_output(samples[-1], dtype, settings.ct_window), reference, files["samples"][j], dtype)
    stack = np.stack(samples)  # (n_samples, X, Y, Z)
    write_like(to_output(stack.mean(0), dtype, settings.ct_window), reference, files["prediction"], dtype)
    if n_samples > 1:
        write_like(stack.std(0), reference, files["std"])
    if "ceiling" in files:
        from phmdiff.ceiling import oracle_volume

        oracle = oracle_volume(trained, sub, settings, sources, target, norm, plan if resample else None)
        write_like(to_output(oracle, dtype, settings.ct_window), reference, files["ceiling"], dtype)
    is_brats = (sub.layout or "").startswith("brats")
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
        "target_norm": asdict(norm),
        "dtype": str(dtype),
        "spacing": {"input": in_plane, "training": settings.spacing, "resampled": plan is not None and resample},
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


def _target_scale(ident: dict, target: str, sources: list[str]):
    """The target's training intensity scale and its gains over `sources` (`prepare.gain_ratios`)."""
    from phmdiff.data.volume import NormParams

    if not ident.get("any_to_any"):
        return NormParams(**ident["target_norm"]), ident.get("target_gain")
    gains = (ident.get("target_gains") or {}).get(target)
    return NormParams(**ident["target_norms"][target]), {s: gains[s] for s in sources} if gains else None


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
    parser.add_argument("--steps", type=int, default=None, help="sampling steps at the coarsest level")
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None, help="default the run's eval.sampler")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--n-samples", type=int, default=1, help="samples per subject: mean and std volumes")
    parser.add_argument("--seed", type=int, default=0, help="base seed (each subject, sample and slice its own)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="slices per batch, each with all its samples (results do not depend on it)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the denoiser's arithmetic: fp32, or bf16 autocast")
    add_device(parser)
    add_overwrite(parser, "replace existing outputs")
    parser.add_argument("--ceiling", action="store_true",
                        help="also write the pipeline ceiling (the true target through the pipeline) where it exists")
    parser.add_argument("--z-sigma", type=float, default=Z_SIGMA,
                        help="through-plane joint bilateral filter guided by the sources: slice distance (0 = off)")
    parser.add_argument("--z-h", type=float, default=Z_H, help="the filter's source range (normalized units)")
    add_progress(parser, "one line per subject instead")
    parser.add_argument("--no-resample", action="store_true",
                        help="keep each input's in-plane spacing (default: resample to the training spacing and back)")
    parser.add_argument("--target", default=None,
                        help="any-to-any runs: synthesize only this modality (default: each one a subject lacks)")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="any-to-any runs: use only these of the modalities a subject has")


def run(args: argparse.Namespace) -> int:
    meta = translate(args.run, args.input, args.out, args.steps, args.sampler, args.guidance, args.n_samples,
                     args.seed, args.overwrite, args.batch_size, args.device, progress=not args.no_progress,
                     ceiling=args.ceiling, log=(lambda msg: print(msg, file=sys.stderr)) if args.no_progress else None,
                     resample=not args.no_resample, target=args.target, use_sources=args.sources,
                     precision=args.precision, z_sigma=args.z_sigma, z_h=args.z_h)
    made = sorted({e.get("target", meta["target"]) for e in meta["subjects"]})
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {', '.join(made)}.", file=sys.stderr)
    if meta["skipped"]:  # every subject is accounted for: the ones left out, each with its reason
        print(f"{args.out}: {len(meta['skipped'])} subject(s) not translated (listed in translate.json):",
              file=sys.stderr)
        for s in meta["skipped"]:
            print(f"  {s['subject']}: {s['reason']}", file=sys.stderr)
    return 1 if any(s["failed"] for s in meta["skipped"]) else 0  # 1: a subject that needed a volume got none
