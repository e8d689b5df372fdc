"""The masked DiT's named sizes (DiT's S/B/L/XL and a tiny size for CPUs), torch-free so a config can be checked
without building networks; `masked_dit.masked_dit_config` turns a name into a `MaskedDiTConfig`."""

from __future__ import annotations

# DiT widths/depths/heads; the mask decoder is proportioned to the encoder so that masking pays off
# (MaskDiT's 8 x 512 decoder is light next to XL, but heavier than the whole S encoder).
PRESETS: dict[str, dict] = {
    "PHMDiff-T/2": dict(hidden_size=128, depth=4, num_heads=4, decoder_depth=1, decoder_hidden_size=128,
                        decoder_num_heads=4),
    # Patch 4: pixel-space diffusion of small planes (identity autoencoder) at the token count of a latent /2.
    "PHMDiff-T/4": dict(hidden_size=128, depth=4, num_heads=4, decoder_depth=1, decoder_hidden_size=128,
                        decoder_num_heads=4, patch_size=4),
    "PHMDiff-S/2": dict(hidden_size=384, depth=12, num_heads=6, decoder_depth=2, decoder_hidden_size=256,
                        decoder_num_heads=4),
    "PHMDiff-B/2": dict(hidden_size=768, depth=12, num_heads=12, decoder_depth=4, decoder_hidden_size=384,
                        decoder_num_heads=6),
    "PHMDiff-L/2": dict(hidden_size=1024, depth=24, num_heads=16, decoder_depth=8, decoder_hidden_size=512,
                        decoder_num_heads=16),
    "PHMDiff-XL/2": dict(hidden_size=1152, depth=28, num_heads=16, decoder_depth=8, decoder_hidden_size=512,
                         decoder_num_heads=16),
}
