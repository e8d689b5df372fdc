"""`phmdiff translate`: synthesize the missing modality of NIfTI subjects with a trained PHMDiff run.

Each subject goes through the same per-volume steps as training (`phmdiff.data.volume`), its source slices
are encoded with the run's autoencoder, the target latents are sampled coarse to fine, decoded, and the
slices are put back on the input's grid, orientation and intensity units (the target's scale follows the
subject's own source scales, `prepare.subject_norm`). Every random draw is seeded by
(seed, subject, sample, slice), so reruns are identical and the batch size does not matter. Each NIfTI is
written atomically; nothing is overwritten without `--overwrite`. OUT/translate.json lists the outputs in
the format `phmdiff evaluate` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from phmdiff.devices import DEVICES
from phmdiff.finite import check_finite_numbers
from phmdiff.fsutil import atomic_write_text, check_out_dir, check_writable_dir, claim_out_dir, safe_name
from phmdiff.inference import SamplingSettings, TrainedRun, decode_target, encode_sources, load_trained
from phmdiff.limits import check_voxels
from phmdiff.sample import SAMPLERS

NII = ".nii.gz"


def subject_seed(seed: int, subject: str, sample: int, index: int) -> int:
    """The seed of one slice of one sample of one subject: independent of batching and of other subjects."""
    return int(np.random.SeedSequence([seed, zlib.crc32(subject.encode()), sample, index]).generate_state(1)[0])


@torch.no_grad()
def translate_slices(trained: TrainedRun, src: np.ndarray, seeds: list[int], settings: SamplingSettings,
                     batch_size: int = 16, target: str | None = None, sources: list[str] | None = None) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> predicted target slices (n, H, W), both in normalized units (about [0, 1]).

    An any-to-any run takes the `target` to synthesize and the names of the `sources` in `src`: they fill their
    slots of the run, every other slot is unavailable (black, masked out by the model).
    """
    dev = trained.device
    slots = list(trained.identity["sources"])
    sources = slots if sources is None else list(sources)
    pick = [slots.index(m) for m in sources]  # slot of each given source
    avail = torch.zeros(len(slots), device=dev)
    avail[pick] = 1.0
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch_size):
        given = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch_size], dtype=np.float32)).to(dev) * 2 - 1
        n = given.shape[0]
        x = given.new_full((n, len(slots), *given.shape[2:]), -1.0)  # (n, n_slots, H, W)
        x[:, pick] = given
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)
        z = trained.sample(cond, avail.expand(n, -1), seeds[lo : lo + n], settings, target)
        out[lo : lo + n] = decode_target(trained.autoencoder, z, trained.latent_scale)[:, 0].cpu().numpy()
    return out


class SkipSubject(ValueError):
    """A subject that translate cannot serve; the message says why."""


