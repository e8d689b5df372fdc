"""Training losses: MaskDiT's masked denoising + reconstruction loss on the EDM sigma axis (Zheng et al. 2023;
Karras et al. 2022), multi-bandwidth RBF MMD (Gretton et al. 2012) for cross-granularity regularization, and
the autoencoder loss (L1 + (1 - SSIM) + beta KL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

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


def _sigma_level(loss_fn: SigmaLoss, denoiser, x_start, model_kwargs, noise_level, generator):
    """Per-token weighted denoising error (N, T), noisy input, output, mask and features on the sigma axis."""
    out = loss_fn.terms(denoiser, x_start, noise_level, model_kwargs, generator)
    _, mask, features = out["pred"], *out["aux"]
    per_token = _patchify(out["loss"], mask.shape[1]).mean(dim=-1)  # (N, T)
    visible = (~mask).float()
    return (per_token * visible).sum() / visible.sum(), out, mask, features


def _ddpm_level(loss_fn: DDPMLoss, denoiser, x_start, model_kwargs, noise_level, generator):
    """The DDPM loss of the epsilon network inside `denoiser` on the visible tokens, importance weighted."""
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
        # Masked tokens answer with their own target, the noise: they add no error, and the mean over all elements
        # rescaled by the visible fraction below is MaskDiT's loss on the visible tokens.
        return torch.where(_token_mask_pixels(mask, x_t.shape), noise, eps)

    per_sample = loss_fn.terms(network, x_start, t, model_kwargs, noise=noise)["loss"]  # (N,)
    per_sample = per_sample / (~seen["mask"]).float().mean(dim=1)
    if noise_level is None:
        loss_fn.update(t, per_sample.detach())
    out = {"noise_level": t, "x_t": seen["x_t"], "pred": seen["pred"]}
    return (importance * per_sample).mean(), out, seen["mask"], seen["features"]


def _masked_level_loss(loss_fn, denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, noise_level,
                       mae_target) -> _LevelLoss:
    """MaskDiT's loss at one level: the formulation's denoising error on visible tokens + the MAE term."""
    if mae_target not in ("noisy", "clean"):
        raise ValueError(f"mae_target must be 'noisy' or 'clean', got {mae_target!r}.")
    x_start = x_start.float()
    kwargs = {**(model_kwargs or {}), "mask_ratio": mask_ratio, "generator": generator, "return_aux": True}
    level = _ddpm_level if isinstance(loss_fn, DDPMLoss) else _sigma_level
    denoise, out, mask, features = level(loss_fn, denoiser, x_start, kwargs, noise_level, generator)
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
                          mae_target: str = "noisy"):
    """MaskDiT loss: the formulation's denoising error on visible tokens + mae_loss_coef * masked-token reconstruction.

    `denoiser` is a preconditioned D(x, sigma, **kw) around a MaskedDiT; `loss_fn` the formulation's loss (EDMLoss
    when None), which draws the noise levels unless `noise_level` (sigmas, or DDPM timesteps) is given. The masked
    tokens' reconstruction target is the per-patch normalized noisy input (MaskDiT) or, with mae_target="clean",
    x_start. Returns ({"loss", "denoise", "mae"} scalars, encoder features (N, T_vis, D)).
    """
    out = _masked_level_loss(loss_fn or EDMLoss(), denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef,
                             generator, noise_level, mae_target)
    return out.terms, out.features


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)):
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3) with a sum of RBF kernels exp(-d^2 / (b * s)).

    x (n, d), y (m, d); s is the mean squared distance of the pooled samples (detached), so the bandwidths
    are relative to the data's scale. For n == m the paired U-statistic is used, which is exactly 0 when
    x equals y; otherwise the two-sample form. Either way the estimate is unbiased (it may dip below 0).
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"mmd_rbf expects two (n, d) sample sets of equal d, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd_rbf needs at least 2 samples on each side, got {n} and {m}.")
    z = torch.cat([x, y])
    z = z if z.dtype == torch.float64 else z.float()
    d2 = torch.cdist(z, z).pow(2)  # (n+m, n+m)
    scale = d2.detach().sum() / ((n + m) * (n + m - 1))
    scale = scale.clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (b * scale)) for b in bandwidths)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if n == m:
        off = 1 - torch.eye(n, device=k.device)
        h = kxx + kyy - kxy - kxy.T  # h(z_i, z_j) for pairs z_i = (x_i, y_i)
        return (h * off).sum() / (n * (n - 1))
    return ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean())


def _token_grid(feat: torch.Tensor, mask: torch.Tensor | None, T: int):
    """Visible-token features back on the full token list: (N, T, D) values and (N, T) validity."""
    n, _, d = feat.shape
    if mask is None:
        return feat, feat.new_ones(n, T)
    ids_keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : feat.shape[1]]  # (N, T_vis)
    full = feat.new_zeros(n, T, d).scatter(1, ids_keep[:, :, None].expand(-1, -1, d), feat)  # (N, T, D)
    return full, (~mask).to(feat.dtype)


def cross_granularity_loss(feat_fine: torch.Tensor, feat_coarse: torch.Tensor, grid_fine: tuple[int, int],
                           mask_fine: torch.Tensor | None = None, mask_coarse: torch.Tensor | None = None,
                           weight: float = 1.0, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)):
    """Cross-granularity consistency: fine-level token features pooled 2x2 vs the next level's, by RBF MMD^2.

    feat_fine (N, T_f or visible, D) on the token grid `grid_fine` (h, w); feat_coarse (N, T_f/4 or visible, D).
    Masks (True = masked) say which tokens the features belong to when the encoder ran on visible tokens only;
    pooling averages the visible children, and only positions seen at both levels are compared.
    Per-example MMD^2 clamped at 0, weighted by `weight`, averaged over the examples with at least 2 positions
    seen at both levels (the U-statistic needs 2 pairs). On small token grids independent random masks at the
    two levels can leave fewer for every example; the term is then a zero that keeps the graph (gradient 0 for
    the features), so such a batch trains on its denoising terms instead of stopping the run.
    """
    if weight == 0:
        return feat_fine.new_zeros(()).float()
    h, w = grid_fine
    if h % 2 or w % 2:
        raise ValueError(f"The fine token grid {h}x{w} must have even sides to pool 2x2.")
    n, _, d = feat_fine.shape
    fine, valid_f = _token_grid(feat_fine.float(), mask_fine, h * w)
    fine = (fine * valid_f[..., None]).reshape(n, h // 2, 2, w // 2, 2, d).sum(dim=(2, 4))  # (N, h/2, w/2, D)
    count = valid_f.reshape(n, h // 2, 2, w // 2, 2).sum(dim=(2, 4))  # (N, h/2, w/2)
    pooled = (fine / count.clamp_min(1)[..., None]).reshape(n, -1, d)  # (N, T_c, D)
    coarse, valid_c = _token_grid(feat_coarse.float(), mask_coarse, h * w // 4)
    # Positions seen at both levels: the two sets are paired token by token (same example, same place).
    both = (count.reshape(n, -1) > 0) & (valid_c > 0)  # (N, T_c)
    usable = [i for i in range(n) if int(both[i].sum()) >= 2]
    if not usable:
        return weight * (pooled.sum() + coarse.sum()) * 0.0
    losses = [mmd_rbf(pooled[i][both[i]], coarse[i][both[i]], bandwidths) for i in usable]
    # The unbiased estimate dips below 0 by chance; minimized as is, training drives it ever more negative
    # (measured: -0.4 on the demo), a reward for anti-matching features. Clamped, equal levels cost 0.
    return weight * torch.stack(losses).clamp_min(0).mean()


def phmdiff_loss(denoiser, x_start, model_kwargs=None, mask_ratio: float = 0.5, mae_loss_coef: float = 0.1,
                 coarse_x_start=None, coarse_kwargs: dict | None = None, cross_granularity_weight: float = 0.0,
                 coarse_loss_weight: float = 1.0, generator: torch.Generator | None = None,
                 loss_fn: SigmaLoss | DDPMLoss | None = None, mae_target: str = "noisy"):
    """PHMDiff objective: the masked denoising loss at one pyramid level and, when the same examples one level
    coarser are given, their masked loss at the same noise level plus the cross-granularity MMD between the levels.
    `loss_fn` is the formulation's loss (`factory.LOSSES`; EDMLoss when None).

    Returns ({"loss", "denoise", "mae"[, "coarse_loss", "cross_granularity"]}, fine-level encoder features).
    """
    loss_fn = loss_fn or EDMLoss()
    fine = _masked_level_loss(loss_fn, denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, None,
                              mae_target)
    terms = dict(fine.terms)
    if coarse_x_start is None:
        return terms, fine.features
    coarse = _masked_level_loss(loss_fn, denoiser, coarse_x_start, coarse_kwargs, mask_ratio, mae_loss_coef,
                                generator, fine.noise_level, mae_target)
    terms["coarse_loss"] = coarse.terms["loss"]
    terms["cross_granularity"] = cross_granularity_loss(fine.features, coarse.features, fine.grid, fine.mask,
                                                        coarse.mask, weight=1.0 if cross_granularity_weight else 0.0)
    terms["loss"] = (fine.terms["loss"] + coarse_loss_weight * terms["coarse_loss"]
                     + cross_granularity_weight * terms["cross_granularity"])
    return terms, fine.features


# ---- autoencoder losses ---------------------------------------------------------------------------------------


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0):
    """Mean SSIM (Wang et al. 2004), 11-tap Gaussian window, 2D or 3D, differentiable: the project's one SSIM
    (`eval.metrics.ssim_maps`), averaged as scikit-image averages it."""
    dims = x.dim() - 2
    if dims not in (2, 3) or x.shape != y.shape:
        raise ValueError(f"ssim expects two tensors of one shape (N, C, H, W) or (N, C, D, H, W), "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}.")
    from phmdiff.eval.metrics import inner, ssim_maps

    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    values, _ = ssim_maps(x.to(dtype), y.to(dtype), float(data_range))
    return inner(values, dims).mean()


def ae_loss(recon: torch.Tensor, x: torch.Tensor, posterior, beta: float = 1e-6, data_range: float = 2.0,
            ssim_weight: float = 1.0):
    """Autoencoder loss L1 + ssim_weight (1 - SSIM) + beta * KL (KL summed over latent elements, batch-averaged).

    Returns a dict of scalars {"loss", "l1", "ssim", "kl"}; images in [-1, 1] give data_range 2.
    """
    l1 = (recon.float() - x.float()).abs().mean()
    s = ssim(recon, x, data_range)
    kl = posterior.kl().mean()
    return {"loss": l1 + ssim_weight * (1 - s) + beta * kl, "l1": l1, "ssim": s, "kl": kl}
