"""Masked diffusion transformer: DiT blocks with adaLN-Zero (Peebles & Xie 2023) trained with token masking
(MaskDiT, Zheng et al. 2023), conditioned on source latents, pyramid level and target modality.

The backbone knows nothing of diffusion: it maps `(x_in, c_noise, **model_kwargs)` to `F`, and the
preconditioning wrappers of `phmdiff.diffusion.edm` turn it into a denoiser.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from phmdiff.model_presets import PRESETS


@dataclass
class MaskedDiTConfig:
    """Sizes of the masked DiT; the input channels follow from the conditioning switches."""

    input_size: int = 32  # latent grid used for presets and parameter counts; forward accepts any multiple of patch
    latent_channels: int = 4
    num_sources: int = 2
    use_coarse: bool = True
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 2
    num_levels: int = 3
    num_targets: int = 4
    use_decoder: bool = True
    decoder_depth: int = 8
    decoder_hidden_size: int = 512
    decoder_num_heads: int = 16
    class_dropout_prob: float = 0.1  # default condition-dropout probability for classifier-free guidance
    mask_block_sizes: tuple[int, ...] = field(default=(1, 2, 4))
    # The decoder adds the condition (sources, availability, coarse level) to every token, masked ones too, so
    # the masked branch learns to translate from the sources instead of inpainting the target without them.
    source_aware_mask_tokens: bool = True
    # Width of a small 3x3 convolutional head after the patch-to-image layer (U-ViT's extra conv block), which
    # sees the prediction and the condition at full resolution: a pixel-wise map from the sources that a linear
    # unpatchify of p x p patches cannot express cheaply. 0 turns it off.
    conv_head_width: int = 0
    # Each token paints a 2p x 2p window that overlaps its neighbours' by p/2 on every side (a transposed
    # convolution of stride p) instead of its own p x p patch, so adjacent tokens blend rather than meet at a seam.
    output_overlap: bool = False

    def __post_init__(self):
        self.mask_block_sizes = tuple(int(b) for b in self.mask_block_sizes)
        checks = [
            (self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} must be divisible by "
                                                     f"num_heads {self.num_heads}"),
            (self.hidden_size % 4 == 0, f"hidden_size {self.hidden_size} must be divisible by 4 (2D sin-cos)"),
            (self.decoder_hidden_size % self.decoder_num_heads == 0,
             f"decoder_hidden_size {self.decoder_hidden_size} must be divisible by decoder_num_heads "
             f"{self.decoder_num_heads}"),
            (self.decoder_hidden_size % 4 == 0, f"decoder_hidden_size {self.decoder_hidden_size} must be "
                                                f"divisible by 4 (2D sin-cos)"),
            (self.patch_size >= 1 and self.input_size % self.patch_size == 0,
             f"input_size {self.input_size} must be a multiple of patch_size {self.patch_size}"),
            (not self.output_overlap or self.patch_size % 2 == 0,
             f"output_overlap needs an even patch_size, got {self.patch_size}"),
            (self.latent_channels >= 1 and self.num_sources >= 0, "latent_channels must be >= 1 and "
                                                                  "num_sources >= 0"),
            (self.num_levels >= 1 and self.num_targets >= 1, "num_levels and num_targets must be >= 1"),
            (all(b >= 1 for b in self.mask_block_sizes) and self.mask_block_sizes, "mask_block_sizes must be "
                                                                                  "positive integers"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Invalid MaskedDiTConfig: {message}.")

    @property
    def in_channels(self) -> int:
        c = self.latent_channels
        return c + self.num_sources * c + self.num_sources + ((c + 1) if self.use_coarse else 0)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift per sample, in one fused pass over the tokens (addcmul) instead of two."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos embedding of positions `pos` (M,) -> (M, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.double()[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1).float()  # (M, dim)


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """2D sin-cos positions for an h x w token grid (MAE/DiT): half the channels rows, half columns."""
    rows = torch.arange(h).repeat_interleave(w)  # (h*w,) row index of each token in raster order
    cols = torch.arange(w).repeat(h)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=1)  # (h*w, dim)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the noise label c_noise (a float per sample), then an MLP (DiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]  # (N, dim/2)
        return torch.cat([args.cos(), args.sin()], dim=-1)  # (N, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # The features are computed in float32 for accuracy, then meet the MLP in its own dtype (bf16 weights).
        features = self.timestep_embedding(t, self.frequency_embedding_size)  # (N, dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention through fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads)  # (N, T, 3, heads, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, d_head)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            out = bmm_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


def bmm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v by two batched matmuls: the function scaled_dot_product_attention computes
    (q scaled first, as it does). On the CPU in bf16 the fused kernel's backward is 2-6x slower than this at
    DiT's token counts (measured, torch 2.13, 128-256 tokens), where the (T, T) scores are small. The softmax
    runs on the bf16 scores (the CPU kernel accumulates in float32); casting them to float32 and back cost
    more than the matmuls."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))  # (N, heads, T, T)
    return torch.matmul(scores.softmax(dim=-1), v)  # (N, heads, T, d_head)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero: shift/scale/gate of both branches regressed from c, gates start at 0."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        # x + gate * branch, each as one fused pass (addcmul) over the tokens.
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a map from tokens to pixels: DiT's linear map of each token to its p x p
    patch, or with `overlap` a transposed convolution (kernel 2p, stride p) whose windows overlap by p/2 on each
    side. `forward` gives per-token values (N, T, .); `to_image` lays them out as (N, C, h*p, w*p)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, overlap: bool = False):
        super().__init__()
        self.patch_size, self.out_channels, self.overlap = patch_size, out_channels, overlap
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        if overlap:
            self.linear = nn.ConvTranspose2d(hidden_size, out_channels, 2 * patch_size, stride=patch_size,
                                             padding=patch_size // 2)
        else:
            self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        # built after `linear`, as before the overlap existed: the random stream of every initial weight is kept
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)  # (N, T, D)
        return x if self.overlap else self.linear(x)  # (N, T, D) or (N, T, p*p*C)

    def to_image(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, p, c = tokens.shape[0], self.patch_size, self.out_channels
        if self.overlap:
            return self.linear(tokens.transpose(1, 2).reshape(n, -1, h, w))  # (N, C, h*p, w*p)
        x = tokens.reshape(n, h, w, p, p, c)  # (N, h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, h * p, w * p)  # (N, C, H, W)


class ConvHead(nn.Module):
    """F + conv3x3(SiLU(conv3x3([F, condition]))): a full-resolution refinement; the last conv starts at zero,
    so the head begins as the identity. It sees the condition channels, never the noisy target itself, so a
    masked token's output still comes from the decoder, not from its own noisy input."""

    def __init__(self, channels: int, cond_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + cond_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, F_x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv1(torch.cat([F_x, cond.to(F_x.dtype)], dim=1)))  # (N, width, H, W)
        return F_x + self.conv2(h)  # (N, C, H, W)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens by a strided convolution."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


