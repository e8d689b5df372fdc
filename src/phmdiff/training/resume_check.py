"""Resuming a run with settings that change its trajectory is refused unless asked for explicitly.

The checkpoint carries the config it was trained with; a resume whose seed, batch size, learning rate,
mask ratio or model differs would silently continue a different experiment under the same name.
"""

from __future__ import annotations

from dataclasses import asdict

# Trajectory-changing keys outside `model`. Every model key counts except the autoencoder's, whose weights
# the run already pins by sha256 (autoencoder_id) and whose own training settings do not matter here.
TRAIN_KEYS = ("seed", "batchsize", "lr", "lr_cooldown", "grad_accum")


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}", v))
        return out
    return {prefix: value}


def trajectory_keys(cfg) -> dict:
    """The settings a resume must keep: train.seed, train.batchsize, train.lr, ..., and every model.* key."""
    keys = {f"train.{k}": getattr(cfg.train, k) for k in TRAIN_KEYS}
    model = _flat("model", asdict(cfg.model))
    keys.update({k: v for k, v in model.items() if not k.startswith("model.autoencoder.")})
    return keys


def check_resume_config(old_yaml: str, cfg, checkpoint, allow: bool = False) -> list[str]:
    """The keys that differ from the checkpoint's config; a ValueError naming them unless `allow`."""
    from phmdiff.config import config_from_yaml

    old = trajectory_keys(config_from_yaml(old_yaml, origin=f"{checkpoint}/config.yaml"))
    new = trajectory_keys(cfg)
    changed = [k for k in new if old.get(k) != new[k]]
    if changed and not allow:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in changed[:4])
        raise ValueError(f"{checkpoint}: resuming with changed settings {shown}; they change the training "
                         "trajectory. Restore them, start a new log.run_dir, or pass --allow-config-change.")
    return changed
