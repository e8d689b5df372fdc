"""The pipeline ceiling: what a perfect model would score through PHMDiff's own pipeline.

The true target of a subject is normalized as in training, sent through the run's autoencoder (encode, decode)
and put back into scanner units with the map `translate` uses for a prediction. Whatever this loses against
the reference (autoencoder round trip, intensity inversion, padding) no model can win back; scores are read
beside it, and beside the noise-free ceiling of the phantom (which bounds every method). The steps are the
translator's (`phmdiff.pipeline`), with the autoencoder's round trip in place of encode -> sample -> decode.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from phmdiff.data.volume import VolumeSettings
from phmdiff.inference import decode_target, encode_sources, plane_multiple
from phmdiff.pipeline import Grid, invert, read_volumes, resample_to
from phmdiff.plane import plane_slices


@torch.no_grad()
def round_trip(trained, slices: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Target slices (n, H, W) in normalized units -> the same slices after the autoencoder's encode and decode."""
    out = np.empty(slices.shape, dtype=np.float32)
    for lo in range(0, len(slices), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(slices[lo : lo + batch_size, None], dtype=np.float32))
        x = x.to(trained.device) * 2 - 1  # (n, 1, H, W) in [-1, 1]
        z = encode_sources(trained.autoencoder, x, trained.latent_scale)
        out[lo : lo + len(x)] = decode_target(trained.autoencoder, z, trained.latent_scale)[:, 0].cpu().numpy()
    return out


def oracle_volume(trained, subject, settings, sources: list[str], target: str, norm, plan=None) -> np.ndarray:
    """The subject's true target through the pipeline, on its own grid and in its own units (a perfect model).

    `plan`: translate's in-plane resampling of this subject (`phmdiff.data.spacing.plan`), applied on the way in
    and undone on the way out, as for the prediction.
    """
    mods = [*sources, target]
    volumes, affine = read_volumes(subject, mods)
    if plan is not None:
        volumes, affine = resample_to(volumes, plan)
    every = VolumeSettings.from_dict({**asdict(settings), "modalities": mods})
    cfg = getattr(trained, "cfg", None)  # a stand-in run without a config pads for its autoencoder alone
    multiple = plane_multiple(cfg) if cfg is not None else int(getattr(trained.autoencoder, "downsample_factor", 1))
    slices, spec, pads = plane_slices(volumes, affine, every, multiple)  # the plane translate sees, whole
    k = 2 * spec.context + 1
    truth = slices[:, len(sources) * k + spec.context]  # (n, H, W): the target as training normalized it
    return invert(round_trip(trained, truth), spec, pads, target, norm, Grid(every, [], plan))