def plan_subject(identity: dict, present, target: str | None = None,
                 sources: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """Which target(s) to synthesize for one subject, each with the sources it is made from.

    A single-direction run makes its target from its sources. An any-to-any run makes every modality of the
    run the subject lacks (or only `target`, present or not, which lets a real one be scored) from exactly the
    run's modalities the subject has, optionally only those among `sources`. Raises SkipSubject with the reason
    when there is nothing to make or nothing to make it from.
    """
    slots, present = list(identity["sources"]), set(present)
    if not identity.get("any_to_any"):
        missing = [m for m in slots if m not in present]
        if missing:
            raise SkipSubject(f"missing source modality {', '.join(missing)} (the run translates {slots} -> "
                              f"{identity['target']})")
        return [(identity["target"], slots)]
    usable = [m for m in slots if m in present and (sources is None or m in sources)]
    targets = [target] if target is not None else [m for m in slots if m not in present]
    if not targets:
        raise SkipSubject(f"has every modality of the run ({', '.join(slots)}); nothing to synthesize "
                          "(pass --target to re-synthesize one)")
    plan = [(t, [m for m in usable if m != t]) for t in targets]
    for t, used in plan:
        if not used:
            wanted = f" among {sources}" if sources is not None else ""
            raise SkipSubject(f"has none of the run's other modalities{wanted} to synthesize {t} from")
    return plan


def find_input_subjects(path: str | Path, layout: str | None, sources: list[str], any_to_any: bool = False):
    """Subjects under a dataset root, or the one subject whose folder is `path` (an any-to-any run keeps those
    with at least one of its modalities; `plan_subject` says what each one gets)."""
    from phmdiff.data.readers import LAYOUTS, find_subjects

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: input folder not found; expected a subject folder or a folder of subjects.")
    layout = layout if layout in LAYOUTS and layout != "png" else "auto"
    single = any(p.name.endswith((".nii", ".nii.gz")) for p in path.iterdir() if p.is_file())
    root = path.parent if single else path
    subjects = find_subjects(root, layout)
    if single:
        subjects = [s for s in subjects if s.id == path.name]
    if any_to_any:
        usable = [s for s in subjects if any(m in s.paths for m in sources)]
        if not usable:
            raise ValueError(f"{path}: no subject has any of the run's modalities {sources}.")
        return usable
    usable = [s for s in subjects if all(m in s.paths for m in sources)]
    if not usable:
        missing = sorted({m for s in subjects for m in sources if m not in s.paths})
        raise ValueError(f"{path}: no subject has all source modalities {sources} (missing {missing}).")
    return usable


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


def _outputs(out: Path, sid: str, target: str, n_samples: int, ceiling: bool = False) -> dict:
    folder = out / sid
    files = {"prediction": folder / f"{sid}_{target}{NII}"}
    if ceiling:
        files["ceiling"] = folder / f"{sid}_{target}_ceiling{NII}"
    if n_samples > 1:
        files["std"] = folder / f"{sid}_{target}_std{NII}"
        files["samples"] = [folder / "samples" / f"{sid}_{target}_sample{j}{NII}" for j in range(n_samples)]
    return files


def translate(run: str | Path, input_path: str | Path, out: str | Path, steps: int | None = None,
              sampler: str | None = None, guidance: float | None = None, n_samples: int = 1, seed: int = 0,
              overwrite: bool = False, batch_size: int = 16, device: str = "auto", progress: bool = True,
              ceiling: bool = False, log=None, target: str | None = None, use_sources: list[str] | None = None) -> dict:
    """Translate every subject under `input_path`; returns the translate.json content.

    An any-to-any run synthesizes each subject's missing modalities (or only `target`) from the ones it has
    (or only those among `use_sources`), as `plan_subject` decides; each entry of translate.json names its
    target and the sources used, and subjects with nothing to do are listed under "skipped" with the reason.

    With `ceiling`, subjects whose real target is present also get the pipeline ceiling (`phmdiff.ceiling`):
    their true target sent through normalization, autoencoder and translate's inverse.
    """
    from phmdiff.data.volume import (
        VolumeSettings,
        load_subject_volumes,
        slices_to_volume,
        volume_to_slices,
        write_like,
    )

    if steps is not None and steps < 1:
        raise ValueError(f"--steps is {steps}; expected a positive number of sampling steps.")
    if n_samples < 1:
        raise ValueError(f"--n-samples is {n_samples}; expected 1 or more.")
    if seed < 0:
        raise ValueError(f"--seed is {seed}; expected a whole number of at least 0.")
    if batch_size < 1:
        raise ValueError(f"--batch-size is {batch_size}; expected 1 or more.")
    out = Path(out)
    trained = load_trained(run, device)
    sampling = trained.settings(sampler, steps, guidance)
    ident = trained.identity
    any_to_any = bool(ident.get("any_to_any"))
    slots, run_target = list(ident["sources"]), ident["target"]
    _check_direction_choice(ident, target, use_sources)
    check_finite_numbers({k: ident.get(k) for k in ("target_norm", "target_gain", "target_norms", "target_gains")},
                         "identity", trained.checkpoint / "meta.json")
    for name in [run_target or slots[0], *slots]:  # they become file names: none may lead outside --out
        safe_name(name, "modality name", trained.checkpoint / "meta.json")
    subjects = find_input_subjects(input_path, ident.get("layout"), slots, any_to_any)
    for sub in subjects:
        safe_name(sub.id, "subject id", input_path)
    plans, skipped = {}, []
    for sub in subjects:
        try:
            plans[sub.id] = plan_subject(ident, sub.paths, target, use_sources)
        except SkipSubject as exc:
            skipped.append({"subject": sub.id, "reason": str(exc)})
    subjects = [s for s in subjects if s.id in plans]
    if not subjects:
        raise ValueError(f"{input_path}: no subject to translate ({skipped[0]['subject']}: {skipped[0]['reason']}"
                         f"{f', and {len(skipped) - 1} more' if len(skipped) > 1 else ''}).")
    check_writable_dir(check_out_dir(out, "translate", overwrite))
    listed_target, listed_sources = (target, slots) if any_to_any else (run_target, slots)
    earlier = _earlier_entries(out, listed_target, listed_sources, overwrite)
    claim_out_dir(out, "translate", ["translate.json", *[s.id for s in subjects]])  # a killed run's out stays ours
    planned = {(s.id, t): _outputs(out, s.id, t, n_samples, ceiling and t in s.paths)
               for s in subjects for t, _ in plans[s.id]}
    if not overwrite:  # refuse before any work, so nothing is half replaced
        for files in planned.values():
            for f in [files["prediction"], files.get("std"), files.get("ceiling"), *files.get("samples", [])]:
                if f is not None and f.exists():
                    raise ValueError(f"{f}: output exists; pass --overwrite to replace it.")
    check_voxels((ident["volume_settings"].get("size") or 1,) * 2, trained.checkpoint / "meta.json",
                 "volume_settings plane")
    entries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(p) for p in plans.values()) * n_samples, desc="translate", unit="volume",
                   file=sys.stderr)
    for sub, (target, sources) in ((s, p) for s in subjects for p in plans[s.id]):
        settings = VolumeSettings.from_dict({**ident["volume_settings"], "modalities": sources})
        target_norm, gain = _target_scale(ident, target, sources)
        kind = "ct" if target in settings.ct_modalities else "mr"
        volumes, affine, _ = load_subject_volumes(sub, sources)
        slices, spec = volume_to_slices(volumes, affine, settings)
        del volumes
        k = 2 * spec.context + 1
        norm = target_norm_for(settings, target, sources, spec.norm, target_norm, gain)
        src = slices[:, spec.context :: k]  # centre slice of each source (n, n_src, H, W)
        reference = sub.paths[sources[0]]
        files = planned[sub.id, target]
        samples = []
        for j in range(n_samples):
            seeds = [subject_seed(seed, sub.id, j, int(i)) for i in spec.indices]
            pred = translate_slices(trained, src, seeds, sampling, batch_size, target, sources)
            samples.append(slices_to_volume(pred, spec, target, norm=norm))
            if n_samples > 1:
                write_like(samples[-1], reference, files["samples"][j])
            if bar is not None:
                bar.update(1)
        stack = np.stack(samples)  # (n_samples, X, Y, Z)
        write_like(stack.mean(0), reference, files["prediction"])
        if n_samples > 1:
            write_like(stack.std(0), reference, files["std"])
        if "ceiling" in files:
            from phmdiff.ceiling import oracle_volume

            write_like(oracle_volume(trained, sub, settings, sources, target, norm), reference, files["ceiling"])
        is_brats = (sub.layout or "").startswith("brats")
        entries.append({
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
        })
        if log is not None:  # --no-progress still says what was done, a line per subject
            log(f"translate: {sub.id} ({len(entries)}/{len(planned)}) -> {files['prediction']}")
    if bar is not None:
        bar.close()
    done = {(n["subject"], n.get("target")) for n in entries}
    meta = {"target": listed_target, "sources": listed_sources, "modality_kind": kind,
            "checkpoint": str(trained.checkpoint), "sampler": sampling.sampler, "steps": sampling.num_steps,
            "guidance": sampling.guidance,
            "subjects": [e for e in earlier
                         if (e.get("subject"), e.get("target", listed_target)) not in done] + entries}
    if any_to_any:
        meta["any_to_any"] = True
    if skipped:
        meta["skipped"] = skipped
    atomic_write_text(out / "translate.json", json.dumps(meta, indent=1))
    return meta


