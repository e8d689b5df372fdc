"""Every failure names its file (issue 14, item 13): a full disk during prepare, encode, report and generate,
a torn log.csv row, a NaN affine, an out-of-range seed, a checkpoint write with no earlier checkpoint."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.training.checkpoint import _write_failure, find_latest, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def _full_disk(path: Path, leave: int = 16 * 1024):
    """A 4 MiB tmpfs at `path`, filled until about `leave` bytes are free."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount refused'})")
    try:
        stat = os.statvfs(path)
        with open(path / "filler", "wb") as f:
            f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _one_line(capsys, code: int, name: Path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "%|" not in line and not line.startswith(fx.INFO_PREFIXES)]  # progress, device
    assert code == 2 and len(err) == 1, err
    assert ("No space left on device" in err[0] or "disk is probably full" in err[0]) and str(name) in err[0], err
    assert "Traceback" not in err[0]
    return err[0]


def test_a_full_disk_names_the_output_in_prepare_encode_report_and_generate(tmp_path_factory, tmp_path, capsys):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    with _full_disk(tmp_path / "small") as small:
        capsys.readouterr()
        out = small / "prepared"
        code = main(["prepare", str(data / "phantom"), str(out), "--size", "16", "--fit", "resize",
                     "--modalities", "t1", "t2", "flair", "--dtype", "float32"])
        _one_line(capsys, code, out)
        out = small / "latents"
        code = main(["encode", str(data / "prepared"), str(data / "autoencoder"), str(out), "--dtype", "float32"])
        _one_line(capsys, code, out)
        out = small / "report"
        code = main(["report", str(run), "--out", str(out)])  # the run's training curves
        _one_line(capsys, code, out)
        out = small / "gen"
        code = main(["generate", "--run", str(run), "--out", str(out), "--seeds", "0-31", "--steps", "1",
                     "--device", "cpu"])
        _one_line(capsys, code, out)
        assert not out.exists() or not list(out.rglob("*.png"))  # no partial set of PNGs
        assert sorted(p.name for p in small.iterdir()) == ["filler"]  # nothing half-written left behind


def test_a_torn_log_row_does_not_stop_a_resume(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=2")
    with open(run / "log.csv", "a") as f:
        f.write("3x,0.0")  # what a kill mid-append leaves
    res = fx.cli("train", "--config", str(config), "--no-progress", "train.max_num_steps=4", check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_checkpoint(find_latest(run)).step == 4
    assert "3x" not in (run / "log.csv").read_text()


def test_a_nan_affine_is_named_as_such(tmp_path):
    sub = tmp_path / "in" / "s1"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for mod in ("t1", "t2"):
        nib.save(nib.Nifti1Image(rng.random((8, 8, 4)).astype(np.float32), np.eye(4)), str(sub / f"{mod}.nii"))
    with open(sub / "t2.nii", "r+b") as f:  # patch the header bytes: nibabel will not write a NaN affine
        f.seek(252)
        f.write(struct.pack("<hh", 0, 1))  # qform_code 0, sform_code 1
        f.seek(280)
        f.write(struct.pack("<4f", np.nan, 0, 0, 0))  # srow_x
    assert np.isnan(nib.load(sub / "t2.nii").affine).any()
    res = fx.cli("prepare", str(tmp_path / "in"), str(tmp_path / "out"), "--layout", "generic", "--size", "8",
                 check=False)
    assert res.returncode == 2 and "affine" in res.stderr and "NaN" in res.stderr, res.stderr
    assert "differs by nan" not in res.stderr and "t2.nii" in res.stderr


def test_a_huge_seed_is_one_sentence_and_leaves_no_lock(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    res = fx.cli("train", "--config", str(config), "--no-progress", f"train.seed={10**20}", check=False)
    assert res.returncode == 2 and "train.seed" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not run.exists() or not [p for p in run.iterdir() if "lock" in p.name]


def test_a_failed_first_checkpoint_does_not_claim_earlier_ones(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    msg = str(_write_failure(ckpt_dir / "step-000002", OSError(28, "No space left on device")))
    assert "no earlier checkpoint exists" in msg and "are kept" not in msg
    (ckpt_dir / "step-000001").mkdir()
    assert "the earlier checkpoints are kept" in str(_write_failure(ckpt_dir / "step-000002", OSError(28, "x")))
