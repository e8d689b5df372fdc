"""Resuming a run with settings that change what it learns is refused unless asked for explicitly.

The checkpoint carries the config it was trained with; a resume whose direction (target, sources,
modalities), data, model, optimizer (lr, betas, weight decay, gradient clip), schedule or EMA differs would
silently continue a different experiment under the same name, and the checkpoint would then claim the new
settings. Every key of `data`, `model` and `train` counts, except the few below that change where or how
fast the same experiment runs (so a new key is guarded until someone argues it free). With
`--allow-config-change` the resume goes on and the change is recorded in RUN/config_changes.jsonl.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

# Keys that do not change what is learned: paths of the same data (its identity is pinned by the hashes in
# the checkpoint), loader workers and shard format, the device and arithmetic flags, and the step budget
# (resuming to train longer is the point of resuming).
FREE = ("data.root", "data.prepared", "data.cache", "data.num_workers", "data.category", "train.device",
        "train.amp", "train.tf32", "train.deterministic", "train.max_num_steps", "train.max_nonfinite_steps")
# The autoencoder's weights are pinned by sha256 (autoencoder_id); its own training settings do not matter here.
FREE_PREFIXES = ("model.autoencoder.",)
SECTIONS = ("data", "model", "train")
CHANGES_FILE = "config_changes.jsonl"


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


def trajectory_keys(cfg) -> dict:
    """The settings a resume must keep: every data.*, model.* and train.* key but the FREE ones."""
    keys = {}
    for section in SECTIONS:
        keys.update(_flat(section, asdict(getattr(cfg, section))))
    return {k: v for k, v in keys.items() if k not in FREE and not k.startswith(FREE_PREFIXES)}


def check_resume_config(old_yaml: str, cfg, checkpoint, allow: bool = False) -> dict[str, tuple]:
    """{key: (old, new)} for the keys that differ from the checkpoint's config; a ValueError naming them
    unless `allow`."""
    from phmdiff.config import config_from_yaml

    old = trajectory_keys(config_from_yaml(old_yaml, origin=f"{checkpoint}/config.yaml"))
    new = trajectory_keys(cfg)
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    if changed and not allow:
        shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(changed.items())[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ValueError(f"{checkpoint}: resuming with changed settings {shown}{more}; they change what the run "
                         "learns. Restore them, start a new log.run_dir, or pass --allow-config-change.")
    return changed


def record_config_change(run_dir, checkpoint, step: int, changed: dict[str, tuple], log=None) -> None:
    """Append an allowed change to RUN/config_changes.jsonl (one JSON line per resume) and say it."""
    if not changed:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": str(checkpoint), "step": step,
             "changes": {k: [a, b] for k, (a, b) in changed.items()}}
    path = Path(run_dir) / CHANGES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    if log is not None:
        log(f"train: resuming with changed settings (--allow-config-change): "
            f"{', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changed.items())}; recorded in {path}.")
