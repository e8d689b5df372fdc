"""SIGINT/SIGTERM during `train` (issue 14, item 11) and resuming with changed settings (item 12), with real
training processes and real signals."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.training.checkpoint import checkpoints_dir, find_latest, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(300)
COMMON = ["--no-progress", "train.max_num_steps=5", "log.ckpt_every=1000"]


def _signal_at(config: Path, control: Path, sig: int, step: int) -> tuple[int, str]:
    """Run `train` in a real process, send `sig` while step `step` runs, return (exit code, stderr)."""
    control.mkdir()
    proc = fx.popen(["--pause-at", step, "--control", control, "--", "--config", config, *COMMON],
                    script="train_hooked.py")
    deadline = time.monotonic() + 180
    while not (control / "ready").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.02)
    proc.send_signal(sig)
    (control / "go").write_text("")
    return fx.finish(proc)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_train_saves_a_checkpoint_that_resumes_bit_exactly(tmp_path_factory, tmp_path, sig, code):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    rc, err = _signal_at(config, tmp_path / "control", sig, 2)
    assert rc == code, err[-2000:]
    saved = checkpoints_dir(run) / "step-000003"  # step 2 ends as step 3 begins: that step is saved
    assert f"saved a resumable checkpoint in {saved}" in err and "Traceback" not in err
    assert load_checkpoint(find_latest(run)).step == 3
    if sig == signal.SIGINT:
        return
    rc, err = fx.finish(fx.popen(["train", "--config", config, *COMMON]))
    assert rc == 0, err[-2000:]
    ref = tmp_path / "ref"
    rc, err = fx.finish(fx.popen(["train", "--config", fx.write_config(data, ref), *COMMON]))
    assert rc == 0, err[-2000:]
    assert fx.checkpoint_differences(find_latest(run), find_latest(ref)) == []


@pytest.mark.parametrize("override, key", [("train.seed=4", "train.seed"), ("train.batchsize=8", "train.batchsize"),
                                           ("train.lr=0.002", "train.lr"), ("model.mask_ratio=0.5", "model.mask_ratio"),
                                           ("model.model_type=PHMDiff-S/2", "model.model_type")])
def test_resume_with_changed_trajectory_settings_is_refused(tmp_path_factory, tmp_path, override, key):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=2")
    before = (run / "config.yaml").read_text()
    res = fx.cli("train", "--config", str(config), "--no-progress", "train.max_num_steps=3", override, check=False)
    assert res.returncode == 2 and key in res.stderr and "--allow-config-change" in res.stderr, res.stderr
    assert (run / "config.yaml").read_text() == before  # not overwritten by the refused run
    if key == "train.seed":
        fx.cli("train", "--config", str(config), "--no-progress", "train.max_num_steps=3", override,
               "--allow-config-change")
        assert load_checkpoint(find_latest(run)).step == 3
