"""Pyramid: exact collapse, constants preserved, shapes, errors (2D and 3D)."""

import pytest
import torch

from phmdiff.pyramid import collapse, downsample, gaussian_pyramid, laplacian_pyramid, level_shapes, upsample


@pytest.mark.parametrize("shape", [(2, 3, 32, 24), (1, 2, 16, 8, 12)])
def test_laplacian_round_trip_exact(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lap = laplacian_pyramid(x, 3)
    assert [tuple(b.shape[2:]) for b in lap] == level_shapes(shape[2:], 3)
    assert torch.allclose(collapse(lap), x, atol=1e-12, rtol=0)
    lap32 = laplacian_pyramid(x.float(), 3)
    assert torch.allclose(collapse(lap32), x.float(), atol=1e-5, rtol=0)
    # The band-pass levels are not trivially zero (the test would pass for any identity otherwise).
    assert lap[0].abs().mean() > 0.1


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (2, 1, 4, 6, 2), (1, 1, 2, 2)])
def test_downsample_constant_is_constant(shape):
    x = torch.full(shape, 3.25, dtype=torch.float64)
    y = downsample(x)
    assert tuple(y.shape[2:]) == tuple(s // 2 for s in shape[2:])
    assert torch.allclose(y, torch.full_like(y, 3.25), atol=1e-12)


def test_downsample_is_antialiased_and_matches_direct_filter():
    # A Nyquist-frequency checkerboard is removed by the binomial blur (naive striding would keep it).
    x = torch.tensor([[(-1.0) ** (i + j) for j in range(16)] for i in range(16)]).reshape(1, 1, 16, 16)
    assert downsample(x)[..., 1:-1, 1:-1].abs().max() < 1e-6  # interior; borders are replicate-padded
    # Interior sample k equals the separable (1 3 3 1)/8 filter over fine samples 2k-1 .. 2k+2, by hand.
    z = torch.randn(1, 1, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = torch.tensor([1.0, 3, 3, 1], dtype=torch.float64) / 8
    expected = (k[:, None] * k[None, :] * z[0, 0, 3:7, 3:7]).sum()
    assert torch.allclose(downsample(z)[0, 0, 2, 2], expected, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_upsample_of_downsample_keeps_a_ramp_in_place(dims):
    # Coarse sample k must sit where `upsample` expects it (fine position 2k + 0.5): then a linear ramp
    # survives down- and upsampling unchanged away from the borders (keeping samples 0, 2, 4 ... shifts it
    # by half a fine pixel: ramp - 0.5).
    n = 16
    ramp = torch.arange(n, dtype=torch.float64).reshape(*([1] * (dims + 1)), n).expand(1, 1, *([n] * dims))
    back = upsample(downsample(ramp), ramp.shape[2:])
    inner = (..., slice(3, n - 3))
    assert torch.allclose(back[inner], ramp[inner], atol=1e-12)
    assert (back - ramp).abs().max() > 0.1  # the borders (replicate padding) do differ: the check can fail


def test_gaussian_pyramid_levels_and_upsample_shape():
    x = torch.randn(1, 2, 16, 16)
    g = gaussian_pyramid(x, 3)
    assert [tuple(t.shape) for t in g] == [(1, 2, 16, 16), (1, 2, 8, 8), (1, 2, 4, 4)]
    assert upsample(g[2], (16, 16)).shape == x.shape
    assert torch.allclose(upsample(torch.ones(1, 1, 4, 4), (8, 8)), torch.ones(1, 1, 8, 8))


def test_errors_are_sentences():
    with pytest.raises(ValueError, match="divisible by 4"):
        laplacian_pyramid(torch.zeros(1, 1, 10, 12), 3)
    with pytest.raises(ValueError, match="must be even"):
        downsample(torch.zeros(1, 1, 5, 4))
    with pytest.raises(ValueError, match="shape"):
        gaussian_pyramid(torch.zeros(4, 4), 2)
    with pytest.raises(ValueError, match="spatial shape"):
        level_shapes((1, 1, 2, 8, 8), 2)
