"""The autoencoder loss: L1 + (1 - SSIM) + beta KL (the KL-regularized autoencoder of Rombach et al. 2022)."""

from __future__ import annotations

import torch

from phmdiff.eval.metrics import inner, ssim_maps


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0):
    """Mean SSIM (Wang et al. 2004), 11-tap Gaussian window, 2D or 3D, differentiable: the project's one SSIM
    (`eval.metrics.ssim_maps`), averaged as scikit-image averages it."""
    dims = x.dim() - 2
    if dims not in (2, 3) or x.shape != y.shape:
        raise ValueError(f"ssim expects two tensors of one shape (N, C, H, W) or (N, C, D, H, W), "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}.")
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
