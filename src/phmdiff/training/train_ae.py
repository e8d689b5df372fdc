"""`phmdiff train-ae`: train the KL autoencoder on prepared slices of every modality (LDM, Rombach et al. 2022).

Loss L1 + w (1 - SSIM) + beta KL on single-channel slices in [-1, 1]. After training: reconstruction PSNR/SSIM
on the validation split in each volume's original intensity units, the latent scale 1 / std of training
latents (stored in the model, never hard-coded), and a quality gate that warns when reconstructions are too
poor for diffusion in this latent space to be worth training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from phmdiff.ae_loss import ae_loss
from phmdiff.autoencoder import (
    AE_presets,
    IdentityAutoencoder,
    build_autoencoder,
    compute_latent_scale,
    save_autoencoder,
)
from phmdiff.config import Config, add_config_arguments, config_from_args, data_modalities
from phmdiff.data.datasets import TargetSlices
from phmdiff.data.prepare import load_manifest, settings_from_manifest
from phmdiff.data.volume import NormParams
from phmdiff.devices import run_device
from phmdiff.eval.protocols import evaluate_subject
from phmdiff.fsutil import atomic_write_text
from phmdiff.inference import autoencoder_path
from phmdiff.options import add_overwrite, add_progress
from phmdiff.training.distributed import seed_everything


def slice_datasets(cfg: Config, split: str, flip: bool = False) -> ConcatDataset:
    """The slices of every modality of the run (sources and target) as one single-channel dataset."""

    if not cfg.data.prepared:
        raise ValueError("data.prepared is empty; set it to the folder written by phmdiff prepare.")
    mods = data_modalities(cfg.data)
    return ConcatDataset([TargetSlices(cfg.data.prepared, split, target=m, flip=flip, seed=cfg.train.seed)
                          for m in mods])


def build_autoencoder_for(cfg: Config) -> torch.nn.Module:
    """The autoencoder preset of the config, for `data.num_channels`-channel images."""


    preset = cfg.model.autoencoder.preset
    if preset == "identity":
        return IdentityAutoencoder(cfg.data.num_channels)
    if preset not in AE_presets:
        raise ValueError(f"model.autoencoder.preset is {preset!r}; expected one of {sorted(AE_presets)} or identity.")
    changes = {"in_channels": cfg.data.num_channels}
    if cfg.model.autoencoder.channels:
        changes["channels"] = tuple(cfg.model.autoencoder.channels)
    return build_autoencoder(dataclasses.replace(AE_presets[preset], **changes))


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random size x size window per image (N, C, H, W) -> (N, C, size, size)."""
    n, _, h, w = x.shape
    top = torch.randint(h - size + 1, (n,), generator=generator).tolist()
    left = torch.randint(w - size + 1, (n,), generator=generator).tolist()
    return torch.stack([x[i, :, t : t + size, l : l + size] for i, (t, l) in enumerate(zip(top, left))])


def latent_scale_of(ae, data, device, n_max: int = 512, batch: int = 32, seed: int = 0) -> float:
    """LDM's scale factor 1 / std of posterior samples, over (up to) n_max training slices."""

    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data), generator=g)[:n_max].tolist()
    batches = (torch.stack([data[i]["target"] for i in picks[lo : lo + batch]]).to(device)
               for lo in range(0, len(picks), batch))
    return compute_latent_scale(ae, batches, g)


@torch.no_grad()
def evaluate_reconstruction(ae, cfg: Config, device, max_slices: int = 256) -> dict:
    """Reconstruction PSNR/SSIM of validation subjects in the `volume` protocol `evaluate` uses: each subject's
    slices of each modality, back in original units, scored on the reference's foreground (not the whole slice,
    whose easy background inflates the figure)."""

    manifest = load_manifest(cfg.data.prepared)
    settings = settings_from_manifest(manifest)
    psnrs, ssims, n = [], [], 0
    mods = data_modalities(cfg.data)
    split = "val" if manifest["splits"]["val"]["n"] else "train"
    for mod in mods:
        data = TargetSlices(cfg.data.prepared, split, target=mod)
        by_subject: dict[str, list[int]] = {}
        for i, (sid, _) in enumerate(data.slices):
            by_subject.setdefault(sid, []).append(i)
        budget = max(max_slices // len(mods), 1)
        for sid, rows in by_subject.items():
            if budget <= 0:
                break
            rows = rows[:budget]
            budget -= len(rows)
            norm = NormParams(**manifest["volumes"][sid]["norm"][mod])
            refs, recs = [], []
            for lo in range(0, len(rows), 32):
                x = torch.stack([data[i]["target"] for i in rows[lo : lo + 32]]).to(device)  # (n, 1, H, W)
                recs.append(ae.decode(ae.encode(x).mode()).float().cpu().numpy()[:, 0])
                refs.append(x.cpu().numpy()[:, 0])
            ref_u = norm.inverse((np.concatenate(refs) + 1) / 2)  # (n, H, W) in original units
            rec_u = norm.inverse((np.concatenate(recs) + 1) / 2)
            r = evaluate_subject(rec_u, ref_u, protocol="volume", modality="ct" if settings.scheme(mod).fixed else "mr",
                                 slice_axis=0)
            psnrs.append(r["psnr"])
            ssims.append(r["ssim"])
            n += len(rows)
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"split": split, "n": n, "protocol": "volume", "psnr": float(np.mean(finite)) if finite else math.inf,
            "psnr_std": float(np.std(finite)) if finite else 0.0, "ssim": float(np.mean(ssims)),
            "ssim_std": float(np.std(ssims))}


