"""Masked DiT: masking semantics, block masks, adaLN-Zero identity, preset sizes, conditioning helpers."""

import pytest
import torch
from torch import nn

from phmdiff.masked_dit import (
    MaskedDiTConfig,
    PHMDiff_models,
    build_masked_dit,
    drop_condition,
    null_condition,
    random_block_mask,
    sincos_2d,
)

TINY = dict(input_size=16, hidden_size=32, depth=2, num_heads=2, decoder_depth=1, decoder_hidden_size=32,
            decoder_num_heads=2)


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Break the zero initialisation so attention really mixes tokens (otherwise invariance tests are vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, 4, size, size, generator=g), noise_labels=torch.randn(n, generator=g),
                cond=torch.randn(n, 8, size, size, generator=g), avail=torch.ones(n, 2))


def test_masked_token_input_does_not_reach_visible_features():
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY)).eval()
    inp = _inputs()
    kw = dict(mask_ratio=0.5, return_aux=True)
    _, mask, feats = model(**inp, generator=torch.Generator().manual_seed(3), **kw)
    assert feats.shape == (2, 32, 32)
    grid = mask[0].reshape(8, 8)
    mi, mj = (grid.nonzero()[0]).tolist()
    vi, vj = ((~grid).nonzero()[0]).tolist()

    changed = {k: v.clone() for k, v in inp.items()}
    changed["x"][0, :, 2 * mi:2 * mi + 2, 2 * mj:2 * mj + 2] += 5.0  # a masked token of sample 0
    changed["cond"][0, :, 2 * mi:2 * mi + 2, 2 * mj:2 * mj + 2] -= 5.0
    _, mask2, feats2 = model(**changed, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(mask, mask2)
    assert torch.allclose(feats, feats2, atol=1e-6, rtol=0)

    # Control: changing a visible token does change the visible features (through attention, all of them).
    changed = {k: v.clone() for k, v in inp.items()}
    changed["x"][0, :, 2 * vi:2 * vi + 2, 2 * vj:2 * vj + 2] += 5.0
    _, _, feats3 = model(**changed, generator=torch.Generator().manual_seed(3), **kw)
    assert (feats3[0] - feats[0]).abs().amax(dim=-1).min() > 1e-4
    assert torch.allclose(feats3[1], feats[1], atol=1e-6)


@pytest.mark.parametrize("ratio,visible", [(0.0, 256), (0.5, 128), (0.75, 64)])
def test_encoder_sees_one_minus_ratio_tokens(ratio, visible):
    model = build_masked_dit("PHMDiff-T/2", **{**TINY, "input_size": 32})
    inp = _inputs(n=3, size=32)
    F_x, mask, feats = model(**inp, mask_ratio=ratio, generator=torch.Generator().manual_seed(0), return_aux=True)
    assert F_x.shape == (3, 4, 32, 32)
    assert feats.shape == (3, visible, 32)
    assert mask.shape == (3, 256) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [256 - visible] * 3


def _tile_constant(mask_row: torch.Tensor, h: int, w: int, b: int) -> bool:
    tiles = mask_row.reshape(h // b, b, w // b, b)
    return bool((tiles == tiles[:, :1, :, :1]).all())


@pytest.mark.parametrize("b", [1, 2, 4])
def test_block_masks_have_requested_block_size(b):
    mask = random_block_mask(16, 8, 8, 32, block_sizes=(b,), generator=torch.Generator().manual_seed(b))
    assert mask.shape == (16, 64)
    assert mask.sum(dim=1).tolist() == [32] * 16
    for row in mask:
        assert _tile_constant(row, 8, 8, b)
    if b < 4:  # b x b tiles are the unit, not larger ones
        assert not all(_tile_constant(row, 8, 8, 2 * b) for row in mask)
    # Masks differ between samples (random placement).
    assert len({tuple(r.tolist()) for r in mask}) > 1


def test_block_sizes_are_drawn_per_sample_and_forward_uses_them():
    mask = random_block_mask(64, 8, 8, 32, block_sizes=(1, 2, 4), generator=torch.Generator().manual_seed(0))
    largest = [max(b for b in (1, 2, 4) if _tile_constant(r, 8, 8, b)) for r in mask]
    assert set(largest) == {1, 2, 4}
    model = build_masked_dit("PHMDiff-T/2", **{**TINY, "mask_block_sizes": (4,)})
    _, m, _ = model(**_inputs(n=4), mask_ratio=0.5, generator=torch.Generator().manual_seed(1), return_aux=True)
    assert all(_tile_constant(r, 8, 8, 4) for r in m)
    # An ineligible size (16 tokens per tile but only 8 to mask) falls back to single tokens.
    small = random_block_mask(2, 4, 4, 8, block_sizes=(4,), generator=torch.Generator().manual_seed(0))
    assert small.sum(dim=1).tolist() == [8, 8]


def test_ratio_zero_is_an_ordinary_dit_independent_of_mask_seed():
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY)).eval()
    inp = _inputs()
    a, mask_a, feats_a = model(**inp, generator=torch.Generator().manual_seed(0), return_aux=True)
    b, _, _ = model(**inp, generator=torch.Generator().manual_seed(123), return_aux=True)
    c = model(**inp)
    assert not mask_a.any() and feats_a.shape[1] == 64
    assert torch.equal(a, b) and torch.equal(a, c)
    # whereas masking does depend on the seed
    d = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    e = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(d, e)


