"""Preconditioned denoisers D(x, sigma, **cond) and their training losses (Karras et al. 2022, "EDM", Table 1).

Every wrapper turns a backbone `net(x_in, c_noise, **model_kwargs) -> F` (or a tuple whose first element is F)
into a denoiser `D(x, sigma, **model_kwargs)` on the sigma axis x = x_start + sigma * n, so every sampler in
`phmdiff.sample` serves EDM, VP, VE and epsilon-DDPM networks alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .diffusion_utils import append_dims


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Preconditioning is done in float32 (float64 when the caller works in float64), whatever the model's dtype.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_sigma(sigma, x: torch.Tensor) -> torch.Tensor:
    """Turn a float, a 0-d tensor, or a per-sample tensor (N,) or (N, 1, ...) into a (N,) tensor for x."""
    sigma = torch.as_tensor(sigma, dtype=_compute_dtype(x), device=x.device)
    n = x.shape[0]
    if sigma.ndim == 0:
        return sigma.reshape(1).expand(n)
    if sigma.numel() == n:
        return sigma.reshape(n)
    raise ValueError(f"sigma must be a scalar or hold one value per sample ({n}), got shape {tuple(sigma.shape)}.")


def _split_output(out):
    """Split a backbone output into F and the auxiliary outputs that travel with it."""
    if isinstance(out, tuple | list):
        return out[0], tuple(out[1:])
    return out, None


def _join_output(D_x: torch.Tensor, rest):
    return D_x if rest is None else (D_x, *rest)


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Normal noise from a torch.Generator (drawn on its own device, then moved: a seeded CPU generator serves a
    CUDA run too), a per-sample StackedRandomGenerator, or the global RNG."""
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    if generator is not None:
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, device=device, dtype=dtype)


def _rand(n, generator, device, dtype) -> torch.Tensor:
    if isinstance(generator, torch.Generator):
        return torch.rand(n, generator=generator, device=generator.device, dtype=dtype).to(device)
    if generator is not None:
        return generator.rand([n], device=device, dtype=dtype)
    return torch.rand(n, device=device, dtype=dtype)


class _Precond(nn.Module):
    """Shared forward of the Table 1 wrappers: D(x) = c_skip x + c_out F(c_in x, c_noise)."""

    sigma_min: float
    sigma_max: float

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def round_sigma(self, sigma):
        """Sigmas the network accepts (continuous here: returned unchanged, as a tensor)."""
        return torch.as_tensor(sigma)

    def forward(self, x: torch.Tensor, sigma, **model_kwargs):
        dtype = _compute_dtype(x)
        sigma = as_sigma(sigma, x)  # (N,)
        s = append_dims(sigma, x.ndim)  # (N, 1, ..., 1)
        x = x.to(dtype)
        model_dtype = next((p.dtype for p in self.model.parameters()), dtype)
        # The noise label goes in float32 (float64 only for a float64 model), whatever the sampler's precision.
        c_noise = self.c_noise(sigma).to(torch.float64 if model_dtype == torch.float64 else torch.float32)
        out = self.model((self.c_in(s) * x).to(model_dtype), c_noise, **model_kwargs)
        F_x, rest = _split_output(out)
        D_x = self.c_skip(s) * x + self.c_out(s) * F_x.to(dtype)
        return _join_output(D_x, rest)


# EDM preconditioning (Table 1, right column).
class EDMPrecond(_Precond):
    """EDM denoiser: c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4."""

    def __init__(self, model: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.0,
                 sigma_max: float = float("inf")):
        super().__init__(model)
        if sigma_data <= 0:
            raise ValueError(f"EDMPrecond sigma_data must be positive, got {sigma_data}.")
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)

    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma):
        return 1 / (self.sigma_data**2 + sigma**2).sqrt()

    def c_noise(self, sigma):
        return sigma.log() / 4


# Variance preserving preconditioning (Table 1, "VP" column; Song et al. 2021).
class VPPrecond(_Precond):
    """VP denoiser: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1), c_noise = (M-1) sigma^-1(sigma)."""

    def __init__(self, model: nn.Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000,
                 epsilon_t: float = 1e-5):
        super().__init__(model)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        self.sigma_min = float(self.sigma(epsilon_t))
        self.sigma_max = float(self.sigma(1))

    def sigma(self, t):
        """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma):
        """The time t at which the VP process reaches sigma."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return -sigma

    def c_in(self, sigma):
        return 1 / (sigma**2 + 1).sqrt()

    def c_noise(self, sigma):
        return (self.M - 1) * self.sigma_inv(sigma)


