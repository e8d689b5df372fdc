"""Writing checkpoints that are complete or absent: safetensors weights, a weights-only state file, a hash manifest.

The folder is assembled under a temporary name and renamed into place, then the `last` pointer file
(and `best`, when asked) is replaced atomically. The folder layout and the reading side (verify, load,
find the latest or best) live in `phmdiff.checkpoint_io`, which inference uses too; they are re-exported
here for the training code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from phmdiff.checkpoint_io import (  # noqa: F401  (re-exported for training code and tests)
    FORMAT,
    MANIFEST,
    REQUIRED,
    STEP_DIR_RE,
    Checkpoint,
    _pointer,
    _step_dirs,
    checkpoints_dir,
    find_best,
    find_latest,
    load_checkpoint,
    resolve_checkpoint,
    sha256_file,
    step_name,
    verify_checkpoint,
)
from phmdiff.fsutil import atomic_dir, atomic_write_text, clean_dead_stages_in


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
    clean_dead_stages_in(ckpt_dir)  # only stage folders of writers that are provably gone


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


def _prune(ckpt_dir: Path, keep: int) -> None:
    protected = {_pointer(ckpt_dir, "last"), _pointer(ckpt_dir, "best")}
    for old in _step_dirs(ckpt_dir)[keep:]:
        if old.name not in protected:
            shutil.rmtree(old, ignore_errors=True)
