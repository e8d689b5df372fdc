"""Losses: MaskDiT masked loss (closed form with a zero backbone), MMD, cross-granularity, overfitting, AE losses."""

import pytest
import torch
from skimage.metrics import structural_similarity

from phmdiff.ae_loss import ssim
from phmdiff.cross_granularity import cross_granularity_loss, mmd_rbf
from phmdiff.diffusion.edm import EDMLoss, EDMPrecond
from phmdiff.losses import phmdiff_loss
from phmdiff.masked_dit import build_masked_dit, random_block_mask
from phmdiff.masked_loss import masked_denoising_loss

TINY = dict(input_size=8, hidden_size=32, depth=2, num_heads=2, decoder_depth=1, decoder_hidden_size=32,
            decoder_num_heads=2, num_sources=1, use_coarse=False)


def _samples(n, d, shift=0.0, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_mmd_identical_zero_symmetric_and_growing_with_shift():
    x, y = _samples(40, 6), _samples(40, 6, seed=1)
    assert mmd_rbf(x, x).abs() < 1e-6
    assert torch.allclose(mmd_rbf(x, y), mmd_rbf(y, x), atol=1e-6)
    values = [float(mmd_rbf(x, _samples(40, 6, shift=s, seed=1))) for s in (0.25, 0.5, 1.0, 2.0)]
    assert values[0] > 0 and all(a < b for a, b in zip(values, values[1:])), values
    z = _samples(25, 6, shift=1.0, seed=2)  # unequal sizes: two-sample form, also symmetric
    assert torch.allclose(mmd_rbf(x, z), mmd_rbf(z, x), atol=1e-6) and mmd_rbf(x, z) > 0


def _mmd_reference(x, y, bandwidths=(0.25, 0.5, 1.0, 2.0, 4.0)):
    """Loop version of the unbiased two-sample MMD^2 (Gretton et al. 2012, Lemma 6) with the same kernel scale."""
    z = torch.cat([x, y])
    pairs = [((a - b) ** 2).sum() for i, a in enumerate(z) for j, b in enumerate(z) if i != j]
    scale = sum(pairs) / len(pairs)

    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (bw * scale)) for bw in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_matches_loop_reference():
    x, z = _samples(7, 3), _samples(5, 3, shift=0.7, seed=3)
    assert torch.allclose(mmd_rbf(x, z), _mmd_reference(x, z), atol=1e-10)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_rbf(x[:1], z)


def test_cross_granularity_zero_for_consistent_levels_and_masks():
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 16, 8, generator=g)  # (N, 4x4 tokens, D)
    fine = coarse.reshape(2, 4, 1, 4, 1, 8).expand(2, 4, 2, 4, 2, 8).reshape(2, 64, 8)  # each coarse token 2x2
    assert cross_granularity_loss(fine, coarse, (8, 8)).abs() < 1e-5
    mask = random_block_mask(2, 8, 8, 32, (1,), generator=g)
    visible = fine[~mask].reshape(2, 32, 8)
    assert cross_granularity_loss(visible, coarse, (8, 8), mask_fine=mask).abs() < 1e-5
    shifted = cross_granularity_loss(fine + 1.0, coarse, (8, 8))
    assert shifted > 0.05
    assert cross_granularity_loss(fine + 1.0, coarse, (8, 8), weight=0.0) == 0
    assert torch.allclose(cross_granularity_loss(fine + 1.0, coarse, (8, 8), weight=0.5), 0.5 * shifted)


