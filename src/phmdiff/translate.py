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

from phmdiff.devices import DEVICES, run_device
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
                     batch_size: int = 16) -> np.ndarray:
    """Source slices (n, n_src, H, W) -> predicted target slices (n, H, W), both in normalized units (about [0, 1])."""
    dev = trained.device
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch_size], dtype=np.float32)).to(dev) * 2 - 1
        n = x.shape[0]
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)
        z = trained.sample(cond, torch.ones(n, x.shape[1], device=dev), seeds[lo : lo + n], settings)
        out[lo : lo + n] = decode_target(trained.autoencoder, z, trained.latent_scale)[:, 0].cpu().numpy()
    return out


def find_input_subjects(path: str | Path, layout: str | None, sources: list[str]):
    """Subjects under a dataset root, or the one subject whose folder is `path`."""
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
              ceiling: bool = False, log=None) -> dict:
    """Translate every subject under `input_path`; returns the translate.json content.

    With `ceiling`, subjects whose real target is present also get the pipeline ceiling (`phmdiff.ceiling`):
    their true target sent through normalization, autoencoder and translate's inverse.
    """
    from phmdiff.data.volume import (
        NormParams,
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
    # Which device, in one line once the run has loaded (bad input stays one sentence); a GPU asked for but
    # absent is a warning and the run goes on on the CPU.
    device_lines = []
    device = str(run_device(device, "translate", device_lines.append))
    trained = load_trained(run, device)
    for line in device_lines:
        (log or (lambda msg: print(msg, file=sys.stderr, flush=True)))(line)
    sampling = trained.settings(sampler, steps, guidance)
    ident = trained.identity
    sources, target = list(ident["sources"]), ident["target"]
    check_finite_numbers({k: ident.get(k) for k in ("target_norm", "target_gain")}, "identity",
                         trained.checkpoint / "meta.json")
    for name in [target, *sources]:  # they become file names: none may lead outside --out
        safe_name(name, "modality name", trained.checkpoint / "meta.json")
    subjects = find_input_subjects(input_path, ident.get("layout"), sources)
    for sub in subjects:
        safe_name(sub.id, "subject id", input_path)
    check_writable_dir(check_out_dir(out, "translate", overwrite))
    earlier = _earlier_entries(out, target, sources, overwrite)
    claim_out_dir(out, "translate", ["translate.json", *[s.id for s in subjects]])  # a killed run's out stays ours
    planned = {s.id: _outputs(out, s.id, target, n_samples, ceiling and target in s.paths) for s in subjects}
    if not overwrite:  # refuse before any work, so nothing is half replaced
        for files in planned.values():
            for f in [files["prediction"], files.get("std"), files.get("ceiling"), *files.get("samples", [])]:
                if f is not None and f.exists():
                    raise ValueError(f"{f}: output exists; pass --overwrite to replace it.")
    settings = VolumeSettings.from_dict({**ident["volume_settings"], "modalities": sources})
    check_voxels((settings.size or 1,) * 2, trained.checkpoint / "meta.json", "volume_settings plane")
    target_norm = NormParams(**ident["target_norm"])
    kind = "ct" if target in settings.ct_modalities else "mr"
    entries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(subjects) * n_samples, desc="translate", unit="volume", file=sys.stderr)
    for sub in subjects:
        volumes, affine, _ = load_subject_volumes(sub, sources)
        slices, spec = volume_to_slices(volumes, affine, settings)
        del volumes
        k = 2 * spec.context + 1
        norm = target_norm_for(settings, target, sources, spec.norm, target_norm, ident.get("target_gain"))
        src = slices[:, spec.context :: k]  # centre slice of each source (n, n_src, H, W)
        reference = sub.paths[sources[0]]
        files = planned[sub.id]
        samples = []
        for j in range(n_samples):
            seeds = [subject_seed(seed, sub.id, j, int(i)) for i in spec.indices]
            pred = translate_slices(trained, src, seeds, sampling, batch_size)
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
            log(f"translate: {sub.id} ({len(entries)}/{len(subjects)}) -> {files['prediction']}")
    if bar is not None:
        bar.close()
    meta = {"target": target, "sources": sources, "modality_kind": kind, "checkpoint": str(trained.checkpoint),
            "sampler": sampling.sampler, "steps": sampling.num_steps, "guidance": sampling.guidance,
            "subjects": [e for e in earlier if e.get("subject") not in {n["subject"] for n in entries}] + entries}
    atomic_write_text(out / "translate.json", json.dumps(meta, indent=1))
    return meta


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


def run(args: argparse.Namespace) -> int:
    meta = translate(args.run, args.input, args.out, args.steps, args.sampler, args.guidance, args.n_samples,
                     args.seed, args.overwrite, args.batch_size, args.device, progress=not args.no_progress,
                     ceiling=args.ceiling, log=(lambda msg: print(msg, file=sys.stderr)) if args.no_progress else None)
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {meta['target']}.", file=sys.stderr)
    return 0
