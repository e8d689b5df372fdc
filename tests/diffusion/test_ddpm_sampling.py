"""A ddpm run's own respaced loops as a pyramid level's step: closed forms, the EDM-axis equivalent, errors."""

import numpy as np
import pytest
import torch

from phmdiff.diffusion import edm
from phmdiff.diffusion.ddpm_sampling import ddpm_step, respaced_process, training_sigmas
from phmdiff.diffusion.respace import space_timesteps
from phmdiff.sample import SAMPLERS

ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # the ddpm formulation's linear schedule
C = 0.7  # the data: a point mass


class _PointMass(torch.nn.Module):
    """The exact epsilon of data concentrated at C: (x_t - sqrt(abar_t) C) / sqrt(1 - abar_t); counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, **kw):
        self.calls += 1
        a = torch.as_tensor(ABAR)[t.round().long()].reshape(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * C) / (1 - a).sqrt()


class _Conv(torch.nn.Module):
    """A random epsilon network (no closed form): for comparing two samplers step by step."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(1, 1, 3, 3, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x, t, **kw):
        return torch.nn.functional.conv2d(x, self.w, padding=1) + 0.01 * t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000


def _kept_sigmas(respacing):
    keep = sorted(space_timesteps(1000, respacing))
    return np.sqrt((1 - ABAR[keep]) / ABAR[keep])


@pytest.mark.parametrize("respacing", ["ddim10", "50", "10,10"])
def test_a_point_mass_is_recovered_exactly_in_the_steps_the_spacing_keeps(respacing):
    D = edm.EpsilonDDPMDenoiser(_PointMass(), ABAR)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    out = ddpm_step(D, x, torch.tensor([80.0, 0.0]), respacing=respacing, training=training_sigmas(D),
                    randn_like=torch.randn_like)
    torch.testing.assert_close(out, torch.full_like(out, C), atol=1e-9, rtol=0)
    assert D.model.calls == int((_kept_sigmas(respacing) <= 80.0).sum())  # from sigma 80 down, one call a step
    D.model.calls = 0
    ddpm_step(D, x, torch.tensor([2.0, 0.0]), respacing=respacing, training=training_sigmas(D))
    assert D.model.calls == int((_kept_sigmas(respacing) <= 2.0).sum())  # a finer level's partial start


def test_ddim_through_the_loop_is_euler_on_the_sigma_axis_at_the_same_sigmas():
    """DDIM (eta 0) is Euler's method on the probability-flow ODE in sigma (Karras et al. 2022, Sec. 3): the
    EDM path's `euler` at the kept steps' sigmas must give the same sample."""
    D = edm.EpsilonDDPMDenoiser(_Conv(), ABAR)
    kept = _kept_sigmas("ddim20")
    start = kept[kept <= 10.0][-1]  # start exactly on a kept step
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * start
    native = ddpm_step(D, x, torch.tensor([start, 0.0]), respacing="ddim20", training=training_sigmas(D))
    sigmas = torch.tensor([*kept[kept <= start][::-1], 0.0], dtype=torch.float64)
    euler = SAMPLERS["euler"](D, x, sigmas)
    torch.testing.assert_close(native, euler, atol=1e-8, rtol=1e-8)
    ancestral = ddpm_step(D, x, torch.tensor([start, 0.0]), respacing="20", training=training_sigmas(D),
                          randn_like=lambda y: torch.zeros_like(y))
    assert not torch.allclose(ancestral, native)  # a different loop, not DDIM under another name


def test_respacing_needs_a_ddpm_denoiser_and_a_spacing():
    with pytest.raises(ValueError, match="not a ddpm run"):
        training_sigmas(edm.EDMPrecond(_Conv()))
    with pytest.raises(ValueError, match="respacing 'ddim' is not a spacing; expected ddimN"):
        respaced_process(torch.ones(10), "ddim")
