"""Shared set-up for the reliability tests: a tiny phantom, its prepared slices, a latent cache and a config.

Run as a script (`python rel_fixture.py OUT`) or imported by the tests. Everything is seeded, so two builds
give byte-identical inputs. The identity autoencoder keeps diffusion in pixel space at 16x16, which makes a
training step take milliseconds on a CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable
SIZE = 16

TINY_CONFIG = """\
data:
  dataset: phantom
  resolution: {size}
  num_channels: 1
  prepared: {prepared}
  cache: {cache}
  sources: [t1, t2]
  target: flair
  val_fraction: 0.25
  test_fraction: 0.25
  num_workers: 0
model:
  precond: edm
  model_type: PHMDiff-T/2
  in_size: {size}
  in_channels: 1
  pyramid_levels: 2
  mask_ratio: 0.25
  autoencoder:
    preset: identity
    path: {autoencoder}
train:
  amp: "no"
  device: cpu
  tf32: false
  batchsize: 4
  lr: 1.0e-3
  max_num_steps: 4
  ema_halflife_kimg: 0.01
  ema_rampup_ratio: 0.0
  seed: 3
  max_nonfinite_steps: 3
  deterministic: true
eval:
  sampler: euler
  num_steps: 2
  fine_num_steps: 1
  every: 0
  num_val_slices: 4
log:
  log_every: 1
  ckpt_every: 2
  keep_checkpoints: 10
  tag: tiny
  run_dir: {run_dir}
  tensorboard: false
