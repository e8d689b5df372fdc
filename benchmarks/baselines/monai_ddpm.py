"""The medical ecosystem's standard conditional diffusion model: MONAI's DiffusionModelUNet with its DDPM noise
schedule (Ho et al. 2020), source channels concatenated to the noisy target, epsilon MSE loss, DDIM sampling
(Song et al. 2021), trained under a wall-clock budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .unet_regression import batches, loader


def build_ddpm_unet(num_sources: int, channels=(32, 64, 64), attention_levels=(False, False, True)):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(spatial_dims=2, in_channels=1 + num_sources, out_channels=1, channels=channels,
                              attention_levels=attention_levels, num_res_blocks=1, num_head_channels=32,
                              norm_num_groups=32)


def train_ddpm(prepared_dir: str | Path, sources: list[str], target: str, budget_s: float, batch: int = 16,
               lr: float = 2.5e-4, seed: int = 0, num_train_timesteps: int = 1000,
               clock=time.perf_counter) -> tuple[torch.nn.Module, dict]:
    """Epsilon-prediction training with MONAI's DDPMScheduler until `budget_s` seconds of `clock` have passed
    (wall clock by default; `time.process_time` gives a CPU-time budget)."""
    from monai.networks.schedulers import DDPMScheduler

    if budget_s <= 0:
        raise ValueError(f"budget_s is {budget_s}; expected a positive number of seconds.")
    torch.manual_seed(seed)
    model = build_ddpm_unet(len(sources))
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    it = batches(loader(prepared_dir, sources, target, batch, seed))
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
            "final_loss": float(np.mean(losses[-20:])),
            "parameters": sum(p.numel() for p in model.parameters())}
    return model.eval(), info


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
