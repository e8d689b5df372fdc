"""Training losses: MaskDiT's masked denoising + reconstruction loss on the EDM sigma axis (Zheng et al. 2023;
Karras et al. 2022), multi-bandwidth RBF MMD (Gretton et al. 2012) for cross-granularity regularization, and
the autoencoder losses (L1 + (1 - SSIM) + beta KL, PatchGAN discriminator; Isola et al. 2017, Esser et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from phmdiff.diffusion.edm import edm_sigma_and_weight


def _patchify(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C) with the patch size implied by the token count."""
    n, c, H, W = x.shape
    p = math.isqrt(H * W // num_tokens)
    if p * p * num_tokens != H * W:
        raise ValueError(f"A {H}x{W} grid cannot be split into {num_tokens} square patches.")
    x = x.reshape(n, c, H // p, p, W // p, p)  # (N, C, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, num_tokens, p * p * c)  # (N, T, p*p*C)


class _LevelLoss(NamedTuple):
    terms: dict
    features: torch.Tensor
    mask: torch.Tensor
    sigma: torch.Tensor
    grid: tuple[int, int]


def _masked_level_loss(denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, P_mean, P_std,
                       sigma, mae_target) -> _LevelLoss:
    if mae_target not in ("noisy", "clean"):
        raise ValueError(f"mae_target must be 'noisy' or 'clean', got {mae_target!r}.")
    x_start = x_start.float()
    n = x_start.shape[0]
    sigma_data = float(getattr(denoiser, "sigma_data", 0.5))
    if sigma is None:
        sigma, weight = edm_sigma_and_weight(n, P_mean, P_std, sigma_data, generator, x_start.device, x_start.dtype)
    else:
        sigma = torch.as_tensor(sigma, dtype=x_start.dtype, device=x_start.device).reshape(-1).expand(n)
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    noise = torch.randn(x_start.shape, generator=generator, dtype=x_start.dtype).to(x_start.device)
    x_noisy = x_start + noise * sigma.reshape(n, 1, 1, 1)
    D_x, mask, features = denoiser(x_noisy, sigma, **(model_kwargs or {}), mask_ratio=mask_ratio,
                                   generator=generator, return_aux=True)
    D_x = D_x.float()
    T = mask.shape[1]
    per_token = _patchify(weight.reshape(n, 1, 1, 1) * (D_x - x_start) ** 2, T).mean(dim=-1)  # (N, T)
    visible = (~mask).float()
    terms = {"denoise": (per_token * visible).sum() / visible.sum()}
    if mae_loss_coef > 0 and mask.any():
        target = _patchify(x_noisy if mae_target == "noisy" else x_start, T)  # (N, T, p*p*C)
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        mae = ((_patchify(D_x, T) - target) ** 2).mean(dim=-1)  # (N, T)
        terms["mae"] = (mae * mask.float()).sum() / mask.float().sum()
    else:
        terms["mae"] = D_x.new_zeros(())
    terms["loss"] = terms["denoise"] + mae_loss_coef * terms["mae"]
    p = math.isqrt(x_start.shape[2] * x_start.shape[3] // T)
    return _LevelLoss(terms, features, mask, sigma, (x_start.shape[2] // p, x_start.shape[3] // p))


def masked_denoising_loss(denoiser, x_start: torch.Tensor, model_kwargs: dict | None = None, mask_ratio: float = 0.0,
                          mae_loss_coef: float = 0.1, generator: torch.Generator | None = None,
                          P_mean: float = -1.2, P_std: float = 1.2, sigma: torch.Tensor | None = None,
                          mae_target: str = "noisy"):
    """MaskDiT loss: EDM-weighted denoising error on visible tokens + mae_loss_coef * masked-token reconstruction.

    `denoiser` is a preconditioned D(x, sigma, **kw) around a MaskedDiT; sigma ~ EDM log-normal unless given.
    The masked tokens' reconstruction target is the per-patch normalized noisy input (MaskDiT) or, with
    mae_target="clean", x_start. Returns ({"loss", "denoise", "mae"} scalars, encoder features (N, T_vis, D)).
    """
    out = _masked_level_loss(denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, P_mean, P_std,
                             sigma, mae_target)
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
                 coarse_loss_weight: float = 1.0, generator: torch.Generator | None = None, P_mean: float = -1.2,
                 P_std: float = 1.2, mae_target: str = "noisy"):
    """PHMDiff objective: the masked denoising loss at one pyramid level and, when the same examples one level
    coarser are given, their masked loss at the same sigma plus the cross-granularity MMD between the levels.

    Returns ({"loss", "denoise", "mae"[, "coarse_loss", "cross_granularity"]}, fine-level encoder features).
    """
    fine = _masked_level_loss(denoiser, x_start, model_kwargs, mask_ratio, mae_loss_coef, generator, P_mean, P_std,
                              None, mae_target)
    terms = dict(fine.terms)
    if coarse_x_start is None:
        return terms, fine.features
    coarse = _masked_level_loss(denoiser, coarse_x_start, coarse_kwargs, mask_ratio, mae_loss_coef, generator,
                                P_mean, P_std, fine.sigma, mae_target)
    terms["coarse_loss"] = coarse.terms["loss"]
    terms["cross_granularity"] = cross_granularity_loss(fine.features, coarse.features, fine.grid, fine.mask,
                                                        coarse.mask, weight=1.0 if cross_granularity_weight else 0.0)
    terms["loss"] = (fine.terms["loss"] + coarse_loss_weight * terms["coarse_loss"]
                     + cross_granularity_weight * terms["cross_granularity"])
    return terms, fine.features


# ---- autoencoder losses ---------------------------------------------------------------------------------------


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5):
    """Mean SSIM (Wang et al. 2004) with an 11-tap Gaussian window, 2D or 3D, through MONAI; differentiable."""
    dims = x.dim() - 2
    if dims not in (2, 3) or x.shape != y.shape:
        raise ValueError(f"ssim expects two tensors of one shape (N, C, H, W) or (N, C, D, H, W), "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}.")
    from monai.metrics.regression import compute_ssim_and_cs  # here: importing monai costs seconds at start-up

    win = min(win_size, *x.shape[2:])
    win -= 1 - win % 2  # odd window that fits the smallest side
    value, _ = compute_ssim_and_cs(x.float(), y.float(), spatial_dims=dims, kernel_size=[win] * dims,
                                   kernel_sigma=[sigma] * dims, data_range=data_range)
    return value.mean()


def ae_loss(recon: torch.Tensor, x: torch.Tensor, posterior, beta: float = 1e-6, data_range: float = 2.0):
    """Autoencoder loss L1 + (1 - SSIM) + beta * KL (KL summed over latent elements, averaged over the batch).

    Returns a dict of scalars {"loss", "l1", "ssim", "kl"}; images in [-1, 1] give data_range 2.
    """
    l1 = (recon.float() - x.float()).abs().mean()
    s = ssim(recon, x, data_range)
    kl = posterior.kl().mean()
    return {"loss": l1 + (1 - s) + beta * kl, "l1": l1, "ssim": s, "kl": kl}


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix, Isola et al. 2017): strided convs, one real/fake logit per patch."""

    def __init__(self, in_channels: int = 1, channels: int = 64, num_layers: int = 3, spatial_dims: int = 2):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"PatchDiscriminator supports spatial_dims 2 or 3, got {spatial_dims}.")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = [conv(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, num_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            # GroupNorm instead of BatchNorm: autoencoder batches are small and sometimes single slices.
            layers += [conv(ch, out, 4, stride, 1), nn.GroupNorm(min(32, out // 4), out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(conv(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1, h', w') patch logits


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator objective: hinge (Lim & Ye 2017) or least squares (Mao et al. 2017)."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())
    if kind in ("lsgan", "least_squares"):
        return 0.5 * ((logits_real - 1).pow(2).mean() + logits_fake.pow(2).mean())
    raise ValueError(f"Unknown adversarial loss {kind!r}; expected 'hinge' or 'least_squares'.")


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """The autoencoder's adversarial term for the same two objectives."""
    if kind == "hinge":
        return -logits_fake.mean()
    if kind in ("lsgan", "least_squares"):
        return (logits_fake - 1).pow(2).mean()
    raise ValueError(f"Unknown adversarial loss {kind!r}; expected 'hinge' or 'least_squares'.")


def adversarial_weight(step: int, start_step: int, weight: float = 0.5) -> float:
    """The discriminator switches on at `start_step` (the autoencoder first learns to reconstruct)."""
    return weight if step >= start_step else 0.0
