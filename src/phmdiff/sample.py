"""Samplers on the sigma axis x = x_start + sigma * n for any denoiser D(x, sigma, **cond).

k-diffusion-style samplers `sampler(denoiser, x, sigmas, extra_args=None, callback=None, **options)` (Euler,
EDM's Heun with churn (Karras et al. 2022, Algorithm 2), DDIM, DPM-Solver++(2M)), registered by name in
`SAMPLERS` (the one list every command, the config and the benchmarks read), the Karras noise schedule,
per-sample seeding, classifier-free guidance, and the PHMDiff pyramid sampler `sample_pyramid`, which runs one
of the k-diffusion-style samplers per pyramid level, coarse to fine: the coarsest level from pure noise, each
finer level from the upsampled coarser result noised to `sigma_start`, which needs far fewer steps than
starting from sigma_max. Every formulation samples here: a DDPM network through `EpsilonDDPMDenoiser`, with
the Karras sigmas clipped to its schedule's range.
"""

from __future__ import annotations

import functools
import math

import torch

from .diffusion.ddpm_sampling import ddpm_step, training_sigmas
from .diffusion.edm import as_sigma
from .masked_dit import null_condition
from .pyramid import gaussian_pyramid, level_shapes, upsample
from .samplers import STOCHASTIC_SAMPLERS


