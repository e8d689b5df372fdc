"""The training loop on a real (tiny) latent cache: exact resume after SIGKILL, non-finite steps, lock, validation.

Multi-process (DDP) training is covered by tests/reliability/test_reliability_ddp.py.
"""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from phmdiff.config import load_config
from phmdiff.data.latent_cache import LatentPairs
from phmdiff.training.checkpoint import find_latest, load_checkpoint
from phmdiff.training.lock import RunLock
from phmdiff.training.loop import train

pytestmark = pytest.mark.slow  # trains several tiny runs, one in a subprocess killed mid-run

TINY = Path(__file__).with_name("tiny.yaml")
# Pixel-space (identity autoencoder) keeps these tests to seconds: 16x16 slices, 8x8 and 4x4 token grids.
PIXEL = ["data.resolution=16", "model.in_size=16", "model.in_channels=1", "model.autoencoder.preset=identity",
         "model.cross_granularity_weight=0.0"]


@pytest.fixture(scope="module")
def data(tiny_run, tmp_path_factory):
    """The session's prepared data and latent cache (linked, never written), with runs of this module's own."""
    root = tmp_path_factory.mktemp("loop")
    for part in ("ph", "prep", "lat"):
        (root / part).symlink_to(tiny_run / part)
    paths = [f"data.root={root / 'ph'}", f"data.prepared={root / 'prep'}", f"data.cache={root / 'lat'}",
             f"model.autoencoder.path={tiny_run / 'run' / 'autoencoder.safetensors'}"]
    return root, PIXEL + paths


def _cfg(data, run, *extra):
    root, overrides = data
    return load_config(TINY, [*overrides, f"log.run_dir={root / run}", *extra])


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _optimizer_tensors(state):
    return {f"{i}.{k}": v for i, s in state["optimizer"]["state"].items() for k, v in s.items()
            if isinstance(v, torch.Tensor)}


