"""Small tensor helpers shared by the diffusion formulations (Gaussian KL, likelihoods, broadcasting)."""

from __future__ import annotations

import math

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample (N,) tensor broadcasts over (N, C, H, W) or (N, C, D, H, W)."""
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims got a tensor with {x.ndim} dims, more than the target's {target_ndim}.")
    return x[(...,) + (None,) * missing]


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch dimension."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    tensor = next((obj for obj in (mean1, logvar1, mean2, logvar2) if isinstance(obj, torch.Tensor)), None)
    if tensor is None:
        raise ValueError("normal_kl needs at least one tensor argument.")
    # Scalars become tensors so exp() works on them.
    logvar1, logvar2 = (v if isinstance(v, torch.Tensor) else torch.tensor(v).to(tensor) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Fast tanh approximation of the standard normal CDF (Page 1977), max error about 2e-4."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def continuous_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor):
    """Log density of x under N(means, exp(log_scales)^2), elementwise, in nats."""
    centered = x - means
    return -0.5 * centered**2 * torch.exp(-2.0 * log_scales) - log_scales - 0.5 * math.log(2.0 * math.pi)


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor):
    """Log-likelihood of 8-bit data rescaled to [-1, 1] under a Gaussian discretized into 2/255-wide bins.

    The two edge bins extend to -inf and +inf (Ho et al. 2020, Eq. 13).
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(f"discretized_gaussian_log_likelihood needs equal shapes, got {x.shape}, "
                         f"{means.shape}, {log_scales.shape}.")
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_bin))
