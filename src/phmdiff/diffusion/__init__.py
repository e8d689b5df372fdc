"""Diffusion formulations: EDM preconditioning (edm.py) and Gaussian diffusion (DDPM/DDIM, respacing)."""

from __future__ import annotations

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps


def create_diffusion(timestep_respacing, noise_schedule: str = "linear", use_kl: bool = False,
                     sigma_small: bool = False, predict_xstart: bool = False, learn_sigma: bool = True,
                     rescale_learned_sigmas: bool = False, diffusion_steps: int = 1000,
                     predict_v: bool = False) -> SpacedDiffusion:
    """The one place where DDPM options become a (respaced) GaussianDiffusion; "" or None keeps every step."""
    if predict_xstart and predict_v:
        raise ValueError("create_diffusion takes predict_xstart or predict_v, not both.")
    betas = gd.get_named_beta_schedule(noise_schedule, diffusion_steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    mean_type = gd.ModelMeanType.START_X if predict_xstart else (
        gd.ModelMeanType.VELOCITY if predict_v else gd.ModelMeanType.EPSILON)
    return SpacedDiffusion(use_timesteps=space_timesteps(diffusion_steps, timestep_respacing), betas=betas,
                           model_mean_type=mean_type, model_var_type=var_type, loss_type=loss_type)


__all__ = ["create_diffusion", "gd", "SpacedDiffusion", "space_timesteps"]
