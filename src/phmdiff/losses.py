"""The PHMDiff level loss: MaskDiT's masked loss at one pyramid level and, with the same examples one level
coarser, their masked loss plus the cross-granularity MMD between the levels. Its parts, one idea each:
`masked_loss.py`, `cross_granularity.py`; the autoencoder's loss is `ae_loss.py`.
"""

from __future__ import annotations

import torch

from phmdiff.ae_loss import ae_loss, ssim  # noqa: F401 - their home before ae_loss.py
from phmdiff.cross_granularity import cross_granularity_loss, mmd_rbf  # noqa: F401 - likewise
from phmdiff.diffusion.ddpm_loss import DDPMLoss
from phmdiff.diffusion.edm import EDMLoss, SigmaLoss
from phmdiff.masked_loss import _masked_level_loss, masked_denoising_loss  # noqa: F401 - likewise


def phmdiff_loss(denoiser, x_start, model_kwargs=None, mask_ratio: float = 0.5, mae_loss_coef: float = 0.1,
                 coarse_x_start=None, coarse_kwargs: dict | None = None, cross_granularity_weight: float = 0.0,
                 coarse_loss_weight: float = 1.0, generator: torch.Generator | None = None,
                 loss_fn: SigmaLoss | DDPMLoss | None = None, mae_target: str = "noisy", loss_on: str = "visible"):
    """PHMDiff objective: the masked denoising loss at one pyramid level and, when the same examples one level
    coarser are given, their masked loss at the same noise level plus the cross-granularity MMD between the levels.
    `loss_fn` is the formulation's loss (`factory.LOSSES`; EDMLoss when None).

    Returns ({"loss", "denoise", "mae"[, "coarse_loss", "cross_granularity"]}, fine-level encoder features).
    """
    loss_fn = loss_fn or EDMLoss()
    fine = _masked_level_loss(loss_fn, denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, None,
                              mae_target, loss_on)
    terms = dict(fine.terms)
    if coarse_x_start is None:
        return terms, fine.features
    coarse = _masked_level_loss(loss_fn, denoiser, coarse_x_start, coarse_kwargs, mask_ratio, mae_loss_coef,
                                generator, fine.noise_level, mae_target, loss_on)
    terms["coarse_loss"] = coarse.terms["loss"]
    terms["cross_granularity"] = cross_granularity_loss(fine.features, coarse.features, fine.grid, fine.mask,
                                                        coarse.mask, weight=1.0 if cross_granularity_weight else 0.0)
    terms["loss"] = (fine.terms["loss"] + coarse_loss_weight * terms["coarse_loss"]
                     + cross_granularity_weight * terms["cross_granularity"])
    return terms, fine.features
