"""PHMDiff's mean network alone: the `model.mean_net` output of a trained run, without the diffusion's residual.

A mean/residual run (`phmdiff.mean_net.MeanResidual`) translates as mean + sampled residual; translate has no
switch to stop after the mean, so this runs the run's own mean network on the source slices, with the run's
autoencoder and latent scale as `pipeline.translate_samples` uses them (the same weights: the EMA ones of the best
checkpoint). `common.slicewise_volume` turns it into volumes with translate's per-volume functions.
"""

from __future__ import annotations

import numpy as np
import torch


def has_mean_net(trained) -> bool:
    """Whether a loaded run (`inference.load_trained`) translates as mean + residual (`model.mean_net` set)."""
    from phmdiff.mean_net import MeanResidual

    return isinstance(trained.denoiser, MeanResidual)


@torch.no_grad()
def predict_mean_alone(trained, src: np.ndarray, seeds=None, batch: int = 16) -> np.ndarray:
    """Source slices (n, n_src, H, W) in [0, 1], in the run's source order -> the mean network's target slices
    (n, H, W) in normalized units (deterministic: seeds unused)."""
    from phmdiff.inference import decode_target, encode_sources

    if src.shape[1] != len(trained.plan.sources):
        raise ValueError(f"{src.shape[1]} source channels given; the run's mean network takes "
                         f"{len(trained.plan.sources)} ({', '.join(trained.plan.sources)}).")
    out = np.empty((src.shape[0], *src.shape[2:]), dtype=np.float32)
    for lo in range(0, src.shape[0], batch):
        x = torch.from_numpy(np.ascontiguousarray(src[lo : lo + batch], dtype=np.float32)).to(trained.device) * 2 - 1
        n = x.shape[0]
        cond = encode_sources(trained.autoencoder, x, trained.latent_scale)  # (n, n_src * C, h, w)
        avail = cond.new_ones(n, x.shape[1])  # every source present
        label = torch.full((n,), trained.target_label, device=trained.device)
        mu = trained.denoiser.mean_net(cond, avail, label)  # (n, C, h, w): E[target latent | sources]
        out[lo : lo + n] = decode_target(trained.autoencoder, mu.float(), trained.latent_scale)[:, 0].cpu().numpy()
    return out