# Variance exploding preconditioning (Table 1, "VE" column; Song et al. 2021).
class VEPrecond(_Precond):
    """VE denoiser: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma/2)."""

    def __init__(self, model: nn.Module, sigma_min: float = 0.02, sigma_max: float = 100.0):
        super().__init__(model)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def c_skip(self, sigma):
        return torch.ones_like(sigma)

    def c_out(self, sigma):
        return sigma

    def c_in(self, sigma):
        return torch.ones_like(sigma)

    def c_noise(self, sigma):
        return (0.5 * sigma).log()


# An epsilon-predicting DDPM network on the EDM sigma axis (EDM Sec. 2 / Appendix C.3.1, "iDDPM").
class EpsilonDDPMDenoiser(nn.Module):
    """D(x, sigma) = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma)) for a network trained on discrete DDPM steps.

    x_t = sqrt(abar) x_start + sqrt(1 - abar) eps equals x / sqrt(1 + sigma^2) with sigma = sqrt((1 - abar)/abar).
    t(sigma) interpolates linearly in log sigma between the training steps, or rounds to the nearest step
    when `quantize` (for networks that only saw integer timesteps). A backbone with learned variance returns
    2C channels; the first C are epsilon.
    """

    def __init__(self, model: nn.Module, alphas_cumprod, quantize: bool = False):
        super().__init__()
        alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        if alphas_cumprod.ndim != 1 or not np.all(np.diff(alphas_cumprod) < 0) or alphas_cumprod[0] >= 1:
            raise ValueError("EpsilonDDPMDenoiser needs a strictly decreasing 1-D alphas_cumprod below 1.")
        self.model = model
        self.quantize = bool(quantize)
        sigmas = torch.from_numpy(np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod))
        self.register_buffer("sigmas", sigmas, persistent=False)  # (T,), increasing
        self.register_buffer("log_sigmas", sigmas.log(), persistent=False)
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous (or nearest, when quantized) timestep index of each sigma."""
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).log().clamp(log_sigmas[0], log_sigmas[-1])
        if self.quantize:
            return (log_sigma[:, None] - log_sigmas[None, :]).abs().argmin(dim=1)  # (N,)
        hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return lo.to(torch.float64) + w

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep, interpolated in log sigma."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.log_sigmas.device)
        lo = t.floor().long().clamp(0, len(self.sigmas) - 1)
        hi = (lo + 1).clamp(max=len(self.sigmas) - 1)
        w = t - lo
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def round_sigma(self, sigma):
        """Nearest training sigma when quantized, else sigma unchanged."""
        sigma = torch.as_tensor(sigma)
        if not self.quantize:
            return sigma
        shape = sigma.shape
        t = self.sigma_to_t(sigma.reshape(-1).to(self.sigmas.device))
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float64
        return self.sigmas[t].reshape(shape).to(device=sigma.device, dtype=dtype)

    def forward(self, x: torch.Tensor, sigma, **model_kwargs):
        dtype = _compute_dtype(x)
        sigma = as_sigma(sigma, x)  # (N,)
        s = append_dims(sigma, x.ndim)
        x = x.to(dtype)
        t = self.sigma_to_t(sigma)
        model_dtype = next((p.dtype for p in self.model.parameters()), dtype)
        t = t if self.quantize else t.to(torch.float64 if model_dtype == torch.float64 else torch.float32)
        out = self.model((x / (s**2 + 1).sqrt()).to(model_dtype), t, **model_kwargs)
        eps, rest = _split_output(out)
        if eps.shape[1] == 2 * x.shape[1]:
            eps = eps[:, : x.shape[1]]  # learned-variance output: the first half is epsilon
        D_x = x - s * eps.to(dtype)
        return _join_output(D_x, rest)


def edm_sigma_and_weight(n: int, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5,
                         generator=None, device=None, dtype=torch.float32):
    """EDM training noise levels ln(sigma) ~ N(P_mean, P_std^2) and loss weight (sigma^2+sd^2)/(sigma sd)^2."""
    sigma = (_randn([n], generator, device, dtype) * P_std + P_mean).exp()
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return sigma, weight


class SigmaLoss:
    """A training loss on the sigma axis: noise levels `draw`n per example and a `weight(sigma)`.

    `terms` is the whole loss, weight(sigma) * ||D(x_start + sigma n, sigma) - x_start||^2 per element (EDM Eq. 2
    and 8), with what callers build on it: the noisy input, the denoiser output and its auxiliary outputs. Options
    of the network (a mask ratio) travel in `model_kwargs`; the loss never reads them.
    """

    def draw(self, n: int, generator, device, dtype) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def terms(self, denoiser, x_start, sigma=None, model_kwargs=None, generator=None) -> dict:
        n = x_start.shape[0]
        if sigma is None:
            sigma = self.draw(n, generator, x_start.device, x_start.dtype)  # (N,)
        else:
            sigma = torch.as_tensor(sigma, dtype=x_start.dtype, device=x_start.device).reshape(-1).expand(n)
        noise = _randn(x_start.shape, generator, x_start.device, x_start.dtype)
        x_t = x_start + noise * append_dims(sigma, x_start.ndim)
        D_x, rest = _split_output(denoiser(x_t, sigma, **(model_kwargs or {})))
        loss = append_dims(self.weight(sigma), x_start.ndim) * (D_x.float() - x_start) ** 2
        return {"loss": loss, "noise_level": sigma, "x_t": x_t, "pred": self.prediction(x_t, D_x.float(), sigma),
                "aux": rest}

    def prediction(self, x_t, D_x, sigma):
        """The output that auxiliary terms (MaskDiT's reconstruction of masked tokens) compare with the noisy
        input: the predicted noise (x_t - D) / sigma, unit-scale at every sigma (D itself carries x_t's scale
        when c_skip = 1, as for VP and VE)."""
        return (x_t - D_x) / append_dims(sigma, x_t.ndim)

    def __call__(self, denoiser, x_start, model_kwargs=None, generator=None) -> torch.Tensor:
        """The per-element loss (N, C, ...) at freshly drawn noise levels."""
        return self.terms(denoiser, x_start, model_kwargs=model_kwargs, generator=generator)["loss"]


# EDM loss (Sec. 5, Table 1 "Training").
class EDMLoss(SigmaLoss):
    """EDM loss: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2)/(sigma sd)^2."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def draw(self, n, generator, device, dtype):
        return edm_sigma_and_weight(n, self.P_mean, self.P_std, self.sigma_data, generator, device, dtype)[0]

    def prediction(self, x_t, D_x, sigma):
        """D itself, as MaskDiT compares it (EDM's c_skip keeps it near the data's scale)."""
        return D_x

    def weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


