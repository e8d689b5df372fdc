"""EDM preconditioning and losses against the closed forms of Karras et al. 2022, Table 1."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from phmdiff.diffusion.edm import (
    EDMLoss,
    EDMPrecond,
    EpsilonDDPMDenoiser,
    VELoss,
    VEPrecond,
    VPLoss,
    VPPrecond,
    edm_sigma_and_weight,
)


class ZeroNet(nn.Module):
    """F = 0, recording what it was called with."""

    def forward(self, x_in, c_noise, **kwargs):
        self.seen = (x_in, c_noise, kwargs)
        return torch.zeros_like(x_in)


class TupleNet(nn.Module):
    def forward(self, x_in, c_noise, **kwargs):
        return torch.ones_like(x_in), "mask", kwargs


SHAPES = [(3, 2, 4, 4), (3, 1, 2, 4, 4)]


def _c_skip_closed_form(kind, sigma, sd=0.5):
    return sd**2 / (sigma**2 + sd**2) if kind == "edm" else 1.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["edm", "vp", "ve"])
@pytest.mark.parametrize("sigma_form", ["float", "scalar_tensor", "per_sample"])
def test_zero_network_gives_c_skip_times_x(shape, kind, sigma_form):
    net = ZeroNet()
    D = {"edm": EDMPrecond, "vp": VPPrecond, "ve": VEPrecond}[kind](net)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    sigmas = [0.7, 0.7, 0.7] if sigma_form != "per_sample" else [0.1, 1.0, 10.0]
    sigma = {"float": 0.7, "scalar_tensor": torch.tensor(0.7), "per_sample": torch.tensor(sigmas)}[sigma_form]
    out = D(x, sigma, label=5)
    expected = torch.stack([_c_skip_closed_form(kind, s) * x[i] for i, s in enumerate(sigmas)])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert net.seen[2] == {"label": 5}  # model_kwargs passed through untouched
    assert net.seen[1].shape == (3,)


def test_edm_coefficients_match_table_1_by_hand():
    P = EDMPrecond(ZeroNet(), sigma_data=0.5)
    s = torch.tensor(1.0, dtype=torch.float64)
    assert float(P.c_skip(s)) == pytest.approx(0.25 / 1.25)
    assert float(P.c_out(s)) == pytest.approx(0.5 / math.sqrt(1.25))
    assert float(P.c_in(s)) == pytest.approx(1 / math.sqrt(1.25))
    assert float(P.c_noise(torch.tensor(math.e**4))) == pytest.approx(1.0)
    # Unit variance of the network input and of its effective target (EDM Sec. 5, Eq. 7-8) for any sigma.
    for sigma in [0.01, 0.3, 2.0, 50.0]:
        s = torch.tensor(sigma, dtype=torch.float64)
        assert float(P.c_in(s) ** 2 * (0.25 + sigma**2)) == pytest.approx(1.0)
        target_var = (0.25 * (1 - P.c_skip(s)) ** 2 + P.c_skip(s) ** 2 * sigma**2) / P.c_out(s) ** 2
        assert float(target_var) == pytest.approx(1.0)


def test_vp_ve_coefficients_and_sigma_inverse():
    vp = VPPrecond(ZeroNet())
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    sigma = vp.sigma(t)
    expected = np.sqrt(np.exp(0.5 * 19.9 * t.numpy() ** 2 + 0.1 * t.numpy()) - 1)
    np.testing.assert_allclose(sigma.numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(vp.sigma_inv(sigma), t)
    assert float(vp.c_noise(torch.tensor(vp.sigma_max, dtype=torch.float64))) == pytest.approx(999.0)
    assert vp.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    x = torch.ones(1, 1, 2, 2)
    D = VPPrecond(TupleNet())(x, 2.0)  # F = 1 so D = x - sigma
    torch.testing.assert_close(D[0], x - 2.0)
    ve = VEPrecond(TupleNet())
    torch.testing.assert_close(ve(x, 3.0)[0], x + 3.0)
    assert float(ve.c_noise(torch.tensor(2.0))) == pytest.approx(0.0)


def test_tuple_output_is_passed_on_and_bad_sigma_is_refused():
    D = EDMPrecond(TupleNet())
    out = D(torch.zeros(2, 1, 4, 4), torch.tensor([1.0, 2.0]), cond="c")
    assert isinstance(out, tuple) and out[1] == "mask" and out[2] == {"cond": "c"}
    with pytest.raises(ValueError, match="one value per sample"):
        D(torch.zeros(2, 1, 4, 4), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(ZeroNet(), sigma_data=0.0)


def ideal_denoiser(s):
    """Posterior mean of x_start ~ N(0, s^2) given x = x_start + sigma n."""

    def D(x, sigma, **kwargs):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * s**2 / (s**2 + sigma**2)

    return D


def test_edm_loss_of_ideal_denoiser_is_one():
    # With data N(0, sd^2) the ideal denoiser's error variance is sd^2 sigma^2/(sd^2+sigma^2), which the EDM
    # weight cancels exactly: each element is weight * error^2 ~ chi^2_1, mean 1, variance 2.
    g = torch.Generator().manual_seed(1)
    x_start = 0.5 * torch.randn(64, 1, 32, 32, generator=g, dtype=torch.float64)
    loss = EDMLoss(sigma_data=0.5)(ideal_denoiser(0.5), x_start, generator=g)
    assert loss.shape == x_start.shape
    std_of_mean = math.sqrt(2 / loss.numel())  # 0.0055
    assert float(loss.mean()) == pytest.approx(1.0, abs=5 * std_of_mean)


def test_ve_and_vp_loss_of_ideal_denoiser_at_fixed_sigma():
    # Weight 1/sigma^2 times the error variance gives sd^2/(sd^2 + sigma^2).
    g = torch.Generator().manual_seed(2)
    x_start = 0.5 * torch.randn(64, 1, 32, 32, generator=g, dtype=torch.float64)
    loss = VELoss(sigma_min=2.0, sigma_max=2.0)(ideal_denoiser(0.5), x_start, generator=g)
    assert float(loss.mean()) == pytest.approx(0.25 / 4.25, rel=5 * math.sqrt(2 / loss.numel()))
    vp = VPLoss(epsilon_t=1.0)  # t = 1 always
    sigma = float(vp.sigma(torch.tensor(1.0, dtype=torch.float64)))
    loss = vp(ideal_denoiser(0.5), x_start, generator=g)
    assert float(loss.mean()) == pytest.approx(0.25 / (0.25 + sigma**2), rel=5 * math.sqrt(2 / loss.numel()))


def test_edm_sigma_distribution_and_weight():
    sigma, weight = edm_sigma_and_weight(200_000, P_mean=-1.2, P_std=1.2, sigma_data=0.5,
                                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    log_sigma = sigma.log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.01)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.01)
    torch.testing.assert_close(weight, 1 / sigma**2 + 4.0)


def test_loss_is_reproducible_with_a_generator():
    x = torch.randn(4, 1, 8, 8)
    D = EDMPrecond(TupleNet())
    a = EDMLoss()(D, x, generator=torch.Generator().manual_seed(7))
    b = EDMLoss()(D, x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _linear_alphas_cumprod(T=100):
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    return np.cumprod(1 - betas)


class OracleEps(nn.Module):
    """Returns the exact noise of x_t given x_start, using discrete step t (must be on the grid)."""

    def __init__(self, x_start, alphas_cumprod, learned_sigma=False):
        super().__init__()
        self.x_start, self.abar, self.learned_sigma = x_start, torch.from_numpy(alphas_cumprod), learned_sigma

    def forward(self, x_t, t):
        t_int = torch.round(torch.as_tensor(t, dtype=torch.float64)).long()
        assert torch.allclose(torch.as_tensor(t, dtype=torch.float64), t_int.double(), atol=1e-6)
        a = self.abar[t_int].reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        eps = (x_t - a.sqrt() * self.x_start) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learned_sigma else eps


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_epsilon_ddpm_denoiser_recovers_x_start_with_oracle(quantize, shape):
    abar = _linear_alphas_cumprod()
    x_start = torch.randn(shape, dtype=torch.float64)
    D = EpsilonDDPMDenoiser(OracleEps(x_start, abar, learned_sigma=quantize), abar, quantize=quantize)
    t = torch.tensor([3, 40, 99])
    sigma = torch.from_numpy(np.sqrt((1 - abar) / abar))[t]
    noise = torch.randn(shape, dtype=torch.float64)
    x = x_start + sigma.reshape(-1, *([1] * (len(shape) - 1))) * noise
    torch.testing.assert_close(D(x, sigma), x_start, atol=1e-9, rtol=1e-9)
    assert D.sigma_min == pytest.approx(float(sigma.new_tensor(np.sqrt((1 - abar[0]) / abar[0]))))


def test_epsilon_ddpm_sigma_t_round_trip_and_rounding():
    abar = _linear_alphas_cumprod()
    D = EpsilonDDPMDenoiser(ZeroNet(), abar)
    sigma = torch.tensor([0.05, 0.5, 5.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(D.t_to_sigma(D.sigma_to_t(sigma)), sigma)
    Dq = EpsilonDDPMDenoiser(ZeroNet(), abar, quantize=True)
    grid = np.sqrt((1 - abar) / abar)
    rounded = Dq.round_sigma(sigma).numpy()
    for s, r in zip(sigma.numpy(), rounded):
        assert r == pytest.approx(grid[np.argmin(np.abs(np.log(grid) - np.log(s)))])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        EpsilonDDPMDenoiser(ZeroNet(), abar[::-1])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: a CPU generator with a CUDA device"))])
def test_edm_sigma_draws_on_the_generator_device_and_moves(device):
    sigma, weight = edm_sigma_and_weight(5, -1.2, 1.2, 0.5, torch.Generator().manual_seed(3), device)
    expected = (torch.randn(5, generator=torch.Generator().manual_seed(3)) * 1.2 - 1.2).exp()
    assert sigma.device.type == device
    torch.testing.assert_close(sigma.cpu(), expected, rtol=0, atol=0)
    torch.testing.assert_close(weight.cpu(), (expected**2 + 0.25) / (expected * 0.5) ** 2)
