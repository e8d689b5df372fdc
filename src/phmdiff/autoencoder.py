"""KL-regularized convolutional autoencoder (Rombach et al. 2022, "LDM", first stage) and its identity twin.

The encoder/decoder follow the LDM layout (`encoder.down.0.block.0.norm1.weight`, `quant_conv`, ...), so one
implementation serves our single-channel autoencoders and Stable-Diffusion/LDM KL-f8 weights read from a local
file. (MONAI's AutoencoderKL was the first choice, but its attention needs einops, which is not installed, and
its parameter names differ from LDM's, so the KL-f8 loader would need a second architecture anyway.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from phmdiff.autoencoder_config import LDM_KL_F8, AE_presets, AutoencoderConfig  # noqa: F401 - re-exported
from phmdiff.finite import check_weights
from phmdiff.fsutil import atomic_path

FORMAT = "phmdiff-autoencoder-v1"


class DiagonalGaussianDistribution:
    """Posterior q(z|x) = N(mean, diag(exp(logvar))), log-variance clamped to [-30, 20] as in LDM."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor | None = None, deterministic: bool = False):
        self.mean = mean
        self.deterministic = deterministic or logvar is None
        if self.deterministic:
            self.logvar = torch.full_like(mean, -math.inf)
            self.std = self.var = torch.zeros_like(mean)
        else:
            self.logvar = logvar.clamp(-30.0, 20.0)
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.deterministic:
            return self.mean
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over the latent elements: (N,)."""
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        dims = tuple(range(1, self.mean.dim()))
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=dims)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """LDM residual block: (GroupNorm, swish, conv) x 2 with a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """LDM single-head spatial self-attention with 1x1-conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(n, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))  # (N, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, 1, HW, C)
        return x + self.proj_out(out.transpose(2, 3).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # LDM's asymmetric padding keeps weights interchangeable


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _mid(channels: int, groups: int, attention: bool) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, groups)
    mid.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
    mid.block_2 = ResnetBlock(channels, channels, groups)
    return mid


class Encoder(nn.Module):
    """LDM encoder: conv_in, per level res blocks (+attention) and a stride-2 conv, mid block, 2z moments."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, ch = cfg.norm_num_groups, cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch[0]
        for i, block_out in enumerate(ch):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if cfg.attention_levels[i]:
                    attns.append(AttnBlock(block_in, g))
            level = _level(blocks, attns)
            if i != len(ch) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in, g, cfg.mid_attention)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.latent_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 2z, H/f, W/f)