def test_fresh_blocks_are_identities_adaln_zero():
    model = build_masked_dit("PHMDiff-T/2", **TINY)
    g = torch.Generator().manual_seed(0)
    for block in [*model.blocks, *model.decoder_blocks]:
        d = block.norm1.normalized_shape[0]
        x, c = torch.randn(2, 10, d, generator=g), torch.randn(2, d, generator=g)
        assert torch.equal(block(x, c), x)
    assert torch.equal(model(**_inputs()), torch.zeros(2, 4, 16, 16))


def _dit_param_count(hidden: int, depth: int, input_size=32, patch=2, in_ch=4, num_classes=1000) -> int:
    """Closed-form parameter count of facebookresearch/DiT (learn_sigma, fixed pos_embed counted as DiT does)."""
    d, t = hidden, (input_size // patch) ** 2
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + (6 * d * d + 6 * d)
    x_emb = patch * patch * in_ch * d + d
    t_emb = 256 * d + d + d * d + d
    y_emb = (num_classes + 1) * d
    final = (2 * d * d + 2 * d) + d * patch * patch * 2 * in_ch + patch * patch * 2 * in_ch
    return depth * block + x_emb + t_emb + y_emb + final + t * d


def test_dit_formula_matches_published_count():
    assert _dit_param_count(1152, 28) == 675_129_632  # DiT-XL/2, as reported by the DiT repository


@pytest.mark.parametrize("name,hidden,depth,approx", [("PHMDiff-S/2", 384, 12, 33e6), ("PHMDiff-B/2", 768, 12, 130e6),
                                                      ("PHMDiff-L/2", 1024, 24, 458e6),
                                                      ("PHMDiff-XL/2", 1152, 28, 675e6)])
def test_preset_encoder_parameter_counts_match_dit(name, hidden, depth, approx):
    dit = _dit_param_count(hidden, depth)
    assert abs(dit - approx) / approx < 0.01
    with torch.device("meta"):  # no weights are allocated
        plain = PHMDiff_models[name](input_size=32, use_decoder=False)
        masked = PHMDiff_models[name](input_size=32)
    ours = sum(p.numel() for p in plain.parameters())
    assert abs(ours - dit) / dit < 0.02, (ours, dit)
    # With the decoder, the encoder path alone (no output layer: the decoder owns it) stays close too.
    enc = sum(p.numel() for p in masked.encoder_parameters())
    assert abs(enc - dit) / dit < 0.03, (enc, dit)
    assert sum(p.numel() for p in masked.parameters()) > enc


def test_sincos_positions_any_grid():
    pos = sincos_2d(8, 3, 5)
    assert pos.shape == (15, 8)
    # Token (r, c) uses row r in the first half, column c in the second half.
    assert torch.allclose(pos[1 * 5 + 2, :4], sincos_2d(8, 2, 1)[1, :4])
    assert torch.allclose(pos[7, 4:], pos[2, 4:])  # same column 2, rows 1 and 0
    model = build_masked_dit("PHMDiff-T/2", **TINY)
    assert model(**_inputs(n=1, size=12)).shape == (1, 4, 12, 12)
    assert model(torch.randn(1, 4, 8, 20), torch.zeros(1)).shape == (1, 4, 8, 20)


def test_conditioning_inputs_change_the_output():
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY)).eval()
    inp = _inputs()
    base = model(**inp)
    assert not torch.allclose(base, model(**{**inp, "cond": torch.zeros_like(inp["cond"])}))
    assert not torch.allclose(base, model(**inp, level=2))
    assert not torch.allclose(base, model(**inp, target_label=1))
    assert not torch.allclose(base, model(**inp, coarse=torch.zeros_like(inp["x"])))  # flag map says present


