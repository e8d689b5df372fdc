"""Timestep respacing (Nichol & Dhariwal 2021, Sec. 4): sample with a subset of a trained process's steps.

`SpacedDiffusion` is the base `GaussianDiffusion` with betas recomputed for the kept steps; the model is wrapped
so it still sees the original timestep indices. It is a wrapper, never a second implementation.
"""

from __future__ import annotations

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
    """Steps to keep: "ddimN" (an even stride giving exactly N steps), or counts per equal section.

    `section_counts` is a list of ints or a comma-separated string: "10,15,20" on 300 steps keeps 10 evenly
    spaced steps of the first 100 (first and last included), 15 of the next 100 and 20 of the last 100.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"Cannot keep exactly {desired} of {num_timesteps} steps with an integer stride "
                             f"for {section_counts!r}.")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"Timestep respacing {section_counts!r} is neither 'ddimN' nor comma-separated "
                             "integers.") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= section_count <= size:
            raise ValueError(f"Cannot keep {section_count} steps of a section of {size} steps "
                             f"(respacing {section_counts} of {num_timesteps}).")
        frac_stride = 1.0 if section_count <= 1 else (size - 1) / (section_count - 1)
        # The stride is accumulated, not multiplied, as in guided-diffusion: the rounding of the running sum
        # decides which steps are kept (and when two coincide), so the same counts keep the same steps.
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


class _WrappedModel:
    """Calls the model with the original timestep of each respaced index."""

    def __init__(self, model, timestep_map):
        self.model, self.timestep_map = model, timestep_map

    def __call__(self, x, ts, **kwargs):
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=torch.long)
        return self.model(x, map_tensor[ts.long()], **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion that keeps only `use_timesteps` of the base process given by `kwargs["betas"]`."""

    def __init__(self, use_timesteps, **kwargs):
        self.use_timesteps = set(use_timesteps)
        base = GaussianDiffusion(**kwargs)
        self.original_num_steps = base.num_timesteps
        if not self.use_timesteps or not self.use_timesteps <= set(range(base.num_timesteps)):
            raise ValueError(f"use_timesteps must be a non-empty subset of 0..{base.num_timesteps - 1}.")
        self.timestep_map = sorted(self.use_timesteps)
        # beta'_k = 1 - abar[s_k] / abar[s_{k-1}] so the respaced alphas_cumprod equal the base ones at kept steps.
        abar = base.alphas_cumprod[self.timestep_map]
        kwargs["betas"] = 1.0 - abar / np.append(1.0, abar[:-1])
        super().__init__(**kwargs)

    def _wrap_model(self, model):
        return model if isinstance(model, _WrappedModel) else _WrappedModel(model, self.timestep_map)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)
