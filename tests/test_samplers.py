"""The samplers' facts (samplers.py) against the samplers themselves (sample.py): the calls each makes are
counted, churn is taken exactly by the stochastic ones."""

import pytest
import torch

from phmdiff.sample import SAMPLERS, check_churn, get_sigmas_karras
from phmdiff.samplers import SAMPLER_SPECS, STOCHASTIC_SAMPLERS, sampler_spec


class _Counting(torch.nn.Module):
    """D(x, sigma) = x / (1 + sigma^2), counting its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sigma, **kw):
        self.calls += 1
        return x / (1 + torch.as_tensor(sigma).reshape(-1, 1, 1, 1) ** 2)


def test_every_sampler_has_its_facts_and_no_more():
    assert tuple(SAMPLERS) == tuple(SAMPLER_SPECS)


@pytest.mark.parametrize("name", list(SAMPLER_SPECS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_network_calls_are_what_the_sampler_makes(name, steps):
    model = _Counting()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 80
    SAMPLERS[name](model, x, get_sigmas_karras(steps, 0.002, 80.0))
    assert model.calls == sampler_spec(name).network_calls(steps), name


def test_steps_for_calls_inverts_network_calls():
    heun = sampler_spec("heun")
    assert [heun.network_calls(n) for n in (1, 2, 8)] == [1, 3, 15]
    assert [heun.steps_for_calls(c) for c in (1, 2, 3, 15, 16)] == [1, 1, 2, 8, 8]
    assert sampler_spec("euler").steps_for_calls(7) == 7


def test_only_the_stochastic_samplers_take_churn():
    for name, spec in SAMPLER_SPECS.items():
        if spec.stochastic:
            check_churn(name, 40.0)
        else:
            with pytest.raises(ValueError, match="needs the heun or euler sampler"):
                check_churn(name, 40.0)
    assert STOCHASTIC_SAMPLERS == ("heun", "euler")
    with pytest.raises(ValueError, match="sampler 'plms' is unknown; expected one of heun"):
        sampler_spec("plms")
