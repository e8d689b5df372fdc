"""Discrete-time Gaussian diffusion (Ho et al. 2020 "DDPM", Nichol & Dhariwal 2021 "iDDPM", Song et al. 2021 "DDIM").

Schedule constants are float64 numpy arrays; the model is always an argument, `model(x_t, t, **model_kwargs)`,
returning a tensor or a tuple whose first element is the prediction. No training state lives here.
"""

from __future__ import annotations

import enum
import math
from collections import deque

import numpy as np
import torch

from .diffusion_utils import append_dims, discretized_gaussian_log_likelihood, mean_flat, normal_kl


class ModelMeanType(enum.Enum):
    """What the network predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise
    VELOCITY = enum.auto()  # v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    LEARNED = enum.auto()  # the network outputs log variance
    FIXED_SMALL = enum.auto()  # posterior variance beta_tilde
    FIXED_LARGE = enum.auto()  # beta_t
    LEARNED_RANGE = enum.auto()  # interpolation between log beta_tilde and log beta (iDDPM Eq. 15)


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus a VB term rescaled by num_timesteps/1000 (iDDPM L_hybrid)
    KL = enum.auto()
    RESCALED_KL = enum.auto()  # KL times num_timesteps

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


def get_beta_schedule(beta_schedule: str, *, beta_start: float, beta_end: float, num_diffusion_timesteps: int):
    """Betas of the schedules of Ho et al. 2020 (linear, quad, warmupN, const, jsd), float64."""
    T = num_diffusion_timesteps
    if beta_schedule == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif beta_schedule in ("warmup10", "warmup50"):
        betas = beta_end * np.ones(T, dtype=np.float64)
        warmup = int(T * int(beta_schedule[len("warmup"):]) / 100)
        betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
    elif beta_schedule == "const":
        betas = beta_end * np.ones(T, dtype=np.float64)
    elif beta_schedule == "jsd":  # 1/T, 1/(T-1), ..., 1
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    else:
        raise ValueError(f"Unknown beta schedule {beta_schedule!r}; expected linear, cosine, quad, warmup10, "
                         "warmup50, const or jsd.")
    return betas


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int):
    """Named schedules scaled so that any number of steps approximates the 1000-step DDPM process."""
    if num_diffusion_timesteps < 1:
        raise ValueError(f"num_diffusion_timesteps must be at least 1, got {num_diffusion_timesteps}.")
    if schedule_name == "cosine":  # iDDPM Eq. 17
        return betas_for_alpha_bar(num_diffusion_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    scale = 1000 / num_diffusion_timesteps
    betas = get_beta_schedule(schedule_name, beta_start=scale * 0.0001, beta_end=scale * 0.02,
                              num_diffusion_timesteps=num_diffusion_timesteps)
    if betas.max() > 1:
        raise ValueError(f"The {schedule_name!r} schedule scaled to {num_diffusion_timesteps} steps has betas above 1; "
                         "use at least 50 steps or the cosine schedule.")
    return betas


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar, max_beta: float = 0.999):
    """Betas that discretize a continuous alpha_bar(t), t in [0, 1]: beta_i = 1 - abar((i+1)/T)/abar(i/T)."""
    T = num_diffusion_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return np.array(betas, dtype=np.float64)


def _extract(arr: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """arr[t] per sample, in x's dtype (float64 kept), broadcast to x's number of dims."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.from_numpy(arr).to(device=t.device)[t].to(dtype)
    return append_dims(out, x.ndim)


def _split(out):
    return (out[0], tuple(out[1:])) if isinstance(out, tuple | list) else (out, ())


