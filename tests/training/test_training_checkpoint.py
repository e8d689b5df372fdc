import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from phmdiff.training.checkpoint import (
    capture_rng_state,
    find_best,
    find_latest,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    sha256_file,
    verify_checkpoint,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))


def _trained(seed=0):
    net = _net(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).square().mean().backward()
        opt.step()
    return net, opt


def _save(run, step, net, opt, **kw):
    return save_checkpoint(
        run, step, net.state_dict(), {"optimizer": opt.state_dict(), "rng": capture_rng_state()},
        "model:\n  in_size: 8\n", ema_state=net.state_dict(), meta={"data_id": "abc"}, **kw,
    )


def _rewrite_manifest(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    net, opt = _trained()
    path = _save(tmp_path, 100, net, opt)
    assert path.name == "step-000100" and (tmp_path / "checkpoints" / "last").read_text().strip() == "step-000100"
    expected = (random.random(), np.random.rand(), torch.rand(3))
    ckpt = load_checkpoint(path)
    assert ckpt.step == 100 and ckpt.meta["data_id"] == "abc" and "in_size" in ckpt.config_yaml
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt.model_state[k], v) and torch.equal(ckpt.ema_state[k], v)
    fresh, fresh_opt = _net(1), None
    fresh.load_state_dict(ckpt.model_state)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    fresh_opt.load_state_dict(ckpt.state["optimizer"])
    # One more step from the restored state equals one more step from the original.
    x = torch.randn(5, 4)
    for m, o in ((net, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    restore_rng_state(ckpt.state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def test_only_rank_zero_writes(tmp_path):
    net, opt = _trained()
    assert _save(tmp_path, 1, net, opt, is_main=False) is None
    assert not (tmp_path / "checkpoints").exists()


def test_flipped_byte_is_detected(tmp_path):
    net, opt = _trained()
    path = _save(tmp_path, 5, net, opt)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="content hash does not match"):
        load_checkpoint(path)


def test_truncated_file_is_detected(tmp_path):
    net, opt = _trained()
    path = _save(tmp_path, 5, net, opt)
    data = (path / "state.pt").read_bytes()
    (path / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this creates a file: what an attacker's checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, fmt):
    net, opt = _trained()
    path = _save(tmp_path, 7, net, opt)
    target = tmp_path / "pwned.txt"
    payload = {"step": 7, "optimizer": _Payload(target)}
    if fmt == "torch-zip":
        torch.save(payload, path / "state.pt")
    else:
        (path / "state.pt").write_bytes(pickle.dumps(payload))
    _rewrite_manifest(path)  # the attacker also fixes the hashes
    verify_checkpoint(path)
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint(path)
    assert not target.exists()


def test_incomplete_checkpoints_are_skipped(tmp_path):
    net, opt = _trained()
    _save(tmp_path, 10, net, opt)
    newer = _save(tmp_path, 20, net, opt)
    (newer / "manifest.json").unlink()  # as if killed before the manifest was written
    (tmp_path / "checkpoints" / ".step-000030.abc.tmp").mkdir()  # a temporary folder of a killed write
    found = find_latest(tmp_path)
    assert found.name == "step-000010"
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        load_checkpoint(newer)
    assert resolve_checkpoint(tmp_path, "last").name == "step-000010"


def test_best_pointer_and_pruning(tmp_path):
    net, opt = _trained()
    _save(tmp_path, 1, net, opt, best=True, keep=2)
    for step in (2, 3, 4):
        _save(tmp_path, step, net, opt, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-000001", "step-000003", "step-000004"]
    assert find_best(tmp_path).name == "step-000001"
    assert find_latest(tmp_path).name == "step-000004"


def test_no_checkpoint_is_a_sentence(tmp_path):
    assert find_latest(tmp_path) is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


_WRITER = r"""
import sys, torch
from phmdiff.training.checkpoint import save_checkpoint
run = sys.argv[1]
step = 0
print("ready", flush=True)
while True:
    step += 1
    w = {"w": torch.full((256, 256), float(step))}
    save_checkpoint(run, step, w, {"n": step}, "x: 1\n", ema_state=w, keep=2)
"""


def test_sigkill_during_writes_never_leaves_a_bad_checkpoint(tmp_path):
    kills = int(os.environ.get("PHMDIFF_STRESS_KILLS", "4"))
    rng = random.Random(0)
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = find_latest(tmp_path)
        if latest is None:
            continue
        ckpt = load_checkpoint(latest)
        assert torch.equal(ckpt.model_state["w"], torch.full((256, 256), float(ckpt.step)))
        assert ckpt.state["n"] == ckpt.step
