"""data/intensity.py on what real scans are like: interpolation undershoot below a zero background, a shifted or
constant background, z-scored volumes (a negative background, or 0 outside a brain mask), unstripped heads with
noisy air, hot voxels. Crafted volumes always; the real subjects of ../shared/data/real where they are present."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from phmdiff.data import intensity
from phmdiff.data.intensity import IntensityUntrusted, foreground, mr_background
from phmdiff.data.volume import VolumeSettings, volume_to_slices

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
SUBJECTS = ("AURORA_MET", "BraTS_GLI_00001", "TCGA_DU_7294")
MODS = ("t1", "t2", "flair")


def _brain(shape=(40, 44, 30), seed=0) -> np.ndarray:
    """A skull-stripped brain: an ellipsoid of tissue (median about 400, a bright lesion) on an exact 0."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    v = np.where(r < 0.75, 400.0 + 60 * np.sin(6 * grid[0]) + 300.0 * (np.abs(grid - 0.3).max(0) < 0.12), 0.0)
    v = np.where(r < 0.75, v + rng.normal(0, 10, shape), 0.0)
    return v.astype(np.float32)


def _ring(brain: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(brain != 0) & (brain == 0)


def _crafted(v: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The variants of one skull-stripped volume that real data comes as."""
    inside = v != 0
    med = float(np.median(v[inside]))
    shell = ndimage.binary_dilation(inside, iterations=4) & ~inside
    sigma = 0.03 * med
    head = np.where(shell, 1.4 * med, v)
    mean, std = float(v[inside].mean()), float(v[inside].std())
    return {
        "as is": v,
        "undershoot ring": np.where(_ring(v), -0.2 * med, v),  # a one-voxel ring at -20 % of the median
        "undershoot speckle": np.where(_ring(v) & (rng.random(v.shape) < 0.3), -0.1 * med, v),
        "shifted": v + 300.0,  # a scanner offset: background and tissue alike
        "z-scored": (v - mean) / std,  # the whole volume: background a negative constant
        "z-scored in mask": np.where(inside, (v - mean) / std, 0.0),  # 0 outside: inside the tissue's range
        "unstripped": np.hypot(head + rng.normal(0, sigma, v.shape), rng.normal(0, sigma, v.shape)),
        "hot voxels": np.where(rng.random(v.shape) < 20 / v.size, 50 * med, v),
    }


def _fg_share(v: np.ndarray) -> float:
    return float(foreground(v, is_ct=False).mean())


def test_undershoot_below_a_zero_background_leaves_the_background_and_the_foreground_alone():
    v = _brain()
    brain = v != 0
    bad = np.where(_ring(v), -100.0, v)  # the slightly negative voxels a registration tool leaves (to -122)
    assert mr_background(bad) == (0.0, False)
    np.testing.assert_array_equal(foreground(bad, False), foreground(v, False))
    assert abs(_fg_share(bad) - brain.mean()) < 0.01
    # The former rule thresholded from the minimum: the zero background sat above it and became foreground.
    lo = float(bad.min())
    assert (bad > lo + 0.1 * (np.percentile(bad, 99) - lo)).mean() > 0.95  # all but the ring


@pytest.mark.parametrize("variant", ["as is", "undershoot ring", "undershoot speckle", "shifted", "z-scored",
                                     "z-scored in mask", "unstripped", "hot voxels"])
def test_every_variant_normalizes_with_a_plausible_foreground_and_median(variant):
    v = _brain()
    x = _crafted(v, np.random.default_rng(1))[variant].astype(np.float32)
    share = _fg_share(x)
    head = ndimage.binary_dilation(v != 0, iterations=4) if variant == "unstripped" else v != 0  # scalp included
    assert abs(share - head.mean()) < 0.01, share
    _, spec = volume_to_slices({"t1": x}, np.eye(4), VolumeSettings(modalities=["t1"], size=48))
    assert spec.stats["t1"]["median"] == pytest.approx(0.5, abs=1e-6)
    if variant in ("as is", "undershoot ring", "undershoot speckle", "shifted", "hot voxels"):
        _, ref = volume_to_slices({"t1": v}, np.eye(4), VolumeSettings(modalities=["t1"], size=48))
        assert spec.norm["t1"].scale == pytest.approx(ref.norm["t1"].scale, rel=1e-3)  # nothing moved the scale
        assert spec.background["t1"] == pytest.approx(300.0 if variant == "shifted" else 0.0)


def test_a_background_inside_the_tissue_range_is_two_sided():
    v = _brain()
    z = np.where(v != 0, (v - v[v != 0].mean()) / v[v != 0].std(), 0.0)
    assert mr_background(z) == (0.0, True)
    np.testing.assert_array_equal(foreground(z, False), v != 0)


@pytest.mark.parametrize("case", ["noise only", "constant foreground", "empty"])
def test_a_scale_that_cannot_be_found_is_refused_with_a_sentence_never_a_made_up_one(case):
    rng = np.random.default_rng(0)
    v = {"noise only": rng.normal(100, 1, (24, 24, 12)),  # no background anywhere: the border is tissue
         "constant foreground": np.pad(np.full((8, 8, 6), 50.0), 8),
         "empty": np.zeros((24, 24, 12))}[case].astype(np.float32)
    s = VolumeSettings(modalities=["t1"], size=24, norm="percentile" if case == "constant foreground" else "median")
    if case == "noise only":  # the noise floor is the background: half the volume is above it, which is plausible
        _, spec = volume_to_slices({"t1": v}, np.eye(4), s)
        assert 0.01 < spec.stats["t1"]["fraction"] < 0.99
        return
    with pytest.raises(IntensityUntrusted, match="t1: the fore"):
        volume_to_slices({"t1": v}, np.eye(4), s)


def test_the_plausible_range_is_checked():
    with pytest.raises(IntensityUntrusted, match=r"foreground found is 100 % of the volume"):
        intensity.check_foreground(np.ones((4, 4), bool), "flair")
    assert intensity.check_foreground(np.eye(20, dtype=bool), "flair") == pytest.approx(0.05)


# -- the real subjects ---------------------------------------------------------------------------------------------

def _real(sid: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not REAL.is_dir():
        pytest.skip(f"{REAL} is absent: the real-MRI tests need the three subjects of ../shared/data/real.")
    out = {}
    for m in MODS:
        img = nib.load(REAL / sid / f"{sid}_{m}.nii.gz")
        out[m] = np.asarray(img.dataobj, dtype=np.float32)[::2, ::2, ::2]  # every 2nd voxel: real values, 8x faster
    return out, img.affine @ np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.mark.parametrize("sid", SUBJECTS)
def test_real_subjects_and_their_crafted_variants_normalize_with_foreground_5_to_40_percent(sid):
    vols, affine = _real(sid)
    rng = np.random.default_rng(0)
    settings = VolumeSettings(modalities=list(MODS), size=64, fit="resize")
    _, base = volume_to_slices(vols, affine, settings)
    variants = {m: _crafted(v, rng) for m, v in vols.items()}
    for name in variants["t1"]:
        _, spec = volume_to_slices({m: variants[m][name].astype(np.float32) for m in MODS}, affine, settings)
        for m in MODS:
            st = spec.stats[m]
            assert 0.05 <= st["fraction"] <= 0.40, (sid, name, m, st)
            assert st["median"] == pytest.approx(0.5, abs=1e-6)
            assert st["p0.5"] >= -0.2 and 0.55 < st["p99.5"] < 4.0, (sid, name, m, st)
            if name in ("undershoot ring", "undershoot speckle", "shifted", "hot voxels"):
                assert spec.norm[m].scale == pytest.approx(base.norm[m].scale, rel=0.01), (sid, name, m)


def test_the_real_subject_with_undershoot_normalizes_like_its_clipped_copy():
    vols, affine = _real("TCGA_DU_7294")
    assert all((v < 0).any() for v in vols.values())  # the README's slightly negative voxels are there
    settings = VolumeSettings(modalities=list(MODS), size=64, fit="resize")
    slices, spec = volume_to_slices(vols, affine, settings)
    clipped, ref = volume_to_slices({m: np.maximum(v, 0) for m, v in vols.items()}, affine, settings)
    assert spec.indices == ref.indices
    for m in MODS:
        assert spec.background[m] == 0.0 and spec.norm[m].scale == pytest.approx(ref.norm[m].scale, rel=1e-6)
        assert 0.10 < spec.stats[m]["fraction"] < 0.20
    assert np.abs(slices - clipped).max() < 0.2 and np.abs(slices - clipped).mean() < 1e-3


def test_a_constant_border_brighter_than_the_rest_is_tissue_not_background():
    """A tight crop: the tissue (one value) fills most of the border, a dark strip is the only background."""
    v = np.full((8, 8, 4), 1.0, np.float32)
    v[0] = 0.0
    assert mr_background(v) == (0.0, False)
    np.testing.assert_array_equal(foreground(v, False), v == 1.0)
