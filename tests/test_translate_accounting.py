"""Every subject accounted for: a failing subject, unusable folder names, concurrent runs, SIGINT / SIGTERM with
--continue, SIGKILL's staged files, and --continue's checksums; signals are real, sent to real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import phmdiff.pipeline as pipeline
from phmdiff.translate import translate

SUBJECTS = ["PHANTOM_00000", "PHANTOM_00001", "PHANTOM_00002", "PHANTOM_00003"]
# A child `phmdiff translate` whose steps are slowed where the test needs them: it touches MARKS/start-<subject>
# before predicting a subject, and MARKS/write-<subject> before writing one (then waits, in its stage folder).
CHILD = """
import sys, time
from pathlib import Path
import phmdiff.pipeline as pipeline
import phmdiff.translate as translate
from phmdiff import cli

marks, mode, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
predict, write = pipeline.VolumeTranslator.predict, translate.write_volume

def slow_predict(self, volumes, affine, target, sources, name, on_sample=None):
    (marks / f"start-{name}").touch()
    if mode == "predict":
        time.sleep(1.5)
    return predict(self, volumes, affine, target, sources, name, on_sample)

def slow_write(vol, reference, path, *args):
    write(vol, reference, path, *args)
    if mode == "write":
        (marks / f"write-{Path(reference).parent.name}").touch()
        time.sleep(60)