def test_bf16_autocast_on_cpu():
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY), seed=1)
    inp = _inputs()
    ref = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    out.float().sum().backward()
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_null_and_drop_condition():
    inp = _inputs(n=8)
    kw = dict(cond=inp["cond"], avail=inp["avail"], target_label=torch.arange(8) % 4, level=1)
    null = null_condition(kw)
    assert null["cond"].abs().sum() == 0 and null["avail"].abs().sum() == 0
    assert torch.equal(null["target_label"], kw["target_label"]) and null["level"] == 1
    assert kw["cond"].abs().sum() > 0  # the input kwargs are not modified
    assert null_condition({"cond": inp["cond"]}, num_sources=2)["avail"].shape == (8, 2)
    with pytest.raises(ValueError, match="avail"):
        null_condition({"cond": inp["cond"]})

    assert torch.equal(drop_condition(kw, 0.0)["cond"], kw["cond"])
    assert drop_condition(kw, 1.0)["cond"].abs().sum() == 0
    half = drop_condition(kw, 0.5, generator=torch.Generator().manual_seed(0))
    dropped = half["avail"].sum(dim=1) == 0
    assert 0 < dropped.sum() < 8
    for i in range(8):
        expected = torch.zeros_like(kw["cond"][i]) if dropped[i] else kw["cond"][i]
        assert torch.equal(half["cond"][i], expected)


def test_configuration_errors_are_sentences():
    with pytest.raises(ValueError, match="Unknown masked DiT preset"):
        build_masked_dit("PHMDiff-Q/2")
    with pytest.raises(ValueError, match="Unknown masked DiT option"):
        build_masked_dit("PHMDiff-T/2", hiden_size=3)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MaskedDiTConfig(hidden_size=30, num_heads=4)
    model = build_masked_dit("PHMDiff-T/2", **TINY)
    inp = _inputs()
    with pytest.raises(ValueError, match="cond must have shape"):
        model(**{**inp, "cond": inp["cond"][:, :4]})
    with pytest.raises(ValueError, match="mask_ratio"):
        model(**inp, mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 4, 15, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="level must lie"):
        model(**inp, level=5)


@pytest.mark.parametrize("aware", [True, False])
def test_mask_tokens_carry_the_source_condition_at_their_position(aware):
    # Change the source only under the masked tokens. With source-aware mask tokens the prediction there must
    # follow it; without, nothing the network sees changes (visible tokens are untouched), so neither does F.
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY, source_aware_mask_tokens=aware)).eval()
    inp = _inputs()
    kw = dict(mask_ratio=0.5, return_aux=True)
    out, mask, _ = model(**inp, generator=torch.Generator().manual_seed(5), **kw)
    p = model.cfg.patch_size
    masked_px = mask.reshape(2, 1, 8, 8).repeat_interleave(p, 2).repeat_interleave(p, 3)  # (N, 1, 16, 16)
    cond = inp["cond"] + 3.0 * masked_px.float()
    out2, mask2, _ = model(**{**inp, "cond": cond}, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(mask, mask2)
    changed = (out2 - out).abs().amax(1, keepdim=True)  # (N, 1, 16, 16)
    if aware:
        assert changed[masked_px].min() > 1e-4
    else:
        assert changed.max() < 1e-5


def test_bf16_weights_run_and_agree_with_float32():
    """A model cast to bf16 (large presets on CPU or a small GPU) runs a forward and the pyramid sampler."""
    from phmdiff.diffusion.edm import EDMPrecond
    from phmdiff.sample import sample_pyramid

    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY), seed=1).eval()
    inp = _inputs()
    ref = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    half = _randomized(build_masked_dit("PHMDiff-T/2", **TINY), seed=1).eval().to(torch.bfloat16)
    out = half(**{**inp, "x": inp["x"].bfloat16()}, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    seeds, label = [0, 1], torch.tensor([0, 1])
    kw = dict(levels=2, latent_channels=4, sampler="heun", num_steps=3, fine_num_steps=2, guidance=2.0)
    z16 = sample_pyramid(EDMPrecond(half), inp["cond"], inp["avail"], label, seeds, **kw)
    z32 = sample_pyramid(EDMPrecond(model), inp["cond"], inp["avail"], label, seeds, **kw)
    assert z16.dtype == torch.float32 and torch.isfinite(z16).all()
    assert (z16 - z32).abs().max() < 0.1 * z32.abs().max()


def test_conv_head_starts_as_identity_and_never_sees_the_masked_noisy_target():
    plain = _randomized(build_masked_dit("PHMDiff-T/2", **TINY), seed=2).eval()
    headed = build_masked_dit("PHMDiff-T/2", **TINY, conv_head_width=8).eval()
    missing, _ = headed.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("conv_head.") for k in missing)
    inp = _inputs()
    torch.testing.assert_close(headed(**inp), plain(**inp))  # zero-initialised last conv: identity at start
    headed = _randomized(headed, seed=3)
    kw = dict(mask_ratio=0.5, return_aux=True)
    out, mask, _ = headed(**inp, generator=torch.Generator().manual_seed(7), **kw)
    masked_px = mask.reshape(2, 1, 8, 8).repeat_interleave(2, 2).repeat_interleave(2, 3)  # (N, 1, 16, 16)
    x = inp["x"] + 5.0 * masked_px.float()  # change the noisy target under the masked tokens only
    out2, _, _ = headed(**{**inp, "x": x}, generator=torch.Generator().manual_seed(7), **kw)
    torch.testing.assert_close(out2, out)
    cond = inp["cond"] + 5.0 * masked_px.float()  # the condition does reach the output there
    out3, _, _ = headed(**{**inp, "cond": cond}, generator=torch.Generator().manual_seed(7), **kw)
    assert (out3 - out).abs().max() > 1e-3


