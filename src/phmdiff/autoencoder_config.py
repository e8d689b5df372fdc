"""The autoencoder's sizes and named presets, torch-free so a config can be checked without building networks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class AutoencoderConfig:
    """Autoencoder sizes; `channels` has log2(downsample_factor) + 1 entries (one per resolution)."""

    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 256, 256)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = field(default=(False, False, False, False))
    mid_attention: bool = True
    norm_num_groups: int = 32
    downsample_factor: int = 8
    kind: str = "kl"

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.kind not in ("kl", "identity"):
            raise ValueError(f"Autoencoder kind must be 'kl' or 'identity', got {self.kind!r}.")
        if self.kind == "identity":
            return
        if self.downsample_factor not in (4, 8):
            raise ValueError(f"Autoencoder downsample_factor must be 4 or 8, got {self.downsample_factor}.")
        levels = int(math.log2(self.downsample_factor)) + 1
        if len(self.channels) != levels or len(self.attention_levels) != levels:
            raise ValueError(f"A downsample_factor of {self.downsample_factor} needs {levels} entries in channels and "
                             f"attention_levels, got {len(self.channels)} and {len(self.attention_levels)}.")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"Every entry of channels {self.channels} must be divisible by norm_num_groups "
                             f"{self.norm_num_groups}.")
        if self.in_channels < 1 or self.latent_channels < 1 or self.num_res_blocks < 1:
            raise ValueError("in_channels, latent_channels and num_res_blocks must all be at least 1.")


AE_presets: dict[str, AutoencoderConfig] = {
    "tiny": AutoencoderConfig(channels=(32, 32, 64), attention_levels=(False,) * 3, num_res_blocks=1,
                              mid_attention=False, norm_num_groups=8, downsample_factor=4),
    "f4": AutoencoderConfig(channels=(64, 128, 256), attention_levels=(False,) * 3, downsample_factor=4),
    "f8": AutoencoderConfig(channels=(64, 128, 256, 256), attention_levels=(False,) * 4, downsample_factor=8),
}

# Stable Diffusion / LDM "kl-f8" first stage: ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, z 4, mid attention.
LDM_KL_F8 = AutoencoderConfig(in_channels=3, latent_channels=4, channels=(128, 256, 512, 512), num_res_blocks=2,
                              attention_levels=(False,) * 4, mid_attention=True, norm_num_groups=32,
                              downsample_factor=8)
