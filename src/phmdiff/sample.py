"""Samplers on the sigma axis x = x_start + sigma * n for any denoiser D(x, sigma, **cond).

EDM's Heun sampler (Karras et al. 2022, Algorithm 2) and its generalized ablation sampler, k-diffusion-style
samplers `sampler(denoiser, x, sigmas, extra_args=None, callback=None, **options)` (Euler, Heun, DDIM,
DPM-Solver++(2M)), the Karras noise schedule, per-sample seeding, classifier-free guidance, and the PHMDiff
pyramid sampler `sample_pyramid`, which runs one of the k-diffusion-style samplers per pyramid level, coarse
to fine: the coarsest level from pure noise, each finer level from the upsampled coarser result noised to
`sigma_start`, which needs far fewer steps than starting from sigma_max.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .diffusion.edm import as_sigma
from .masked_dit import null_condition
from .pyramid import gaussian_pyramid, level_shapes, upsample


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


@torch.no_grad()
def edm_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=0.002,
                sigma_max=80, rho=7, S_churn=0, S_min=0, S_max=float("inf"), S_noise=1, model_kwargs=None):
    """EDM Algorithm 2 (Heun, with churn) from latents ~ N(0, I); class_labels go to the denoiser as a kwarg."""
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", float("inf")))
    round_sigma = getattr(net, "round_sigma", torch.as_tensor)
    kwargs = dict(model_kwargs or {})
    if class_labels is not None:
        kwargs["class_labels"] = class_labels
    t_steps = get_sigmas_karras(num_steps, sigma_min, sigma_max, rho, device=latents.device)
    t_steps = torch.cat([torch.as_tensor(round_sigma(t_steps[:-1]), dtype=torch.float64), t_steps[-1:]])
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = torch.as_tensor(round_sigma(t_cur + gamma * t_cur), dtype=torch.float64)
        x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x_cur) if gamma > 0 else x_cur
        d_cur = (x_hat - _call(net, x_hat, t_hat, kwargs).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:  # second-order correction, except into sigma = 0
            d_prime = (x_next - _call(net, x_next, t_next, kwargs).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def _noise_schedule(schedule, beta_d=None, beta_min=None):
    """sigma(t), sigma'(t) and sigma^-1 of the VP, VE or linear schedule (EDM Table 1)."""
    if schedule == "vp":
        def sigma(t):
            return ((0.5 * beta_d * t**2 + beta_min * t).exp() - 1).sqrt()

        def sigma_deriv(t):
            return 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))

        def sigma_inv(s):
            return ((beta_min**2 + 2 * beta_d * (s**2 + 1).log()).sqrt() - beta_min) / beta_d

        return sigma, sigma_deriv, sigma_inv
    if schedule == "ve":
        return (lambda t: t.sqrt()), (lambda t: 0.5 / t.sqrt()), (lambda s: s**2)
    return (lambda t: t), (lambda t: torch.ones_like(t)), (lambda s: s)


def _ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2, M,
                          vp_beta, device):
    """The N noise levels of each time discretization of EDM Table 1 (VP, VE, iDDPM, EDM)."""
    i = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)  # 0 .. 1
    if discretization == "vp":
        return _noise_schedule("vp", *vp_beta)[0](1 + i * (epsilon_s - 1))
    if discretization == "ve":  # geometric in sigma
        return sigma_max * (sigma_min / sigma_max) ** i
    if discretization == "iddpm":
        # u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1)/abar(j), C_1) - 1) with the cosine abar.
        alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2  # noqa: E731
        u = np.zeros(M + 1)
        for j in range(M, 0, -1):
            u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1)
        u = torch.from_numpy(u[(u >= sigma_min) & (u <= sigma_max)]).to(device)
        return u[((len(u) - 1) * i).round().long()]
    return get_sigmas_karras(num_steps, sigma_min, sigma_max, rho, device=device)[:-1]


