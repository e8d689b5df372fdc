"""Regression baseline: MONAI's BasicUNet trained with L1 (or L2) to map the source modalities (as channels) to
the target slice (pix2pix without the adversary; Isola et al. 2017), under a budget of `clock` seconds (wall clock
by default; `time.process_time` gives the CPU time of this process), with an optional EMA of the weights."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

LOSSES = {"l1": torch.nn.functional.l1_loss, "l2": torch.nn.functional.mse_loss}


def loader(prepared_dir: str | Path, sources: list[str], target: str, batch: int, seed: int,
           flip: bool = True) -> DataLoader:
    """Shuffled training pairs (PairedSlices, random left-right flips unless `flip` is False), endless by
    re-iteration."""
    from phmdiff.data.datasets import PairedSlices

    data = PairedSlices(prepared_dir, "train", sources, target, flip=flip, seed=seed)
    return DataLoader(data, batch_size=batch, shuffle=True, drop_last=len(data) > batch,
                      generator=torch.Generator().manual_seed(seed))


def batches(dl: DataLoader):
    """Batches forever, with a new flip draw every epoch."""
    epoch = 0
    while True:
        dl.dataset.set_epoch(epoch)
        yield from dl
        epoch += 1


def build_unet(num_sources: int, features=(32, 32, 64, 128, 256, 32)) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=num_sources, out_channels=1, features=features)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """Exponential moving average of the weights with the usual warm-up, decay_t = min(decay, (1+t)/(10+t))."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def train_unet(prepared_dir: str | Path, sources: list[str], target: str, budget_s: float, batch: int = 16,
               lr: float = 1e-3, seed: int = 0, features=(32, 32, 64, 128, 256, 32), clock=time.perf_counter,
               loss: str = "l1", flip: bool = True, ema_decay: float | None = None
               ) -> tuple[dict[str, torch.nn.Module], dict]:
    """Train until `budget_s` seconds of `clock` have passed; returns ({"raw": model, "ema": its EMA (when
    `ema_decay` is set)}, info), the models in eval mode."""
    if budget_s <= 0:
        raise ValueError(f"budget_s is {budget_s}; expected a positive number of seconds.")
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not known; expected one of {', '.join(LOSSES)}.")
    torch.manual_seed(seed)
    model = build_unet(len(sources), features)
    ema = copy.deepcopy(model) if ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    it = batches(loader(prepared_dir, sources, target, batch, seed, flip))
    tic, start, steps, losses = time.perf_counter(), clock(), 0, []
    while clock() - start < budget_s:
        b = next(it)
        value = LOSSES[loss](model(b["source"]), b["target"])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        steps += 1
        losses.append(float(value.detach()))
        if ema is not None:
            ema_update(ema, model, steps, ema_decay)
    info = {"steps": steps, "train_seconds": time.perf_counter() - tic, "train_clock_seconds": clock() - start,
            "final_loss": float(np.mean(losses[-20:])), "parameters": sum(p.numel() for p in model.parameters()),
            "lr": lr, "loss": loss, "flip": flip, "ema_decay": ema_decay}
    models = {"raw": model.eval()}
    if ema is not None:
        models["ema"] = ema.eval()
    return models, info


@torch.no_grad()
def predict_unet(model: torch.nn.Module, src: np.ndarray, seeds=None, batch: int = 32) -> np.ndarray:
    """Source slices (n, n_src, H, W) in [0, 1] -> target slices (n, H, W) in [0, 1] (deterministic: seeds unused)."""
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch):
        x = torch.from_numpy(src[lo : lo + batch]) * 2 - 1
        out[lo : lo + batch] = ((model(x)[:, 0] + 1) / 2).numpy()
    return out