def test_overlapping_output_windows_equal_an_explicit_overlap_add():
    # Second implementation: every token's 2p x 2p window (its features times the kernel) added at
    # (i p - p/2, j p - p/2), cropped to the image, against the transposed convolution.
    model = _randomized(build_masked_dit("PHMDiff-T/2", **TINY, output_overlap=True), seed=4).eval()
    layer, p, h, w = model.final_layer, 2, 8, 8
    tokens = torch.randn(2, h * w, 32, generator=torch.Generator().manual_seed(5))
    kernel, bias = layer.linear.weight, layer.linear.bias  # (D, C, 2p, 2p), (C,)
    canvas = torch.zeros(2, 4, h * p + 2 * p, w * p + 2 * p)  # p of margin on every side
    for i in range(h):
        for j in range(w):
            window = torch.einsum("nd,dcuv->ncuv", tokens[:, i * w + j], kernel)  # (N, C, 2p, 2p)
            top, left = p + i * p - p // 2, p + j * p - p // 2
            canvas[:, :, top: top + 2 * p, left: left + 2 * p] += window
    expected = canvas[:, :, p: p + h * p, p: p + w * p] + bias[None, :, None, None]
    torch.testing.assert_close(layer.to_image(tokens, h, w), expected, rtol=1e-5, atol=1e-5)


def test_overlapping_output_starts_at_zero_and_blends_neighbouring_tokens():
    inp = _inputs()
    model = build_masked_dit("PHMDiff-T/2", **TINY, output_overlap=True).eval()
    assert model(**inp).abs().max() == 0  # zero-initialised like DiT's final linear: F = 0 at the start
    model = _randomized(model, seed=6)
    out, mask, _ = model(**inp, mask_ratio=0.5, generator=torch.Generator().manual_seed(1), return_aux=True)
    assert out.shape == (2, 4, 16, 16) and torch.isfinite(out).all()
    # One token's features reach the pixels of its neighbours' patches (p/2 = 1 pixel over each side) only.
    layer = model.final_layer
    tokens = torch.zeros(1, 64, 32)
    tokens[0, 3 * 8 + 3] = torch.randn(32, generator=torch.Generator().manual_seed(2))
    reach = (layer.to_image(tokens, 8, 8) - layer.linear.bias[None, :, None, None]).abs().sum(dim=(0, 1)) > 0
    rows, cols = reach.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (5, 8, 5, 8)
    with pytest.raises(ValueError, match="even patch_size"):
        MaskedDiTConfig(patch_size=1, input_size=16, output_overlap=True)