def _children(coarse_ids):
    """Fine token ids (4x4 grid) of coarse positions (2x2 grid)."""
    return [(2 * (c // 2) + dy) * 4 + 2 * (c % 2) + dx for c in coarse_ids for dy in (0, 1) for dx in (0, 1)]


def test_cross_granularity_skips_examples_without_two_shared_positions_and_keeps_the_graph():
    g = torch.Generator().manual_seed(0)
    mask_c = torch.zeros(2, 4, dtype=torch.bool)
    mask_c[:, :2] = True  # coarse positions 2 and 3 visible in both examples
    mask_f = torch.zeros(2, 16, dtype=torch.bool)
    mask_f[0, _children([2, 3])] = True  # example 0: nothing seen at both levels
    mask_f[1, _children([0, 1])] = True  # example 1: positions 2 and 3 seen at both levels
    fine = torch.randn(2, 8, 5, generator=g, requires_grad=True)  # (N, visible fine tokens, D)
    coarse = torch.randn(2, 2, 5, generator=g, requires_grad=True)  # (N, visible coarse tokens, D)
    none = cross_granularity_loss(fine[:1], coarse[:1], (4, 4), mask_f[:1], mask_c[:1])
    assert none == 0 and none.requires_grad
    none.backward()
    assert fine.grad.abs().sum() == 0 and coarse.grad.abs().sum() == 0
    mixed = cross_granularity_loss(fine, coarse, (4, 4), mask_f, mask_c, weight=0.5)
    alone = cross_granularity_loss(fine[1:], coarse[1:], (4, 4), mask_f[1:], mask_c[1:], weight=0.5)
    assert torch.allclose(mixed, alone) and alone.abs() > 0


def test_cross_granularity_is_clamped_at_zero_where_the_unbiased_mmd_dips_below():
    a, b = torch.zeros(3), torch.ones(3)
    fine = torch.stack([a] * 4 + [b] * 4)[None]  # (1, 8 tokens of a 4x2 grid, 3): pooled positions are a, b
    coarse = torch.stack([b, a])[None].requires_grad_(True)  # (1, 2, 3): the same pair swapped
    assert mmd_rbf(fine[0, ::4], coarse[0]) < -0.1  # paired U-statistic 2 k(a, b) - 2 k(a, a) over 2 pairs
    loss = cross_granularity_loss(fine, coarse, (4, 2))
    assert loss == 0
    loss.backward()
    assert coarse.grad.abs().sum() == 0  # no reward for pushing the levels apart


def test_masked_loss_closed_form_with_zero_backbone():
    """A fresh MaskedDiT outputs F = 0 (adaLN-Zero), so D = c_skip x_noisy and the loss has a closed form."""
    net = build_masked_dit("PHMDiff-T/2", **TINY)
    D = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 1.0, 2.5])
    for ratio in (0.0, 0.5):
        terms, feats = masked_denoising_loss(D, x, {}, ratio, mae_loss_coef=0.1, noise_level=sigma,
                                             generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)  # replay: noise first, then the model's mask
        x_noisy = x + torch.randn(x.shape, generator=g) * sigma[:, None, None, None]
        s = sigma[:, None, None, None]
        err = (s**2 + 0.25) / (s * 0.5) ** 2 * (0.25 / (s**2 + 0.25) * x_noisy - x) ** 2  # (N, C, H, W)
        token_err = err.reshape(3, 4, 4, 2, 4, 2).mean(dim=(1, 3, 5)).reshape(3, 16)
        if ratio == 0:
            assert torch.allclose(terms["denoise"], err.mean(), rtol=1e-5)
            assert terms["mae"] == 0 and torch.allclose(terms["loss"], terms["denoise"])
            assert feats.shape == (3, 16, 32)
        else:
            mask = random_block_mask(3, 4, 4, 8, (1, 2, 4), generator=g)
            assert torch.allclose(terms["denoise"], token_err[~mask].mean(), rtol=1e-5)
            assert terms["mae"] > 0 and torch.allclose(terms["loss"], terms["denoise"] + 0.1 * terms["mae"])
            assert feats.shape == (3, 8, 32)
            # loss_on "all" counts the decoder's masked tokens too: the mean over every element, same draws.
            every, _ = masked_denoising_loss(D, x, {}, ratio, mae_loss_coef=0.1, noise_level=sigma,
                                             generator=torch.Generator().manual_seed(7), loss_on="all")
            assert torch.allclose(every["denoise"], err.mean(), rtol=1e-5)
            assert not torch.allclose(every["denoise"], terms["denoise"], rtol=1e-3)
            assert torch.allclose(every["mae"], terms["mae"])
    terms, _ = masked_denoising_loss(D, x, {}, 0.5, mae_loss_coef=0.0, generator=torch.Generator().manual_seed(1))
    assert terms["mae"] == 0 and torch.equal(terms["loss"], terms["denoise"])
    with pytest.raises(ValueError, match="loss_on"):
        masked_denoising_loss(D, x, {}, 0.5, loss_on="masked")


def test_tiny_model_overfits_a_handful_of_latents():
    """Four latents, one target label each: at high noise the ideal denoiser is the memorized latent, whose
    loss is ~c_skip^2 sigma^2 / c_out^2-weighted noise only (<= 0.06 here), against ~1 for a fresh model."""
    torch.manual_seed(0)
    net = build_masked_dit("PHMDiff-T/2", **{**TINY, "input_size": 4, "hidden_size": 64, "decoder_hidden_size": 64})
    D = EDMPrecond(net, sigma_data=0.5)
    x = 0.5 * torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    label = {"target_label": torch.arange(4)}
    eval_sigma = torch.tensor([2.0, 3.0, 5.0, 10.0])

    def evaluate():
        with torch.no_grad():
            terms, _ = masked_denoising_loss(D, x, label, 0.0, noise_level=eval_sigma,
                                             generator=torch.Generator().manual_seed(123))
        return float(terms["loss"])

    before = evaluate()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(2)
    for _ in range(250):
        terms, _ = masked_denoising_loss(D, x, label, 0.5, loss_fn=EDMLoss(P_mean=1.5, P_std=0.5), generator=g)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    after = evaluate()
    assert after < before / 10, (before, after)


def test_phmdiff_loss_with_coarse_level_and_cross_granularity():
    net = build_masked_dit("PHMDiff-T/2", **{**TINY, "input_size": 16})
    with torch.no_grad():  # leave adaLN-Zero so the encoder features depend on the input
        for block in net.blocks:
            block.adaLN_modulation[-1].bias.normal_(0, 0.5)
    D = EDMPrecond(net)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    xc = torch.nn.functional.avg_pool2d(x, 2)
    kw = dict(level=0)
    base, feats = phmdiff_loss(D, x, kw, 0.5, coarse_x_start=xc, coarse_kwargs=dict(level=1),
                               cross_granularity_weight=0.0, generator=torch.Generator().manual_seed(1))
    assert base["cross_granularity"] == 0 and feats.shape == (2, 32, 32)
    assert torch.allclose(base["loss"], base["denoise"] + 0.1 * base["mae"] + base["coarse_loss"])
    terms, _ = phmdiff_loss(D, x, kw, 0.5, coarse_x_start=xc, coarse_kwargs=dict(level=1),
                            cross_granularity_weight=2.0, generator=torch.Generator().manual_seed(1))
    assert terms["cross_granularity"] > 0
    assert torch.allclose(terms["loss"], base["loss"] + 2.0 * terms["cross_granularity"], rtol=1e-5)
    net.zero_grad()
    terms["cross_granularity"].backward()
    assert net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_ssim_matches_scikit_image_and_ae_loss_is_zero_for_perfect_recon():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    ref = structural_similarity(a[0, 0].numpy(), b[0, 0].numpy(), data_range=2.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert abs(float(ssim(a, b)) - ref) < 2e-3
    assert abs(float(ssim(a, a)) - 1) < 1e-6
    vol = torch.rand(1, 1, 12, 12, 12, generator=g)
    assert float(ssim(vol, vol)) == pytest.approx(1.0, abs=1e-5) and float(ssim(vol, 1 - vol)) < 0.5
