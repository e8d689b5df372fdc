"""`phmdiff generate`: sample slices from a trained run to PNG files, a PNG grid and NIfTI.

From a generation run (`data.sources: []`): unconditional samples of its target, or of the modality named by
`--label` in a label-conditional run (`data.targets`), with classifier-free guidance `--guidance W` against the
null label. From a translation run: the target with no sources (the null condition that condition dropout
trained), or conditioned on the source slices of a prepared split (`--condition val|test`, seed s uses slice
s mod n). Each sample is seeded by its own seed, so `--seeds 0-63` gives the same images with any
`--batch-size`. Beside each sample the grid shows its nearest training slice (L2 in pixel space over the run's
training slices of that modality), so memorization can be seen; `nearest.json` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from phmdiff.argtypes import COUNT
from phmdiff.checkpoint_io import resolve_weights
from phmdiff.data.names import canonical
from phmdiff.devices import run_device
from phmdiff.fsutil import atomic_path, atomic_write_text, check_out_dir, check_writable_dir, publish_dir
from phmdiff.image_grid import labelled_grid
from phmdiff.inference import decode_target, encode_sources, load_trained
from phmdiff.options import add_device, add_overwrite
from phmdiff.sampling_args import PRECISIONS, SamplingChoices, add_sampling_arguments

MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """'0-63', '1,5,9' or '0-3,10' -> a list of seeds; reversed ranges and negative seeds are refused."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            raise ValueError(f"seeds {text!r} have an empty item; expected e.g. 0-63 or 1,5,9.")
        lo, sep, hi = part.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            raise ValueError(f"seeds {text!r}: {part!r} is not a whole number or a range like 0-63.") from None
        if a > b:
            raise ValueError(f"seeds {text!r}: range {part!r} runs backwards; write it as {b}-{a}.")
        if b - a + 1 + len(seeds) > MAX_SEEDS:
            raise ValueError(f"seeds {text!r} ask for more than {MAX_SEEDS} samples.")
        seeds.extend(range(a, b + 1))
    if any(s >= 2**32 for s in seeds):
        raise ValueError(f"seeds {text!r}: seeds must be below 2^32.")
    return seeds


def _seed_text(seeds: list[int]) -> str:
    """'seeds 0-3' for a run of consecutive seeds, else 'seeds 1, 5, 9'."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def sample_grid(images: np.ndarray, nearest: np.ndarray | None, seeds: list[int], modality: str) -> np.ndarray:
    """grid.png: the samples (N, H, W) in [0, 1], as square as possible, each beside its nearest training slice
    when given; each row named by its modality and seeds, each column 'sample' or 'nearest training slice'."""
    n = len(images)
    per_row = int(np.ceil(np.sqrt(n)))
    pairs = [[images[i]] + ([nearest[i]] if nearest is not None else []) for i in range(n)]
    cells, rows = [], []
    for lo in range(0, n, per_row):
        cells.append([c for pair in pairs[lo : lo + per_row] for c in pair])
        rows.append(f"{modality}\n{_seed_text(seeds[lo : lo + per_row])}")
    titles = ["sample", "nearest training slice"] if nearest is not None else ["sample"]
    return labelled_grid(cells, rows, titles * min(per_row, n))


def _training_slices(prepared_dir, modality: str):
    """The run's training slices of `modality` (prepared, in [0, 1]), or None with a reason when unreadable."""
    from phmdiff.data.datasets import TargetSlices

    try:
        data = TargetSlices(prepared_dir, "train", modality)
    except (OSError, ValueError) as exc:
        return None, f"no nearest training slices ({' '.join(str(exc).split())})"
    return data, None


