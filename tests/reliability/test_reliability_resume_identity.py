"""Issue 28, item 9: a resume keeps the experiment's identity. Every key that changes what is learned
(direction, sources, modalities, data, model, optimizer, schedule, EMA) refuses a resume unless
--allow-config-change, which records the change in RUN/config_changes.jsonl."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.config import load_config, to_yaml  # noqa: E402
from phmdiff.training.checkpoint import find_latest, load_checkpoint  # noqa: E402
from phmdiff.training.resume_check import CHANGES_FILE, check_resume_config  # noqa: E402

pytestmark = pytest.mark.timeout(300)
TINY = Path(__file__).resolve().parents[1] / "training" / "tiny.yaml"

GUARDED = ["data.target=t1ce", "data.sources=[t1,t1ce]", "data.min_foreground=0.2", "data.split_seed=3",
           "train.weight_decay=0.01", "train.adam_betas=[0.8,0.99]", "train.grad_clip=1.0",
           "train.ema_halflife_kimg=7.0", "train.ema_rampup_ratio=0.5", "train.lr_rampup_kimg=1.0",
           "train.lr_cooldown=0.3", "train.unmasked_finetune_steps=2", "train.grad_accum=2", "train.seed=9",
           "model.pyramid_levels=3", "model.mask_ratio=0.5", "model.class_dropout_prob=0.2"]
FREE = ["train.max_num_steps=99", "data.num_workers=3", "train.device=cpu", "train.amp=no",
        "model.autoencoder.steps=7"]


@pytest.mark.parametrize("override", GUARDED)
def test_a_key_that_changes_what_is_learned_refuses_the_resume(override):
    old = to_yaml(load_config(TINY))
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        check_resume_config(old, load_config(TINY, [override]), "ckpt")
    assert "--allow-config-change" in str(err.value)
    changed = check_resume_config(old, load_config(TINY, [override]), "ckpt", allow=True)
    assert key in changed and changed[key][0] != changed[key][1]


@pytest.mark.parametrize("override", FREE)
def test_keys_that_do_not_change_what_is_learned_resume(override):
    assert check_resume_config(to_yaml(load_config(TINY)), load_config(TINY, [override]), "ckpt") == {}


def test_a_real_resume_with_another_direction_is_refused_and_an_allowed_change_recorded(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=2")
    before = load_checkpoint(find_latest(run)).config_yaml
    assert main(["train", "--config", str(config), "--no-progress", "train.max_num_steps=3",
                 "data.target=t2", "data.sources=[t1,flair]"]) == 2
    assert load_checkpoint(find_latest(run)).config_yaml == before and not (run / CHANGES_FILE).exists()
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=3",
                  "train.weight_decay=0.05", "--allow-config-change")
    lines = (run / CHANGES_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["changes"] == {"train.weight_decay": [0.0, 0.05]}