def random_block_mask(n: int, h: int, w: int, num_masked: int, block_sizes: Sequence[int] = (1, 2, 4),
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-scale masks: per sample a block size b is drawn, then num_masked/b^2 aligned b x b tiles are masked.

    Only sizes that tile the grid and divide num_masked are eligible (1 always is), so every sample masks
    exactly num_masked tokens and the encoder sees the same number of tokens for the whole batch.
    Returns (N, h*w) bool, True = masked, in raster order.
    """
    valid = [b for b in block_sizes if h % b == 0 and w % b == 0 and num_masked % (b * b) == 0] or [1]
    choice = torch.randint(len(valid), (n,), generator=generator)
    masks = []
    for i in range(n):
        b = valid[int(choice[i])]
        hb, wb = h // b, w // b
        order = torch.rand(hb * wb, generator=generator).argsort()
        tiles = torch.zeros(hb * wb, dtype=torch.bool)
        tiles[order[: num_masked // (b * b)]] = True
        mask = tiles.reshape(hb, 1, wb, 1).expand(hb, b, wb, b).reshape(h * w)  # (T,)
        masks.append(mask)
    return torch.stack(masks)  # (N, T)


class MaskedDiT(nn.Module):
    """DiT encoder on visible tokens + light decoder that re-inserts mask tokens (MaskDiT), predicting F."""

    def __init__(self, cfg: MaskedDiTConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.level_embedder = nn.Embedding(cfg.num_levels, d)
        # One extra row: the null target label used when no target is named.
        self.label_embedder = nn.Embedding(cfg.num_targets + 1, d)
        self.blocks = nn.ModuleList([DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        out_width = d
        if cfg.use_decoder:
            dd = cfg.decoder_hidden_size
            self.decoder_embed = nn.Linear(d, dd)
            self.decoder_cond = nn.Linear(d, dd)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            self.decoder_blocks = nn.ModuleList(
                [DiTBlock(dd, cfg.decoder_num_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)])
            out_width = dd
        self.final_layer = FinalLayer(out_width, p, cfg.latent_channels, cfg.output_overlap)
        # Optional parts are built last and initialised last, so switching one on leaves every other weight's
        # initial value (the random stream) as it was.
        if cfg.use_decoder and cfg.source_aware_mask_tokens:
            self.decoder_cond_embed = PatchEmbed(cfg.in_channels - cfg.latent_channels, cfg.decoder_hidden_size, p)
        if cfg.conv_head_width > 0:
            self.conv_head = ConvHead(cfg.latent_channels, cfg.in_channels - cfg.latent_channels, cfg.conv_head_width)
        self._pos_cache: dict = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT initialisation: Xavier linears, zeroed adaLN and output layers, so every block starts as identity."""
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.level_embedder.weight, std=0.02)
        nn.init.normal_(self.label_embedder.weight, std=0.02)
        blocks = list(self.blocks) + list(getattr(self, "decoder_blocks", []))
        for block in [*blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.cfg.use_decoder:
            nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, "decoder_cond_embed"):
            w = self.decoder_cond_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.decoder_cond_embed.proj.bias)

    def encoder_parameters(self):
        """Parameters of the encoder path (everything but the mask decoder and, with a decoder, its output layer)."""
        decoder_names = ("decoder_", "mask_token", "final_layer") if self.cfg.use_decoder else ()
        return (p for name, p in self.named_parameters() if not name.startswith(decoder_names))

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """The token stream's dtype: autocast's (bf16) when it is on, else the weights'. A float32 stream under
        autocast (float32 positions promote the bf16 patch embedding) made every linear layer cast its input,
        and its gradient back, at every step: 20% of a bf16 CPU step, 6x what diffusers' DiT spent on casts."""
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.x_embedder.proj.weight.dtype

    def pos_embed(self, dim: int, h: int, w: int, device) -> torch.Tensor:
        """Fixed 2D sin-cos positions for any grid in the stream's dtype, cached per (dim, grid, device, dtype)."""
        device = torch.device(device)
        dtype = self.compute_dtype(device)  # float32 positions would promote bf16 tokens back to float32
        key = (dim, h, w, str(device), dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_2d(dim, h, w).to(device=device, dtype=dtype)[None]  # (1, T, dim)
        return self._pos_cache[key]

    def _labels(self, value, n: int, default: int, limit: int, name: str, device) -> torch.Tensor:
        if value is None:
            return torch.full((n,), default, dtype=torch.long, device=device)
        value = torch.as_tensor(value, device=device).long().reshape(-1)  # (1,) or (N,)
        if value.numel() not in (1, n):
            raise ValueError(f"{name} must be one value or one per sample ({n}), got {value.numel()} values.")
        value = value.expand(n)
        if value.min() < 0 or value.max() >= limit:
            raise ValueError(f"{name} must lie in [0, {limit - 1}], got values {value.unique().tolist()}.")
        return value

    def _input(self, x, cond, avail, coarse) -> torch.Tensor:
        cfg = self.cfg
        n, _, H, W = x.shape
        n_src, c = cfg.num_sources, cfg.latent_channels
        if cond is None:
            cond = x.new_zeros(n, n_src * c, H, W)
            avail = x.new_zeros(n, n_src) if avail is None else avail
        if tuple(cond.shape) != (n, n_src * c, H, W):
            raise ValueError(f"cond must have shape {(n, n_src * c, H, W)} ({n_src} sources x {c} channels), "
                             f"got {tuple(cond.shape)}.")
        avail = x.new_ones(n, n_src) if avail is None else avail
        if tuple(avail.shape) != (n, n_src):
            raise ValueError(f"avail must have shape {(n, n_src)}, got {tuple(avail.shape)}.")
        # An unavailable source is zeroed here, whatever the caller passed: it cannot reach the prediction.
        cond = cond.to(x.dtype) * avail.to(x.dtype).repeat_interleave(c, dim=1)[:, :, None, None]
        parts = [x, cond, avail.to(x.dtype)[:, :, None, None].expand(n, n_src, H, W)]
        if cfg.use_coarse:
            flag = 0.0 if coarse is None else 1.0
            coarse = x.new_zeros(n, c, H, W) if coarse is None else coarse.to(x.dtype)
            if tuple(coarse.shape) != (n, c, H, W):
                raise ValueError(f"coarse must have the target's shape {(n, c, H, W)}, got {tuple(coarse.shape)}.")
            parts += [coarse, x.new_full((n, 1, H, W), flag)]
        elif coarse is not None:
            raise ValueError("This model was built with use_coarse=False but a coarse condition was given.")
        return torch.cat(parts, dim=1)  # (N, in_channels, H, W)

    def forward(self, x, noise_labels, cond=None, avail=None, coarse=None, level=None, target_label=None,
                mask_ratio: float = 0.0, generator: torch.Generator | None = None, return_aux: bool = False):
        """F(x_in, c_noise | conditions); with mask_ratio > 0 the encoder sees only the visible tokens."""
        cfg = self.cfg
        if x.dim() != 4 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must have shape (N, {cfg.latent_channels}, H, W), got {tuple(x.shape)}.")
        n, _, H, W = x.shape
        p = cfg.patch_size
        if H % p or W % p:
            raise ValueError(f"The latent grid {H}x{W} must be a multiple of the patch size {p}.")
        h, w = H // p, W // p
        T = h * w
        x_in = self._input(x, cond, avail, coarse)  # (N, in_channels, H, W): noisy target first, then conditions
        tokens = self.x_embedder(x_in)  # (N, T, D)
        tokens = tokens + self.pos_embed(cfg.hidden_size, h, w, x.device)

        t = torch.as_tensor(noise_labels, device=x.device, dtype=torch.float32).reshape(-1).expand(n)
        c = (self.t_embedder(t)
             + self.level_embedder(self._labels(level, n, 0, cfg.num_levels, "level", x.device))
             + self.label_embedder(self._labels(target_label, n, cfg.num_targets, cfg.num_targets + 1,
                                                "target_label", x.device)))  # (N, D)

        num_masked = int(round(float(mask_ratio) * T))
        if not 0.0 <= float(mask_ratio) < 1.0 or num_masked >= T:
            raise ValueError(f"mask_ratio must be in [0, 1) and leave at least one of {T} tokens, got {mask_ratio}.")
        mask = torch.zeros(n, T, dtype=torch.bool, device=x.device)
        ids_keep = None
        if num_masked > 0:
            mask = random_block_mask(n, h, w, num_masked, cfg.mask_block_sizes, generator).to(x.device)
            # Stable sort puts the visible tokens first, in raster order.
            ids_keep = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, : T - num_masked]  # (N, T_vis)
            tokens = torch.gather(tokens, 1, ids_keep[:, :, None].expand(-1, -1, tokens.shape[-1]))  # (N, T_vis, D)

        for block in self.blocks:
            tokens = block(tokens, c)
        features = tokens  # (N, T_vis, D)

        if cfg.use_decoder:
            y = self.decoder_embed(tokens)  # (N, T_vis, Dd)
            if ids_keep is not None:
                full = self.mask_token.to(y.dtype).expand(n, T, y.shape[-1])  # (N, T, Dd)
                y = full.scatter(1, ids_keep[:, :, None].expand(-1, -1, y.shape[-1]), y)  # (N, T, Dd)
            y = y + self.pos_embed(cfg.decoder_hidden_size, h, w, x.device)
            if cfg.source_aware_mask_tokens:
                y = y + self.decoder_cond_embed(x_in[:, cfg.latent_channels :])  # (N, T, Dd): condition everywhere
            c_dec = self.decoder_cond(c)
            for block in self.decoder_blocks:
                y = block(y, c_dec)
            out = self.final_layer(y, c_dec)  # (N, T, p*p*C), or (N, T, Dd) with output_overlap
        else:
            out = self.final_layer(tokens, c)  # (N, T_vis, p*p*C), or (N, T_vis, D)
            if ids_keep is not None:
                # Without a decoder nothing predicts masked tokens: they are left at zero (with output_overlap their
                # features are: only the overlap of visible neighbours reaches their pixels).
                full = out.new_zeros(n, T, out.shape[-1])
                out = full.scatter(1, ids_keep[:, :, None].expand(-1, -1, out.shape[-1]), out)  # (N, T, p*p*C)
        F_x = self.final_layer.to_image(out, h, w)  # (N, C, H, W)
        if cfg.conv_head_width > 0:
            F_x = self.conv_head(F_x, x_in[:, cfg.latent_channels :])
        return (F_x, mask, features) if return_aux else F_x


