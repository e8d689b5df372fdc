import subprocess
import sys
from pathlib import Path

import pytest

from phmdiff.config import Config, add_config_arguments, config_from_args, config_from_yaml, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.model.precond == "edm"


@pytest.mark.parametrize(
    "name, in_size, resolution, sources, target",
    [("BraTS240.yaml", 32, 256, ["t1", "t2"], "flair"), ("Pev512.yaml", 64, 512, ["mr"], "ct")],
)
def test_original_presets_keep_the_paper_settings(name, in_size, resolution, sources, target):
    cfg = load_config(CONFIGS / name)
    assert cfg.model.model_type == "PHMDiff-XL/2"
    assert (cfg.model.precond, cfg.model.mask_ratio, cfg.model.mae_loss_coef) == ("edm", 0.5, 0.1)
    assert (cfg.model.in_size, cfg.model.in_channels, cfg.data.resolution) == (in_size, 4, resolution)
    assert (cfg.data.sources, cfg.data.target) == (sources, target)


def test_demo_preset_is_tiny_and_on_cpu():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.model.model_type == "PHMDiff-T/4" and cfg.model.autoencoder.preset == "identity"
    assert cfg.data.dataset == "phantom"
    assert cfg.train.device == "cpu" and cfg.train.amp == "auto"  # bf16 where native (faster with the convolutions)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "demo.yaml", ["train.lr=3e-4", "data.sources=[t1,t2,t1ce]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert config_from_yaml((tmp_path / "config.yaml").read_text()) == cfg


def test_overrides_apply_with_types():
    cfg = load_config(CONFIGS / "demo.yaml", ["train.batchsize=8", "train.amp=no", "model.autoencoder.steps=7"])
    assert cfg.train.batchsize == 8 and isinstance(cfg.train.batchsize, int)
    assert cfg.train.amp == "no"
    assert cfg.model.autoencoder.steps == 7


def test_original_dit_name_maps_to_ours():
    assert load_config(None, ["model.model_type=DiT-S/2"]).model.model_type == "PHMDiff-S/2"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.colour=1", "unknown key 'data.colour'"),
        ("nosuch.key=1", "unknown key 'nosuch'"),
        ("train.batchsize=abc", "expected an integer"),
        ("model.use_decoder=maybe", "expected true or false"),
        ("train.amp=fp8", "expected one of auto, bf16, fp16, no"),
        ("model.precond=flow", "'model.precond'"),
        ("model.denoise_loss_on=masked", "expected one of visible, all"),
        ("model.level_schedule=coarse", "expected one of random, cycle"),
        ("model.mask_ratio=1.5", "in [0, 1)"),
        ("train.lr=-1", "'train.lr'"),
        ("train.lr=nan", "'train.lr'"),
        ("train.max_num_steps=0", "positive"),
        ("model.model_type=Foo-XL/2", "PHMDiff-XL/2"),
        ("data.resolution=100", "power of two"),
        ("model.pyramid_levels=6", "divisible"),  # 64 / 2^5 = 2 pixels: less than one 4x4 patch
        ("data.target=t1", "missing modality"),
        ("train.grad_accum=3", "multiple"),
        ("eval.churn=5", "churn needs heun or euler"),  # demo.yaml samples with ddim
        ("eval.churn=nan", "'eval.churn'"),
        ("train.lr_cooldown=1.5", "'train.lr_cooldown'"),
        ("train.lr_cooldown=nan", "in [0, 1]"),
        ("justtext", "section.key=value"),
    ],
)
def test_bad_values_are_refused_with_a_sentence(override, needle):
    with pytest.raises(ValueError) as info:
        load_config(CONFIGS / "demo.yaml", [override])
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.endswith(".")


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 4\n  learning_rate: 1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key 'train.learning_rate'"):
        load_config(path)


@pytest.mark.parametrize("text", ["train: [1, 2\n", "- just\n- a list\n"])
def test_broken_yaml_is_refused(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="broken.yaml"):
        load_config(path)


