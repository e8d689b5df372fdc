"""Exact resume after SIGKILL, and the run-folder lock, with real `phmdiff train` processes (issue 8)."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.training.checkpoint import find_latest  # noqa: E402

N = 3  # steps before the kill; the reference trains 2N straight
pytestmark = pytest.mark.timeout(300)


def _losses(run: Path) -> list[tuple[str, str]]:
    rows = list(csv.DictReader((run / "log.csv").open()))
    return [(r["step"], r["loss"]) for r in rows]


def test_sigkill_then_resume_auto_is_bit_identical_to_a_straight_run(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    common = ["--no-progress", f"train.max_num_steps={2 * N}", f"log.ckpt_every={N}"]
    ref = fx.popen(["train", "--config", fx.write_config(data, straight), *common])
    victim = fx.popen(["--kill-at", N, "--", "--config", fx.write_config(data, crashed), *common],
                      script="train_hooked.py")
    code, err = fx.finish(victim)
    assert code == -signal.SIGKILL, err[-2000:]
    # The killed run leaves its checkpoint at N (complete) and a lock naming a process that no longer exists.
    assert find_latest(crashed).name == f"step-{N:06d}"
    dead_pid = int((crashed / ".lock").read_text().split()[0])
    assert dead_pid == victim.pid
    code, err = fx.finish(fx.popen(["train", "--config", crashed.with_suffix(".yaml"), "--resume", "auto", *common]))
    assert code == 0, err[-2000:]
    assert f"trained to step {2 * N}" in err
    code, err = fx.finish(ref)
    assert code == 0, err[-2000:]
    final = f"checkpoints/step-{2 * N:06d}"
    assert fx.checkpoint_differences(straight / final, crashed / final) == []
    for name in ("model.safetensors", "ema.safetensors"):
        assert (straight / final / name).read_bytes() == (crashed / final / name).read_bytes()
    # The logged losses of every step agree too, and the resumed log holds each step once.
    assert _losses(straight) == _losses(crashed)
    assert [s for s, _ in _losses(crashed)] == [str(s) for s in range(1, 2 * N + 1)]


def test_second_run_on_the_same_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    control = tmp_path / "control"
    control.mkdir()
    holder = fx.popen(["--pause-at", 1, "--control", control, "--", "--config", config, "--no-progress",
                       "train.max_num_steps=2"], script="train_hooked.py")
    deadline = time.monotonic() + 120
    while not (control / "ready").exists():
        assert holder.poll() is None, holder.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the first run never reached step 1"
        time.sleep(0.1)
    # A second real process on the same folder is refused with one sentence naming the holder.
    code, err = fx.finish(fx.popen(["train", "--config", config, "--no-progress", "train.max_num_steps=2"]))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "in use by process" in lines[0] and str(holder.pid) in lines[0] and "Traceback" not in err
    assert not (run / "checkpoints").exists()  # the refused run wrote nothing
    os.kill(holder.pid, signal.SIGKILL)
    assert fx.finish(holder)[0] == -signal.SIGKILL
    # Its lock file still names the dead process; the resume test above shows such a stale lock taken over.
    assert int((run / ".lock").read_text().split()[0]) == holder.pid
    assert find_latest(run) is None  # killed before its first checkpoint: nothing half-written is found
