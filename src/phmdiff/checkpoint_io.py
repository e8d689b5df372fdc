"""Reading checkpoints: verify the hash manifest, load weights and state, find a run's best or last one.

A checkpoint is a folder `RUN/checkpoints/step-000100/` holding

- `model.safetensors`, `ema.safetensors`: weights (no pickle at all);
- `state.pt`: optimizer, step, RNG states, data position, read with `torch.load(weights_only=True)`;
- `config.yaml`: the resolved run config; `meta.json`: step, metrics, data/autoencoder identities;
- `manifest.json`, written last: sha256 and size of every other file.

A folder without a valid manifest is never loaded. Inference reads checkpoints through this module and
training writes them through `phmdiff.training.checkpoint`, so inference never imports training.

Weights may also be named as a file, as the original code's usage does (`--model-path .../model.pth`): a
checkpoint's `model.safetensors` or `ema.safetensors`, or a plain state dict in a `.pth` / `.pt` file read with
`torch.load(weights_only=True)` (never a pickle that can run code). The run's config and identity come from the
checkpoint folder holding the file, or the best checkpoint of the run folder it sits in (`resolve_weights`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from phmdiff.finite import check_weights

FORMAT = "phmdiff-checkpoint/1"
MANIFEST = "manifest.json"
REQUIRED = ("model.safetensors", "state.pt", "config.yaml", "meta.json")
STEP_DIR_RE = re.compile(r"^step-(\d{6,})$")
SAFETENSORS_WEIGHTS = ("model.safetensors", "ema.safetensors")
STATE_DICT_SUFFIXES = (".pth", ".pt")
# Keys under which training scripts commonly nest a state dict, in order of preference (the EMA first).
NESTED_KEYS = ("ema", "model_ema", "model", "state_dict", "model_state_dict", "net")

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


@dataclass
class WeightsChoice:
    """Where a model's weights come from: a run or checkpoint folder, which of its weights, or a state dict file."""

    folder: Path  # run or checkpoint folder: config, identity and autoencoder
    ema: bool = True
    state_dict: Path | None = None  # a .pth / .pt file whose weights replace the checkpoint's


def resolve_weights(path: str | os.PathLike) -> WeightsChoice:
    """A run folder, a checkpoint folder or a weights file -> where the config and the weights come from.

    `model.safetensors` / `ema.safetensors` name a checkpoint's raw or EMA weights; a `.pth` / `.pt` state dict
    takes its run's config from the checkpoint folder it sits in, or from the run folder it sits in (or in whose
    `checkpoints/` it sits); a folder gives its EMA weights."""
    path = Path(path)
    if path.is_file():
        if path.name in SAFETENSORS_WEIGHTS:
            return WeightsChoice(path.parent, path.name == "ema.safetensors")
        if path.suffix.lower() not in STATE_DICT_SUFFIXES:
            raise ValueError(f"{path}: not a run folder, a checkpoint folder, a checkpoint's model.safetensors or "
                             "ema.safetensors, or a state dict (.pth, .pt).")
        for folder in (path.parent, path.parent.parent):
            if (folder / MANIFEST).is_file() or checkpoints_dir(folder).is_dir():
                return WeightsChoice(folder, True, path)
        raise ValueError(f"{path}: a state dict holds no config; put it in its run folder or one of its checkpoint "
                         "folders, where the run's config.yaml and meta.json are found.")
    if not path.exists():
        raise ValueError(f"{path}: run folder, checkpoint folder or weights file not found; expected e.g. RUN, "
                         "RUN/checkpoints/step-000100 or RUN/checkpoints/step-000100/model.safetensors.")
    return WeightsChoice(path)


def _tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def load_state_dict_file(path: str | os.PathLike, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain state dict from a .pth / .pt file, checked against the model's own (`like`): same names, same
    shapes, finite. Read with `torch.load(weights_only=True)`: a pickle that would build arbitrary objects or run
    code is refused with a sentence, never executed. A state dict nested under 'ema', 'model' or 'state_dict'
    (the EMA first) and DDP's 'module.' prefix are accepted."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError,
            ModuleNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: refused to load; it is not a plain weights-only state dict ({first[:160]}).") \
            from None
    if not _tensor_dict(obj) and isinstance(obj, dict):
        obj = next((obj[k] for k in NESTED_KEYS if _tensor_dict(obj.get(k))), obj)
    if not _tensor_dict(obj):
        raise ValueError(f"{path}: holds {type(obj).__name__}, not a state dict (parameter name -> tensor); save "
                         "one with torch.save(model.state_dict(), path).")
    if all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    missing, unexpected = sorted(set(like) - set(obj)), sorted(set(obj) - set(like))
    if missing or unexpected:
        which = f"{len(missing)} missing (e.g. {missing[0]})" if missing else ""
        which += (", " if missing and unexpected else "") + (
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise ValueError(f"{path}: its weights do not fit this run's model: {which}; expected the state dict of "
                         "the run it sits in.")
    for name, tensor in obj.items():
        if tuple(tensor.shape) != tuple(like[name].shape):
            raise ValueError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, the run's model "
                             f"{tuple(like[name].shape)}; expected the state dict of the run it sits in.")
    check_weights(obj, path)
    return {k: v.to(like[k].dtype) for k, v in obj.items()}
