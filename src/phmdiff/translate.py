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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from phmdiff.consistency import joint_bilateral_z
from phmdiff.devices import DEVICES
from phmdiff.finite import check_finite_numbers
from phmdiff.fsutil import atomic_write_text, check_out_dir, check_writable_dir, claim_out_dir, safe_name
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
                      batch_size: int = 16, precision: str = "fp32") -> np.ndarray:
    """Source slices (n, n_src, H, W) -> predicted target slices (n_samples, n, H, W), in normalized units.

    `seeds[j][i]` seeds sample j of slice i. Each batch of `batch_size` slices is encoded once and all its samples
    are drawn in one batched sampling run (the network sees slices x samples together; `WindowedDenoiser` bounds
    one call). `precision="bf16"` runs the denoiser under bf16 autocast.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    dev, n_samples = trained.device, len(seeds)
    out = np.empty((n_samples, src.shape[0], *src.shape[2:]), dtype=np.float32)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    for lo in range(0, src.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch_size], dtype=np.float32)).to(dev) * 2 - 1
        n = x.shape[0]
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)  # once for every sample
        cond = cond.repeat(n_samples, 1, 1, 1)  # (n_samples * n, n_src * C, h, w), sample-major
        batch_seeds = [s for per_sample in seeds for s in per_sample[lo : lo + n]]
        with autocast:
            z = trained.sample(cond, torch.ones(n_samples * n, x.shape[1], device=dev), batch_seeds, settings)
        pred = decode_target(trained.autoencoder, z.float(), trained.latent_scale)[:, 0]  # (n_samples * n, H, W)
        out[:, lo : lo + n] = pred.reshape(n_samples, n, *pred.shape[1:]).cpu().numpy()
    return out


def translate_slices(trained: TrainedRun, src: np.ndarray, seeds: list[int], settings: SamplingSettings,
                     batch_size: int = 16, precision: str = "fp32") -> np.ndarray:
    """Source slices (n, n_src, H, W) -> one predicted sample (n, H, W), in normalized units (about [0, 1])."""
    return translate_samples(trained, src, [list(seeds)], settings, batch_size, precision)[0]


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
              ceiling: bool = False, log=None, precision: str = "fp32", z_sigma: float = Z_SIGMA,
              z_h: float = Z_H) -> dict:
    """Translate every subject under `input_path`; returns the translate.json content.

    With `ceiling`, subjects whose real target is present also get the pipeline ceiling (`phmdiff.ceiling`):
    their true target sent through normalization, autoencoder and translate's inverse.
    """
    from phmdiff.data.volume import (
        NormParams,
        VolumeSettings,
        load_subject_volumes,
        slices_to_volume,
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
    if precision not in PRECISIONS:
        raise ValueError(f"--precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if not (z_sigma >= 0 and z_h > 0):
        raise ValueError(f"--z-sigma {z_sigma} and --z-h {z_h}: expected z-sigma >= 0 (0 = off) and z-h > 0.")
    out = Path(out)
    trained = load_trained(run, device)
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
        slices, spec, pads = plane_slices(volumes, affine, settings, plane_multiple(trained.cfg))
        del volumes
        k = 2 * spec.context + 1
        norm = target_norm_for(settings, target, sources, spec.norm, target_norm, ident.get("target_gain"))
        src = slices[:, spec.context :: k]  # centre slice of each source (n, n_src, H, W)
        reference = sub.paths[sources[0]]
        files = planned[sub.id]
        seeds = [[subject_seed(seed, sub.id, j, int(i)) for i in spec.indices] for j in range(n_samples)]
        preds = translate_samples(trained, src, seeds, sampling, batch_size, precision)  # (n_samples, n, H, W)
        preds = joint_bilateral_z(preds, src, spec.indices, z_sigma, z_h)  # through-plane consistency
        samples = []
        for j in range(n_samples):
            samples.append(slices_to_volume(crop_plane(preds[j], pads), spec, target, norm=norm))
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
            "through_plane_filter": {"sigma": z_sigma, "h": z_h},
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
    parser.add_argument("--batch-size", type=int, default=16,
                        help="slices per batch, each with all its samples (results do not depend on it)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="the denoiser's arithmetic: fp32, or bf16 autocast")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--ceiling", action="store_true",
                        help="also write the pipeline ceiling (the true target through the pipeline) where it exists")
    parser.add_argument("--z-sigma", type=float, default=Z_SIGMA,
                        help="through-plane joint bilateral filter guided by the sources: slice distance (0 = off)")
    parser.add_argument("--z-h", type=float, default=Z_H, help="the filter's source range (normalized units)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per subject instead)")


def run(args: argparse.Namespace) -> int:
    meta = translate(args.run, args.input, args.out, args.steps, args.sampler, args.guidance, args.n_samples,
                     args.seed, args.overwrite, args.batch_size, args.device, progress=not args.no_progress,
                     ceiling=args.ceiling, log=(lambda msg: print(msg, file=sys.stderr)) if args.no_progress else None,
                     precision=args.precision, z_sigma=args.z_sigma, z_h=args.z_h)
    print(f"{args.out}: {len(meta['subjects'])} subject(s) translated to {meta['target']}.", file=sys.stderr)
    return 0
