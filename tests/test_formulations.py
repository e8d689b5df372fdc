"""Every formulation the config offers trains and translates end to end (tiny pixel-space pipeline).

`edm` is the session's shared run; `vp`, `ve` and `ddpm` (uniform and loss-aware timesteps) each train their
own few steps with their own loss (`factory.PRECONDS`) on the same prepared data, then translate one subject.
"""

import json
import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import tiny_config

from phmdiff import cli
from phmdiff.diffusion.ddpm_loss import DDPMLoss
from phmdiff.diffusion.edm import EDMLoss, VELoss, VPLoss
from phmdiff.diffusion.timestep_sampler import LossSecondMomentResampler, UniformSampler
from phmdiff.factory import PRECONDS, build_denoiser, build_loss
from phmdiff.inference import load_trained
from phmdiff.objective import pyramid_loss
from phmdiff.training import run_pipeline
from phmdiff.translate import translate

SIGMA = 1.5
BETAS = np.linspace(1e-4, 0.02, 1000)  # the ddpm formulation's linear schedule


def _c_noise_and_c_in(precond):
    """What the network of each formulation receives at SIGMA (EDM Table 1, sigma_data 1; DDPM: the timestep
    whose sigma = sqrt((1 - abar) / abar) is SIGMA, interpolated in log sigma), worked out here by hand."""
    c_in = 1 / math.sqrt(SIGMA**2 + 1)
    if precond == "edm":
        return math.log(SIGMA) / 4, c_in
    if precond == "vp":
        return 999 * (math.sqrt(0.1**2 + 2 * 19.9 * math.log(1 + SIGMA**2)) - 0.1) / 19.9, c_in
    if precond == "ve":
        return math.log(SIGMA / 2), 1.0
    abar = np.cumprod(1 - BETAS)
    return float(np.interp(math.log(SIGMA), np.log(np.sqrt((1 - abar) / abar)), np.arange(1000))), c_in