def _check_direction_choice(ident: dict, target: str | None, use_sources: list[str] | None) -> None:
    """--target and --sources name modalities of an any-to-any run; a single-direction run takes only its own."""
    slots = list(ident["sources"])
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
    gains = ident["target_gains"].get(target)
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
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None)
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--n-samples", type=int, default=1, help="samples per subject: mean and std volumes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16, help="slices per batch (results do not depend on it)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--ceiling", action="store_true",
                        help="also write the pipeline ceiling (the true target through the pipeline) where it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per subject instead)")
    parser.add_argument("--target", default=None,
                        help="any-to-any runs: synthesize only this modality (default: each one a subject lacks)")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="any-to-any runs: use only these of the modalities a subject has")


def run(args: argparse.Namespace) -> int:
    meta = translate(args.run, args.input, args.out, args.steps, args.sampler, args.guidance, args.n_samples,
                     args.seed, args.overwrite, args.batch_size, args.device, progress=not args.no_progress,
                     ceiling=args.ceiling, log=(lambda msg: print(msg, file=sys.stderr)) if args.no_progress else None,
                     target=args.target, use_sources=args.sources)
    for skip in meta.get("skipped", []):
        print(f"translate: skipped {skip['subject']}: {skip['reason']}.", file=sys.stderr)
    made = sorted({e.get("target", meta["target"]) for e in meta["subjects"]})
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {', '.join(made)}.", file=sys.stderr)
    return 0
