"""Mean and residual (mean_net.py): shapes, what the regression and the diffusion each train, and sampling that adds
the mean back (a residual denoiser that always answers 0 samples exactly the mean)."""

import pytest
import torch
from torch import nn

from phmdiff.diffusion.edm import EDMPrecond
from phmdiff.inference import SamplingSettings, sample_latents
from phmdiff.masked_dit import build_masked_dit
from phmdiff.mean_net import MeanNet, MeanResidual
from phmdiff.objective import PyramidObjective

SMALL = (4, 4, 8, 8, 8, 4)


def _mean_residual(num_sources=2, channels=1, num_targets=1, normalize=False) -> MeanResidual:
    torch.manual_seed(0)
    net = build_masked_dit("PHMDiff-T/2", input_size=8, latent_channels=channels, num_sources=num_sources + 1,
                           num_levels=2, num_targets=max(num_targets, 2), hidden_size=32, depth=2, num_heads=2,
                           decoder_depth=1, decoder_hidden_size=32, decoder_num_heads=2)
    return MeanResidual(MeanNet(num_sources, channels, num_targets, SMALL), EDMPrecond(net), normalize=normalize)


@pytest.mark.parametrize("shape", [(8, 8), (20, 12), (33, 47)])
def test_mean_net_keeps_any_plane_size(shape):
    net = MeanNet(2, 3, 1, SMALL)
    y = net(torch.randn(2, 6, *shape), torch.ones(2, 2))
    assert y.shape == (2, 3, *shape)


def test_mean_net_sees_availability_and_label():
    torch.manual_seed(0)
    net = MeanNet(2, 1, 3, SMALL)
    src = torch.randn(2, 2, 16, 16)
    a = net(src, torch.ones(2, 2), torch.tensor([0, 0]))
    assert not torch.allclose(a, net(src, torch.tensor([[1.0, 0.0]] * 2), torch.tensor([0, 0])))
    assert not torch.allclose(a, net(src, torch.ones(2, 2), torch.tensor([2, 2])))


def test_bad_features_are_refused():
    with pytest.raises(ValueError, match="mean_net_features"):
        MeanNet(1, 1, 1, (8, 8, 8))


def _batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, 8, 8, generator=g), torch.randn(n, 1, 8, 8, generator=g), torch.ones(n, 2),
            torch.zeros(n, dtype=torch.long))


