"""MS-SWD, Frechet distance against its closed form, FID/KID through a TorchScript model."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from phmdiff.eval.distribution import fid_kid, frechet_distance, kid, ms_swd


def _images(n=6, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([ndimage.gaussian_filter(rng.random((size, size)), 1.0) for _ in range(n)])


def test_ms_swd_zero_for_identical_and_grows_with_blur():
    imgs = _images()
    assert ms_swd(imgs, imgs.copy(), n_patches=1024)["ms_swd"] == 0.0
    d = [ms_swd(imgs, np.stack([ndimage.gaussian_filter(x, s) for x in imgs]), n_patches=1024)["ms_swd"]
         for s in (0.5, 1.0, 2.0)]
    assert 0 < d[0] < d[1] < d[2]


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # = 5 + 1 + 1 + 4
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-9)
    # from sampled Gaussian features the estimate approaches the same value
    rng = np.random.default_rng(0)
    fa = mu1 + np.sqrt(s1) * rng.standard_normal((200_000, 3))
    fb = mu2 + np.sqrt(s2) * rng.standard_normal((200_000, 3))
    got = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    assert got == pytest.approx(expected, rel=0.02)


def test_kid_near_zero_for_same_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    assert abs(kid(a, b, subset_size=200)) < 0.05 < kid(a, b + 1.0, subset_size=200)


class _Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x / 255.0)).mean(dim=(2, 3))  # (N, 8)


def test_fid_kid_through_a_torchscript_file(tmp_path):
    path = tmp_path / "features.pt"
    torch.jit.script(_Features()).save(str(path))
    a, b = _images(12, 32, 0), _images(12, 32, 1)
    same = fid_kid(path, a, a, size=64)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    model = _Features().eval()
    with torch.no_grad():
        def feats(x):
            t = torch.nn.functional.interpolate(torch.as_tensor(x, dtype=torch.float32)[:, None], size=(64, 64),
                                                mode="bilinear", align_corners=False)
            return model(t.repeat(1, 3, 1, 1) * 255).double().numpy()
        fa, fb = feats(a), feats(np.clip(b * 2, 0, 1))
    expected = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    got = fid_kid(path, a, np.clip(b * 2, 0, 1), size=64)
    assert got["fid"] == pytest.approx(expected, rel=1e-6) and got["fid"] > 0


def test_fid_without_extractor_says_so(tmp_path):
    with pytest.raises(ValueError, match="TorchScript Inception feature extractor"):
        fid_kid(tmp_path / "missing.pt", _images(2), _images(2))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        fid_kid(tmp_path / "junk.pt", _images(2), _images(2))
