"""Sizes are checked from headers before anything is decoded (issue 14, item 3), and non-finite images are
refused where they enter (item 5). Real crafted files, real processes; peak memory measured in the child."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.limits import LimitError, check_gzip_size, check_voxels  # noqa: E402

pytestmark = pytest.mark.timeout(300)
MB = 2**20
# Runs the CLI and prints the process's peak resident memory (MiB) as the last line of stderr. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss over an exec, so a child of the (large) pytest process would report its parent.
_MEASURED = ("import sys\nfrom phmdiff.cli import main\nrc = main(sys.argv[1:])\n"
             "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
             "print(f'peak_rss_mib={int(hwm.split()[1]) / 1024:.1f}', file=sys.stderr)\nsys.exit(rc)\n")


def _measured(*args) -> tuple[int, str, float]:
    res = subprocess.run([sys.executable, "-c", _MEASURED, *map(str, args)], capture_output=True, text=True,
                         timeout=240)
    peak = float(res.stderr.strip().splitlines()[-1].split("=")[1])
    return res.returncode, res.stderr, peak


def _nifti_bytes(shape, dtype=np.uint8) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr["vox_offset"] = 352
    hdr.set_sform(np.eye(4), code=1)
    return hdr.binaryblock + b"\0" * 4


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A gzip bomb: about 1 MiB on disk, 1024**3 uint8 voxels (1 GiB) once decompressed."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.nii.gz"
    zeros = bytes(64 * MB)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(_nifti_bytes((1024, 1024, 1024)))
        for _ in range(16):
            f.write(zeros)
    return path


def _subject_root(root: Path, files: dict[str, Path | bytes]) -> Path:
    sub = root / "in" / "s1"
    sub.mkdir(parents=True)
    for mod, src in files.items():
        dst = sub / f"{mod}.nii.gz"
        shutil.copy(src, dst) if isinstance(src, Path) else dst.write_bytes(src)
    return root / "in"


def test_a_gzip_bomb_is_refused_from_its_header_with_little_memory(bomb, tmp_path):
    assert bomb.stat().st_size < 1.5 * MB
    root = _subject_root(tmp_path, {"t1": bomb, "t2": bomb})
    rc, err, peak = _measured("prepare", root, tmp_path / "out", "--layout", "generic")
    assert rc == 2, err
    assert "1,073,741,824 voxels" in err and "PHMDIFF_MAX_VOXELS" in err and "Traceback" not in err
    assert peak < 200, f"peak {peak} MiB"
    rc2, err2, peak2 = _measured("evaluate", bomb, bomb, "--out", tmp_path / "ev")
    assert rc2 == 2 and "1,073,741,824 voxels" in err2 and peak2 < 200, (err2, peak2)
    print(f"\nreliability: 1 MiB gzip bomb (1024^3 voxels) refused at peak RSS {peak:.0f} MiB (prepare), "
          f"{peak2:.0f} MiB (evaluate)")


def test_a_huge_header_is_refused_before_reading_and_evaluate_too(tmp_path):
    huge = tmp_path / "huge.nii.gz"
    huge.write_bytes(gzip.compress(_nifti_bytes((4000, 4000, 4000), np.float32) + bytes(1000)))
    root = _subject_root(tmp_path, {"t1": huge, "t2": huge})
    rc, err, peak = _measured("prepare", root, tmp_path / "out", "--layout", "generic")
    assert rc == 2 and "64,000,000,000 voxels" in err and peak < 200, (err, peak)
    rc2, err2, peak2 = _measured("evaluate", huge, huge, "--out", tmp_path / "ev")
    assert rc2 == 2 and "voxels" in err2 and "Traceback" not in err2 and peak2 < 200, (err2, peak2)
    print(f"\nreliability: 4000^3 header refused at peak RSS {peak:.0f} MiB (prepare), {peak2:.0f} MiB (evaluate)")


def test_a_gzip_stream_longer_than_its_header_is_refused_in_bounded_pieces(tmp_path):
    lying = tmp_path / "lying.nii.gz"
    with gzip.open(lying, "wb") as f:
        f.write(_nifti_bytes((8, 8, 8)))
        f.write(bytes(20 * MB))  # 512 voxels declared, 20 MiB stored
    with pytest.raises(LimitError, match="decompresses to more than"):
        check_gzip_size(lying, 352 + 512 + MB)
    from phmdiff.data.readers import load_volume

    with pytest.raises(ValueError, match="decompresses to more than"):
        load_volume(lying)


def test_the_voxel_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", "1000")
    with pytest.raises(LimitError, match="limit of 1,000"):
        check_voxels((11, 10, 10), "x.nii.gz")
    check_voxels((10, 10, 10), "x.nii.gz")
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", "lots")
    with pytest.raises(ValueError, match="PHMDIFF_MAX_VOXELS"):
        check_voxels((1,), "x")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit gray pixels, with one tiny compressed row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(width + 1))) \
        + chunk(b"IEND", b"")


def test_a_png_claiming_20000_by_10000_pixels_is_refused_before_decoding(tmp_path):
    for mod in ("t1", "t2"):
        (tmp_path / "in" / mod).mkdir(parents=True)
        (tmp_path / "in" / mod / "s_000.png").write_bytes(_png_header_only(20000, 10000))
    rc, err, peak = _measured("prepare", tmp_path / "in", tmp_path / "out", "--layout", "png")
    assert rc == 2 and "Traceback" not in err and "s_000.png" in err, err
    assert peak < 200, peak


def test_a_nan_float_tiff_named_png_is_refused(tmp_path):
    from PIL import Image

    for mod in ("t1", "t2"):
        (tmp_path / "in" / mod).mkdir(parents=True)
        for i in range(3):
            data = np.full((16, 16), np.nan, np.float32)
            Image.fromarray(data, mode="F").save(tmp_path / "in" / mod / f"s_{i:03d}.png", format="TIFF")
    res = fx.cli("prepare", str(tmp_path / "in"), str(tmp_path / "out"), "--layout", "png", "--size", "16",
                 check=False)
    assert res.returncode == 2 and "NaN" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_phantom_shape_and_batchsize_bounds(tmp_path):
    rc, err, peak = _measured("phantom", tmp_path / "ph", "--shape", 4000, 4000, 4000)
    assert rc == 2 and "voxels" in err and "Traceback" not in err and peak < 200, (err, peak)
    res = fx.cli("train", "--dry-run", "train.batchsize=4000000000", check=False)
    assert res.returncode == 2 and "train.batchsize" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_checkpoint_with_a_huge_plane_size_is_refused(tmp_path_factory, tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)

    def huge_plane(meta):
        meta["plan"]["volume"]["size"] = 200000

    crafted = fx.crafted_run(tmp_path, run, edit_meta=huge_plane)
    res = fx.cli("translate", "--run", str(crafted), "--input", str(data / "phantom" / "PHANTOM_00001"), "--out",
                 str(tmp_path / "out"), "--steps", "1", "--device", "cpu", check=False)
    assert res.returncode == 2 and "voxels" in res.stderr and "Traceback" not in res.stderr, res.stderr