# VP loss (Song et al. 2021; EDM Table 1 "Training": t ~ U(epsilon_t, 1), weight 1/sigma^2).
class VPLoss(SigmaLoss):
    """VP loss: sigma = sigma_VP(t) with t uniform in [epsilon_t, 1], weight 1/sigma^2."""

    def __init__(self, beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5):
        self.beta_d, self.beta_min, self.epsilon_t = float(beta_d), float(beta_min), float(epsilon_t)

    def sigma(self, t):
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def draw(self, n, generator, device, dtype):
        return self.sigma(1 + _rand(n, generator, device, dtype) * (self.epsilon_t - 1))

    def weight(self, sigma):
        return 1 / sigma**2


# VE loss (Song et al. 2021; EDM Table 1 "Training": ln sigma uniform, weight 1/sigma^2).
class VELoss(SigmaLoss):
    """VE loss: sigma log-uniform in [sigma_min, sigma_max], weight 1/sigma^2."""

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def draw(self, n, generator, device, dtype):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _rand(n, generator, device, dtype)

    def weight(self, sigma):
        return 1 / sigma**2


__all__ = ["EDMPrecond", "VPPrecond", "VEPrecond", "EpsilonDDPMDenoiser", "SigmaLoss", "EDMLoss", "VPLoss", "VELoss",
           "edm_sigma_and_weight", "as_sigma"]
