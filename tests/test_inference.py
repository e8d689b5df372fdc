"""inference: sampling settings from cfg.eval and the command line, and inference apart from training."""

import subprocess
import sys

import pytest
import torch

from phmdiff.config import EvalConfig
from phmdiff.inference import SamplingSettings, decode_target, encode_sources, sample_latents
from phmdiff.sample import sample_pyramid


def test_settings_come_from_eval_config_and_command_line():
    e = EvalConfig(sampler="heun", num_steps=18, fine_num_steps=8, sigma_start=2.5, guidance=1.5)
    assert SamplingSettings.resolve(e) == SamplingSettings("heun", 18, 8, 2.5, 1.5)
    # --steps caps the finer levels too; --guidance 0 is a choice, not "unset".
    got = SamplingSettings.resolve(e, sampler="ddim", steps=4, guidance=0.0)
    assert got == SamplingSettings("ddim", 4, 4, 2.5, 0.0)
    assert SamplingSettings.resolve(e, steps=12).fine_num_steps == 8


def test_churn_comes_from_eval_config_unless_the_sampler_cannot_use_it():
    e = EvalConfig(sampler="heun", churn=40.0)
    assert SamplingSettings.resolve(e).churn == 40.0
    assert SamplingSettings.resolve(e, sampler="euler").churn == 40.0
    assert SamplingSettings.resolve(e, sampler="ddim").churn == 0.0  # ddim chosen on the command line: no churn
    assert SamplingSettings.resolve(e, churn=0.0).churn == 0.0
    with pytest.raises(ValueError, match="needs the heun or euler"):
        SamplingSettings.resolve(e, sampler="ddim", churn=5.0)
    with pytest.raises(ValueError, match=">= 0"):
        SamplingSettings.resolve(e, churn=-1.0)


def test_sample_latents_is_sample_pyramid_with_the_settings(tiny_denoiser):
    class Model:
        pyramid_levels, in_channels = 2, 2

    src = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    avail, label = torch.ones(2, 1), torch.tensor([0, 1])
    settings = SamplingSettings("dpmpp_2m", 3, 2, 1.5, 2.0)
    got = sample_latents(tiny_denoiser.eval(), src, avail, label, [4, 5], Model, settings)
    want = sample_pyramid(tiny_denoiser, src, avail, label, [4, 5], 2, 2, "dpmpp_2m", 3, 2, 1.5, 2.0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(got, sample_latents(tiny_denoiser, src, avail, label, [4, 5], Model,
                                                  SamplingSettings("dpmpp_2m", 3, 2, 1.5, 1.0)))


def test_encode_decode_shapes_and_units():
    from phmdiff.autoencoder import IdentityAutoencoder

    ae = IdentityAutoencoder()
    images = torch.rand(3, 2, 8, 8) * 2 - 1  # (N, n_src, H, W) in [-1, 1]
    z = encode_sources(ae, images, latent_scale=2.0)
    assert z.shape == (3, 2, 8, 8)
    torch.testing.assert_close(z, images * 2.0)
    out = decode_target(ae, z[:, :1], latent_scale=2.0)
    torch.testing.assert_close(out, (images[:, :1] + 1) / 2)


@pytest.mark.parametrize("module", ["phmdiff.translate", "phmdiff.generate", "phmdiff.inference"])
def test_inference_does_not_import_training(module):
    code = (f"import sys, {module}; bad = sorted(m for m in sys.modules if m.startswith('phmdiff.training')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"importing {module} imports {done.stdout.strip()} {done.stderr[-500:]}"


def test_heun_with_too_few_steps_is_warned_about():
    import warnings

    with pytest.warns(UserWarning, match="cannot integrate"):
        SamplingSettings(sampler="heun", num_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SamplingSettings(sampler="heun", num_steps=SamplingSettings.MIN_HEUN_STEPS)
        SamplingSettings(sampler="ddim", num_steps=2)  # a first-order sampler's few steps are its design
