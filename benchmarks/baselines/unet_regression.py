"""Regression baseline: MONAI's BasicUNet trained with L1 to map the source modalities (as channels) to the
target slice (pix2pix without the adversary; Isola et al. 2017), under a wall-clock budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


def loader(prepared_dir: str | Path, sources: list[str], target: str, batch: int, seed: int) -> DataLoader:
    """Shuffled training pairs (PairedSlices, flips on), endless by re-iteration."""
    from phmdiff.data.datasets import PairedSlices

    data = PairedSlices(prepared_dir, "train", sources, target, flip=True, seed=seed)
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


def train_unet(prepared_dir: str | Path, sources: list[str], target: str, budget_s: float, batch: int = 16,
               lr: float = 1e-3, seed: int = 0, features=(32, 32, 64, 128, 256, 32)) -> tuple[torch.nn.Module, dict]:
    """Train until `budget_s` seconds of wall clock have passed; returns (model in eval mode, info)."""
    if budget_s <= 0:
        raise ValueError(f"budget_s is {budget_s}; expected a positive number of seconds.")
    torch.manual_seed(seed)
    model = build_unet(len(sources), features)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    it = batches(loader(prepared_dir, sources, target, batch, seed))
    tic, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - tic < budget_s:
        b = next(it)
        loss = torch.nn.functional.l1_loss(model(b["source"]), b["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        losses.append(float(loss.detach()))
    info = {"steps": steps, "train_seconds": time.perf_counter() - tic, "final_loss": float(np.mean(losses[-20:])),
            "parameters": sum(p.numel() for p in model.parameters())}
    return model.eval(), info


@torch.no_grad()
def predict_unet(model: torch.nn.Module, src: np.ndarray, seeds=None, batch: int = 32) -> np.ndarray:
    """Source slices (n, n_src, H, W) in [0, 1] -> target slices (n, H, W) in [0, 1] (deterministic: seeds unused)."""
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch):
        x = torch.from_numpy(src[lo : lo + batch]) * 2 - 1
        out[lo : lo + batch] = ((model(x)[:, 0] + 1) / 2).numpy()
    return out