class _Recorder(torch.nn.Module):
    """Stands in for a run's network: records (x_in, c_noise) and predicts zeros."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, c_noise, **cond):
        self.calls.append((x, c_noise))
        return torch.zeros_like(x)


def _respaced_translations_differ_from_the_sigma_axis(root, tmp_path):
    subject = root / "ph" / "PHANTOM_00002"
    preds = {}
    for name, extra in (("sigma", []), ("ddim", ["--respacing", "ddim5"]), ("ddim_again", ["--respacing", "ddim5"]),
                        ("ancestral", ["--respacing", "5"])):
        out = tmp_path / f"out-{name}"
        assert cli.main(["translate", "--run", str(root / "run"), "--input", str(subject), "--out", str(out),
                         "--no-progress", *extra]) == 0
        meta = json.loads((out / "translate.json").read_text())
        preds[name] = nib.load(out / meta["subjects"][0]["prediction"]).get_fdata()
        assert np.isfinite(preds[name]).all() and preds[name].std() > 0, name
    np.testing.assert_array_equal(preds["ddim"], preds["ddim_again"])  # seeded: the same translation twice
    assert not np.allclose(preds["ddim"], preds["sigma"]) and not np.allclose(preds["ddim"], preds["ancestral"])


def _translate_one(root, run, out):
    meta = translate(root / run, root / "ph" / "PHANTOM_00002", out, progress=False)
    pred = nib.load(out / meta["subjects"][0]["prediction"]).get_fdata()
    assert pred.shape == (16, 16, 16) and np.isfinite(pred).all() and pred.std() > 0
    return meta


@pytest.mark.slow
@pytest.mark.parametrize("precond, extra", [
    ("edm", []),
    ("vp", []),
    ("ve", []),
    ("ddpm", ["model.timestep_sampler=loss-aware"]),
])
def test_formulation_trains_and_translates(tiny_run, tmp_path, precond, extra):
    root = tmp_path / "r"
    root.mkdir()
    for part in ("ph", "prep", "lat"):  # the shared run is read-only: train beside a copy of its data
        (root / part).symlink_to(tiny_run / part)
    if precond == "edm":
        shutil.copytree(tiny_run / "run", root / "run")
    else:  # the latent cache belongs to the shared run's autoencoder: train beside that one
        (root / "run").mkdir()
        shutil.copy(tiny_run / "run" / "autoencoder.safetensors", root / "run")
        done = run_pipeline(tiny_config(root, f"model.precond={precond}", *extra), stages=("train",),
                            progress=False, log=lambda m: None)
        assert done["train"]["step"] == 4
    _translate_one(root, "run", tmp_path / "out")
    if precond == "ddpm":  # its own DDPM/DDIM loops, respaced from the command line, beside the sigma-axis path
        _respaced_translations_differ_from_the_sigma_axis(root, tmp_path)
    # The run loaded back wraps its network in its own formulation: c_noise and c_in by hand, at one sigma.
    denoiser = load_trained(root / "run", device="cpu").denoiser
    denoiser.model = _Recorder()
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    denoiser(x, torch.tensor([SIGMA]))
    ((x_in, c_noise),) = denoiser.model.calls
    want_noise, want_in = _c_noise_and_c_in(precond)
    assert float(c_noise) == pytest.approx(want_noise, rel=1e-5, abs=1e-6), precond
    torch.testing.assert_close(x_in, x * want_in, rtol=1e-5, atol=1e-6)


def test_the_table_gives_each_formulation_its_own_loss(tmp_path):
    want = {"edm": EDMLoss, "vp": VPLoss, "ve": VELoss, "ddpm": DDPMLoss}
    assert set(PRECONDS) == set(want)
    for precond, cls in want.items():
        assert type(build_loss(tiny_config(tmp_path, f"model.precond={precond}").model)) is cls, precond
    ddpm = tiny_config(tmp_path, "model.precond=ddpm").model
    assert isinstance(build_loss(ddpm).schedule_sampler, UniformSampler)
    ddpm.timestep_sampler = "loss-aware"
    assert isinstance(build_loss(ddpm).schedule_sampler, LossSecondMomentResampler)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve", "ddpm"])
def test_pyramid_loss_of_each_formulation_is_finite_and_reaches_the_weights(precond, tmp_path):
    cfg = tiny_config(tmp_path, f"model.precond={precond}", "model.cross_granularity_weight=0.05")
    D = build_denoiser(cfg, num_sources=2, num_targets=1)
    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(4, 2, 16, 16, generator=g), torch.randn(4, 1, 16, 16, generator=g)
    for seed in range(3):  # a few draws: each level is picked at least once
        terms = pyramid_loss(D, source, target, torch.ones(4, 2), None, levels=2, mask_ratio=0.5,
                             loss_fn=build_loss(cfg.model), generator=torch.Generator().manual_seed(seed))
        assert torch.isfinite(terms["loss"]) and float(terms["denoise"].detach()) > 0
    D.zero_grad()
    terms["loss"].backward()
    assert sum(float(p.grad.abs().sum()) for p in D.parameters() if p.grad is not None) > 0


def test_ddpm_masked_loss_counts_the_visible_tokens_only():
    """With every masked token answered by its target, the DDPM loss equals the mean error over visible tokens
    (and, with loss_on "all", the mean over every token)."""
    from phmdiff.diffusion import create_diffusion
    from phmdiff.losses import masked_denoising_loss

    diffusion = create_diffusion("", learn_sigma=False, diffusion_steps=1000)
    loss_fn = DDPMLoss(diffusion, UniformSampler(diffusion))

    class Net(torch.nn.Module):
        """Predicts epsilon 0; masks the left half of a 2x2 token grid."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, mask_ratio=0.0, generator=None, return_aux=False, **kw):
            mask = torch.tensor([[True, False, True, False]]).expand(x.shape[0], 4)
            return x * self.w, mask, torch.zeros(x.shape[0], 2, 3)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Net()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 4, generator=g)
    t = torch.full((3,), 500)
    terms, _ = masked_denoising_loss(Wrapper(), x, {}, 0.5, mae_loss_coef=0.0, loss_fn=loss_fn, noise_level=t,
                                     generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # the loss's first draw
    visible = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    visible[..., :, 2:] = True  # tokens 1 and 3 of the 2x2 grid: the right half
    expected = (noise**2)[visible.expand_as(noise)].mean()
    assert float(terms["denoise"].detach()) == pytest.approx(float(expected), rel=1e-5)
    # loss_on "all": the masked tokens' prediction counts too, the mean over every element.
    every, _ = masked_denoising_loss(Wrapper(), x, {}, 0.5, mae_loss_coef=0.0, loss_fn=loss_fn, noise_level=t,
                                     generator=torch.Generator().manual_seed(1), loss_on="all")
    assert float(every["denoise"].detach()) == pytest.approx(float((noise**2).mean()), rel=1e-5)
    assert float(every["denoise"].detach()) != pytest.approx(float(terms["denoise"].detach()), rel=1e-3)
