"""The medical ecosystem's standard conditional diffusion model: MONAI's DiffusionModelUNet with its DDPM noise
schedule (Ho et al. 2020), source channels concatenated to the noisy target, epsilon MSE loss, DDIM sampling
(Song et al. 2021), trained under a budget of `clock` seconds.

Training follows MONAI's 2D DDPM tutorial (Project-MONAI/GenerativeModels,
tutorials/generative/2d_ddpm/2d_ddpm_tutorial.py): Adam at lr 2.5e-5, DDPMScheduler with 1000 steps, epsilon MSE,
50 epochs of MedNIST's ~8 000 training hand images at batch 128, i.e. about 400 000 images seen
(TUTORIAL_IMAGES). `projected_images` tells from a short probe whether a budget can come near that."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .unet_regression import batches, loader

TUTORIAL_LR = 2.5e-5  # the tutorial's Adam learning rate
TUTORIAL_IMAGES = 50 * 8000  # images the tutorial's training sees (50 epochs x ~8 000)


def build_ddpm_unet(num_sources: int, channels=(32, 64, 64), attention_levels=(False, False, True)):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=2, in_channels=1 + num_sources, out_channels=1, channels=channels,
                              attention_levels=attention_levels, num_res_blocks=1, num_head_channels=32,
                              norm_num_groups=32)


def train_ddpm(prepared_dir: str | Path, sources: list[str], target: str, budget_s: float, batch: int = 16,
               lr: float = TUTORIAL_LR, seed: int = 0, num_train_timesteps: int = 1000,
               clock=time.perf_counter, flip: bool = True) -> tuple[torch.nn.Module, dict]:
    """Epsilon-prediction training with MONAI's DDPMScheduler until `budget_s` seconds of `clock` have passed
    (wall clock by default; `time.process_time` gives a CPU-time budget)."""
    from monai.networks.schedulers import DDPMScheduler

    if budget_s <= 0:
        raise ValueError(f"budget_s is {budget_s}; expected a positive number of seconds.")
    torch.manual_seed(seed)
    model = build_ddpm_unet(len(sources))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    opt = torch.optim.Adam(model.parameters(), lr=lr)  # the tutorial's optimizer
    gen = torch.Generator().manual_seed(seed)
    it = batches(loader(prepared_dir, sources, target, batch, seed, flip))
    tic, start, steps, losses = time.perf_counter(), clock(), 0, []
    while clock() - start < budget_s:
        b = next(it)
        x_start, n = b["target"], b["target"].shape[0]
        noise = torch.randn(x_start.shape, generator=gen)
        t = torch.randint(0, num_train_timesteps, (n,), generator=gen)
        x_t = scheduler.add_noise(original_samples=x_start, noise=noise, timesteps=t)
        eps = model(torch.cat([x_t, b["source"]], dim=1), timesteps=t)  # (N, 1 + n_src, H, W) in
        loss = torch.nn.functional.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        losses.append(float(loss.detach()))
    info = {"steps": steps, "train_seconds": time.perf_counter() - tic, "train_clock_seconds": clock() - start,
            "final_loss": float(np.mean(losses[-20:])), "images_seen": steps * batch, "lr": lr,
            "parameters": sum(p.numel() for p in model.parameters())}
    return model.eval(), info


def projected_images(prepared_dir, sources: list[str], target: str, budget_s: float, batch: int = 16,
                     clock=time.process_time, probe_s: float = 3.0) -> dict:
    """Training images a `budget_s` budget of `clock` would show the DDPM, from a `probe_s` probe, against the
    tutorial's TUTORIAL_IMAGES."""
    _, info = train_ddpm(prepared_dir, sources, target, probe_s, batch=batch, clock=clock)
    pace = info["train_clock_seconds"] / max(info["steps"], 1)  # clock seconds per step
    images = int(budget_s / pace) * batch
    return {"probe_steps": info["steps"], "seconds_per_step": pace, "projected_images": images,
            "tutorial_images": TUTORIAL_IMAGES, "share_of_tutorial": images / TUTORIAL_IMAGES}


@torch.no_grad()
def predict_ddpm(model: torch.nn.Module, src: np.ndarray, seeds: list[int], num_steps: int = 50, batch: int = 32,
                 num_train_timesteps: int = 1000) -> np.ndarray:
    """DDIM (eta = 0) with MONAI's DDIMScheduler; each slice's starting noise comes from its own seed."""
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=num_train_timesteps)
    scheduler.set_timesteps(num_steps)
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch):
        cond = torch.from_numpy(src[lo : lo + batch]) * 2 - 1
        n = cond.shape[0]
        x = torch.stack([torch.randn(1, *cond.shape[2:], generator=torch.Generator().manual_seed(s))
                         for s in seeds[lo : lo + n]])  # (N, 1, H, W)
        for t in scheduler.timesteps:
            eps = model(torch.cat([x, cond], dim=1), timesteps=torch.full((n,), int(t), dtype=torch.long))
            x, _ = scheduler.step(eps, int(t), x)
        out[lo : lo + n] = ((x[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    return out
