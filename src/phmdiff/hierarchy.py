"""The pyramid model: building the denoiser, per-level conditioning, the training objective over levels,
and coarse-to-fine sampling (PHMDiff; masked DiT of MaskDiT, Zheng et al. 2023, on Burt-Adelson pyramids).

Training picks one pyramid level per batch. At level l the network sees the noisy target at level l, the
source latents at level l and, when l is not the coarsest, the target of level l+1 upsampled and noised
(conditioning augmentation, so sampling tolerates its own imperfect coarse results). Sampling runs the
coarsest level from pure noise, then refines each finer level from the upsampled coarser result noised
to `sigma_start`, which needs far fewer steps than starting from sigma_max.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from phmdiff.pyramid import gaussian_pyramid, level_shapes, upsample

SAMPLERS = ("heun", "euler", "dpmpp_2m", "ddim")  # k-diffusion-style samplers usable per level


def build_denoiser(cfg, num_sources: int, num_targets: int) -> nn.Module:
    """The masked DiT named by `cfg.model` inside its preconditioning wrapper D(x, sigma, **cond)."""
    from phmdiff.diffusion import edm
    from phmdiff.masked_dit import build_masked_dit

    m = cfg.model
    net = build_masked_dit(
        m.model_type,
        input_size=m.in_size,
        latent_channels=m.in_channels,
        num_sources=num_sources,
        num_levels=m.pyramid_levels,
        num_targets=num_targets,
        use_decoder=m.use_decoder,
        class_dropout_prob=m.class_dropout_prob,
    )
    if m.precond == "edm":
        return edm.EDMPrecond(net, sigma_data=m.sigma_data)
    if m.precond == "vp":
        return edm.VPPrecond(net)
    if m.precond == "ve":
        return edm.VEPrecond(net)
    from phmdiff.diffusion.gaussian_diffusion import get_named_beta_schedule

    alphas_cumprod = np.cumprod(1.0 - np.asarray(get_named_beta_schedule("linear", 1000), dtype=np.float64))
    return edm.EpsilonDDPMDenoiser(net, alphas_cumprod)


def level_kwargs(src_pyr: list[torch.Tensor], coarse_target: torch.Tensor | None, level: int, avail: torch.Tensor,
                 target_label: torch.Tensor | None) -> dict:
    """Model kwargs at one level: the source at that level and the (upsampled) coarser target, if any."""
    cond = src_pyr[level]
    coarse = None if coarse_target is None else upsample(coarse_target, cond.shape[2:])
    return {"cond": cond, "avail": avail, "coarse": coarse, "level": level, "target_label": target_label}


def _augment(x: torch.Tensor, max_sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Conditioning augmentation: per example, Gaussian noise with sigma ~ U(0, max_sigma)."""
    if max_sigma <= 0:
        return x
    n = x.shape[0]
    sigma = torch.rand(n, generator=generator).to(x) * max_sigma
    noise = torch.randn(x.shape, generator=generator).to(x)
    return x + sigma.reshape(n, 1, 1, 1) * noise


def _drop(kwargs: dict, keep: torch.Tensor) -> dict:
    """Classifier-free guidance training: examples with keep = 0 lose their source condition."""
    out = dict(kwargs)
    out["cond"] = kwargs["cond"] * keep.to(kwargs["cond"]).reshape(-1, 1, 1, 1)
    out["avail"] = kwargs["avail"] * keep.to(kwargs["avail"]).reshape(-1, 1)
    return out


