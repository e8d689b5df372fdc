"""factory: config -> preconditioned masked DiT and pyramid objective; every network option the YAML sets arrives."""

from pathlib import Path

import pytest

from phmdiff.config import load_config
from phmdiff.diffusion import edm
from phmdiff.factory import build_denoiser, build_objective

TINY_YAML = Path(__file__).parent / "training" / "tiny.yaml"


@pytest.mark.parametrize("precond,cls", [("edm", edm.EDMPrecond), ("vp", edm.VPPrecond), ("ve", edm.VEPrecond),
                                         ("ddpm", edm.EpsilonDDPMDenoiser)])
def test_build_denoiser_wraps_the_network_named_by_the_config(precond, cls):
    cfg = load_config(TINY_YAML, [f"model.precond={precond}", "model.mask_block_sizes=[2]", "model.use_decoder=false",
                                  "model.class_dropout_prob=0.25"])
    D = build_denoiser(cfg, num_sources=2, num_targets=4)
    net = D.model
    assert isinstance(D, cls)
    assert net.cfg.mask_block_sizes == (2,)
    assert net.cfg.num_sources == 2 and net.cfg.num_targets == 4 and net.cfg.num_levels == cfg.model.pyramid_levels
    assert net.cfg.use_decoder is False and net.cfg.class_dropout_prob == 0.25
    assert net.cfg.latent_channels == cfg.model.in_channels


def test_build_objective_takes_the_loss_options_of_the_config():
    cfg = load_config(TINY_YAML, ["model.coarse_aug_sigma=0.25", "model.cross_granularity_weight=0", "model.P_mean=-1"])
    D = build_denoiser(cfg, num_sources=2, num_targets=4)
    objective = build_objective(D, cfg.model)
    assert objective.denoiser is D
    assert objective.options["coarse_aug_sigma"] == 0.25 and objective.options["cross_granularity_weight"] == 0
    assert objective.loss_fn.P_mean == -1 and objective.options["levels"] == cfg.model.pyramid_levels


def test_bad_mask_block_sizes_are_refused():
    with pytest.raises(ValueError, match="mask_block_sizes"):
        load_config(TINY_YAML, ["model.mask_block_sizes=[0]"])
