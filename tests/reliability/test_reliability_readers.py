"""Issue 28, items 4, 8 and the decode bound of 10: a header reads only the data beside it, a DICOM series is
one evenly spaced stack, a NIfTI affine is invertible, and a decode's memory is bounded from the header."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data.readers import load_volume
from phmdiff.limits import LimitError

sitk = pytest.importorskip("SimpleITK")

SECRET = b"root:x:0:0:secret line\n" * 40  # 920 bytes: what a crafted header would read as voxels


def _secret(root: Path) -> Path:
    path = root / "elsewhere" / "secret.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SECRET)
    return path


def _mhd(folder: Path, data_file: str, name="flair.mhd") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = ("ObjectType = Image\nNDims = 3\nDimSize = 10 10 9\nElementType = MET_UCHAR\n"
              "ElementSpacing = 1 1 1\nElementByteOrderMSB = False\n"
              f"ElementDataFile = {data_file}\n")
    (folder / name).write_text(header)
    return folder / name


def _nhdr(folder: Path, data_file: str, name="flair.nhdr") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 10 10 9\nencoding: raw\n"
                               f"spacings: 1 1 1\ndata file: {data_file}\n\n")
    return folder / name


@pytest.mark.parametrize("make", [_mhd, _nhdr])
@pytest.mark.parametrize("how", ["absolute", "dotdot", "subfolder", "link", "list", "pattern"])
def test_detached_data_outside_the_headers_folder_is_refused(tmp_path, make, how):
    secret = _secret(tmp_path)
    sub = tmp_path / "subject"
    sub.mkdir()
    value = {"absolute": str(secret), "dotdot": "../elsewhere/secret.txt", "subfolder": "deeper/secret.txt",
             "link": "data.raw", "list": "LIST", "pattern": "slice%03d.raw 1 9 1"}[how]
    if how == "link":
        (sub / "data.raw").symlink_to(secret)
    if how == "subfolder":
        (sub / "deeper").mkdir()
        (sub / "deeper" / "secret.txt").write_bytes(SECRET)
    with pytest.raises(ValueError, match="data file|ElementDataFile") as err:
        load_volume(make(sub, value))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("make", [_mhd, _nhdr])
def test_detached_data_beside_the_header_is_read(tmp_path, make):
    sub = tmp_path / "subject"
    sub.mkdir()
    voxels = np.arange(900, dtype=np.uint8) % 251
    (sub / "data.raw").write_bytes(voxels.tobytes())
    data, _, _ = load_volume(make(sub, "data.raw"))
    assert data.shape == (10, 10, 9) and data[3, 2, 1] == voxels[1 * 100 + 2 * 10 + 3]


def test_an_mha_whose_content_is_nrrd_with_a_data_file_is_refused(tmp_path):
    secret = _secret(tmp_path)
    header = _nhdr(tmp_path / "subject", str(secret), name="flair.mha")
    with pytest.raises(ValueError, match="data file"):
        load_volume(header)


def _series(folder: Path, z_positions, tilt_at=None) -> Path:
    """A DICOM series of 8x8 int16 slices at the given z positions (mm); one slice tilted if asked."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    rng = np.random.default_rng(0)
    for k, z in enumerate(z_positions):
        plane = sitk.GetImageFromArray(rng.integers(0, 1000, (8, 8)).astype(np.int16))
        orient = "1\\0\\0\\0\\1\\0" if k != tilt_at else "1\\0\\0\\0\\0.8\\0.6"
        plane.SetMetaData("0020|0032", f"0\\0\\{z:.6f}")
        plane.SetMetaData("0020|0037", orient)
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")
        plane.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")
        plane.SetMetaData("0008|0060", "MR")
        plane.SetMetaData("0028|0030", "1\\1")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


def test_a_dicom_series_with_a_gap_is_refused(tmp_path):
    z = [0, 2, 4, 6, 8, 68, 70, 72]  # a 60 mm stretch of slices missing
    with pytest.raises(ValueError, match="not evenly spaced") as err:
        load_volume(_series(tmp_path / "t1", z))
    assert "60" in str(err.value)


def test_a_dicom_series_with_mixed_orientations_is_refused(tmp_path):
    with pytest.raises(ValueError, match="orientation"):
        load_volume(_series(tmp_path / "t1", [0, 2, 4, 6, 8, 10], tilt_at=3))


def test_an_even_dicom_series_is_read_with_its_spacing(tmp_path):
    data, affine, _ = load_volume(_series(tmp_path / "t1", [0, 2.5, 5, 7.5, 10, 12.5]))
    assert data.shape == (8, 8, 6)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [1, 1, 2.5], atol=1e-6)


def _nifti(path: Path, affine) -> Path:
    """A NIfTI file whose sform is `affine` exactly (NaN entries written into the header's bytes)."""
    affine = np.asarray(affine, float)
    img = nib.Nifti1Image(np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), None)
    img.set_sform(np.nan_to_num(affine, nan=1.0), code=1)
    img.set_qform(None, code=0)
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[280:328] = affine[:3].astype("<f4").tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("affine", [np.diag([1.0, 1.0, 0.0, 1.0]),  # zero slice spacing
                                    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],  # two axes along one
                                    np.diag([1.0, np.nan, 1.0, 1.0])])
def test_a_singular_or_non_finite_nifti_affine_is_refused(tmp_path, affine):
    with pytest.raises(LimitError, match="affine"):
        load_volume(_nifti(tmp_path / "a.nii", affine))


def test_an_oblique_invertible_affine_is_read(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    data, affine, _ = load_volume(_nifti(tmp_path / "a.nii", [[c, -s, 0, 1], [s, c, 0, 2], [0, 0, 3, 4],
                                                                 [0, 0, 0, 1]]))
    assert data.shape == (6, 6, 6)


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
def test_a_decode_is_bounded_from_the_header(tmp_path, monkeypatch, suffix):
    # A float64 volume at the voxel limit needs twice the bytes the limit allows: refused before decoding.
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", str(10 * 10 * 10))
    arr = np.random.default_rng(0).random((10, 10, 10))
    path = tmp_path / f"a{suffix}"
    if suffix == ".mha":
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), True)
    else:
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    with pytest.raises(LimitError, match="bytes to decode"):
        load_volume(path)
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", str(2 * 10 * 10 * 10))
    assert load_volume(path)[0].shape == (10, 10, 10)