def pyramid_loss(denoiser, source: torch.Tensor, target: torch.Tensor, avail: torch.Tensor,
                 target_label: torch.Tensor | None, model_cfg, mask_ratio: float,
                 generator: torch.Generator | None = None) -> dict:
    """PHMDiff training terms for one batch at a random pyramid level (and the same examples one level coarser)."""
    from phmdiff.losses import phmdiff_loss

    levels = model_cfg.pyramid_levels
    level = int(torch.randint(levels, (1,), generator=generator))
    src_pyr = gaussian_pyramid(source, levels)  # finest first
    tgt_pyr = gaussian_pyramid(target, levels)
    keep = (torch.rand(target.shape[0], generator=generator) >= model_cfg.class_dropout_prob).to(target.device)

    def kwargs_at(l: int) -> dict:
        coarse = _augment(tgt_pyr[l + 1], model_cfg.coarse_aug_sigma, generator) if l + 1 < levels else None
        return _drop(level_kwargs(src_pyr, coarse, l, avail, target_label), keep)

    coarse_x = coarse_kw = None
    if level + 1 < levels and model_cfg.cross_granularity_weight > 0:
        coarse_x, coarse_kw = tgt_pyr[level + 1], kwargs_at(level + 1)
    fine_kw = kwargs_at(level)
    options = dict(mask_ratio=mask_ratio, mae_loss_coef=model_cfg.mae_loss_coef, generator=generator,
                   P_mean=model_cfg.P_mean, P_std=model_cfg.P_std)
    terms, _ = phmdiff_loss(denoiser, tgt_pyr[level], fine_kw, coarse_x_start=coarse_x, coarse_kwargs=coarse_kw,
                            cross_granularity_weight=model_cfg.cross_granularity_weight, **options)
    terms["level"] = torch.tensor(float(level))
    return terms


class PyramidObjective(nn.Module):
    """`pyramid_loss` as one module call, the module that DDP wraps during training.

    The objective evaluates the denoiser twice per batch (a level and the same examples one level coarser).
    DDP's gradient reducer expects one forward per backward, so it must wrap this whole objective, not the
    denoiser; the denoiser itself still knows nothing of losses.
    """

    def __init__(self, denoiser: nn.Module, model_cfg):
        super().__init__()
        self.denoiser = denoiser
        self.model_cfg = model_cfg

    def forward(self, source, target, avail, target_label, mask_ratio: float, generator=None) -> dict:
        return pyramid_loss(self.denoiser, source, target, avail, target_label, self.model_cfg, mask_ratio,
                            generator)


def _sampler(name: str):
    from phmdiff.sample import SAMPLERS as TABLE

    if name not in TABLE:
        raise ValueError(f"sampler {name!r} is not available for pyramid sampling; expected one of {', '.join(TABLE)}.")
    return TABLE[name]


@torch.no_grad()
def sample_pyramid(denoiser, source: torch.Tensor, avail: torch.Tensor, target_label: torch.Tensor | None,
                   seeds: list[int], levels: int, latent_channels: int, sampler: str = "heun", num_steps: int = 18,
                   fine_num_steps: int = 8, sigma_start: float = 2.0, guidance: float = 1.0,
                   sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Coarse-to-fine sampling of the target latents (N, C, H, W) given the source latents (N, n_src*C, H, W).

    Every random draw comes from the sample's own seed, so a sample does not depend on the batch it is in.
    """
    from phmdiff.masked_dit import null_condition
    from phmdiff.sample import StackedRandomGenerator, get_sigmas_karras, guided_denoiser

    if len(seeds) != source.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {source.shape[0]} samples; expected one seed per sample.")
    if num_steps < 1 or fine_num_steps < 1:
        raise ValueError(f"steps must be positive, got num_steps={num_steps} and fine_num_steps={fine_num_steps}.")
    device = source.device
    sigma_min = max(sigma_min, float(getattr(denoiser, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(denoiser, "sigma_max", math.inf)))
    rng = StackedRandomGenerator(device, seeds)
    src_pyr = gaussian_pyramid(source, levels)
    shapes = level_shapes(source.shape[2:], levels)
    step = _sampler(sampler)
    n = source.shape[0]
    x = None
    for level in reversed(range(levels)):
        kwargs = level_kwargs(src_pyr, x, level, avail, target_label)
        noise = rng.randn([n, latent_channels, *shapes[level]], device=device, dtype=torch.float32)
        if x is None:  # the coarsest level starts from pure noise
            sigmas = get_sigmas_karras(num_steps, sigma_min, sigma_max, device=device).float()
            x_init = noise * sigmas[0]
        else:  # finer levels refine the upsampled coarser result, partially re-noised
            start = min(sigma_start, sigma_max)
            sigmas = get_sigmas_karras(fine_num_steps, sigma_min, start, device=device).float()
            x_init = kwargs["coarse"] + noise * sigmas[0]
        D = denoiser if guidance == 1.0 else guided_denoiser(denoiser, guidance, null_condition(kwargs))
        x = step(D, x_init, sigmas, extra_args=kwargs, disable=True)
    return x
