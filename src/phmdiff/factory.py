"""Config -> networks and preconditioning: the one place where the `model` section becomes modules.

The masked DiT (`masked_dit.py`) knows nothing of diffusion and the objective (`objective.py`) and samplers
(`sample.py`) take typed arguments; only this module reads the YAML schema to build and connect them.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from phmdiff.diffusion import edm
from phmdiff.diffusion.gaussian_diffusion import get_named_beta_schedule
from phmdiff.masked_dit import build_masked_dit
from phmdiff.objective import PyramidObjective


def build_denoiser(cfg, num_sources: int, num_targets: int) -> nn.Module:
    """The masked DiT named by `cfg.model` inside its preconditioning wrapper D(x, sigma, **cond)."""
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
        mask_block_sizes=tuple(m.mask_block_sizes),
        source_aware_mask_tokens=m.source_aware_mask_tokens,
        conv_head_width=m.conv_head_width,
    )
    if m.precond == "edm":
        return edm.EDMPrecond(net, sigma_data=m.sigma_data)
    if m.precond == "vp":
        return edm.VPPrecond(net)
    if m.precond == "ve":
        return edm.VEPrecond(net)
    alphas_cumprod = np.cumprod(1.0 - np.asarray(get_named_beta_schedule("linear", 1000), dtype=np.float64))
    return edm.EpsilonDDPMDenoiser(net, alphas_cumprod)


def build_objective(denoiser: nn.Module, model_cfg) -> PyramidObjective:
    """The pyramid training objective around `denoiser`, with the loss options of `cfg.model`."""
    m = model_cfg
    return PyramidObjective(denoiser, levels=m.pyramid_levels, mae_loss_coef=m.mae_loss_coef,
                            class_dropout_prob=m.class_dropout_prob, coarse_aug_sigma=m.coarse_aug_sigma,
                            cross_granularity_weight=m.cross_granularity_weight, P_mean=m.P_mean, P_std=m.P_std)
