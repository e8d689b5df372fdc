"""Checkpoints that are complete or absent: safetensors weights, a weights-only state file, a hash manifest.

A checkpoint is a folder `RUN/checkpoints/step-000100/` holding

- `model.safetensors`, `ema.safetensors`: weights (no pickle at all);
- `state.pt`: optimizer, step, RNG states, data position, read with `torch.load(weights_only=True)`;
- `config.yaml`: the resolved run config; `meta.json`: step, metrics, data/autoencoder identities;
- `manifest.json`, written last: sha256 and size of every other file.

The folder is assembled under a temporary name and renamed into place, then the `last` pointer file
(and `best`, when asked) is replaced atomically. A folder without a valid manifest is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from phmdiff.finite import check_weights
from phmdiff.fsutil import atomic_dir, atomic_write_text

FORMAT = "phmdiff-checkpoint/1"
MANIFEST = "manifest.json"
REQUIRED = ("model.safetensors", "state.pt", "config.yaml", "meta.json")
STEP_DIR_RE = re.compile(r"^step-(\d{6,})$")


@dataclass
class Checkpoint:
    """A verified checkpoint, loaded on the CPU."""

    path: Path
    step: int
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    config_yaml: str
    meta: dict[str, Any] = field(default_factory=dict)


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _plain_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; a contiguous CPU clone of each tensor is exact.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (CPU and CUDA) as weights-only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`: the random streams continue exactly where they were saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_manifest(folder: Path) -> None:
    files = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    # Written last: its presence with matching hashes is what makes the folder a checkpoint.
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
    with open(folder / MANIFEST, "rb") as f:
        os.fsync(f.fileno())


def _cleanup_temporaries(ckpt_dir: Path) -> None:
    for stale in ckpt_dir.glob(".step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in ckpt_dir.glob(".step-*.old"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    training_state: dict[str, Any],
    config_yaml: str,
    ema_state: dict[str, torch.Tensor] | None = None,
    meta: dict[str, Any] | None = None,
    best: bool = False,
    keep: int = 3,
    is_main: bool = True,
) -> Path | None:
    """Write `RUN/checkpoints/step-NNNNNN/` atomically, point `last` (and `best`) at it, prune old ones.

    Only the main process writes; other ranks return None at once (the caller synchronizes).
    `training_state` must hold only tensors, numbers, strings, lists, tuples and dicts.
    """
    if not is_main:
        return None
    ckpt_dir = checkpoints_dir(run_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _cleanup_temporaries(ckpt_dir)
    name = step_name(step)
    try:
        _write_folder(ckpt_dir, name, step, model_state, training_state, config_yaml, ema_state, meta, best)
    except (OSError, RuntimeError, SafetensorError) as exc:  # full disk, folder gone: a sentence, old ones kept
        raise _write_failure(ckpt_dir / name, exc) from None
    _prune(ckpt_dir, keep)
    return ckpt_dir / name


def _write_failure(target: Path, exc: BaseException) -> ValueError:
    """A failed checkpoint write as one sentence; the disk's free space is named since it is the usual cause."""
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:200]
    try:
        free = f"; {shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free on that disk"
    except OSError:
        free = ""
    kept = "the earlier checkpoints are kept" if _step_dirs(target.parent) else "no earlier checkpoint exists"
    return ValueError(f"{target}: could not write the checkpoint ({reason}{free}); {kept}.")


def _write_folder(ckpt_dir, name, step, model_state, training_state, config_yaml, ema_state, meta, best) -> None:
    with atomic_dir(ckpt_dir / name) as tmp:
        save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        if ema_state is not None:
            save_file(_plain_tensors(ema_state), str(tmp / "ema.safetensors"), metadata={"format": FORMAT})
        torch.save({"step": step, **training_state}, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step, **(meta or {})}, indent=1))
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _write_manifest(tmp)
    atomic_write_text(ckpt_dir / "last", name + "\n")
    if best:
        atomic_write_text(ckpt_dir / "best", name + "\n")