def null_condition(kwargs: dict, num_sources: int | None = None) -> dict:
    """The guidance 'unconditional' kwargs: source latents zeroed, availability zero, target label kept."""
    out = dict(kwargs)
    cond, avail = out.get("cond"), out.get("avail")
    if cond is not None:
        out["cond"] = torch.zeros_like(cond)
    if avail is not None:
        out["avail"] = torch.zeros_like(avail)
    elif cond is not None:
        if num_sources is None:
            raise ValueError("null_condition needs 'avail' in the kwargs (or num_sources) when 'cond' is given.")
        out["avail"] = cond.new_zeros(cond.shape[0], num_sources)
    return out


def drop_condition(kwargs: dict, prob: float, generator: torch.Generator | None = None,
                   num_sources: int | None = None) -> dict:
    """Classifier-free guidance training: per sample, with probability `prob`, replace the condition by null."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"Condition dropout probability must be in [0, 1], got {prob}.")
    cond = kwargs.get("cond")
    if cond is None or prob == 0.0:
        return dict(kwargs)
    keep = (torch.rand(cond.shape[0], generator=generator) >= prob).to(device=cond.device)  # (N,)
    return keep_condition(kwargs, keep, num_sources)


def keep_condition(kwargs: dict, keep: torch.Tensor, num_sources: int | None = None) -> dict:
    """The kwargs with the condition of the samples where `keep` (N,) is false replaced by null (cond, avail zeroed).

    Split from `drop_condition` so one draw of `keep` can serve several calls (the pyramid objective drops the
    same examples at two levels).
    """
    out = dict(kwargs)
    cond = out["cond"]
    n = cond.shape[0]
    out["cond"] = cond * keep.to(cond.dtype).reshape(n, *([1] * (cond.dim() - 1)))
    avail = out.get("avail")
    if avail is None:
        if num_sources is None:
            raise ValueError("drop_condition needs 'avail' in the kwargs (or num_sources) when 'cond' is given.")
        avail = cond.new_ones(n, num_sources)
    out["avail"] = avail * keep.to(avail.dtype)[:, None]
    return out


def masked_dit_config(name_or_cfg: str | MaskedDiTConfig, **overrides) -> MaskedDiTConfig:
    """Resolve a preset name or a config, then apply keyword overrides."""
    if isinstance(name_or_cfg, MaskedDiTConfig):
        base = dataclasses.asdict(name_or_cfg)
    elif name_or_cfg in PRESETS:
        base = dict(PRESETS[name_or_cfg])
    else:
        raise ValueError(f"Unknown masked DiT preset {name_or_cfg!r}; expected one of {sorted(PRESETS)}.")
    known = {f.name for f in dataclasses.fields(MaskedDiTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown masked DiT option(s) {unknown}; expected some of {sorted(known)}.")
    return MaskedDiTConfig(**{**base, **overrides})


def build_masked_dit(name_or_cfg: str | MaskedDiTConfig, **overrides) -> MaskedDiT:
    """Build a MaskedDiT from a preset name (e.g. "PHMDiff-S/2") or a MaskedDiTConfig, with overrides."""
    return MaskedDiT(masked_dit_config(name_or_cfg, **overrides))


PHMDiff_models = {name: partial(build_masked_dit, name) for name in PRESETS}
