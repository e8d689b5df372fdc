"""Weights named as a file (issue 29 item 8): `generate.py --model-path RUN/model.pth` as the original usage
writes it. A plain state dict in .pth / .pt is read with torch.load(weights_only=True); a pickle that would run
code, a non-state-dict and weights of another model are refused with a sentence."""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from phmdiff.checkpoint_io import find_best, load_state_dict_file, resolve_weights
from phmdiff.generate import generate

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Unpickling this calls `open(marker, 'w')`: what a malicious .pth would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with its best checkpoint's EMA weights saved as RUN/model.pth."""
    root = tmp_path_factory.mktemp("pth")
    shutil.copytree(tiny_run / "run", root / "run")
    best = find_best(root / "run")
    torch.save(load_file(str(best / "ema.safetensors")), root / "run" / "model.pth")
    return root


def test_a_state_dict_pth_gives_the_same_samples_as_the_checkpoints_own_weights(run, tmp_path):
    a = generate(run / "run" / "model.pth", tmp_path / "a", [0, 1], steps=2, nearest=False)
    b = generate(run / "run", tmp_path / "b", [0, 1], steps=2, nearest=False)
    assert a["weights"].endswith("model.pth") and b["weights"] == "ema"
    assert (tmp_path / "a" / "grid.png").read_bytes() == (tmp_path / "b" / "grid.png").read_bytes()
    # a .pt in a checkpoint folder, nested under "model" and saved from DDP ("module." prefix), reads the same
    best = find_best(run / "run")
    state = load_file(str(best / "ema.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 4}, best / "weights.pt")
    choice = resolve_weights(best / "weights.pt")
    assert choice.folder == best and choice.state_dict == best / "weights.pt"
    loaded = load_state_dict_file(best / "weights.pt", like=state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_generate_py_takes_the_original_usage_line(run):
    out = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--model-path", "run/model.pth", "--output-dir",
                          "gen", "--seeds", "0-1", "--num-steps", "2", "--no-nearest"], cwd=run, capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (run / "gen" / "grid.png").is_file()


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(run, tmp_path):
    marker = tmp_path / "ran"
    bad = run / "run" / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"w": RunsCode(marker)}, f)
    with pytest.raises(ValueError, match="refused to load; it is not a plain weights-only state dict"):
        generate(bad, tmp_path / "g", [0], steps=1, nearest=False)
    assert not marker.exists()
    torch.save({"w": RunsCode(marker)}, bad)  # the same through torch.save's zip format
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="refused to load"):
        load_state_dict_file(bad, like={"w": torch.zeros(1)})
    assert not marker.exists() and not (tmp_path / "g").exists()


@pytest.mark.parametrize("content, needle", [
    (torch.zeros(3), "holds Tensor, not a state dict"),
    ({"w": np.zeros(3)}, "refused to load"),  # a numpy array is not a plain weights-only pickle
    ({"w": torch.zeros(3)}, "1 unexpected (e.g. w)"),
])
def test_anything_but_this_runs_state_dict_is_refused_with_a_sentence(run, tmp_path, content, needle):
    path = run / "run" / "other.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        generate(path, tmp_path / "g", [0], steps=1, nearest=False)


def test_wrong_shapes_nan_weights_and_a_lone_pth_are_refused(run, tmp_path):
    best = find_best(run / "run")
    state = load_file(str(best / "ema.safetensors"))
    name = next(iter(state))
    torch.save({**state, name: torch.zeros(7, 3)}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=f"weight {name} has shape \\(7, 3\\)"):
        load_state_dict_file(tmp_path / "shape.pth", like=state)
    key = next(k for k, v in state.items() if v.is_floating_point())
    torch.save({**state, key: torch.full_like(state[key], float("nan"))}, tmp_path / "nan.pth")
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_state_dict_file(tmp_path / "nan.pth", like=state)
    with pytest.raises(ValueError, match="a state dict holds no config"):
        resolve_weights(tmp_path / "nan.pth")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="or a state dict \\(.pth, .pt\\)"):
        resolve_weights(tmp_path / "w.bin")