class Decoder(nn.Module):
    """LDM decoder: conv_in, mid block, per level (coarse to fine) res blocks and nearest-neighbour upsampling."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        g, ch = cfg.norm_num_groups, cfg.channels
        block_in = ch[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, block_in, 3, 1, 1)
        self.mid = _mid(block_in, g, cfg.mid_attention)
        levels = []
        for i in reversed(range(len(ch))):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch[i], g))
                block_in = ch[i]
                if cfg.attention_levels[i]:
                    attns.append(AttnBlock(block_in, g))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)  # self.up[i] is resolution level i, as in LDM
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C, H, W)


class AutoencoderKL(nn.Module):
    """KL autoencoder: encode(x) -> DiagonalGaussianDistribution, decode(z) -> x (LDM first stage)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.kind != "kl":
            raise ValueError(f"AutoencoderKL needs kind 'kl', got {cfg.kind!r}.")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.register_buffer("latent_scale", torch.tensor(1.0))

    downsample_factor = property(lambda self: self.cfg.downsample_factor)
    latent_channels = property(lambda self: self.cfg.latent_channels)
    in_channels = property(lambda self: self.cfg.in_channels)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        f = self.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"The autoencoder expects images of shape (N, {self.in_channels}, H, W) with H and W "
                             f"divisible by {f}, got {tuple(x.shape)}.")
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)  # each (N, z, H/f, W/f)
        return DiagonalGaussianDistribution(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


class IdentityAutoencoder(nn.Module):
    """Pixel-space 'autoencoder' with the same interface: factor 1, latents are the image, zero variance."""

    downsample_factor = 1

    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.cfg = AutoencoderConfig(in_channels=in_channels, latent_channels=in_channels, kind="identity",
                                     downsample_factor=1)
        self.in_channels = self.latent_channels = in_channels
        self.register_buffer("latent_scale", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        if x.dim() < 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"Expected images with {self.in_channels} channel(s), got shape {tuple(x.shape)}.")
        return DiagonalGaussianDistribution(x, deterministic=True)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward(self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        return posterior.mean, posterior


def build_autoencoder(cfg: AutoencoderConfig | str) -> nn.Module:
    """Build an autoencoder from a config or a preset name ("tiny", "f4", "f8", "identity")."""
    if isinstance(cfg, str):
        if cfg == "identity":
            return IdentityAutoencoder()
        if cfg not in AE_presets:
            raise ValueError(f"Unknown autoencoder preset {cfg!r}; expected one of {sorted(AE_presets)} or 'identity'.")
        cfg = dataclasses.replace(AE_presets[cfg])
    if cfg.kind == "identity":
        return IdentityAutoencoder(cfg.in_channels)
    return AutoencoderKL(cfg)


@torch.no_grad()
def compute_latent_scale(model: nn.Module, batches: Iterable[torch.Tensor], generator: torch.Generator | None = None,
                         ) -> float:
    """1 / std of posterior samples over `batches` of images (LDM's scale factor, computed from our data)."""
    total = total_sq = count = 0.0
    for x in batches:
        z = model.encode(x).sample(generator).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    if count < 2:
        raise ValueError("compute_latent_scale needs at least one batch of images.")
    var = (total_sq - total * total / count) / (count - 1)
    if not var > 0:
        raise ValueError("The latents have zero variance; the latent scale is undefined.")
    return 1.0 / math.sqrt(var)


def save_autoencoder(model: nn.Module, path: str | os.PathLike) -> None:
    """Weights (with latent_scale) as safetensors, the config as JSON metadata inside the file; atomic."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(dataclasses.asdict(model.cfg))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _check_keys(path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str,
                optional: tuple[str, ...] = ()) -> None:
    missing = [k for k in expected if k not in found and k not in optional]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"{path}: not a complete {what}; {len(missing)} weight(s) are missing: {shown}.")
    unexpected = [k for k in found if k not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
        raise ValueError(f"{path}: {len(unexpected)} weight(s) do not belong to a {what}: {shown}.")
    wrong = [f"{k} {tuple(found[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in found and found[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: weights of the wrong shape for a {what}: {', '.join(wrong[:5])}.")


def load_autoencoder(path: str | os.PathLike) -> nn.Module:
    """Rebuild an autoencoder written by save_autoencoder; refuse foreign, partial or corrupt files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: autoencoder file not found.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise ValueError(f"{path}: not a readable safetensors file ({exc}).") from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ValueError(f"{path}: not a PHMDiff autoencoder file (no '{FORMAT}' config in its metadata).")
    try:
        cfg = AutoencoderConfig(**json.loads(metadata["config"]))
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # JSON errors are ValueErrors; groups 0 divides
        raise ValueError(f"{path}: the autoencoder config stored in the file is invalid ({exc}).") from None
    try:
        model = build_autoencoder(cfg)
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as exc:  # e.g. norm_num_groups 0
        raise ValueError(f"{path}: the autoencoder config stored in the file cannot build a network "
                         f"({' '.join(str(exc).split())[:160]}).") from None
    _check_keys(path, model.state_dict(), tensors, "PHMDiff autoencoder")
    check_weights(tensors, path)
    model.load_state_dict(tensors)
    return model


def load_ldm_kl_f8(path: str | os.PathLike, cfg: AutoencoderConfig = LDM_KL_F8) -> AutoencoderKL:
    """Read a local Stable-Diffusion / LDM KL-f8 first-stage state dict (.pth/.ckpt/.pt or .safetensors).

    Accepts a bare state dict or one under "state_dict" with a "first_stage_model." prefix (full LDM
    checkpoints); discriminator/loss weights are ignored. latent_scale stays 1.0 unless the file holds one:
    compute it on your data with compute_latent_scale.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: KL-f8 weight file not found.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and safetensors errors come in many types
        raise ValueError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc}).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}.")
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    parts = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "latent_scale")
    state = {k: v for k, v in state.items() if k.startswith(parts)}
    model = AutoencoderKL(cfg)
    _check_keys(path, model.state_dict(), state, "LDM KL-f8 autoencoder", optional=("latent_scale",))
    model.load_state_dict(state, strict=False)
    return model
