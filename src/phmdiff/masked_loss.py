"""MaskDiT's masked denoising + reconstruction loss on the EDM sigma axis (Zheng et al. 2023; Karras et al. 2022):
the denoising loss on the visible tokens and, weighted by `mae_loss_coef`, the reconstruction of the masked ones."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from phmdiff.config_checks import LOSS_ON
from phmdiff.diffusion.ddpm_loss import DDPMLoss
from phmdiff.diffusion.edm import EDMLoss, SigmaLoss


def _patchify(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C) with the patch size implied by the token count."""
    n, c, H, W = x.shape
    p = math.isqrt(H * W // num_tokens)
    if p * p * num_tokens != H * W:
        raise ValueError(f"A {H}x{W} grid cannot be split into {num_tokens} square patches.")
    x = x.reshape(n, c, H // p, p, W // p, p)  # (N, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, num_tokens, p * p * c)  # (N, T, p*p*C)


def _token_mask_pixels(mask: torch.Tensor, shape) -> torch.Tensor:
    """(N, T) token mask (True = masked) -> (N, 1, H, W) on the pixel grid of `shape` (N, C, H, W)."""
    n, _, H, W = shape
    p = math.isqrt(H * W // mask.shape[1])
    m = mask.reshape(n, 1, H // p, 1, W // p, 1).expand(n, 1, H // p, p, W // p, p)  # (N, 1, h, p, w, p)
    return m.reshape(n, 1, H, W)


class _LevelLoss(NamedTuple):
    terms: dict
    features: torch.Tensor
    mask: torch.Tensor
    noise_level: torch.Tensor
    grid: tuple[int, int]


def _sigma_level(loss_fn: SigmaLoss, denoiser, x_start, model_kwargs, noise_level, generator, loss_on):
    """The weighted denoising error on the visible tokens (loss_on "visible") or on all of them ("all"), with the
    noisy input, output, mask and features on the sigma axis."""
    out = loss_fn.terms(denoiser, x_start, noise_level, model_kwargs, generator)
    _, mask, features = out["pred"], *out["aux"]
    per_token = _patchify(out["loss"], mask.shape[1]).mean(dim=-1)  # (N, T)
    if loss_on == "all":
        return per_token.mean(), out, mask, features
    visible = (~mask).float()
    return (per_token * visible).sum() / visible.sum(), out, mask, features


def _ddpm_level(loss_fn: DDPMLoss, denoiser, x_start, model_kwargs, noise_level, generator, loss_on):
    """The DDPM loss of the epsilon network inside `denoiser` on the visible tokens (or all), importance weighted."""
    n = x_start.shape[0]
    if noise_level is None:
        t, importance = loss_fn.draw(n, generator, x_start.device)
    else:
        t, importance = noise_level, torch.ones(n, device=x_start.device)
    noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype).to(x_start.device)
    seen = {}

    def network(x_t, timesteps, **kw):
        eps, mask, features = denoiser.model(x_t, timesteps.float(), **kw)
        eps = eps[:, : x_t.shape[1]].float()  # a learned-variance output's first half is epsilon
        seen.update(x_t=x_t, pred=eps, mask=mask, features=features)
        if loss_on == "all":
            return eps
        # Masked tokens answer with their own target, the noise: they add no error, and the mean over all elements
        # rescaled by the visible fraction below is MaskDiT's loss on the visible tokens.
        return torch.where(_token_mask_pixels(mask, x_t.shape), noise, eps)

    per_sample = loss_fn.terms(network, x_start, t, model_kwargs, noise=noise)["loss"]  # (N,)
    if loss_on != "all":
        per_sample = per_sample / (~seen["mask"]).float().mean(dim=1)
    if noise_level is None:
        loss_fn.update(t, per_sample.detach())
    out = {"noise_level": t, "x_t": seen["x_t"], "pred": seen["pred"]}
    return (importance * per_sample).mean(), out, seen["mask"], seen["features"]


def _masked_level_loss(loss_fn, denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, noise_level,
                       mae_target, loss_on="visible") -> _LevelLoss:
    """MaskDiT's loss at one level: the formulation's denoising error on visible tokens (or, with loss_on "all", on
    every token: the decoder's prediction at the masked ones counts too) + the MAE term."""
    if mae_target not in ("noisy", "clean"):
        raise ValueError(f"mae_target must be 'noisy' or 'clean', got {mae_target!r}.")
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}.")
    x_start = x_start.float()
    kwargs = {**(model_kwargs or {}), "mask_ratio": mask_ratio, "generator": generator, "return_aux": True}
    level = _ddpm_level if isinstance(loss_fn, DDPMLoss) else _sigma_level
    denoise, out, mask, features = level(loss_fn, denoiser, x_start, kwargs, noise_level, generator, loss_on)
    T = mask.shape[1]
    terms = {"denoise": denoise}
    if mae_loss_coef > 0 and mask.any():
        target = _patchify(out["x_t"].float() if mae_target == "noisy" else x_start, T)  # (N, T, p*p*C)
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        mae = ((_patchify(out["pred"], T) - target) ** 2).mean(dim=-1)  # (N, T)
        terms["mae"] = (mae * mask.float()).sum() / mask.float().sum()
    else:
        terms["mae"] = denoise.new_zeros(())
    terms["loss"] = terms["denoise"] + mae_loss_coef * terms["mae"]
    p = math.isqrt(x_start.shape[2] * x_start.shape[3] // T)
    return _LevelLoss(terms, features, mask, out["noise_level"], (x_start.shape[2] // p, x_start.shape[3] // p))


def masked_denoising_loss(denoiser, x_start: torch.Tensor, model_kwargs: dict | None = None, mask_ratio: float = 0.0,
                          mae_loss_coef: float = 0.1, generator: torch.Generator | None = None,
                          loss_fn: SigmaLoss | DDPMLoss | None = None, noise_level: torch.Tensor | None = None,
                          mae_target: str = "noisy", loss_on: str = "visible"):
    """MaskDiT loss: the formulation's denoising error on visible tokens + mae_loss_coef * masked-token reconstruction.

    `denoiser` is a preconditioned D(x, sigma, **kw) around a MaskedDiT; `loss_fn` the formulation's loss (EDMLoss
    when None), which draws the noise levels unless `noise_level` (sigmas, or DDPM timesteps) is given. The masked
    tokens' reconstruction target is the per-patch normalized noisy input (MaskDiT) or, with mae_target="clean",
    x_start. Returns ({"loss", "denoise", "mae"} scalars, encoder features (N, T_vis, D)).
    """
    out = _masked_level_loss(loss_fn or EDMLoss(), denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef,
                             generator, noise_level, mae_target, loss_on)
    return out.terms, out.features
