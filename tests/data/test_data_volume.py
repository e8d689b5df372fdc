"""data/volume.py and data/intensity.py: slicing a volume and putting it back, the foreground rules, write_like."""

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data import intensity
from phmdiff.data.volume import VolumeSettings, slices_to_volume, volume_to_slices, write_like


def _head(shape=(20, 18, 12), seed=0):
    """An MR-like ellipsoid of tissue (around 100, a brighter core) on a zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    v = np.where(r < 0.8, 100.0 + 50.0 * (r < 0.4), 0.0) + rng.normal(0, 1, shape)
    return np.clip(v, 0, None).astype(np.float32)


@pytest.mark.parametrize("fit, size", [("pad", 24), ("pad", 16), ("resize", 16), ("pad", None)])
def test_slices_and_back_restore_the_volume(fit, size):
    v = _head()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # axial spacing coarsest: slices along axis 2
    s = VolumeSettings(modalities=["t1"], size=size, fit=fit, min_foreground=0.0)
    slices, spec = volume_to_slices({"t1": v}, affine, s)
    assert spec.axis == 2 and slices.shape[0] == v.shape[2]
    back = slices_to_volume(slices[:, 0], spec, "t1")
    assert back.shape == v.shape
    if fit == "pad" and (size is None or size >= max(v.shape[:2])):  # lossless: no crop, no resampling
        np.testing.assert_allclose(back, v, rtol=1e-5, atol=1e-3)
    else:
        inner = (slice(6, 14), slice(6, 12), slice(None))
        assert np.abs(back[inner] - v[inner]).mean() < 0.1 * v[inner].mean()


def test_min_foreground_drops_empty_slices_and_they_come_back_as_background():
    v = _head()
    v[:, :, :2] = 0.0
    slices, spec = volume_to_slices({"t1": v}, np.diag([1.0, 1.0, 2.0, 1.0]),
                                    VolumeSettings(modalities=["t1"], size=24, min_foreground=0.05))
    assert 0 not in spec.indices and 1 not in spec.indices and len(spec.indices) == slices.shape[0]
    back = slices_to_volume(slices[:, 0], spec, "t1")
    assert np.all(back[:, :, :2] == spec.background["t1"])


def test_foreground_rules_and_the_ct_window_default():
    ct = np.array([-1000.0, -600.0, -400.0, 40.0, 1000.0])
    assert intensity.foreground(ct, is_ct=True).tolist() == [False, False, True, True, True]
    mr = np.concatenate([np.zeros(50), np.full(50, 100.0)])
    fg = intensity.foreground(mr, is_ct=False)
    assert fg.sum() == 50 and fg[50:].all()
    assert VolumeSettings().ct_window == intensity.CT_WINDOW == (-1024.0, 3071.0)


def test_ct_is_windowed_and_clipped_and_unknown_options_are_refused():
    ct = np.full((8, 8, 4), -1024.0, np.float32)
    ct[2:6, 2:6] = 3071.0
    slices, spec = volume_to_slices({"ct": ct}, np.eye(4), VolumeSettings(modalities=["ct"], size=8))
    assert slices.min() == pytest.approx(0.0) and slices.max() == pytest.approx(1.0)
    assert spec.background["ct"] == intensity.CT_WINDOW[0]
    with pytest.raises(ValueError, match="norm 'max' is unknown"):
        VolumeSettings(norm="max")
    with pytest.raises(ValueError, match="size 4 is too small"):
        VolumeSettings(size=4)


def test_write_like_keeps_the_reference_grid_and_is_byte_reproducible(tmp_path):
    affine = np.diag([0.9, 1.1, 2.0, 1.0])
    affine[:3, 3] = [5, -3, 7]
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), affine), ref)
    data = np.random.default_rng(0).random((4, 5, 6))
    a, b = write_like(data, ref, tmp_path / "a.nii.gz"), write_like(data, ref, tmp_path / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()  # gzip mtime 0 and no file name in the header
    img = nib.load(a)
    np.testing.assert_allclose(img.affine, affine)
    np.testing.assert_allclose(img.get_fdata(), data, atol=1e-6)
    with pytest.raises(ValueError, match="reference has shape"):
        write_like(data[:3], ref, tmp_path / "c.nii.gz")


def test_slices_dropped_by_the_foreground_rule_come_back_as_background_for_a_synthesized_target():
    # The head fills only the middle slices; the end slices are dropped. A synthesized FLAIR (normalized
    # relative to its sources) must come back as background there, not as a tissue-level intensity.
    from phmdiff.data.volume import relative_norm

    v = _head()
    v[:, :, :3] = 0.0
    v[:, :, -3:] = 0.0
    vols = {"t1": v, "t2": 2.0 * v}
    s = VolumeSettings(modalities=["t1", "t2"], size=24, min_foreground=0.05, relative={"flair": ["t1", "t2"]})
    slices, spec = volume_to_slices(vols, np.diag([1.0, 1.0, 2.0, 1.0]), s)
    assert 0 < len(spec.indices) < v.shape[2]  # some slices were dropped
    norm = relative_norm(spec.norm, ["t1", "t2"])
    pred = np.full((len(spec.indices), 24, 24), 0.5, np.float32)  # any prediction for the kept slices
    back = slices_to_volume(pred, spec, "flair", norm=norm)
    dropped = [z for z in range(v.shape[2]) if z not in spec.indices]
    assert np.abs(back[:, :, dropped]).max() < 0.05 * float(v.max())  # background (~0), not tissue (~100)
