"""Blended sliding windows (`phmdiff.windows`) and the plane padding of `phmdiff.inference`."""

import numpy as np
import pytest
import torch

from phmdiff.inference import SamplingSettings, sample_latents
from phmdiff.plane import crop_plane, pad_plane
from phmdiff.windows import WindowedDenoiser, gaussian_weights, window_starts


@pytest.mark.parametrize("size, window, overlap", [(40, 16, 0.25), (37, 16, 0.5), (16, 16, 0.25), (17, 8, 0.0)])
def test_windows_cover_the_axis_and_overlap_as_asked(size, window, overlap):
    starts = window_starts(size, window, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + window] = True
    assert starts[0] == 0 and starts[-1] == max(size - window, 0) and covered.all()
    gaps = np.diff(starts)
    assert (gaps <= max(1, int(window * (1 - overlap)))).all()


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    g = gaussian_weights(8, 12)
    assert g.shape == (8, 12) and (g > 0).all()
    assert torch.allclose(g, g.flip(0)) and torch.allclose(g, g.flip(1))
    assert g[3:5, 5:7].min() == g.max()


def _pointwise(x, sigma, cond=None, coarse=None, level=None, **_):
    """A 'network' with no spatial context: windows and whole plane must agree exactly."""
    s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
    out = 0.5 * x + cond[:, :1] * s
    return out if coarse is None else out + coarse


@pytest.mark.parametrize("level", [0, 1])
def test_windows_lose_nothing_at_borders_or_seams(level):
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 1, 40 >> level, 48 >> level, generator=g), torch.randn(3, 2, 40 >> level, 48 >> level)
    coarse, sigma = torch.randn_like(x), torch.tensor([0.5, 1.0, 2.0])
    kw = {"cond": cond, "coarse": coarse, "level": level, "avail": torch.ones(3, 2), "target_label": torch.zeros(3)}
    calls = []

    def counted(x, sigma, **kw):
        calls.append(x.shape)
        assert x.shape[2:] == (16 >> level, 16 >> level)  # the network only ever sees its training grid
        return _pointwise(x, sigma, **kw)

    out = WindowedDenoiser(counted, 16, max_batch=12)(x, sigma, **kw)
    torch.testing.assert_close(out, _pointwise(x, sigma, **kw), rtol=0, atol=1e-6)
    assert len(calls) > 1 and all(c[0] <= 12 for c in calls)  # many windows, batched under the budget


def test_a_perfect_model_is_reproduced_exactly_on_a_larger_plane():
    """A denoiser that returns the truth (here: the first source) gives back the truth through windowed
    pyramid sampling of a 40x48 plane with a 16x16 training grid."""

    class Cfg:
        in_size, pyramid_levels, in_channels = 16, 2, 1

    def truth(x, sigma, cond=None, **_):
        return cond[:, :1].clone()

    source = torch.rand(2, 2, 40, 48)
    z = sample_latents(truth, source, torch.ones(2, 2), None, [1, 2], Cfg, SamplingSettings("ddim", 3, 2))
    torch.testing.assert_close(z, source[:, :1], rtol=0, atol=1e-6)


def test_pad_plane_never_crops_and_crop_plane_undoes_it():
    x = np.random.default_rng(0).random((2, 3, 23, 37)).astype(np.float32)
    padded, pads = pad_plane(x, [0.0, 1.0, 2.0], side=16, multiple=4)
    assert padded.shape == (2, 3, 24, 40)
    assert (padded[:, 1, -1, :] == 1.0).all() and (padded[:, 2, :, 0] == 2.0).all()
    assert (padded[:, 2, :, -2:] == 2.0).all()
    np.testing.assert_array_equal(crop_plane(padded[:, 0], pads), x[:, 0])
    small, pads = pad_plane(x[:, :, :10, :12], [0.0] * 3, side=16, multiple=4)
    assert small.shape[2:] == (16, 16) and crop_plane(small[:, 0], pads).shape == (2, 10, 12)