def test_resume_after_sigkill_is_bit_identical(data):
    straight = train(_cfg(data, "straight", "train.max_num_steps=4"), progress=False)
    assert straight["step"] == 4
    root, overrides = data
    killed = root / "killed"
    # The killed run is told to go on for long; it is killed as soon as its step-2 checkpoint is complete.
    cmd = [sys.executable, "-m", "phmdiff", "train", "--config", str(TINY), *overrides, f"log.run_dir={killed}",
           "train.max_num_steps=100000", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step-000002" / "manifest.json").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never wrote its step-2 checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(_cfg(data, "killed", "train.max_num_steps=4"), resume="auto", progress=False)
    assert resumed["step"] == 4
    a = load_checkpoint(root / "straight" / "checkpoints" / "step-000004")
    b = load_checkpoint(root / "killed" / "checkpoints" / "step-000004")
    assert _same(a.model_state, b.model_state)
    assert _same(a.ema_state, b.ema_state)
    assert _same(_optimizer_tensors(a.state), _optimizer_tensors(b.state))
    # The log has each step once, whatever was written before the kill.
    steps = [line.split(",")[0] for line in (killed / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int)


def test_the_optimizer_follows_the_lr_cooldown(data):
    train(_cfg(data, "cool", "train.max_num_steps=4", "train.lr_cooldown=0.5", "train.lr=0.001", "log.log_every=1"),
          progress=False)
    rows = (data[0] / "cool" / "log.csv").read_text().splitlines()
    column = rows[0].split(",").index("lr")
    assert [float(r.split(",")[column]) for r in rows[1:]] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    ckpt = load_checkpoint(find_latest(data[0] / "cool"))
    assert [g["lr"] for g in ckpt.state["optimizer"]["param_groups"]] == pytest.approx([5e-4])


def test_isolated_nonfinite_step_is_skipped_and_counted(data):
    def hook(step, terms):
        return {**terms, "loss": terms["loss"] * math.nan} if step == 1 else terms

    summary = train(_cfg(data, "nan1", "train.max_num_steps=3"), progress=False, step_hook=hook)
    assert summary["nonfinite_total"] == 1 and summary["step"] == 3
    ckpt = load_checkpoint(find_latest(data[0] / "nan1"))
    assert all(torch.isfinite(v).all() for v in ckpt.model_state.values())
    assert ckpt.state["nonfinite_total"] == 1


def test_nonfinite_streak_stops_with_a_sentence_and_keeps_the_last_good_checkpoint(data):
    def hook(step, terms):
        return {**terms, "loss": terms["loss"] + math.inf} if step >= 2 else terms

    cfg = _cfg(data, "nanrun", "train.max_num_steps=10", "train.max_nonfinite_steps=3")
    with pytest.raises(RuntimeError, match=r"stopped at step 5: 3 steps in a row had a non-finite"):
        train(cfg, progress=False, step_hook=hook)
    latest = find_latest(data[0] / "nanrun")
    assert latest.name == "step-000002"
    assert all(torch.isfinite(v).all() for v in load_checkpoint(latest).model_state.values())


def test_a_locked_run_folder_is_refused(data):
    cfg = _cfg(data, "locked", "train.max_num_steps=1")
    with RunLock(cfg.run_dir), pytest.raises(ValueError, match=f"in use by process {os.getpid()}"):
        train(cfg, progress=False)


def test_resume_none_refuses_a_run_with_checkpoints(data):
    cfg = _cfg(data, "once", "train.max_num_steps=2")
    train(cfg, progress=False)
    assert (cfg.run_dir / "config.yaml").is_file() and (cfg.run_dir / "log.csv").is_file()
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(cfg, resume="none", progress=False)


def test_cache_that_does_not_match_the_model_is_refused(data):
    with pytest.raises(ValueError, match="latents are 1x16x16"):  # smaller than the model's grid
        train(_cfg(data, "mismatch", "model.in_size=32", "data.resolution=32"), progress=False)


def test_latents_larger_than_the_model_grid_train_on_random_crops(data, monkeypatch):
    seen = []  # (the cropped item the loop trained on, the same item uncropped)
    getitem = LatentPairs.__getitem__

    def spy(self, i):
        item, crop = getitem(self, i), self.crop
        self.crop = None
        try:
            seen.append((item, getitem(self, i)))  # the same seed, epoch and index: the same latent draw
        finally:
            self.crop = crop
        return item

    monkeypatch.setattr(LatentPairs, "__getitem__", spy)
    cfg = _cfg(data, "crops", "model.in_size=8", "data.resolution=8", "train.max_num_steps=2")
    train(cfg, progress=False)
    assert find_latest(cfg.run_dir) is not None and len(seen) >= 8
    windows = set()
    for item, full in seen:  # 16x16 latents, 8x8 crops: each is one window of its latent, source and target alike
        assert item["target"].shape[-2:] == (8, 8) and full["target"].shape[-2:] == (16, 16)
        (where,) = [(t, u) for t in range(9) for u in range(9)
                    if all(torch.equal(full[k][..., t : t + 8, u : u + 8], item[k]) for k in ("source", "target"))]
        windows.add(where)
    assert len(windows) >= 3, windows  # random windows, not one fixed crop


def test_validation_logs_psnr_ssim_and_keeps_the_best_checkpoint(data):
    cfg = _cfg(data, "val", "train.max_num_steps=4", "eval.every=2", "log.tensorboard=true")
    train(cfg, progress=False)
    rows = (cfg.run_dir / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    values = [dict(zip(header, r.split(","))) for r in rows[1:]]
    psnrs = [float(v["val_psnr"]) for v in values if v["val_psnr"]]
    # Four training steps: the samples are still close to unit-variance noise (sigma_data 1), whose decoded
    # images can stray beyond [0, 1], so the PSNR can be below 0 dB; it must be a finite, logged number.
    assert len(psnrs) == 2 and all(math.isfinite(p) and -40 < p < 100 for p in psnrs)
    best = (cfg.run_dir / "checkpoints" / "best").read_text().strip()
    meta = load_checkpoint(cfg.run_dir / "checkpoints" / best).meta
    assert meta["validation"]["psnr"] == pytest.approx(max(psnrs), rel=1e-5)
    assert any((cfg.run_dir / "tensorboard").iterdir())


def test_the_cycle_schedule_trains_the_levels_in_turn(data):
    """model.level_schedule=cycle: step s trains level s % pyramid_levels (the default draws it)."""
    levels = {}

    def hook(step, terms):
        levels[step] = int(terms["level"])
        return terms

    train(_cfg(data, "cycle", "train.max_num_steps=5", "model.level_schedule=cycle", "model.denoise_loss_on=all"),
          progress=False, step_hook=hook)
    assert levels == {s: s % 2 for s in range(5)}

