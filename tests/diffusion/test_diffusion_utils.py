"""diffusion_utils against torch.distributions and exact identities."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from phmdiff.diffusion.diffusion_utils import (
    append_dims,
    approx_standard_normal_cdf,
    continuous_gaussian_log_likelihood,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(4))
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected)
    # Scalars on the second side (the prior N(0, 1)).
    torch.testing.assert_close(normal_kl(m1, lv1, 0.0, 0.0), kl_divergence(Normal(m1, (0.5 * lv1).exp()),
                                                                         Normal(0.0, 1.0)))


def test_approx_cdf_is_within_its_stated_error():
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    assert float((approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max()) < 2.5e-4


def test_continuous_log_likelihood_matches_normal_log_prob():
    g = torch.Generator().manual_seed(1)
    x, mu, log_s = (torch.randn(4, 2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(continuous_gaussian_log_likelihood(x, means=mu, log_scales=log_s),
                               Normal(mu, log_s.exp()).log_prob(x))


def test_discretized_likelihood_sums_to_one_over_all_256_bins():
    bins = -1 + 2 * torch.arange(256, dtype=torch.float64) / 255  # the 8-bit values in [-1, 1]
    for mu, log_s in [(0.0, math.log(0.1)), (0.7, math.log(0.02)), (-0.95, math.log(0.5))]:
        means, log_scales = torch.full_like(bins, mu), torch.full_like(bins, log_s)
        logp = discretized_gaussian_log_likelihood(bins, means=means, log_scales=log_scales)
        assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    # An interior bin's probability is the Gaussian mass of its 2/255-wide interval (up to the CDF approximation).
    x, mu, s = torch.tensor([0.2], dtype=torch.float64), 0.1, 0.05
    exact = Normal(mu, s).cdf(x + 1 / 255) - Normal(mu, s).cdf(x - 1 / 255)
    approx = discretized_gaussian_log_likelihood(x, means=torch.full_like(x, mu),
                                                 log_scales=torch.full_like(x, math.log(s))).exp()
    assert float(approx) == pytest.approx(float(exact), abs=5e-4)
    with pytest.raises(ValueError, match="equal shapes"):
        discretized_gaussian_log_likelihood(x, means=torch.zeros(2), log_scales=torch.zeros(2))


def test_mean_flat_and_append_dims():
    x = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5]))
    assert append_dims(torch.ones(2), 5).shape == (2, 1, 1, 1, 1)
    assert append_dims(torch.ones(2), 1).shape == (2,)
    with pytest.raises(ValueError, match="more than the target"):
        append_dims(torch.ones(2, 3), 1)
