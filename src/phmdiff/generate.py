"""`phmdiff generate`: sample target-modality slices from a trained run to PNG files, a PNG grid and NIfTI.

Unconditional by default (the null condition that condition dropout trained), or conditioned on the
source slices of a prepared split (`--condition val|test`, seed s uses slice s mod n). Each sample is
seeded by its own seed, so `--seeds 0-63` gives the same images with any `--batch-size`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from phmdiff.devices import DEVICES
from phmdiff.fsutil import atomic_path, atomic_write_text, check_out_dir, check_writable_dir, publish_dir
from phmdiff.inference import decode_target, encode_sources, load_trained
from phmdiff.sample import SAMPLERS

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


def _grid(images: np.ndarray) -> np.ndarray:
    """(N, H, W) in [0, 1] -> one (rows*H, cols*W) image, as square as possible."""
    n, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w), dtype=images.dtype)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = img
    return grid


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")


@torch.no_grad()
def generate(run, out, seeds: list[int], steps: int | None = None, sampler: str | None = None,
             guidance: float | None = None, condition: str = "none", batch_size: int = 16, device: str = "auto",
             overwrite: bool = False) -> dict:
    """Sample one slice per seed; writes OUT/png/seedNNNNNN.png, OUT/grid.png, OUT/samples.nii.gz."""
    import nibabel as nib

    if steps is not None and steps < 1:
        raise ValueError(f"--steps is {steps}; expected a positive number of sampling steps.")
    if batch_size < 1:
        raise ValueError(f"--batch-size is {batch_size}; expected 1 or more.")
    if not seeds:
        raise ValueError("no seeds given; expected e.g. --seeds 0-63.")
    out = check_out_dir(out, "generate", overwrite)
    check_writable_dir(out.parent)
    if (out / "grid.png").exists() and not overwrite:
        raise ValueError(f"{out / 'grid.png'}: output exists; pass --overwrite to replace it.")
    trained = load_trained(run, device)
    settings = trained.settings(sampler, steps, guidance)
    cfg, ident, dev = trained.cfg, trained.identity, trained.device
    n_src, c, size = len(ident["sources"]), cfg.model.in_channels, cfg.model.in_size
    sources = None
    if condition != "none":
        from phmdiff.data.datasets import PairedSlices

        sources = PairedSlices(ident["data"]["prepared_dir"], condition, ident["sources"], ident["target"])
        if len(sources) == 0:
            raise ValueError(f"the {condition} split has no slices to condition on.")
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
        z = trained.sample(cond, avail, chunk, settings)
        images.append(decode_target(trained.autoencoder, z, trained.latent_scale)[:, 0].cpu().numpy())
    images = np.concatenate(images)  # (N, H, W) in [0, 1]
    meta = {"run": str(trained.checkpoint), "seeds": seeds, "condition": condition, "target": ident["target"],
            "sampler": settings.sampler, "steps": settings.num_steps, "guidance": settings.guidance}
    with publish_dir(out, "generate", overwrite) as folder:  # all PNGs or none: a full disk leaves no partial set
        for s, img in zip(seeds, images):
            _save_png(folder / "png" / f"seed{s:06d}.png", img)
        _save_png(folder / "grid.png", _grid(images))
        with atomic_path(folder / "samples.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.ascontiguousarray(images.transpose(1, 2, 0), dtype=np.float32), np.eye(4)),
                     tmp)
        atomic_write_text(folder / "generate.json", json.dumps(meta, indent=1))
    return meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder (its best checkpoint) or a checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seeds", default="0-63", help="seeds such as 0-63 or 1,5,9 (one sample per seed)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--condition", choices=("none", "val", "test", "train"), default="none",
                        help="unconditional (none) or conditioned on the source slices of a prepared split")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch (results do not depend on it)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    meta = generate(args.run, args.out, parse_seeds(args.seeds), args.steps, args.sampler, args.guidance,
                    args.condition, args.batch_size, args.device, args.overwrite)
    print(f"{args.out}: {len(meta['seeds'])} samples of {meta['target']} written.", file=sys.stderr)
    return 0