def train_autoencoder(cfg: Config, overwrite: bool = False, progress: bool = True, log=None) -> dict:
    """Train, evaluate, scale and save the autoencoder to `autoencoder_path(cfg)`; returns the report.

    `log(line)` receives the device line and, without a progress bar, a line every `log.log_every` steps
    (stderr when None)."""

    a = cfg.model.autoencoder
    out = autoencoder_path(cfg)
    if out.exists() and not overwrite:
        raise ValueError(f"{out}: an autoencoder already exists; pass --overwrite to train a new one.")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    device_lines = []  # said once the data is found, so that bad input stays one sentence
    device = run_device(cfg.train.device, "train-ae", device_lines.append)  # a GPU asked for but absent: warn, CPU
    seed_everything(cfg.train.seed)
    data = slice_datasets(cfg, "train", flip=True)
    if len(data) == 0:
        raise ValueError(f"{cfg.data.prepared}: the training split has no slices.")
    for line in device_lines:
        log(line)
    ae = build_autoencoder_for(cfg).to(device)
    params = list(ae.parameters())
    steps = a.steps if params else 0  # the identity autoencoder has nothing to train
    optimizer = torch.optim.Adam(params, lr=a.lr, betas=(0.5, 0.9)) if params else None
    g = torch.Generator().manual_seed(cfg.train.seed)
    loader = DataLoader(data, batch_size=min(a.batchsize, len(data)), shuffle=True, drop_last=True, generator=g,
                        num_workers=cfg.data.num_workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train-ae", unit="step", file=sys.stderr, dynamic_ncols=True)
    step, tic, ae = 0, time.perf_counter(), ae.train()
    while step < steps:
        for batch in loader:
            x = batch["target"]
            x = (random_crop(x, a.crop, g) if a.crop else x).to(device)
            posterior = ae.encode(x)
            recon = ae.decode(posterior.sample(g))
            terms = ae_loss(recon, x, posterior, beta=a.kl_weight, ssim_weight=a.ssim_weight)
            l1, s, loss = terms["l1"], terms["ssim"], terms["loss"]
            if not torch.isfinite(loss):
                raise RuntimeError(f"autoencoder training stopped at step {step}: the loss is not finite; "
                                   "lower model.autoencoder.lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(l1=f"{l1.item():.4f}", ssim=f"{s.item():.3f}")
            elif step % cfg.log.log_every == 0 or step == steps:  # --no-progress: a line every N steps
                log(f"train-ae: step {step}/{steps}  L1 {l1.item():.4f}  SSIM {s.item():.3f}  "
                    f"{(time.perf_counter() - tic) / step:.3f} s/step")
            if step >= steps:
                break
    if bar is not None:
        bar.close()
    ae.eval()
    scale = latent_scale_of(ae, slice_datasets(cfg, "train"), device, seed=cfg.train.seed)
    ae.latent_scale.fill_(scale)
    report = {"steps": step, "seconds": round(time.perf_counter() - tic, 1), "latent_scale": scale,
              "preset": a.preset, **evaluate_reconstruction(ae, cfg, device)}
    report["quality_gate"] = "pass" if report["psnr"] >= a.min_psnr else "warn"
    save_autoencoder(ae.cpu(), out)
    atomic_write_text(out.with_name("autoencoder_report.json"), json.dumps(report, indent=1))
    if report["quality_gate"] == "warn":
        print(f"warning: autoencoder reconstruction PSNR {report['psnr']:.2f} dB is below model.autoencoder.min_psnr"
              f" = {a.min_psnr} dB; diffusion in this latent space will be limited by the autoencoder. Train longer "
              "(model.autoencoder.steps) or use a larger preset.", file=sys.stderr)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_overwrite(parser, "replace an existing autoencoder")
    add_progress(parser, "a line every log.log_every steps instead")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 0
    report = train_autoencoder(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"autoencoder: validation PSNR {report['psnr']:.2f} +- {report['psnr_std']:.2f} dB, SSIM "
          f"{report['ssim']:.4f} (volume protocol, {report['n']} slices); latent scale {report['latent_scale']:.4f}.",
          file=sys.stderr)
    return 0

