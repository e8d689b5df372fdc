"""DDP on the CPU: `torchrun --nproc_per_node 2` (gloo) keeps the replicas identical after every step, only
rank 0 writes, validation is split across ranks, both processes exit 0, and a SIGKILL mid-run resumes
bit-exactly under DDP too (issue 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import ddp_check  # noqa: E402
import rel_fixture as fx  # noqa: E402

from phmdiff.data.datasets import PairedSlices  # noqa: E402
from phmdiff.training.checkpoint import find_latest, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(400)
STEPS, KILL = 4, 2


def _torchrun(report: Path, config: Path, *extra, kill_at: int | None = None) -> subprocess.CompletedProcess:
    script = str(Path(ddp_check.__file__))
    kill = ["--kill-at", str(kill_at)] if kill_at is not None else []
    cmd = [fx.PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
           "--report", str(report), *kill, "--", "--config", str(config), "--no-progress",
           f"train.max_num_steps={STEPS}", "eval.every=2", "log.ckpt_every=2",
           # Both pyramid levels, the cross-granularity pass (two denoiser calls per step) and an unmasked
           # last step (the mask token gets no gradient): each once broke DDP's gradient reducer.
           "model.cross_granularity_weight=0.05", "train.unmasked_finetune_steps=1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _reports(report: Path) -> list[dict]:
    return [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_cpu_ddp_replicas_writes_validation_exit_and_resume(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    straight = tmp_path / "straight"
    done = _torchrun(tmp_path / "report-straight", fx.write_config(data, straight))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = _reports(tmp_path / "report-straight")
    for r in ranks:  # both exit 0 after tearing the process group down; replicas agree before every step
        assert r["exit"] == 0 and r["process_group_destroyed"] and r["mismatch"] == []
        assert [s for s, _ in r["hashes"]] == list(range(STEPS))
    assert ranks[0]["hashes"] == ranks[1]["hashes"] and ranks[0]["final_hash"] == ranks[1]["final_hash"]
    assert len({h for _, h in ranks[0]["hashes"]}) == STEPS  # the weights did change every step
    last = load_checkpoint(find_latest(straight))
    assert last.step == STEPS and ddp_check.state_hash(last.model_state) == ranks[0]["final_hash"]
    # Only rank 0 writes: its audit sees the checkpoints, rank 1's sees nothing under the run folder.
    assert any("step-000002" in w for w in ranks[0]["writes"]) and ranks[1]["writes"] == []
    # Validation (steps 2 and 4) evaluates each picked slice once, split between the ranks.
    n_val = len(PairedSlices(data / "prepared", "val", ["t1", "t2"], "flair"))
    picks = np.unique(np.linspace(0, n_val - 1, min(4, n_val)).round().astype(int)).tolist()
    per_round = [r["val_indices"][: len(r["val_indices"]) // 2] for r in ranks]
    assert sorted(per_round[0] + per_round[1]) == picks and set(per_round[0]).isdisjoint(per_round[1])
    assert per_round[0] and per_round[1]
    # Resume under DDP: rank 1 dies by SIGKILL at step 2; torchrun stops both; --resume auto finishes.
    crashed = tmp_path / "crashed"
    config = fx.write_config(data, crashed)
    killed = _torchrun(tmp_path / "report-killed", config, kill_at=KILL)
    assert killed.returncode != 0
    assert find_latest(crashed).name == f"step-{KILL:06d}"
    resumed = _torchrun(tmp_path / "report-resumed", config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert fx.checkpoint_differences(find_latest(straight), find_latest(crashed)) == []
    ranks = _reports(tmp_path / "report-resumed")
    assert [s for s, _ in ranks[0]["hashes"]] == list(range(KILL, STEPS)) and ranks[1]["mismatch"] == []