"""


def cli(*args: str, env: dict | None = None, timeout: float = 120, check: bool = True, cwd=None):
    """Run `python -m phmdiff ARGS` as a real subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([PYTHON, "-m", "phmdiff", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"phmdiff {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


# What a run says while it works (`--no-progress` logs, the device line): not part of a failure's one sentence.
# Informational lines a command may print before its one error sentence: progress, the device, a resume.
INFO_PREFIXES = ("train: step ", "train-ae: step ", "phmdiff train: running on", "phmdiff train-ae: running on",
                 "phmdiff translate: running on", "phmdiff generate: running on", "translate: ", "train: resuming ")


def sentences(stderr: str) -> list[str]:
    """The lines of `stderr` that are not progress or device lines: a failure must leave exactly one."""
    return [line for line in stderr.strip().splitlines() if not line.startswith(INFO_PREFIXES)]


def in_process(*args: str) -> None:
    """Run `phmdiff ARGS` in this process (set-up steps, where a subprocess would only cost start-up time)."""
    from phmdiff.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise AssertionError(f"phmdiff {' '.join(map(str, args))} exited {code}")


_BUILT: dict[str, Path] = {}


def shared(tmp_path_factory) -> Path:
    """One fixture folder per test session, whichever reliability test file asks first."""
    if "data" not in _BUILT:
        _BUILT["data"] = build(tmp_path_factory.mktemp("reliability-data"))
    return _BUILT["data"]


def build(out: str | os.PathLike) -> Path:
    """phantom -> prepare -> identity latent cache; returns the folder (config: `write_config`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    in_process("phantom", out / "phantom", "--subjects", "4", "--shape", "32", "32", "16", "--seed", "0")
    in_process("prepare", out / "phantom", out / "prepared", "--size", str(SIZE), "--fit", "resize",
               "--split", "0.5", "0.25", "0.25", "--modalities", "t1", "t2", "flair", "--dtype", "float32")
    ae = out / "autoencoder"
    write_autoencoder(ae)
    in_process("encode", out / "prepared", ae, out / "latents", "--dtype", "float32")
    return out
    write_config(out, out / "run")
    return out / "tiny.yaml"


def write_config(data: Path, run_dir: Path, path: Path | None = None, cache: Path | None = None) -> Path:
    """The tiny training config over the fixture `data`, training into `run_dir`; written to `path`."""
    path = Path(path or Path(run_dir).parent / f"{Path(run_dir).name}.yaml")
    text = TINY_CONFIG.format(size=SIZE, prepared=data / "prepared", cache=cache or data / "latents",
                              autoencoder=data / "autoencoder", run_dir=run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_autoencoder(path: Path) -> None:
    """Save the project's identity autoencoder where the config points (pixel-space diffusion)."""
    from phmdiff.autoencoder import IdentityAutoencoder, save_autoencoder

    save_autoencoder(IdentityAutoencoder(), path)


def popen(args: list, env: dict | None = None, script: str | None = None):
    """Start `python -m phmdiff ARGS` (or `python SCRIPT ARGS` from this folder) without waiting."""
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    head = [PYTHON, str(Path(__file__).parent / script)] if script else [PYTHON, "-m", "phmdiff"]
    return subprocess.Popen([*head, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env)


def finish(proc, timeout: float = 180) -> tuple[int, str]:
    """Wait for a process started by `popen`; returns (exit code, stderr). Killed and failed on a hang."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"process hung for {timeout} s:\n{err[-3000:]}") from None
    return proc.returncode, err


def checkpoint_differences(a: Path, b: Path) -> list[str]:
    """Everything two checkpoints disagree on, bit for bit: weights, EMA, optimizer state, step, RNG."""
    import torch

    from phmdiff.training.checkpoint import load_checkpoint

    ca, cb = load_checkpoint(a), load_checkpoint(b)
    diffs = []

    def walk(x, y, where):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            same = (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype
                    and x.shape == y.shape and torch.equal(x, y))
            if not same:
                diffs.append(where)
        elif isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                diffs.append(f"{where}: keys {sorted(set(x) ^ set(y))}")
            for k in set(x) & set(y):
                walk(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{where}[{i}]")
        elif x != y and not (isinstance(x, float) and isinstance(y, float) and x != x and y != y):
            diffs.append(f"{where}: {x!r} != {y!r}")

    walk(ca.model_state, cb.model_state, "model")
    walk(ca.ema_state, cb.ema_state, "ema")
    walk({k: v for k, v in ca.state.items()}, {k: v for k, v in cb.state.items()}, "state")
    return diffs


def trained_run(tmp_path_factory) -> Path:
    """A tiny run trained in this process for 2 steps (one checkpoint), shared by the tests of a session."""
    if "run" not in _BUILT:
        import torch

        from phmdiff.config import load_config
        from phmdiff.training.loop import train

        data = shared(tmp_path_factory)
        run = tmp_path_factory.mktemp("reliability-run") / "run"
        try:
            train(load_config(write_config(data, run), ["train.max_num_steps=2"]), progress=False)
        finally:
            torch.use_deterministic_algorithms(False)  # the loop sets it process-wide
        _BUILT["run"] = run
    return _BUILT["run"]


def crafted_run(tmp_path: Path, run: Path, edit_weights=None, edit_meta=None) -> Path:
    """A copy of `run` whose latest checkpoint has edited weights and/or meta.json, its manifest re-signed (an
    attacker rewrites the hashes too): only the content is wrong."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from phmdiff.training.checkpoint import _write_manifest, find_latest

    crafted = tmp_path / "run"
    shutil.copytree(run, crafted)
    ckpt = find_latest(crafted)
    if edit_weights:
        for name in ("model.safetensors", "ema.safetensors"):
            tensors = load_file(str(ckpt / name))
            key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
            tensors[key] = edit_weights(tensors[key])
            save_file(tensors, str(ckpt / name), metadata={"format": "phmdiff-checkpoint-v1"})
    if edit_meta:
        meta = json.loads((ckpt / "meta.json").read_text())
        edit_meta(meta)
        (ckpt / "meta.json").write_text(json.dumps(meta))
    (ckpt / "manifest.json").unlink()
    _write_manifest(ckpt)
    return crafted


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) by relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
