"""Config -> networks and preconditioning: the one place where the `model` section becomes modules.

The masked DiT (`masked_dit.py`) knows nothing of diffusion and the objective (`objective.py`) and samplers
(`sample.py`) take typed arguments; only this module reads the YAML schema to build and connect them.
"""

from __future__ import annotations

from dataclasses import fields

from torch import nn

from phmdiff.diffusion import create_diffusion, edm
from phmdiff.diffusion.ddpm_loss import DDPMLoss
from phmdiff.diffusion.timestep_sampler import create_named_schedule_sampler
from phmdiff.masked_dit import MaskedDiTConfig, build_masked_dit
from phmdiff.mean_net import MeanNet, MeanResidual
from phmdiff.objective import PyramidObjective


def _ddpm():
    """The DDPM process the `ddpm` formulation trains on: 1000 linear-beta steps, epsilon target, fixed variance."""
    return create_diffusion("", noise_schedule="linear", learn_sigma=False, diffusion_steps=1000)


def _ddpm_loss(m) -> DDPMLoss:
    diffusion = _ddpm()
    return DDPMLoss(diffusion, create_named_schedule_sampler(m.timestep_sampler, diffusion))


# precond -> (preconditioned denoiser around the network, the formulation's training loss); the one table.
PRECONDS = {
    "edm": (lambda net, m: edm.EDMPrecond(net, sigma_data=m.sigma_data),
            lambda m: edm.EDMLoss(P_mean=m.P_mean, P_std=m.P_std, sigma_data=m.sigma_data)),
    "vp": (lambda net, m: edm.VPPrecond(net), lambda m: edm.VPLoss()),
    "ve": (lambda net, m: edm.VEPrecond(net), lambda m: edm.VELoss()),
    # Sampled on the sigma axis: every sampler serves it, with the Karras sigmas clipped to its schedule's range.
    "ddpm": (lambda net, m: edm.EpsilonDDPMDenoiser(net, _ddpm().alphas_cumprod),
             _ddpm_loss),
}


def build_denoiser(cfg, num_sources: int, num_targets: int) -> nn.Module:
    """The masked DiT named by `cfg.model` inside its preconditioning wrapper D(x, sigma, **cond); with
    `model.mean_net`, that denoiser (for the residual, the mean as one more source) beside the mean network."""
    m = cfg.model
    denoiser = _preconditioned_dit(m, num_sources + (1 if m.mean_net else 0), num_targets)
    if not m.mean_net:
        return denoiser
    any_to_any = bool(getattr(cfg.data, "any_to_any", False))
    mean_net = MeanNet(num_sources, m.in_channels, num_targets if any_to_any else 1, tuple(m.mean_net_features))
    return MeanResidual(mean_net, denoiser, normalize=m.residual_norm)


def _preconditioned_dit(m, num_sources: int, num_targets: int) -> nn.Module:
    # The `model` keys named as MaskedDiTConfig fields pass through as they are; the rest are the run's shape.
    shared = {f.name: getattr(m, f.name) for f in fields(MaskedDiTConfig) if hasattr(m, f.name)}
    net = build_masked_dit(m.model_type, input_size=m.in_size, latent_channels=m.in_channels, num_sources=num_sources,
                           num_levels=m.pyramid_levels, num_targets=num_targets, **shared)
    if m.precond not in PRECONDS:
        raise ValueError(f"model.precond is {m.precond!r}; expected one of {', '.join(PRECONDS)}.")
    return PRECONDS[m.precond][0](net, m)


def build_loss(model_cfg):
    """The per-level denoising loss of the formulation `model_cfg.precond` (EDMLoss, VPLoss, VELoss or DDPMLoss)."""
    return PRECONDS[model_cfg.precond][1](model_cfg)


def build_objective(denoiser: nn.Module, model_cfg, null_label: int | None = None) -> PyramidObjective:
    """The pyramid training objective around `denoiser`, with the loss options of `cfg.model`; `null_label`
    (generation runs): the label index that condition dropout puts in place of the modality label."""
    m = model_cfg
    return PyramidObjective(denoiser, levels=m.pyramid_levels, mae_loss_coef=m.mae_loss_coef,
                            mean_loss_weight=m.mean_loss_weight, mean_loss=m.mean_loss,
                            class_dropout_prob=m.class_dropout_prob, coarse_aug_sigma=m.coarse_aug_sigma,
                            cross_granularity_weight=m.cross_granularity_weight, loss_fn=build_loss(m),
                            null_label=null_label, loss_on=m.denoise_loss_on)
