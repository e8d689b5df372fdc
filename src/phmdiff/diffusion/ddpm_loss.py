"""DDPM training loss (Ho et al. 2020, Eq. 14) at timesteps from a schedule sampler (iDDPM, Nichol & Dhariwal
2021, Sec. 3.3: uniform or importance sampling by the loss's second moment, the latter the same on every rank).
"""

from __future__ import annotations

import torch

from .timestep_sampler import LossAwareSampler, ScheduleSampler


class DDPMLoss:
    """`GaussianDiffusion.training_losses` at timesteps t ~ `schedule_sampler`, with its importance weights."""

    def __init__(self, diffusion, schedule_sampler: ScheduleSampler):
        self.diffusion, self.schedule_sampler = diffusion, schedule_sampler

    def draw(self, n: int, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps (N,) and importance weights 1 / (T p(t)) (N,)."""
        return self.schedule_sampler.sample(n, device=device, generator=generator)

    def terms(self, model, x_start, t, model_kwargs=None, noise=None, generator=None) -> dict:
        """Per-sample training terms ("loss" (N,), "mse"...) of `model(x_t, t, **model_kwargs)` at timesteps t."""
        return self.diffusion.training_losses(model, x_start, t, model_kwargs=model_kwargs, noise=noise,
                                              generator=generator)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Feed a loss-aware sampler this rank's per-sample losses (it gathers them from every rank under DDP)."""
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, losses)