@torch.no_grad()
def nearest_slices(images: np.ndarray, data, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each image (N, H, W) in [0, 1], the index of the nearest training slice of `data` (L2 over pixels)
    and its root-mean-square distance; training slices are read `chunk` at a time (never all in memory)."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float64).reshape(len(images), -1))  # (N, P)
    best_d = torch.full((len(images),), np.inf, dtype=torch.float64)
    best_i = torch.zeros(len(images), dtype=torch.long)
    for lo in range(0, len(data), chunk):
        ys = torch.stack([(data[i]["target"][0].double() + 1) / 2 for i in range(lo, min(lo + chunk, len(data)))])
        if ys.shape[1:] != images.shape[1:]:
            raise ValueError(f"training slices are {tuple(ys.shape[1:])} but the samples are {images.shape[1:]}.")
        d = torch.cdist(x, ys.reshape(len(ys), -1))  # (N, chunk)
        m, j = d.min(dim=1)
        better = m < best_d
        best_d, best_i = torch.where(better, m, best_d), torch.where(better, j + lo, best_i)
    return best_i.numpy(), (best_d / np.sqrt(x.shape[1])).numpy()


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")


@torch.no_grad()
def sample_images(trained, seeds: list[int], settings, label_index: int, batch_size: int = 16,
                  precision: str = "fp32", sources=None) -> np.ndarray:
    """One slice (N, H, W) in [0, 1] per seed, of the modality with label `label_index`: without sources (the
    null condition), or conditioned on the prepared split `sources` (seed s uses slice s mod n)."""
    cfg, dev = trained.cfg, trained.device
    n_src, c, size = len(trained.plan.sources), cfg.model.in_channels, cfg.model.in_size
    images = []
    for lo in range(0, len(seeds), batch_size):
        chunk = seeds[lo : lo + batch_size]
        n = len(chunk)
        if sources is None:
            cond = torch.zeros(n, n_src * c, size, size, device=dev)
            avail = torch.zeros(n, n_src, device=dev)
        else:
            k = sources.k
            src = torch.stack([sources[s % len(sources)]["source"][k // 2 :: k] for s in chunk]).to(dev)
            cond = encode_sources(trained.autoencoder, src, trained.latent_scale)
            avail = torch.ones(n, n_src, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            z = trained.sample(cond, avail, chunk, settings, label=label_index)
        images.append(decode_target(trained.autoencoder, z.float(), trained.latent_scale)[:, 0].cpu().numpy())
    return np.concatenate(images)  # (N, H, W) in [0, 1]


@torch.no_grad()
def generate(run, out, seeds: list[int], steps: int | None = None, sampler: str | None = None,
             guidance: float | None = None, condition: str = "none", batch_size: int = 16, device: str = "auto",
             overwrite: bool = False, label: str | None = None, nearest: bool = True,
             churn: float | None = None, *, fine_steps: int | None = None, sigma_start: float | None = None,
             precision: str = "fp32") -> dict:
    """Sample one slice per seed of modality `label` (default: the run's target); writes OUT/png/seedNNNNNN.png,
    OUT/grid.png (each sample beside its nearest training slice), OUT/samples.nii.gz, OUT/generate.json and
    OUT/nearest.json. `run`: a run folder, a checkpoint folder or a checkpoint's weights file."""
    import nibabel as nib

    choices = SamplingChoices(sampler, steps, fine_steps, sigma_start, churn, guidance)  # checked: one sentence each
    if precision not in PRECISIONS:
        raise ValueError(f"--precision is {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if batch_size < 1:
        raise ValueError(f"--batch-size is {batch_size}; expected 1 or more.")
    if not seeds:
        raise ValueError("no seeds given; expected e.g. --seeds 0-63.")
    out = check_out_dir(out, "generate", overwrite)
    check_writable_dir(out.parent)
    if (out / "grid.png").exists() and not overwrite:
        raise ValueError(f"{out / 'grid.png'}: output exists; pass --overwrite to replace it.")
    choice = resolve_weights(run)
    device_lines = []  # said once the run has loaded, so that a bad run folder stays one sentence
    device = str(run_device(device, "generate", device_lines.append, origin="--device"))
    trained = load_trained(choice.folder, device, ema=choice.ema, state_dict=choice.state_dict)
    for line in device_lines:
        print(line, file=sys.stderr, flush=True)
    settings = choices.settings(trained)
    if churn is None and trained.cfg.eval.churn > 0 and settings.churn == 0:
        print(f"generate: --sampler {settings.sampler} samples deterministically; the run's eval.churn "
              f"{trained.cfg.eval.churn:g} is not used.", file=sys.stderr)
    plan = trained.plan
    n_src = len(plan.sources)
    label = canonical(label) if label else plan.target
    if label is None:  # an any-to-any run has no one target
        raise ValueError(f"this run synthesizes any of {', '.join(trained.generated)}; choose one with --label.")
    if label not in trained.generated:
        raise ValueError(f"--label {label}: this run generates {', '.join(trained.generated)} only.")
    label_index = trained.label_of(label)
    sources = None
    if condition != "none" and plan.any_to_any:
        raise ValueError(f"--condition {condition}: an any-to-any run is conditioned by phmdiff translate (--target, "
                         "--sources); generate samples it without sources.")
    if condition != "none" and not n_src:
        raise ValueError(f"--condition {condition}: this generation run has no source modalities to condition on.")
    if condition != "none":
        from phmdiff.data.datasets import PairedSlices

        sources = PairedSlices(plan.data["prepared_dir"], condition, list(plan.sources), plan.target)
        if len(sources) == 0:
            raise ValueError(f"the {condition} split has no slices to condition on.")
    images = sample_images(trained, seeds, settings, label_index, batch_size, precision, sources)  # (N, H, W)
    weights = str(choice.state_dict) if choice.state_dict else "ema" if choice.ema else "model"
    meta = {"run": str(trained.checkpoint), "weights": weights, "seeds": seeds,
            "condition": condition, "target": label, "sampler": settings.sampler, "steps": settings.num_steps,
            "guidance": settings.guidance, "churn": settings.churn, "fine_steps": settings.fine_num_steps,
            "sigma_start": settings.sigma_start, "precision": precision}
    near_images, near = None, {"skipped": "--no-nearest"}
    if nearest:
        data, reason = _training_slices(plan.data["prepared_dir"], label)
        if data is None or len(data) == 0:
            near = {"skipped": reason or "the training split has no slices"}
            print(f"generate: {near['skipped']}; the grid shows the samples alone.", file=sys.stderr)
        else:
            idx, rms = nearest_slices(images, data)
            near_images = np.stack([(data[int(i)]["target"][0].numpy() + 1) / 2 for i in idx])
            near = {"prepared_dir": str(data.root), "modality": label, "metric": "rms pixel distance, [0, 1] units",
                    "samples": [{"seed": s, "train_slice": int(i), "subject": data.slices[int(i)][0],
                                 "index": int(data.slices[int(i)][1]), "rms": float(r)}
                                for s, i, r in zip(seeds, idx, rms)]}
    meta["nearest_rms_median"] = (float(np.median([r["rms"] for r in near["samples"]])) if "samples" in near
                                  else None)
    with publish_dir(out, "generate", overwrite) as folder:  # all PNGs or none: a full disk leaves no partial set
        for s, img in zip(seeds, images):
            _save_png(folder / "png" / f"seed{s:06d}.png", img)
        _save_png(folder / "grid.png", sample_grid(images, near_images, seeds, label))
        with atomic_path(folder / "samples.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.ascontiguousarray(images.transpose(1, 2, 0), dtype=np.float32), np.eye(4)),
                     tmp)
        atomic_write_text(folder / "generate.json", json.dumps(meta, indent=1))
        atomic_write_text(folder / "nearest.json", json.dumps(near, indent=1))
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`phmdiff generate`'s options; the root generate.py takes the same, under the original code's names too
    (--model-path, --output-dir, --num-steps, --cfg-scale)."""
    parser.add_argument("--run", "--model-path", dest="run", required=True,
                        help="run folder (its best checkpoint), checkpoint folder, or a weights file: a "
                        "checkpoint's model.safetensors / ema.safetensors, or a state dict (.pth, .pt) in a run or "
                        "checkpoint folder")
    parser.add_argument("--out", "--output-dir", dest="out", required=True,
                        help="output folder: png/, grid.png, samples.nii.gz, generate.json, nearest.json")
    parser.add_argument("--seeds", default="0-63", help="seeds such as 0-63 or 1,5,9 (one sample per seed)")
    parser.add_argument("--label", default=None, metavar="MODALITY",
                        help="modality to generate (a label-conditional run's data.targets); default the run's target")
    parser.add_argument("--condition", choices=("none", "val", "test", "train"), default="none",
                        help="unconditional (none) or conditioned on the source slices of a prepared split")
    parser.add_argument("--batch-size", type=COUNT, default=16, help="samples per batch (results do not depend on it)")
    add_sampling_arguments(parser, original_names=True)
    add_device(parser)
    parser.add_argument("--no-nearest", action="store_true", help="grid without the nearest training slices")
    add_overwrite(parser, "replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    meta = generate(args.run, args.out, parse_seeds(args.seeds), args.steps, args.sampler, args.guidance,
                    args.condition, args.batch_size, args.device, args.overwrite, args.label, not args.no_nearest,
                    args.churn, fine_steps=args.fine_steps, sigma_start=args.sigma_start, precision=args.precision)
    print(f"{args.out}: {len(meta['seeds'])} samples of {meta['target']} written.", file=sys.stderr)
    return 0
