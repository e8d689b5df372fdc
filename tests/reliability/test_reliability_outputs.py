"""Outputs: byte-identical reruns, batch-size independent samples, no partial NIfTI after SIGKILL during
translate, and a full disk that ends with a sentence and leaves earlier outputs intact (issue 8)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.training.checkpoint import checkpoints_dir, find_latest, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.timeout(300)
SUBJECT = "PHANTOM_00001"


@pytest.fixture(autouse=True)
def _nondeterministic_afterwards():
    yield
    torch.use_deterministic_algorithms(False)


def _translate(run, data, out, *extra, subject: str | None = SUBJECT) -> int:
    source = data / "phantom" / subject if subject else data / "phantom"
    return main(["translate", "--run", str(run), "--input", str(source), "--out", str(out), "--steps", "2",
                 "--device", "cpu", *map(str, extra)])


def test_translate_and_generate_are_byte_identical_on_rerun_and_independent_of_batch_size(tmp_path_factory,
                                                                                           tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    for name, batch in (("a", 4), ("b", 4), ("c", 1)):
        assert _translate(run, data, tmp_path / f"tr-{name}", "--seed", 7, "--batch-size", batch) == 0
    a, b, c = (fx.files_of(tmp_path / f"tr-{n}") for n in "abc")
    assert a == b  # same command, same seed: every byte, translate.json included
    # Batch size 1: the same volumes up to float32 rounding (BLAS blocks a matmul differently per batch size).
    assert sorted(a) == sorted(c)
    for key in (k for k in a if k.endswith(".nii.gz")):
        _same_volume(tmp_path / "tr-a" / key, tmp_path / "tr-c" / key)
    assert _translate(run, data, tmp_path / "tr-d", "--seed", 8) == 0
    key = f"{SUBJECT}/{SUBJECT}_flair.nii.gz"
    assert not np.array_equal(nib.load(tmp_path / "tr-a" / key).get_fdata(),
                              nib.load(tmp_path / "tr-d" / key).get_fdata())  # the seed does matter
    for name, batch in (("a", 5), ("b", 5), ("c", 2)):
        assert main(["generate", "--run", str(run), "--out", str(tmp_path / f"gen-{name}"), "--seeds", "3-7",
                     "--steps", "2", "--batch-size", str(batch), "--device", "cpu"]) == 0
    a, b, c = (fx.files_of(tmp_path / f"gen-{n}") for n in "abc")
    assert a == b and sorted(a) == sorted(c) and len([k for k in a if k.endswith(".png")]) == 6
    _same_volume(tmp_path / "gen-a" / "samples.nii.gz", tmp_path / "gen-c" / "samples.nii.gz")


def _same_volume(path_a: Path, path_b: Path) -> None:
    """Equal up to float32 rounding: 1e-6 of the value range, far below any visible difference."""
    x, y = nib.load(path_a).get_fdata(), nib.load(path_b).get_fdata()
    assert x.shape == y.shape
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6 * max(np.ptp(x), 1e-12), err_msg=str(path_a))


def test_sigkill_during_translate_leaves_no_partial_nifti(tmp_path_factory, tmp_path, capsys):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    subjects = tmp_path / "subjects"  # three subjects: the kill lands among several volumes being written
    for sid in ("PHANTOM_00001", "PHANTOM_00002", "PHANTOM_00003"):
        shutil.copytree(data / "phantom" / sid, subjects / sid)
    rng, reference, out = random.Random(5), tmp_path / "reference", tmp_path / "killed"
    args = ["translate", "--run", run, "--input", subjects, "--out", reference, "--steps", 2, "--seed", 1,
            "--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    expected = fx.files_of(reference)
    args[6] = out
    proc = fx.popen(args)
    deadline = time.monotonic() + 180
    while not list(out.glob("*/*.nii.gz")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.2))  # somewhere among the later subjects' sampling and writing
    proc.send_signal(signal.SIGKILL)
    fx.finish(proc)
    visible = sorted(p for p in out.rglob("*.nii.gz") if not p.name.startswith("."))
    assert visible, "the kill came before any output; nothing was tested"
    for path in visible:  # every output present is whole and equal to the uninterrupted run's
        assert path.read_bytes() == expected[str(path.relative_to(out))], path
        assert np.isfinite(nib.load(path).get_fdata()).all()
    if (out / "translate.json").exists():
        assert (out / "translate.json").read_bytes() == expected["translate.json"]
    # A rerun refuses to overwrite; with --overwrite it completes to exactly the reference.
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    if visible:
        assert code == 2 and "--overwrite" in err and "Traceback" not in err, err
    assert main([*map(str, args), "--overwrite"]) == 0
    got = {k: v for k, v in fx.files_of(out).items() if not Path(k).name.startswith(".")}
    assert got == {k: v for k, v in expected.items() if not Path(k).name.startswith(".")}  # less the out marker
    print(f"\nreliability: translate killed with {len(visible)} of {len(expected) - 1} volumes written; "
          "no partial NIfTI")


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount refused'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` until only about `leave` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_a_full_disk_ends_with_a_sentence_and_keeps_earlier_outputs(tmp_path_factory, tmp_path, capsys):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    ckpt_bytes = sum(p.stat().st_size for p in find_latest(run).iterdir())
    with _small_filesystem(tmp_path / "small", f"{int(ckpt_bytes * 1.6) // 1024}k") as small:
        # Training: the checkpoint of step 2 fits, the one of step 4 does not.
        config = fx.write_config(data, small / "run", path=tmp_path / "small.yaml")
        capsys.readouterr()
        code = main(["train", "--config", str(config), "--no-progress", "train.max_num_steps=4"])
        err = fx.sentences(capsys.readouterr().err)
        assert code == 2 and len(err) == 1 and "could not write the checkpoint" in err[0], err
        assert "MiB free" in err[0] and "step-000004" in err[0] and "Traceback" not in err[0]
        kept = find_latest(small / "run")
        assert kept.name == "step-000002" and load_checkpoint(kept).step == 2
        assert sorted(p.name for p in checkpoints_dir(small / "run").iterdir()) == ["last", "step-000002"]
        # Translate over earlier outputs on a nearly full disk: refused mid-way, earlier files untouched.
        out = small / "translated"
        assert _translate(run, data, out, "--seed", 1) == 0
        before = fx.files_of(out)
        _fill(small, 4096)
        capsys.readouterr()
        assert _translate(run, data, out, "--seed", 2, "--overwrite") == 2
        err = capsys.readouterr().err  # (after the progress bar)
        assert err.count("error:") == 1 and "Traceback" not in err, err
        line = err[err.index("phmdiff translate: error:"):].splitlines()[0]  # tqdm may redraw after it
        assert "No space left on device" in line and str(out) in line, line
        assert fx.files_of(out) == before