def test_missing_file_is_a_sentence(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_dry_run_prints_the_resolved_config(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--config", str(CONFIGS / "demo.yaml"), "train.lr=0.002", "--dry-run"])
    assert config_from_args(args) is None
    printed = capsys.readouterr().out
    assert config_from_yaml(printed).train.lr == 0.002


def test_brats_2023_names_in_a_config_are_the_2021_names():
    cfg = load_config(None, ["data.sources=[t1n,T2w]", "data.target=t2f"])
    assert (cfg.data.sources, cfg.data.target) == (["t1", "t2"], "flair")
    with pytest.raises(ValueError, match="same modality"):
        load_config(None, ["data.sources=[t1n,t1]"])


def test_reading_a_config_loads_no_torch_and_no_network():
    """config.py is a leaf: a YAML is read and checked against torch-free registries (a process of its own, since
    this one has torch loaded)."""
    code = ("import sys; from phmdiff.config import load_config; load_config('configs/BraTS240.yaml'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m in ('phmdiff.masked_dit', "
            "'phmdiff.factory', 'phmdiff.sample', 'phmdiff.autoencoder', 'phmdiff.inference')); print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-500:]


def test_the_configs_closed_sets_are_the_registries():
    from phmdiff.config_checks import FORMULATIONS, TIMESTEP_SAMPLERS
    from phmdiff.diffusion.timestep_sampler import SCHEDULE_SAMPLERS
    from phmdiff.factory import PRECONDS

    assert tuple(PRECONDS) == FORMULATIONS and tuple(SCHEDULE_SAMPLERS) == TIMESTEP_SAMPLERS


def test_eval_sampling_keys_are_the_sampling_settings():
    from dataclasses import fields

    from phmdiff.config import EvalConfig, SamplingConfig
    from phmdiff.inference import SamplingSettings

    sampling = [f.name for f in fields(SamplingConfig)]
    assert [f.name for f in fields(SamplingSettings)] == sampling
    assert [f.name for f in fields(EvalConfig)][: len(sampling)] == sampling


@pytest.mark.parametrize("overrides, needle", [
    (["eval.respacing=ddim25"], "'eval.respacing' is 'ddim25' but 'model.precond' is 'edm'"),
    (["model.precond=ddpm", "eval.respacing=ddim"], "'eval.respacing' is 'ddim'; expected empty, ddimN"),
])
def test_respacing_is_for_ddpm_runs_and_names_a_spacing(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(None, overrides)
    assert load_config(None, ["model.precond=ddpm", "eval.respacing=10,20"]).eval.respacing == "10,20"


# -- prepare's settings from a run config (issue 35) ------------------------------------------------------------

def test_prepare_settings_follow_the_data_keys():
    from phmdiff.training import prepare_settings

    default = prepare_settings(load_config(CONFIGS / "demo.yaml"))
    assert default.volume.fit == "pad" and default.split_file is None
    assert default.volume.relative == {"flair": ["t1", "t2"]}  # relative: today's behaviour stays the default
    cfg = load_config(CONFIGS / "demo.yaml", ["data.fit=resize", "data.split_file=splits/fold0.json",
                                              "data.target_norm=own"])
    settings = prepare_settings(cfg)
    assert settings.volume.fit == "resize"
    assert settings.split_file == "splits/fold0.json"
    assert settings.volume.relative == {}  # own: the target keeps its own median normalization
    assert settings.volume.scheme("flair").kind == settings.volume.scheme("t1").kind == "mr_median"


@pytest.mark.parametrize("override, needle", [
    ("data.fit=crop", "'data.fit' is 'crop'; expected one of pad, resize."),
    ("data.target_norm=reference", "'data.target_norm' is 'reference'; expected one of relative, own."),
])
def test_bad_prepare_keys_are_refused_with_a_sentence(override, needle):
    with pytest.raises(ValueError) as info:
        load_config(CONFIGS / "demo.yaml", [override])
    assert needle in str(info.value) and str(info.value).startswith(str(CONFIGS / "demo.yaml"))


def test_a_config_saved_before_the_prepare_keys_reads_with_todays_behaviour():
    """A checkpoint's config written before data.fit / split_file / target_norm existed keeps pad, the random
    split and the relative target."""
    cfg = config_from_yaml("data:\n  resolution: 64\nmodel:\n  in_size: 8\n")
    assert (cfg.data.fit, cfg.data.split_file, cfg.data.target_norm) == ("pad", "", "relative")