def _pointer(ckpt_dir: Path, which: str) -> str | None:
    try:
        text = (ckpt_dir / which).read_text().strip()
    except OSError:
        return None
    return text if STEP_DIR_RE.match(text) else None


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Step folders, newest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_DIR_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def _prune(ckpt_dir: Path, keep: int) -> None:
    protected = {_pointer(ckpt_dir, "last"), _pointer(ckpt_dir, "best")}
    for old in _step_dirs(ckpt_dir)[keep:]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check the manifest, sizes and sha256 hashes of a checkpoint folder; return the manifest or say why not."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: checkpoint folder not found.")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: incomplete checkpoint (no {MANIFEST}); it was not finished writing.") from None
    except (OSError, ValueError):
        raise ValueError(f"{path}: {MANIFEST} is unreadable or not valid JSON; the checkpoint is damaged.") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: {MANIFEST} is not a {FORMAT} manifest.")
    for required in REQUIRED:
        if required not in files:
            raise ValueError(f"{path}: the manifest does not list {required}; the checkpoint is incomplete.")
    for name, entry in files.items():
        file = path / name
        if "/" in name or not file.is_file():
            raise ValueError(f"{path}: {name} is missing; the checkpoint is incomplete.")
        if file.stat().st_size != entry.get("bytes"):
            raise ValueError(
                f"{file}: size {file.stat().st_size} bytes differs from the {entry.get('bytes')} recorded; "
                "the file is truncated or was changed."
            )
        if sha256_file(file) != entry.get("sha256"):
            raise ValueError(
                f"{file}: content hash does not match the manifest; the file is corrupted or tampered with."
            )
    return manifest


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Load a checkpoint folder on the CPU after checking its hashes; nothing is unpickled beyond plain data."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        model_state = load_file(str(path / "model.safetensors"))
        ema_file = path / "ema.safetensors"
        ema_state = load_file(str(ema_file)) if ema_file.is_file() else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: weights are not a readable safetensors file ({exc}).") from None
    check_weights(model_state, path / "model.safetensors")
    if ema_state is not None:
        check_weights(ema_state, ema_file)
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path / 'state.pt'}: refused to load; it is not a plain weights-only state file ({first[:160]})."
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path / 'state.pt'}: expected a state dictionary with an integer 'step'.")
    try:
        meta = json.loads((path / "meta.json").read_text())
        config_yaml = (path / "config.yaml").read_text()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: meta.json or config.yaml is unreadable ({exc}).") from None
    return Checkpoint(path, state["step"], model_state, ema_state, state, config_yaml, meta)


def _first_valid(candidates: list[Path]) -> Path | None:
    for candidate in candidates:
        try:
            verify_checkpoint(candidate)
        except ValueError:
            continue
        return candidate
    return None


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete, hash-valid checkpoint of a run, or None.

    Folders are tried newest first rather than trusting `last`: a crash between the folder's rename
    and the pointer update leaves a newer complete folder that `last` does not name yet.
    """
    return _first_valid(_step_dirs(checkpoints_dir(run_dir)))


def find_best(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint the `best` pointer names if it is valid, else the latest valid one."""
    ckpt_dir = checkpoints_dir(run_dir)
    pointed = _pointer(ckpt_dir, "best")
    if pointed and _first_valid([ckpt_dir / pointed]):
        return ckpt_dir / pointed
    return find_latest(run_dir)


def resolve_checkpoint(path: str | os.PathLike, which: str = "best") -> Path:
    """A checkpoint folder from a checkpoint path or a run folder (its `best`, or `last`)."""
    path = Path(path)
    if (path / MANIFEST).exists() or STEP_DIR_RE.match(path.name):
        verify_checkpoint(path)
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: run or checkpoint folder not found.")
    found = find_best(path) if which == "best" else find_latest(path)
    if found is None:
        raise ValueError(f"{path}: no complete checkpoint found under {checkpoints_dir(path)}.")
    return found
