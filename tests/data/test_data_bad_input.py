"""Every broken input of issue 4 ends with one sentence naming the file and the problem, exit 2, no output."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from phmdiff.cli import main


def _vol(shape=(12, 12, 6), seed=0):
    v = np.zeros(shape, np.float32)
    v[2:-2, 2:-2] = np.random.default_rng(seed).uniform(100, 900, (shape[0] - 4, shape[1] - 4, *shape[2:]))
    return v


def _good(root):
    for sid in ("a", "b"):
        (root / sid).mkdir(parents=True, exist_ok=True)
        for j, mod in enumerate(("t1", "t2")):
            nib.save(nib.Nifti1Image(_vol(seed=j), np.eye(4)), root / sid / f"{mod}.nii.gz")
    return root


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4) if affine is None else affine), path)


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _break(case, root):
    """Damage one file of a good dataset for real; return the file named in the message and a keyword."""
    bad = root / "b" / "t2.nii.gz"
    if case == "missing modality file":
        bad.unlink()
        return bad, "missing modality file (t2) of subject b"
    if case == "text named .nii.gz":
        bad.write_text("this is not an image\n")
        return bad, "not a NIfTI file"
    if case == "truncated gzip":
        _truncate(bad)
        return bad, "truncated or corrupt gzip"
    if case == "gzip of a header only":
        bad.write_bytes(gzip.compress(b"\0" * 100))
        return bad, "NIfTI"
    if case == "2D volume":
        _save(bad, _vol((12, 12)))
        return bad, "2 dimensions"
    if case == "4D volume":
        _save(bad, _vol((12, 12, 6, 2)))
        return bad, "4 dimensions"
    if case == "NaN voxels":
        v = _vol()
        v[5, 5, 3] = np.nan
        _save(bad, v)
        return bad, "NaN or Inf"
    if case == "Inf voxels":
        v = _vol()
        v[0, 0, 0] = np.inf
        _save(bad, v)
        return bad, "NaN or Inf"
    if case == "constant volume":
        _save(bad, np.full((12, 12, 6), 7.0))
        return bad, "constant"
    if case == "different shapes":
        _save(bad, _vol((12, 12, 5)))
        return bad, "has shape (12, 12, 5) but t1 has (12, 12, 6)"
    if case == "different affines":
        _save(bad, _vol(), np.diag([1.0, 1.0, 1.5, 1.0]))
        return bad, "affine that differs"
    raise AssertionError(case)


CASES = ["missing modality file", "text named .nii.gz", "truncated gzip", "gzip of a header only", "2D volume",
         "4D volume", "NaN voxels", "Inf voxels", "constant volume", "different shapes", "different affines"]


def _run(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.parametrize("case", CASES)
def test_broken_volume_is_one_sentence_and_no_output(tmp_path, capsys, case):
    root = _good(tmp_path / "in")
    named, keyword = _break(case, root)
    out = tmp_path / "out"
    rc, err = _run(capsys, ["prepare", str(root), str(out), "--size", "16"])
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("phmdiff prepare: error: ") and err.endswith(".")
    assert str(named) in err and keyword in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temporary folder left either


def test_failed_rebuild_leaves_the_previous_output_unchanged(tmp_path, capsys):
    root = _good(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["prepare", str(root), str(out), "--size", "16"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _truncate(root / "a" / "t1.nii.gz")
    rc, err = _run(capsys, ["prepare", str(root), str(out), "--size", "16"])
    assert rc == 2 and "a/t1.nii.gz: truncated" in err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_empty_folder_and_missing_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, err = _run(capsys, ["prepare", str(tmp_path / "empty"), str(tmp_path / "out")])
    assert rc == 2 and f"{tmp_path / 'empty'}: no subjects found" in err
    rc, err = _run(capsys, ["prepare", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert rc == 2 and "nope: input folder not found;" in err
    assert not (tmp_path / "out").exists()


def test_unreadable_png(tmp_path, capsys):
    for mod in ("t1", "t2"):
        (tmp_path / "in" / mod).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.random.default_rng(k).integers(0, 255, (16, 16), dtype=np.uint8)).save(
                tmp_path / "in" / mod / f"p_{k}.png"
            )
    bad = tmp_path / "in" / "t2" / "p_1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # the PNG signature and part of a header
    rc, err = _run(capsys, ["prepare", str(tmp_path / "in"), str(tmp_path / "out"), "--size", "16"])
    assert rc == 2 and f"{bad}: unreadable PNG" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_output_folder_not_writable(tmp_path, capsys):
    # Runs as root, where chmod cannot make a folder unwritable: use paths a file blocks for everyone.
    root = _good(tmp_path / "in")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    rc, err = _run(capsys, ["prepare", str(root), str(blocker), "--size", "16"])
    assert rc == 2 and f"{blocker}: output path is a file" in err
    rc, err = _run(capsys, ["prepare", str(root), str(blocker / "out"), "--size", "16"])
    assert rc == 2 and "not writable" in err and str(blocker) in err
    assert blocker.read_text() == "x"


def test_existing_foreign_folder_is_not_replaced(tmp_path, capsys):
    root = _good(tmp_path / "in")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    rc, err = _run(capsys, ["prepare", str(root), str(tmp_path / "mine"), "--size", "16"])
    assert rc == 2 and "not a prepared folder; pass --overwrite" in err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