@torch.no_grad()
def ablation_sampler(net, latents, class_labels=None, randn_like=torch.randn_like, num_steps=18, sigma_min=None,
                     sigma_max=None, rho=7, solver="heun", discretization="edm", schedule="linear", scaling="none",
                     epsilon_s=1e-3, C_1=0.001, C_2=0.008, M=1000, alpha=1, S_churn=0, S_min=0, S_max=float("inf"),
                     S_noise=1, model_kwargs=None):
    """EDM's generalized sampler (Algorithm 1 with churn): any discretization, schedule sigma(t), scaling s(t).

    Integrates dx/dt = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x / s, sigma) (EDM Eq. 4) in t.
    """
    options = {"solver": (solver, ("euler", "heun")), "discretization": (discretization, ("vp", "ve", "iddpm", "edm")),
               "schedule": (schedule, ("vp", "ve", "linear")), "scaling": (scaling, ("vp", "none"))}
    for name, (value, allowed) in options.items():
        if value not in allowed:
            raise ValueError(f"ablation_sampler {name} must be one of {', '.join(allowed)}, got {value!r}.")
    vp_default = _noise_schedule("vp", 19.9, 0.1)[0]
    if sigma_min is None:
        sigma_min = {"vp": float(vp_default(torch.tensor(epsilon_s, dtype=torch.float64))), "ve": 0.02,
                     "iddpm": 0.002, "edm": 0.002}[discretization]
    if sigma_max is None:
        sigma_max = {"vp": float(vp_default(torch.tensor(1.0, dtype=torch.float64))), "ve": 100.0, "iddpm": 81.0,
                     "edm": 80.0}[discretization]
    sigma_min = max(sigma_min, getattr(net, "sigma_min", 0.0))
    sigma_max = min(sigma_max, getattr(net, "sigma_max", float("inf")))
    round_sigma = getattr(net, "round_sigma", torch.as_tensor)
    kwargs = dict(model_kwargs or {})
    if class_labels is not None:
        kwargs["class_labels"] = class_labels

    # VP betas that hit sigma_max at t = 1 and sigma_min at t = epsilon_s.
    l_min, l_max = math.log(sigma_min**2 + 1), math.log(sigma_max**2 + 1)
    vp_beta_d = 2 * (l_min / epsilon_s - l_max) / (epsilon_s - 1)
    vp_beta = (vp_beta_d, l_max - 0.5 * vp_beta_d)
    sigma_steps = _ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s, C_1, C_2,
                                        M, vp_beta, latents.device)
    sigma, sigma_deriv, sigma_inv = _noise_schedule(schedule, *vp_beta)
    if scaling == "vp":
        def s(t):
            return 1 / (1 + sigma(t) ** 2).sqrt()

        def s_deriv(t):
            return -sigma(t) * sigma_deriv(t) * s(t) ** 3
    else:
        s, s_deriv = (lambda t: torch.ones_like(t)), (lambda t: torch.zeros_like(t))

    def dxdt(x, t):
        denoised = _call(net, x / s(t), sigma(t), kwargs).to(torch.float64)
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    def rounded(sig):
        return torch.as_tensor(round_sigma(sig), dtype=torch.float64, device=latents.device)

    t_steps = sigma_inv(rounded(sigma_steps))
    t_steps = torch.cat([t_steps, t_steps.new_zeros(1)])
    x_next = latents.to(torch.float64) * (sigma(t_steps[0]) * s(t_steps[0]))
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(rounded(sigma(t_cur) * (1 + gamma)))
        x_hat = s(t_hat) / s(t_cur) * x_cur
        if gamma > 0:
            noise_std = (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clamp(min=0).sqrt() * s(t_hat) * S_noise
            x_hat = x_hat + noise_std * randn_like(x_cur)
        h = t_next - t_hat
        d_cur = dxdt(x_hat, t_hat)
        if solver == "euler" or i == num_steps - 1:
            x_next = x_hat + h * d_cur
        else:  # generalized second-order step (EDM Algorithm 1 with alpha; alpha = 1 is Heun)
            d_prime = dxdt(x_hat + alpha * h * d_cur, t_hat + alpha * h)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)
    return x_next


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


SAMPLERS = {"heun": sample_heun, "euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m, "ddim": sample_ddim}


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
                   sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """Coarse-to-fine sampling of the target latents (N, C, H, W) given the source latents (N, n_src*C, H, W).

    Every random draw comes from the sample's own seed (`StackedRandomGenerator`), so a sample does not
    depend on the batch it is in.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not available for pyramid sampling; expected one of "
                         f"{', '.join(SAMPLERS)}.")
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
        D = denoiser if guidance == 1.0 else guided_denoiser(denoiser, guidance, null_condition(kwargs))
        x = step(D, x_init, sigmas, extra_args=kwargs, disable=True)
    return x
