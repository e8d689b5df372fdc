"""GaussianDiffusion against closed forms computed independently from the betas, with oracle models."""

import math

import numpy as np
import pytest
import torch

from phmdiff.diffusion import gaussian_diffusion as gd

SHAPES = [(4, 1, 3, 3), (4, 2, 2, 3, 3)]
T = 40


def make(mean_type=gd.ModelMeanType.EPSILON, var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE,
         schedule="linear", steps=T):
    return gd.GaussianDiffusion(betas=gd.get_named_beta_schedule(schedule, steps), model_mean_type=mean_type,
                                model_var_type=var_type, loss_type=loss_type)


def abar_by_loop(betas, t):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), with a plain loop (t = -1 gives 1)."""
    out = 1.0
    for s in range(t + 1):
        out *= 1.0 - betas[s]
    return out


def bcast(values, ndim):
    return torch.tensor(values, dtype=torch.float64).reshape(-1, *([1] * (ndim - 1)))


class Oracle:
    """Returns the exact target of the given parameterization for a known x_start."""

    def __init__(self, diffusion, x_start, learned_var=None):
        self.d, self.x_start, self.learned_var = diffusion, x_start, learned_var
        self.calls = []

    def __call__(self, x_t, t, **kwargs):
        self.calls.append(t.clone())
        nd = x_t.ndim
        ab = bcast([abar_by_loop(self.d.betas, int(i)) for i in t], nd)
        eps = (x_t - ab.sqrt() * self.x_start) / (1 - ab).sqrt()
        out = {
            gd.ModelMeanType.EPSILON: eps,
            gd.ModelMeanType.START_X: self.x_start,
            gd.ModelMeanType.VELOCITY: ab.sqrt() * eps - (1 - ab).sqrt() * self.x_start,
            gd.ModelMeanType.PREVIOUS_X: self.d.q_posterior_mean_variance(self.x_start, x_t, t)[0],
        }[self.d.model_mean_type]
        if self.learned_var is not None:
            out = torch.cat([out, torch.full_like(out, self.learned_var)], 1)
        return out


def test_named_schedules():
    b = gd.get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(gd.get_named_beta_schedule("linear", 250), np.linspace(4e-4, 0.08, 250))
    q = gd.get_named_beta_schedule("quad", 100)
    np.testing.assert_allclose(np.diff(np.sqrt(q)), np.diff(np.sqrt(q))[0])  # sqrt(beta) is linear
    w = gd.get_named_beta_schedule("warmup10", 100)
    np.testing.assert_allclose(w[:10], np.linspace(1e-3, 0.2, 10))
    np.testing.assert_allclose(w[10:], 0.2)
    np.testing.assert_allclose(gd.get_named_beta_schedule("const", 100), 0.2)
    np.testing.assert_allclose(gd.get_named_beta_schedule("jsd", 4), [1 / 4, 1 / 3, 1 / 2, 1])
    # Cosine (iDDPM Eq. 17): alphas_cumprod[i] = f((i+1)/T) / f(0) wherever beta is not clipped at 0.999.
    c = gd.get_named_beta_schedule("cosine", 1000)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1 - c)
    for i in [0, 10, 500, 900, 990]:
        assert abar[i] == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-9)
    assert c.max() <= 0.999
    with pytest.raises(ValueError, match="Unknown beta schedule"):
        gd.get_named_beta_schedule("sigmoid", 10)
    with pytest.raises(ValueError, match="above 1"):
        gd.get_named_beta_schedule("linear", 10)


@pytest.mark.parametrize("shape", SHAPES)
def test_q_sample_empirical_moments_match_q_mean_variance(shape):
    d = make()
    g = torch.Generator().manual_seed(0)
    x_start = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0, 5, 20, 39])
    M = 20000
    draws = d.q_sample(x_start.repeat(M, *([1] * (len(shape) - 1))), t.repeat(M), generator=g)
    draws = draws.reshape(M, *shape)  # (M, N, C, ...)
    mean, var, log_var = d.q_mean_variance(x_start, t)
    ab = bcast([abar_by_loop(d.betas, int(i)) for i in t], len(shape))
    torch.testing.assert_close(mean, ab.sqrt() * x_start)
    torch.testing.assert_close(var, (1 - ab).expand_as(var))
    torch.testing.assert_close(log_var.exp(), var)
    # Standard error of the mean is sqrt(var / M) <= 0.0071; of the variance var * sqrt(2 / M).
    assert float((draws.mean(0) - mean).abs().max()) < 5 * math.sqrt(1 / M)
    rel_var = draws.var(0) / var
    assert float((rel_var - 1).abs().max()) < 5 * math.sqrt(2 / M)


def test_posterior_matches_the_product_of_gaussians():
    # q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}).
    d = make()
    g = torch.Generator().manual_seed(1)
    x_start, x_t = (torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([1, 17, 39])
    prec, lin = [], []
    for i in t.tolist():
        b, ab_prev = d.betas[i], abar_by_loop(d.betas, i - 1)
        prec.append((1 - b) / b + 1 / (1 - ab_prev))
        lin.append((math.sqrt(1 - b) / b, math.sqrt(ab_prev) / (1 - ab_prev)))
    prec_t = bcast(prec, 4)
    expected_mean = (bcast([a for a, _ in lin], 4) * x_t + bcast([c for _, c in lin], 4) * x_start) / prec_t
    mean, var, log_var = d.q_posterior_mean_variance(x_start, x_t, t)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var, 1 / prec_t, rtol=1e-10, atol=0)
    torch.testing.assert_close(log_var, (1 / prec_t).log(), rtol=1e-10, atol=0)
    # At t = 0 the posterior is a point mass at x_0.
    mean0, var0, _ = d.q_posterior_mean_variance(x_start, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean0, x_start)
    assert float(var0.abs().max()) == 0.0


@pytest.mark.parametrize("mean_type", list(gd.ModelMeanType))
@pytest.mark.parametrize("shape", SHAPES)
def test_oracle_model_recovers_x_start(mean_type, shape):
    d = make(mean_type=mean_type)
    x_start = torch.rand(shape, dtype=torch.float64) * 1.8 - 0.9
    t = torch.tensor([0, 3, 21, 39])
    x_t = d.q_sample(x_start, t)
    out = d.p_mean_variance(Oracle(d, x_start), x_t, t, clip_denoised=False)
    torch.testing.assert_close(out["pred_xstart"], x_start, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["mean"], d.q_posterior_mean_variance(x_start, x_t, t)[0], rtol=1e-9, atol=1e-9)
    # Ancestral and DDIM loops from pure noise end exactly at x_start.
    noise = torch.randn(shape, dtype=torch.float64)
    oracle = Oracle(d, x_start)
    torch.testing.assert_close(d.p_sample_loop(oracle, shape, noise=noise), x_start, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.ddim_sample_loop(oracle, shape, noise=noise), x_start, rtol=1e-9, atol=1e-9)
    assert [int(c[0]) for c in oracle.calls[-T:]] == list(range(T - 1, -1, -1))


@pytest.mark.parametrize("shape", SHAPES)
def test_ddim_loop_inverts_ddim_reverse_sample(shape):
    d = make(schedule="cosine")
    g = torch.Generator().manual_seed(3)
    x_start = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    model = Oracle(d, x_start)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    states = [noise] + [o["sample"] for o in d.ddim_sample_loop_progressive(model, shape, noise=noise)]
    trajectory = states[:-1][::-1]  # trajectory[i] = the state at step i, i = 0..T-1
    x = trajectory[0]
    for i in range(T - 1):
        x = d.ddim_reverse_sample(model, x, torch.full((shape[0],), i))["sample"]
        torch.testing.assert_close(x, trajectory[i + 1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.ddim_reverse_sample_loop(model, trajectory[0]), noise, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="eta must be 0"):
        d.ddim_reverse_sample(model, x, torch.zeros(shape[0], dtype=torch.long), eta=0.5)


def test_ddim_eta_one_matches_ancestral_variance_and_p_sample_noise():
    # With eta = 1 the DDIM step's noise scale is the posterior std sqrt(beta_tilde_t) (DDIM Sec. 4.1).
    d = make()
    x_start = torch.zeros(2000, 1, 1, 1, dtype=torch.float64)
    t = torch.full((2000,), 10)
    x_t = d.q_sample(x_start, t, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    out = d.ddim_sample(Oracle(d, x_start), x_t, t, eta=1.0, generator=g)["sample"]
    mean = d.q_posterior_mean_variance(x_start, x_t, t)[0]
    resid = (out - mean).flatten()
    assert float(resid.var()) == pytest.approx(d.posterior_variance[10], rel=5 * math.sqrt(2 / 2000))


def test_cond_fn_shifts_mean_by_variance_times_gradient():
    d = make()
    x_start = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([5, 30])
    x_t = d.q_sample(x_start, t)
    model = Oracle(d, x_start)

    def cond_fn(x, t, **kwargs):
        return torch.full_like(x, 0.3)

    a = d.p_sample(model, x_t, t, clip_denoised=False, generator=torch.Generator().manual_seed(0))["sample"]
    b = d.p_sample(model, x_t, t, clip_denoised=False, cond_fn=cond_fn,
                   generator=torch.Generator().manual_seed(0))["sample"]
    torch.testing.assert_close(b - a, 0.3 * bcast(d.posterior_variance[t.numpy()], 4).expand_as(a))
    # Score conditioning moves epsilon by -sqrt(1 - abar) * grad.
    p = d.p_mean_variance(model, x_t, t, clip_denoised=False)
    cond = d.condition_score(cond_fn, p, x_t, t)
    eps_shift = d._predict_eps_from_xstart(x_t, t, cond["pred_xstart"]) - d._predict_eps_from_xstart(
        x_t, t, p["pred_xstart"])
    torch.testing.assert_close(eps_shift, -0.3 * bcast(d.sqrt_one_minus_alphas_cumprod[t.numpy()], 4).expand_as(a))


def test_training_losses_closed_forms():
    g = torch.Generator().manual_seed(6)
    x_start = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5
    t = torch.tensor([2, 15, 39])
    noise = torch.randn(x_start.shape, generator=g, dtype=torch.float64)
    for mean_type in gd.ModelMeanType:
        d = make(mean_type=mean_type)
        terms = d.training_losses(Oracle(d, x_start), x_start, t, noise=noise)
        assert float(terms["loss"].abs().max()) < 1e-18
    # A zero v-prediction model pays the mean squared velocity.
    d = make(mean_type=gd.ModelMeanType.VELOCITY)
    ab = bcast([abar_by_loop(d.betas, int(i)) for i in t], 4)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x_start
    terms = d.training_losses(lambda x, t: torch.zeros_like(x), x_start, t, noise=noise)
    torch.testing.assert_close(terms["loss"], (v**2).mean(dim=(1, 2, 3)))
    # KL with fixed large variance: KL of two Gaussians with equal means, variances beta_tilde and beta.
    d = make(var_type=gd.ModelVarType.FIXED_LARGE, loss_type=gd.LossType.KL)
    terms = d.training_losses(Oracle(d, x_start[1:]), x_start[1:], t[1:], noise=noise[1:])
    bt, b = d.posterior_variance[t[1:].numpy()], d.betas[t[1:].numpy()]
    expected = 0.5 * (-1 + np.log(b / bt) + bt / b) / math.log(2)
    np.testing.assert_allclose(terms["loss"].numpy(), expected, rtol=1e-9, atol=1e-15)
    # Hybrid loss: the rescaled VB term is the plain one times T/1000; the MSE is untouched by the variance.
    kw = dict(var_type=gd.ModelVarType.LEARNED_RANGE)
    plain, rescaled = make(**kw), make(loss_type=gd.LossType.RESCALED_MSE, **kw)
    a = plain.training_losses(Oracle(plain, x_start, learned_var=0.3), x_start, t, noise=noise)
    r = rescaled.training_losses(Oracle(rescaled, x_start, learned_var=0.3), x_start, t, noise=noise)
    torch.testing.assert_close(r["vb"], a["vb"] * T / 1000)
    assert float(a["mse"].abs().max()) < 1e-18 and float(a["vb"][1:].min()) > 0
    with pytest.raises(ValueError, match="does not match the target"):
        make().training_losses(lambda x, t: x[:, :, :2], x_start, t)


def test_learned_range_interpolates_log_variance():
    d = make(var_type=gd.ModelVarType.LEARNED_RANGE)
    x_start = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([4, 30])
    x_t = d.q_sample(x_start, t)
    for v, expected in [(-1.0, d.posterior_log_variance_clipped), (1.0, np.log(d.betas))]:
        out = d.p_mean_variance(Oracle(d, x_start, learned_var=v), x_t, t)
        torch.testing.assert_close(out["log_variance"][:, 0, 0, 0], torch.from_numpy(expected[t.numpy()]))
    with pytest.raises(ValueError, match="2 channels"):
        d.p_mean_variance(lambda x, t: x, x_t, t)


def test_calc_bpd_loop_with_oracle():
    d = make(steps=10, schedule="cosine")
    x_start = (torch.randint(0, 256, (2, 1, 3, 3)).double() / 255) * 2 - 1
    out = d.calc_bpd_loop(Oracle(d, x_start), x_start, clip_denoised=False)
    assert out["vb"].shape == (2, 10) and out["mse"].shape == (2, 10)
    # Exact means with posterior variances: every KL term vanishes and only the decoder NLL and prior remain.
    assert float(out["vb"][:, 1:].abs().max()) < 1e-9
    ab = d.alphas_cumprod[-1]
    m = math.sqrt(ab) * x_start
    prior = (0.5 * (-1 - math.log(1 - ab) + (1 - ab) + m**2)).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(out["prior_bpd"], prior)
    torch.testing.assert_close(out["total_bpd"], out["vb"][:, 0] + prior)
    assert float(out["xstart_mse"].max()) < 1e-18


def test_bad_betas_are_refused():
    with pytest.raises(ValueError, match="betas"):
        gd.GaussianDiffusion(betas=[0.1, 0.0], model_mean_type=gd.ModelMeanType.EPSILON,
                             model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