def _grads(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_regression_trains_the_mean_and_the_diffusion_never_reaches_it():
    model = _mean_residual()
    objective = PyramidObjective(model, levels=2, mean_loss_weight=0.0)
    terms = objective(*_batch(), 0.5, torch.Generator().manual_seed(0))
    mu = model.mean_net(_batch()[0], _batch()[2])
    assert float(terms["mean"]) == pytest.approx(float(torch.mean((mu - _batch()[1]) ** 2)), rel=1e-5)
    terms["loss"].backward()
    assert _grads(model.mean_net) == 0.0  # the residual's loss sees the mean detached
    assert _grads(model.denoiser) > 0.0
    model.zero_grad()
    objective = PyramidObjective(model, levels=2, mean_loss_weight=1.0)
    objective(*_batch(), 0.5, torch.Generator().manual_seed(0))["loss"].backward()
    assert _grads(model.mean_net) > 0.0


def test_the_diffusion_learns_the_residual_given_the_mean():
    """The residual's objective is the plain pyramid loss on (sources + mean, target - mean)."""
    from phmdiff.objective import pyramid_loss

    model = _mean_residual()
    source, target, avail, label = _batch()
    terms = PyramidObjective(model, levels=2)(source, target, avail, label, 0.5, torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu = model.mean_net(source, avail)
    direct = pyramid_loss(model.denoiser, torch.cat([source, mu], 1), target - mu, torch.ones(4, 3), label, levels=2,
                          mask_ratio=0.5, generator=torch.Generator().manual_seed(3))
    assert float(terms["denoise"]) == pytest.approx(float(direct["denoise"]), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(direct["loss"] + terms["mean"]), rel=1e-5)


class _Zero(nn.Module):
    """A residual denoiser whose every answer is 0: the sampler must end at exactly 0."""

    def forward(self, x, sigma, **kwargs):
        return torch.zeros_like(x)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_sampling_adds_the_mean_back(sampler):
    mean_net = MeanNet(2, 1, 1, SMALL)
    model = MeanResidual(mean_net, _Zero())
    source = torch.randn(3, 2, 8, 8)
    avail = torch.ones(3, 2)
    cfg = type("M", (), {"pyramid_levels": 2, "in_channels": 1, "in_size": 8})()
    settings = SamplingSettings(sampler=sampler, num_steps=8, fine_num_steps=4)
    with torch.no_grad():
        z = sample_latents(model, source, avail, None, [0, 1, 2], cfg, settings)
        assert torch.allclose(z, mean_net(source, avail), atol=1e-6)
        # Without the mean, the same zero residual samples to 0: the mean is what was added.
        assert float(sample_latents(_Zero(), source, avail, None, [0, 1, 2], cfg, settings).abs().max()) < 1e-6


@pytest.mark.parametrize("overrides,needle", [
    (["model.mean_net=gan"], "'model.mean_net' is 'gan'"),
    (["model.mean_net=unet", "data.sources=[]", "data.targets=[t1]"], "no sources"),
    (["model.mean_net=unet", "model.mean_loss_weight=-1"], "mean_loss_weight"),
    (["model.mean_net=unet", "model.mean_loss=huber"], "'model.mean_loss' is 'huber'"),
])
def test_bad_mean_settings_are_refused(overrides, needle):
    from phmdiff.config import load_config
    from phmdiff.demo import DEMO_CONFIG

    with pytest.raises(ValueError, match=needle):
        load_config(DEMO_CONFIG, overrides)


def test_the_factory_builds_the_pair_from_the_config():
    from phmdiff.config import load_config
    from phmdiff.demo import DEMO_CONFIG
    from phmdiff.factory import build_denoiser

    cfg = load_config(DEMO_CONFIG, ["model.mean_net_features=[4,4,8,8,8,4]"])  # the demo ships the pair
    model = build_denoiser(cfg, 2, 3)
    assert isinstance(model, MeanResidual) and model.mean_net.num_sources == 2
    assert model.denoiser.model.cfg.num_sources == 3  # the residual's denoiser sees the mean as one more source
    assert not isinstance(build_denoiser(load_config(DEMO_CONFIG, ["model.mean_net=''"]), 2, 3), MeanResidual)


def test_the_residual_is_seen_at_unit_scale_and_sampled_back_at_its_own():
    model = _mean_residual(normalize=True)
    objective = PyramidObjective(model, levels=2)
    source, target, avail, label = _batch()
    target = target * 0.1
    with torch.no_grad():
        std = float((target - model.mean_net(source, avail)).std())
    for _ in range(600):  # the running std converges geometrically (momentum 0.99) to the residual's std
        objective(source, target, avail, label, 0.5, torch.Generator().manual_seed(0))
    assert float(model.residual_std) == pytest.approx(std, rel=0.01)
    objective.eval()  # evaluation leaves it alone
    before = float(model.residual_std)
    objective(source, target * 5, avail, label, 0.5, torch.Generator().manual_seed(0))
    assert float(model.residual_std) == before
    # Sampling: a residual denoiser that always answers 1 ends at 1, so the translation is mean + residual_std.
    model.denoiser = _One()
    cfg = type("M", (), {"pyramid_levels": 2, "in_channels": 1, "in_size": 8})()
    with torch.no_grad():
        z = sample_latents(model, source, avail, None, [0, 1, 2, 3], cfg, SamplingSettings(sampler="ddim"))
        assert torch.allclose(z, model.mean_net(source, avail) + before, atol=1e-5)


class _One(nn.Module):
    def forward(self, x, sigma, **kwargs):
        return torch.ones_like(x)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_the_mean_loss_is_the_configured_norm(kind):
    model = _mean_residual()
    source, target, avail, label = _batch()
    terms = PyramidObjective(model, levels=2, mean_loss=kind)(source, target, avail, label, 0.5,
                                                              torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = model.mean_net(source, avail) - target
    expected = error.abs().mean() if kind == "l1" else (error**2).mean()
    assert float(terms["mean"]) == pytest.approx(float(expected), rel=1e-5)