class GaussianDiffusion:
    """DDPM forward/reverse processes, VLB terms and DDIM sampling for a fixed beta schedule."""

    def __init__(self, *, betas, model_mean_type: ModelMeanType, model_var_type: ModelVarType, loss_type: LossType):
        self.model_mean_type, self.model_var_type, self.loss_type = model_mean_type, model_var_type, loss_type
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array with every value in (0, 1].")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0) (DDPM Eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; clip the log with the t = 1 value.
        var_1 = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(var_1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # Forward process.
    def q_mean_variance(self, x_start, t):
        """Mean, variance and log variance of q(x_t | x_0)."""
        mean = _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = _extract(1.0 - self.alphas_cumprod, t, x_start)
        return mean, variance, _extract(self.log_one_minus_alphas_cumprod, t, x_start)

    def q_sample(self, x_start, t, noise=None, generator=None):
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        return (_extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = _extract(self.posterior_mean_coef1, t, x_t) * x_start + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(self.posterior_variance, t, x_t), _extract(self.posterior_log_variance_clipped, t, x_t)

    # Conversions between parameterizations.
    def _predict_xstart_from_eps(self, x_t, t, eps):
        return _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_recipm1_alphas_cumprod,
                                                                                 t, x_t) * eps

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart) / _extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        coef1, coef2 = _extract(self.posterior_mean_coef1, t, x_t), _extract(self.posterior_mean_coef2, t, x_t)
        return (xprev - coef2 * x_t) / coef1

    def _predict_xstart_from_v(self, x_t, t, v):
        return _extract(self.sqrt_alphas_cumprod, t, x_t) * x_t - _extract(self.sqrt_one_minus_alphas_cumprod,
                                                                           t, x_t) * v

    # Reverse process.
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """p(x_{t-1} | x_t): dict of mean, variance, log_variance, pred_xstart and the model's extra outputs."""
        model_output, extra = _split(model(x, t, **(model_kwargs or {})))
        C = x.shape[1]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape[1] != 2 * C:
                raise ValueError(f"A learned-variance model must output {2 * C} channels, got {model_output.shape[1]}.")
            model_output, var_values = torch.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                log_variance = var_values
            else:  # iDDPM Eq. 15, with the network's output in [-1, 1] mapped to [0, 1]
                min_log = _extract(self.posterior_log_variance_clipped, t, x)
                max_log = _extract(np.log(self.betas), t, x)
                frac = (var_values + 1) / 2
                log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if self.model_var_type == ModelVarType.FIXED_LARGE:  # beta_t, with beta_tilde_1 at t = 0 for a good NLL
                var_arr = np.append(self.posterior_variance[1], self.betas[1:])
                variance, log_variance = _extract(var_arr, t, x), _extract(np.log(var_arr), t, x)
            else:
                variance = _extract(self.posterior_variance, t, x)
                log_variance = _extract(self.posterior_log_variance_clipped, t, x)
            variance, log_variance = variance.expand_as(x), log_variance.expand_as(x)

        def process_xstart(x0):
            x0 = denoised_fn(x0) if denoised_fn is not None else x0
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, model_output))
            model_mean = model_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            elif self.model_mean_type == ModelMeanType.EPSILON:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, model_output))
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_v(x, t, model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart,
                "extra": extra}

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the mean: mu + Sigma * grad log p(y | x_t) (Dhariwal & Nichol 2021, Alg. 1)."""
        gradient = cond_fn(x, t, **(model_kwargs or {}))
        return p_mean_var["mean"] + p_mean_var["variance"] * gradient

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the score: eps - sqrt(1 - abar) grad log p(y | x_t) (Dhariwal & Nichol, Alg. 2)."""
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - _extract(self.sqrt_one_minus_alphas_cumprod, t, x) * cond_fn(x, t, **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                 generator=None, randn_like=None):
        """One ancestral step x_t -> x_{t-1} (DDPM Algorithm 2). `randn_like`: the noise source instead of
        `generator` (per-sample seeded noise, so a sample does not depend on its batch)."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs)
        noise = randn_like(x) if randn_like is not None else \
            torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        nonzero = append_dims((t != 0).to(x.dtype), x.ndim)  # no noise at the last step
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def _loop_start(self, shape, noise, device, generator):
        if noise is not None:
            return noise
        device = device if device is not None else "cpu"
        return torch.randn(*shape, generator=generator, device=device)

    def _indices(self, start=None):
        """The steps of a sampling loop, from `start` (default the last) down to 0."""
        start = self.num_timesteps - 1 if start is None else int(start)
        if not 0 <= start < self.num_timesteps:
            raise ValueError(f"a sampling loop starts at a step in [0, {self.num_timesteps - 1}], got {start}.")
        return list(range(start + 1))[::-1]

    def _progress(self, indices, progress):
        if not progress:
            return indices
        from tqdm.auto import tqdm

        return tqdm(indices)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, generator=None):
        """Ancestral sampling from x_T ~ N(0, I) to x_0; returns the final sample."""
        steps = self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                               model_kwargs, device, progress, generator)
        return deque(steps, maxlen=1)[0]["sample"]  # keep only the last step's output

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False, generator=None,
                                  start=None, randn_like=None):
        """Yield the output dict of every ancestral step, from t = `start` (default T-1; `noise` is then x_start,
        an SDEdit-style partial start) down to 0."""
        img = self._loop_start(shape, noise, device, generator)
        for i in self._progress(self._indices(start), progress):
            t = torch.full((img.shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.p_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, generator,
                                    randn_like)
            yield out
            img = out["sample"]

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, generator=None):
        """One DDIM step x_t -> x_{t-1} (Song et al. 2021, Eq. 12; eta = 0 is deterministic)."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar, abar_prev = _extract(self.alphas_cumprod, t, x), _extract(self.alphas_cumprod_prev, t, x)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean_pred = out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        nonzero = append_dims((t != 0).to(x.dtype), x.ndim)
        sample = mean_pred
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            sample = mean_pred + nonzero * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                            model_kwargs=None, eta=0.0):
        """One deterministic DDIM inversion step x_t -> x_{t+1} (the ODE of DDIM run forward in time)."""
        if eta != 0.0:
            raise ValueError(f"ddim_reverse_sample is deterministic: eta must be 0, got {eta}.")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar_next = _extract(self.alphas_cumprod_next, t, x)
        sample = out["pred_xstart"] * torch.sqrt(abar_next) + torch.sqrt(1 - abar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample_loop(self, model, x, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Invert the DDIM loop: map the state at step 0 to the state at step T-1 (inverse of ddim_sample_loop)."""
        for i in range(self.num_timesteps - 1):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            with torch.no_grad():
                x = self.ddim_reverse_sample(model, x, t, clip_denoised, denoised_fn, None, model_kwargs)["sample"]
        return x

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, generator=None):
        """DDIM sampling from x_{T-1} to x_0; returns the final sample."""
        steps = self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, cond_fn,
                                                  model_kwargs, device, progress, eta, generator)
        return deque(steps, maxlen=1)[0]["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                                     generator=None, start=None):
        """Yield the output dict of every DDIM step, from t = `start` (default T-1) down to 0."""
        img = self._loop_start(shape, noise, device, generator)
        for i in self._progress(self._indices(start), progress):
            t = torch.full((img.shape[0],), i, device=img.device, dtype=torch.long)
            with torch.no_grad():
                out = self.ddim_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta,
                                       generator)
            yield out
            img = out["sample"]

    # Variational bound and training losses.
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One VLB term in bits per dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the decoder NLL at t = 0."""
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                           log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None, generator=None):
        """Per-sample loss terms ("loss", and "mse"/"vb" where they apply) at timesteps t (N,)."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        model_output, _ = _split(model(x_t, t, **model_kwargs))
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            C = x_t.shape[1]
            model_output, var_values = torch.split(model_output, C, dim=1)
            # The VB term trains the variance only: the mean is detached so the MSE alone drives it.
            frozen = torch.cat([model_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(lambda *args, **kwargs: frozen, x_start, x_t, t,
                                             clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * self.num_timesteps / 1000.0  # iDDPM: L_vlb weight 1/1000 at T = 1000
        target = {
            ModelMeanType.PREVIOUS_X: lambda: self.q_posterior_mean_variance(x_start, x_t, t)[0],
            ModelMeanType.START_X: lambda: x_start,
            ModelMeanType.EPSILON: lambda: noise,
            ModelMeanType.VELOCITY: lambda: _extract(self.sqrt_alphas_cumprod, t, x_start) * noise
            - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start,
        }[self.model_mean_type]()
        if model_output.shape != target.shape:
            raise ValueError(f"The model output shape {tuple(model_output.shape)} does not match the target "
                             f"shape {tuple(target.shape)}.")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits per dim: not trained, a constant of the schedule."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None, generator=None):
        """The full variational bound in bits per dim, with its per-timestep terms (N, T)."""
        vb, xstart_mse, mse = [], [], []
        for i in list(range(self.num_timesteps))[::-1]:
            t = torch.full((x_start.shape[0],), i, device=x_start.device, dtype=torch.long)
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised, model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            mse.append(mean_flat((self._predict_eps_from_xstart(x_t, t, out["pred_xstart"]) - noise) ** 2))
        vb, xstart_mse, mse = (torch.stack(v, dim=1).flip(1) for v in (vb, xstart_mse, mse))  # (N, T), t ascending
        prior_bpd = self._prior_bpd(x_start)
        return {"total_bpd": vb.sum(dim=1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb,
                "xstart_mse": xstart_mse, "mse": mse}
