"""SimpleITK formats: axis order and LPS/RAS against SimpleITK's own index-to-point, size checked before the
voxels are decoded, and a sentence naming the extra when SimpleITK is missing."""

import subprocess
import sys

import numpy as np
import pytest

from phmdiff.data.itk_io import info_from_affine, read_info
from phmdiff.data.readers import load_volume, stored_dtype
from phmdiff.limits import LimitError

sitk = pytest.importorskip("SimpleITK")


def _oblique(tmp_path, name="a.mha", dtype=np.int16):
    arr = np.arange(4 * 5 * 6, dtype=dtype).reshape(6, 5, 4)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 2.5))
    img.SetOrigin((-4.0, 9.0, 30.0))
    c, s = np.cos(0.4), np.sin(0.4)
    img.SetDirection((1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c))
    sitk.WriteImage(img, str(tmp_path / name))
    return img, arr


@pytest.mark.parametrize("name", ["a.mha", "a.mhd", "a.nrrd"])
def test_voxels_and_affine_agree_with_simpleitk_index_to_point(tmp_path, name):
    img, arr = _oblique(tmp_path, name)
    data, affine, info = load_volume(tmp_path / name)
    assert data.shape == (4, 5, 6) and stored_dtype(tmp_path / name) == np.int16
    for idx in [(0, 0, 0), (3, 1, 5), (2, 4, 1)]:
        assert data[idx] == arr[idx[2], idx[1], idx[0]]
        lps = np.asarray(img.TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose((affine @ [*idx, 1.0])[:3], lps * [-1, -1, 1], atol=1e-9)  # RAS = LPS flipped
    back = info_from_affine(affine, data.shape, np.float32)
    np.testing.assert_allclose(back.spacing, img.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.origin, img.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.direction, img.GetDirection(), atol=1e-9)


def test_size_is_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    _oblique(tmp_path)
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", "100")
    with pytest.raises(LimitError, match=r"holds 120 voxels, more than the limit of 100"):
        read_info(tmp_path / "a.mha")
    (tmp_path / "b.mha").write_bytes((tmp_path / "a.mha").read_bytes()[:-50])  # voxels cut short
    monkeypatch.delenv("PHMDIFF_MAX_VOXELS")
    with pytest.raises(ValueError, match=r"b.mha: truncated or corrupt image data"):
        load_volume(tmp_path / "b.mha")


def test_without_simpleitk_the_sentence_names_the_extra(tmp_path):
    _oblique(tmp_path)
    code = ("import sys; sys.modules['SimpleITK'] = None\n"
            "from phmdiff.data.readers import load_volume\n"
            f"load_volume({str(tmp_path / 'a.mha')!r})")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode != 0 and "pip install 'phmdiff[itk]'" in run.stderr
