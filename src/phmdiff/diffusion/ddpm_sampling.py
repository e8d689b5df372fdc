"""A `ddpm` run sampled through its own Gaussian-diffusion loops, respaced: ancestral (Ho et al. 2020,
Algorithm 2) or DDIM (Song et al. 2021, Eq. 12) over the steps `respace.space_timesteps` keeps ("250", "10,20",
or "ddim25"), as guided-diffusion samples. It is a pyramid level's step with the samplers' signature
`step(D, x, sigmas, extra_args, disable)`, on the denoiser interface D(x, sigma, **cond): the epsilon the loops
need is read back from D at each step's own sigma, which for `EpsilonDDPMDenoiser` is exactly its network's
output at that timestep; guidance and windows wrap D as for every other sampler.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch

from ..samplers import check_respacing
from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps


def training_sigmas(denoiser) -> torch.Tensor:
    """The training timesteps' sigmas (T,) of the `EpsilonDDPMDenoiser` inside `denoiser` (through windows,
    guidance and mean-residual wrappers, which keep it as `.denoiser`)."""
    d = denoiser
    while d is not None and not hasattr(d, "sigma_to_t"):
        d = getattr(d, "denoiser", None)
    if d is None:
        raise ValueError("respacing samples a ddpm run through its Gaussian-diffusion loops; this run is not a ddpm "
                         "run (model.precond), so leave eval.respacing empty.")
    return d.sigmas.detach().cpu().to(torch.float64)


def respaced_process(sigmas: torch.Tensor, respacing: str) -> SpacedDiffusion:
    """The DDPM process of a network trained at `sigmas` (alphas_cumprod = 1 / (1 + sigma^2)), respaced; epsilon
    prediction and the fixed (large) variance, as `factory` trains the `ddpm` formulation."""
    abar = 1.0 / (1.0 + sigmas.numpy() ** 2)
    betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
    return SpacedDiffusion(use_timesteps=space_timesteps(len(betas), check_respacing(respacing)), betas=betas,
                           model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.FIXED_LARGE,
                           loss_type=gd.LossType.MSE)


class _Epsilon:
    """The loops' model(x_t, t) -> epsilon from the denoiser: x_sigma = x_t sqrt(1 + sigma_t^2), and
    epsilon = (x_sigma - D(x_sigma, sigma_t)) / sigma_t."""

    def __init__(self, D, sigma_of_t: torch.Tensor):
        self.D, self.sigma_of_t = D, sigma_of_t

    def __call__(self, x_t, t, **cond):
        s = self.sigma_of_t.to(x_t.device)[t].to(x_t.dtype)  # (N,)
        x = x_t * (1 + s**2).sqrt().reshape(-1, *[1] * (x_t.ndim - 1))
        out = self.D(x, s, **cond)
        out = out[0] if isinstance(out, tuple) else out
        return (x - out.to(x.dtype)) / s.reshape(-1, *[1] * (x_t.ndim - 1))


def ddpm_step(D, x, sigmas, extra_args=None, disable=True, *, respacing: str, training: torch.Tensor,
              randn_like=None):
    """One pyramid level through the respaced loop: `x` is the level's start on the sigma axis at sigmas[0]
    (noise x sigma_max, or the upsampled coarser result re-noised to sigma_start); it enters the loop at the last
    kept step whose sigma is at most sigmas[0], scaled to x_t = x / sqrt(1 + sigma^2). Returns x_0."""
    process = respaced_process(training, respacing)
    kept = torch.as_tensor(process.alphas_cumprod, dtype=torch.float64)
    kept_sigmas = ((1 - kept) / kept).sqrt()  # (K,) the kept steps' sigmas, increasing
    sigma0 = float(sigmas[0])
    start = max(int((kept_sigmas <= sigma0 * (1 + 1e-6)).sum()) - 1, 0)
    sigma_of_t = torch.zeros(len(training), dtype=torch.float64)
    sigma_of_t[torch.as_tensor(process.timestep_map)] = kept_sigmas
    x_t = x.to(torch.float64) / math.sqrt(1 + sigma0**2)
    model = _Epsilon(D, sigma_of_t)
    if respacing.startswith("ddim"):
        steps = process.ddim_sample_loop_progressive(model, x.shape, noise=x_t, clip_denoised=False,
                                                     model_kwargs=extra_args, start=start)
    else:
        steps = process.p_sample_loop_progressive(model, x.shape, noise=x_t, clip_denoised=False,
                                                  model_kwargs=extra_args, start=start, randn_like=randn_like)
    last = deque(steps, maxlen=1)[0]  # run the loop, keep the last step's output
    return last["sample"].to(x.dtype)
