"""Timestep samplers for DDPM training: uniform, and importance sampling by the loss's second moment (iDDPM 3.3)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist


class ScheduleSampler(ABC):
    """A distribution over timesteps; `sample` returns indices and importance weights 1 / (T p(t))."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalized non-negative weight of each timestep."""

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        w = self.weights()
        p = torch.from_numpy(w / w.sum())
        indices = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[indices])
        return indices.to(device), weights.float().to(device)


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely (importance weights all 1)."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the losses it sees, identical on every rank."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Gather (t, loss) pairs from every rank when torch.distributed runs, so all ranks keep the same state."""
        local_ts, local_losses = local_ts.detach().reshape(-1), local_losses.detach().reshape(-1).float()
        if dist.is_available() and dist.is_initialized():
            device = local_ts.device
            world = dist.get_world_size()
            sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
            dist.all_gather(sizes, torch.tensor([len(local_ts)], dtype=torch.long, device=device))
            sizes = [int(s.item()) for s in sizes]
            max_bs = max(sizes)
            # all_gather needs equal shapes: pad each rank's batch to the largest one.
            pad = max_bs - len(local_ts)
            ts_pad = torch.cat([local_ts.long(), local_ts.new_zeros(pad, dtype=torch.long)])
            loss_pad = torch.cat([local_losses, local_losses.new_zeros(pad)])
            ts_all = [torch.zeros(max_bs, dtype=torch.long, device=device) for _ in range(world)]
            loss_all = [torch.zeros(max_bs, dtype=torch.float32, device=device) for _ in range(world)]
            dist.all_gather(ts_all, ts_pad)
            dist.all_gather(loss_all, loss_pad)
            timesteps = [int(t) for ts, n in zip(ts_all, sizes) for t in ts[:n].tolist()]
            losses = [float(x) for ls, n in zip(loss_all, sizes) for x in ls[:n].tolist()]
        else:
            timesteps, losses = [int(t) for t in local_ts.tolist()], [float(x) for x in local_losses.tolist()]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """Update from the losses of every rank, in the same order on every rank."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over the last `history_per_term` losses, uniform until all are seen."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term, self.uniform_prob = history_per_term, uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= weights.sum()
        return weights * (1 - self.uniform_prob) + self.uniform_prob / len(weights)

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:].copy()  # drop the oldest
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())


# The timestep samplers a config can name (`model.timestep_sampler`).
SCHEDULE_SAMPLERS = {"uniform": UniformSampler, "loss-aware": LossSecondMomentResampler}


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """A sampler of SCHEDULE_SAMPLERS by name."""
    if name not in SCHEDULE_SAMPLERS:
        raise ValueError(f"Unknown schedule sampler {name!r}; expected one of {', '.join(SCHEDULE_SAMPLERS)}.")
    return SCHEDULE_SAMPLERS[name](diffusion)