pipeline.VolumeTranslator.predict, translate.write_volume = slow_predict, slow_write
sys.exit(cli.main(argv))
"""


def _args(tiny_run: Path, inp: Path, out: Path, *extra) -> list[str]:
    return ["translate", "--run", str(tiny_run / "run"), "--input", str(inp), "--out", str(out), "--no-progress",
            "--sampler", "ddim", *extra]


def _child(tmp_path: Path, mode: str, argv: list[str]) -> subprocess.Popen:
    marks = tmp_path / f"marks-{mode}-{time.monotonic_ns()}"
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marks), mode, *argv], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    proc.marks = marks
    return proc


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.05)


def _listing(out: Path) -> dict:
    return json.loads((out / "translate.json").read_text())


def _stages(out: Path) -> list[Path]:
    return list(out.glob(".*.phmdiff-*.tmp"))


def test_any_failure_inside_one_subject_lists_it_and_the_batch_goes_on(tiny_run, tmp_path, monkeypatch):
    real = pipeline.VolumeTranslator.predict

    def failing(self, volumes, affine, target, sources, name, on_sample=None):
        if name == "PHANTOM_00001":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if name == "PHANTOM_00002":
            raise FloatingPointError("overflow in the sampler")
        return real(self, volumes, affine, target, sources, name, on_sample)

    monkeypatch.setattr(pipeline.VolumeTranslator, "predict", failing)
    meta = translate(tiny_run / "run", tiny_run / "ph", tmp_path / "out", progress=False, sampler="ddim",
                     log=lambda m: None)
    assert sorted(e["subject"] for e in meta["subjects"]) == ["PHANTOM_00000", "PHANTOM_00003"]
    reasons = {s["subject"]: s["reason"] for s in meta["skipped"]}
    assert reasons == {"PHANTOM_00001": "RuntimeError: CUDA error: an illegal memory access was encountered",
                       "PHANTOM_00002": "FloatingPointError: overflow in the sampler"}
    assert not (tmp_path / "out" / "PHANTOM_00001").exists() and not _stages(tmp_path / "out")


def test_unusable_folder_names_are_listed_as_skipped_not_refused(tiny_run, tmp_path):
    inp = tmp_path / "in"
    long_name, backslash = "A" * 210, "bad\\name"
    for src, name in (("PHANTOM_00000", long_name), ("PHANTOM_00001", backslash), ("PHANTOM_00002", "PHANTOM_00002")):
        shutil.copytree(tiny_run / "ph" / src, inp / name)
    meta = translate(tiny_run / "run", inp, tmp_path / "out", progress=False, sampler="ddim", log=lambda m: None)
    assert [e["subject"] for e in meta["subjects"]] == ["PHANTOM_00002"]
    reasons = {s["subject"]: s["reason"] for s in meta["skipped"]}
    assert "210 characters" in reasons[long_name] and "'\\'" in reasons[backslash]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == \
        ["PHANTOM_00002", "translate.json"]


def test_two_concurrent_runs_into_one_folder_both_end_listed(tiny_run, tmp_path):
    out = tmp_path / "out"
    procs = [_child(tmp_path, "predict", _args(tiny_run, tiny_run / "ph" / sid, out)) for sid in SUBJECTS[:2]]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert sorted(e["subject"] for e in _listing(out)["subjects"]) == SUBJECTS[:2]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_rolls_back_the_subject_lists_the_rest_and_continue_finishes(tiny_run, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = _child(tmp_path, "predict", _args(tiny_run, tiny_run / "ph", out))
    _wait_for(proc.marks / "start-PHANTOM_00001", proc)  # the first subject is done, the second in progress
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read().strip().splitlines()
    assert f"interrupted by {signal.Signals(sig).name}" in err[-1] and "--continue" in err[-1], err
    meta = _listing(out)
    done = [e["subject"] for e in meta["subjects"]]
    assert done == ["PHANTOM_00000"] and sorted(s["subject"] for s in meta["not_done"]) == SUBJECTS[1:]
    assert not (out / "PHANTOM_00001").exists() and not _stages(out)  # rolled back, nothing half-written
    first = (out / meta["subjects"][0]["prediction"]).stat().st_mtime_ns
    plain = subprocess.run([sys.executable, "-m", "phmdiff", *_args(tiny_run, tiny_run / "ph", out)],
                           capture_output=True, text=True)
    assert plain.returncode == 2 and "pass --continue" in plain.stderr.strip().splitlines()[-1], plain.stderr
    again = subprocess.run([sys.executable, "-m", "phmdiff", *_args(tiny_run, tiny_run / "ph", out, "--continue")],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "1 subject(s) already complete" in again.stderr
    meta = _listing(out)
    assert sorted(e["subject"] for e in meta["subjects"]) == SUBJECTS and "not_done" not in meta
    assert (out / meta["subjects"][0]["prediction"]).stat().st_mtime_ns == first  # kept, not redone


def test_a_killed_runs_staged_files_are_cleaned_and_continue_redoes_changed_subjects(tiny_run, tmp_path):
    out = tmp_path / "out"
    proc = _child(tmp_path, "write", _args(tiny_run, tiny_run / "ph" / "PHANTOM_00002", out))
    _wait_for(proc.marks / "write-PHANTOM_00002", proc)
    proc.kill()
    proc.wait(timeout=60)
    assert _stages(out), "the killed run left its stage folder (the state this test is about)"
    meta = translate(tiny_run / "run", tiny_run / "ph", out, progress=False, sampler="ddim", resume=True,
                     log=lambda m: None)
    assert not _stages(out) and not [p for p in out.rglob("*.tmp*")]  # the dead run's hidden files are gone
    assert sorted(e["subject"] for e in meta["subjects"]) == SUBJECTS
    entry = next(e for e in meta["subjects"] if e["subject"] == "PHANTOM_00003")
    pred = out / entry["prediction"]
    before = nib.load(pred).get_fdata()
    img = nib.load(pred)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), pred)  # damaged after the run
    said = []
    meta = translate(tiny_run / "run", tiny_run / "ph", out, progress=False, sampler="ddim", resume=True,
                     log=said.append)
    assert any("3 subject(s) already complete" in line for line in said), said
    np.testing.assert_array_equal(nib.load(pred).get_fdata(), before)  # redone: same seed, same volume
    with pytest.raises(ValueError, match="other settings .*seed"):
        translate(tiny_run / "run", tiny_run / "ph", out, progress=False, sampler="ddim", resume=True, seed=5,
                  log=lambda m: None)