def _first(out):
    """The denoised image of a denoiser's output (a tensor, or a tuple whose first element is it)."""
    return out[0] if isinstance(out, tuple | list) else out


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device=None) -> torch.Tensor:
    """EDM noise levels (Eq. 5): sigma_i^(1/rho) evenly spaced from sigma_max to sigma_min, then 0 appended."""
    if n < 1 or not 0 < sigma_min <= sigma_max:
        raise ValueError(f"get_sigmas_karras needs n >= 1 and 0 < sigma_min <= sigma_max, got n={n}, "
                         f"sigma_min={sigma_min}, sigma_max={sigma_max}.")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64, device=device)  # n = 1 gives [0]: sigma_max alone
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class StackedRandomGenerator:
    """One torch.Generator per sample, so each sample depends on its own seed only, not on the batch."""

    def __init__(self, device, seeds):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def _check(self, size):
        if size[0] != len(self.generators):
            raise ValueError(f"StackedRandomGenerator holds {len(self.generators)} seeds but was asked for a batch "
                             f"of {size[0]}.")

    def randn(self, size, **kwargs):
        self._check(size)
        return torch.stack([torch.randn(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def rand(self, size, **kwargs):
        self._check(size)
        return torch.stack([torch.rand(size[1:], generator=gen, **kwargs) for gen in self.generators])

    def randn_like(self, input):
        return self.randn(input.shape, dtype=input.dtype, layout=input.layout, device=input.device)

    def randint(self, *args, size, **kwargs):
        self._check(size)
        return torch.stack([torch.randint(*args, size=size[1:], generator=gen, **kwargs) for gen in self.generators])


def _call(denoiser, x, sigma, extra_args):
    return _first(denoiser(x, as_sigma(sigma, x), **(extra_args or {})))


def _progress(n, disable):
    if disable is None or disable:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n))


def _churn(x, sigma, s_churn, s_tmin, s_tmax, s_noise, n_steps, randn_like):
    """EDM Algorithm 2 lines 4-6: raise the noise level to sigma_hat = sigma (1 + gamma) by adding fresh noise."""
    gamma = min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= float(sigma) <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        x = x + randn_like(x) * s_noise * (sigma_hat**2 - sigma**2).sqrt()
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, randn_like=torch.randn_like):
    """Euler steps of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (EDM Algorithm 2, no Heun)."""
    for i in _progress(len(sigmas) - 1, disable):
        x, sigma_hat = _churn(x, sigmas[i], s_churn, s_tmin, s_tmax, s_noise, len(sigmas) - 1, randn_like)
        denoised = _call(model, x, sigma_hat, extra_args)
        d = (x - denoised) / sigma_hat
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, randn_like=torch.randn_like):
    """Heun's second-order method with optional churn (EDM Algorithm 2); the step to sigma = 0 is Euler."""
    for i in _progress(len(sigmas) - 1, disable):
        x, sigma_hat = _churn(x, sigmas[i], s_churn, s_tmin, s_tmax, s_noise, len(sigmas) - 1, randn_like)
        denoised = _call(model, x, sigma_hat, extra_args)
        d = (x - denoised) / sigma_hat
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        x_next = x + d * dt
        if sigmas[i + 1] > 0:
            d_next = (x_next - _call(model, x_next, sigmas[i + 1], extra_args)) / sigmas[i + 1]
            x_next = x + (d + d_next) / 2 * dt
        x = x_next
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=0.0,
                randn_like=torch.randn_like):
    """DDIM (Song et al. 2021, Eq. 12) on the sigma axis: x' = D + sqrt(sigma'^2 - s_up^2) eps + s_up z.

    With eta = 0 it is deterministic and equals Euler on the sigma axis (EDM Sec. 3); s_up follows from
    the DDIM sigma_eta with alpha_bar = 1 / (1 + sigma^2).
    """
    for i in _progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _call(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        eps = (x - denoised) / sigma
        sigma_up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).clamp(min=0).sqrt()
        sigma_up = torch.minimum(sigma_up, sigma_next)
        x = denoised + (sigma_next**2 - sigma_up**2).sqrt() * eps
        if eta > 0 and sigma_next > 0:
            x = x + sigma_up * randn_like(x)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep second order in lambda = -log sigma."""
    old_denoised, h_last = None, None
    for i in _progress(len(sigmas) - 1, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _call(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if sigma_next == 0:  # the exponential integrator's limit: x' = D
            x = denoised
            break
        h = sigma.log() - sigma_next.log()  # lambda_next - lambda
        if old_denoised is None:
            D = denoised  # first step: DPM-Solver++(1), i.e. DDIM
        else:
            r = h_last / h
            D = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * D
        old_denoised, h_last = denoised, h
    return x


class GuidedDenoiser:
    """Classifier-free guidance D = D_u + scale (D_c - D_u) over all channels (Ho & Salimans 2022)."""

    def __init__(self, denoiser, scale: float, uncond_kwargs: dict):
        self.denoiser, self.scale, self.uncond_kwargs = denoiser, float(scale), dict(uncond_kwargs)
        self.sigma_min = getattr(denoiser, "sigma_min", 0.0)
        self.sigma_max = getattr(denoiser, "sigma_max", float("inf"))
        self.round_sigma = getattr(denoiser, "round_sigma", torch.as_tensor)

    def _batched_kwargs(self, cond: dict):
        """Conditional and unconditional kwargs stacked on the batch axis, or None when they cannot be."""
        out = {}
        for key in set(cond) | set(self.uncond_kwargs):
            c, u = cond.get(key, self.uncond_kwargs.get(key)), self.uncond_kwargs.get(key, cond.get(key))
            if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor) and c.shape == u.shape:
                out[key] = torch.cat([c, u])
            elif isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor) or c != u:
                return None
            else:
                out[key] = c  # the same non-tensor option (a level, None) for both halves
        return out

    def __call__(self, x, sigma, **cond):
        if self.scale == 1.0:
            return _first(self.denoiser(x, sigma, **cond))
        sigma = as_sigma(sigma, x)  # (N,)
        both = self._batched_kwargs(cond)
        if both is not None:  # one network call on a batch of 2N
            D = _first(self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both))
            D_c, D_u = D.chunk(2)
        else:
            D_c = _first(self.denoiser(x, sigma, **cond))
            D_u = _first(self.denoiser(x, sigma, **self.uncond_kwargs))
        return D_u + self.scale * (D_c - D_u)


def guided_denoiser(D, scale: float, uncond_kwargs: dict) -> GuidedDenoiser:
    """A denoiser D(x, sigma, **cond) = D_u + scale (D_c - D_u), conditional and unconditional in one call."""
    return GuidedDenoiser(D, scale, uncond_kwargs)


# The samplers by name: adding one here offers it to the config, translate, generate and the benchmarks.
# The functions by name; each one's facts (calls per step, stochastic, minimum steps) are its `SAMPLER_SPECS` entry.
SAMPLERS = {"heun": sample_heun, "euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m, "ddim": sample_ddim}
# EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) adds noise back before each step in this sigma range;
# S_tmin, S_tmax and S_noise as EDM set them for ImageNet 64x64 (Table 5). The amount, S_churn, is `churn`.
CHURN_SAMPLERS = STOCHASTIC_SAMPLERS
CHURN_TMIN, CHURN_TMAX, CHURN_NOISE = 0.05, 50.0, 1.003


def sample(denoiser, noise, sampler="heun", num_steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
           model_kwargs=None, x_init=None, sigma_start=None, progress=False, **options):
    """Sample from noise ~ N(0, I) with a named sampler on the Karras schedule.

    With x_init, start from x_init + sigma_start * noise and run the schedule from sigma_start down (SDEdit-style
    start, used by the pyramid to refine an upsampled coarse result).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
    sigma_min = max(sigma_min, getattr(denoiser, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(denoiser, "sigma_max", float("inf")))
    if x_init is not None:
        if sigma_start is None or not sigma_min <= sigma_start <= sigma_max:
            raise ValueError(f"Starting from x_init needs sigma_start in [{sigma_min}, {sigma_max}], "
                             f"got {sigma_start}.")
        if x_init.shape != noise.shape:
            raise ValueError(f"x_init has shape {tuple(x_init.shape)} but the noise has {tuple(noise.shape)}.")
        sigma_max = float(sigma_start)
    sigmas = get_sigmas_karras(num_steps, sigma_min, sigma_max, rho, device=noise.device)
    x = noise.to(torch.float64) * sigmas[0]
    if x_init is not None:
        x = x + x_init.to(torch.float64)
    x = SAMPLERS[sampler](denoiser, x, sigmas, extra_args=model_kwargs, disable=not progress, **options)
    return x.to(noise.dtype)


def check_churn(sampler: str, churn: float) -> None:
    """Refuse a churn the sampler cannot use: only Heun and Euler add noise back (EDM Algorithm 2)."""
    if not (math.isfinite(churn) and churn >= 0):
        raise ValueError(f"churn is {churn}; expected a number >= 0 (0: deterministic sampling).")
    if churn > 0 and sampler not in CHURN_SAMPLERS:
        raise ValueError(f"churn {churn:g} needs the {' or '.join(CHURN_SAMPLERS)} sampler, not {sampler}; "
                         "use churn 0 with it.")


def level_kwargs(src_pyr: list[torch.Tensor], coarse_target: torch.Tensor | None, level: int, avail: torch.Tensor,
                 target_label: torch.Tensor | None) -> dict:
    """Model kwargs at one level: the source at that level and the (upsampled) coarser target, if any."""
    cond = src_pyr[level]
    coarse = None if coarse_target is None else upsample(coarse_target, cond.shape[2:])
    return {"cond": cond, "avail": avail, "coarse": coarse, "level": level, "target_label": target_label}


@torch.no_grad()
def sample_pyramid(denoiser, source: torch.Tensor, avail: torch.Tensor, target_label: torch.Tensor | None,
                   seeds: list[int], levels: int, latent_channels: int, sampler: str = "heun", num_steps: int = 18,
                   fine_num_steps: int = 8, sigma_start: float = 2.0, guidance: float = 1.0,
                   sigma_min: float = 0.002, sigma_max: float = 80.0, null_label: int | None = None,
                   churn: float = 0.0, respacing: str = "") -> torch.Tensor:
    """Coarse-to-fine sampling of the target latents (N, C, H, W) given the source latents (N, n_src*C, H, W).

    Every random draw comes from the sample's own seed (`StackedRandomGenerator`), so a sample does not
    depend on the batch it is in. Guidance's unconditional branch drops the sources; with `null_label` (a
    generation run, whose condition is the modality label) it also puts the null label in place of the label.
    `churn` > 0 (Heun and Euler): EDM's stochastic sampler with S_churn = churn, the same at every level.
    `respacing` (a `ddpm` run): each level goes through the run's own respaced DDPM/DDIM loop
    (`diffusion.ddpm_sampling`) instead of `sampler`, from the same start.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not available for pyramid sampling; expected one of "
                         f"{', '.join(SAMPLERS)}.")
    check_churn(sampler, churn)
    if len(seeds) != source.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {source.shape[0]} samples; expected one seed per sample.")
    if num_steps < 1 or fine_num_steps < 1:
        raise ValueError(f"steps must be positive, got num_steps={num_steps} and fine_num_steps={fine_num_steps}.")
    device = source.device
    sigma_min = max(sigma_min, float(getattr(denoiser, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(denoiser, "sigma_max", math.inf)))
    rng = StackedRandomGenerator(device, seeds)
    src_pyr = gaussian_pyramid(source, levels)  # finest first
    shapes = level_shapes(source.shape[2:], levels)
    step = SAMPLERS[sampler]
    if churn > 0:
        step = functools.partial(step, s_churn=churn, s_tmin=CHURN_TMIN, s_tmax=CHURN_TMAX, s_noise=CHURN_NOISE,
                                 randn_like=rng.randn_like)
    if respacing:
        step = functools.partial(ddpm_step, respacing=respacing, training=training_sigmas(denoiser),
                                 randn_like=rng.randn_like)
    n = source.shape[0]
    x = None
    for level in reversed(range(levels)):
        kwargs = level_kwargs(src_pyr, x, level, avail, target_label)
        noise = rng.randn([n, latent_channels, *shapes[level]], device=device, dtype=torch.float32)
        if x is None:  # the coarsest level starts from pure noise
            sigmas = get_sigmas_karras(num_steps, sigma_min, sigma_max, device=device).float()
            x_init = noise * sigmas[0]
        else:  # finer levels refine the upsampled coarser result, partially re-noised
            start = min(sigma_start, sigma_max)
            sigmas = get_sigmas_karras(fine_num_steps, sigma_min, start, device=device).float()
            x_init = kwargs["coarse"] + noise * sigmas[0]
        uncond = null_condition(kwargs)
        if null_label is not None:
            uncond["target_label"] = torch.full((n,), null_label, dtype=torch.long, device=device)
        D = denoiser if guidance == 1.0 else guided_denoiser(denoiser, guidance, uncond)
        x = step(D, x_init, sigmas, extra_args=kwargs, disable=True)
    return x
