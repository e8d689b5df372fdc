import copy

import pytest
import torch

from phmdiff.training.ema import EMA, ema_beta


def test_beta_is_half_after_one_halflife_of_images():
    # One update of halflife_nimg images must leave exactly half of the old average.
    assert ema_beta(batchsize=1000, cur_nimg=10**9, ema_halflife_kimg=1.0) == pytest.approx(0.5)
    beta = ema_beta(batchsize=32, cur_nimg=10**9, ema_halflife_kimg=10.0)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)


def test_rampup_caps_the_halflife_early():
    # EDM: ema_nimg = min(halflife, cur_nimg * ratio)
    assert ema_beta(32, 1000, 500.0, 0.05) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, 1000, 500.0, 0.0) == pytest.approx(0.5 ** (32 / 500_000))


def test_update_is_the_lerp_of_the_closed_form():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(net, ema_halflife_kimg=0.1, ema_rampup_ratio=0.0)
    old = copy.deepcopy(ema.module.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(3.0)
    beta = ema.update(net, cur_nimg=640, batchsize=64)
    assert beta == pytest.approx(0.5 ** (64 / 100))
    for name, p in net.named_parameters():
        expected = beta * old[name] + (1 - beta) * p.detach()
        torch.testing.assert_close(ema.module.state_dict()[name], expected, rtol=0, atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 3.0))
    assert not any(p.requires_grad for p in ema.module.parameters())
