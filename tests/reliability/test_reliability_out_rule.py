"""Output folders (issue 14, items 1, 2, 4, 7, 8, 9): one rule for `--out` shared by report, encode, evaluate
and translate; names read from files never lead outside `--out`; evaluate publishes its files as one unit;
hidden temp folders of dead runs are removed; report escapes every value it copies into HTML."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.fsutil import check_out_dir, publish_dir, safe_name  # noqa: E402

pytestmark = pytest.mark.timeout(300)
EVIL = '<script>alert("x")</script>'


def _write(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return str(path)


def _translated(root: Path, subjects=("sub-A",)) -> Path:
    """A translate-like folder with a prediction and a reference per subject (no model needed)."""
    rng = np.random.default_rng(0)
    entries = []
    for sid in subjects:
        ref = np.pad(100 + 50 * rng.random((8, 8, 6)), 2)
        entries.append({"subject": sid, "prediction": f"{sid}.nii.gz", "std": None, "samples": [],
                        "reference": _write(root / "refs" / f"{sid}.nii.gz", ref), "mask": None, "seg": None})
        _write(root / "tr" / f"{sid}.nii.gz", ref + rng.standard_normal(ref.shape))
    (root / "tr" / "translate.json").write_text(json.dumps(
        {"target": "flair", "sources": ["t1"], "modality_kind": "mr", "subjects": entries}))
    return root / "tr"


# item 9 ---------------------------------------------------------------------------------------------------
def test_report_escapes_every_value_read_from_summary_json(tmp_path):
    tr = _translated(tmp_path)
    assert main(["evaluate", str(tr), "--protocol", "volume"]) == 0
    ev = tr / "evaluation"
    summary = json.loads((ev / "summary.json").read_text())
    summary["protocols"] = {EVIL: summary["protocols"]["volume"]}  # modality and counts: checked by the schema
    summary["distribution"] = {EVIL: 1.5, "note": EVIL}
    (ev / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "report"
    fx.cli("report", str(ev), "--out", str(out))  # a real process
    page = (out / "index.html").read_text()
    assert "<script>alert" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") >= 3
    assert page.count("<script>") == 1  # only the page's own image-count script


# item 2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", "../x", "a/b", "a\\b", "a\0b", "", ".hidden"])
def test_safe_name_refuses_names_that_leave_the_folder(name):
    with pytest.raises(ValueError, match="cannot be used as a file name"):
        safe_name(name, "target", "ckpt/meta.json")


def test_translate_refuses_a_checkpoint_whose_target_name_leaves_out(tmp_path_factory, tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    evil = "../../escaped"

    def escape(meta):
        plan = meta["plan"]
        plan["modalities"] = [evil if m == plan["target"] else m for m in plan["modalities"]]
        plan["target"] = evil

    evil_run = fx.crafted_run(tmp_path, run, edit_meta=escape)  # an attacker rewrites the hashes too
    out = tmp_path / "a" / "b" / "out"
    res = fx.cli("translate", "--run", str(evil_run), "--input", str(data / "phantom" / "PHANTOM_00001"),
                 "--out", str(out), "--steps", "1", "--device", "cpu", check=False)
    assert res.returncode == 2 and "cannot be used as a file name" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("*escaped*"))


def test_evaluate_refuses_translate_json_paths_outside_the_folder(tmp_path):
    tr = _translated(tmp_path)
    meta = json.loads((tr / "translate.json").read_text())
    meta["subjects"][0]["prediction"] = "../refs/sub-A.nii.gz"
    (tr / "translate.json").write_text(json.dumps(meta))
    assert main(["evaluate", str(tr)]) == 2


# items 1 and 7 --------------------------------------------------------------------------------------------
def test_report_into_the_evaluation_folder_deletes_nothing(tmp_path):
    tr = _translated(tmp_path)
    assert main(["evaluate", str(tr)]) == 0
    ev = tr / "evaluation"
    before = fx.files_of(ev)
    res = fx.cli("report", str(tr), "--out", str(ev), check=False)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    assert fx.files_of(ev) == before
    fx.cli("report", str(tr), "--out", str(ev), "--overwrite")  # writes beside, keeps the evaluation
    after = fx.files_of(ev)
    assert all(after[k] == v for k, v in before.items() if not k.startswith(".phmdiff"))
    assert "index.html" in after
    # A folder of unrelated files: refused, kept.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("years of work")
    assert main(["report", str(tr), "--out", str(other)]) == 2
    assert (other / "thesis.tex").read_text() == "years of work"
    # Its own earlier output is replaced without --overwrite.
    rep = tmp_path / "rep"
    assert main(["report", str(tr), "--out", str(rep)]) == 0
    assert main(["report", str(tr), "--out", str(rep)]) == 0


def test_evaluate_refuses_an_occupied_out_and_has_overwrite(tmp_path):
    tr = _translated(tmp_path)
    out = tmp_path / "ev"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["evaluate", str(tr), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(["evaluate", str(tr), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "keep" and (out / "summary.json").is_file()
    assert main(["evaluate", str(tr), "--out", str(tmp_path / "ev2")]) == 0
    assert main(["evaluate", str(tr), "--out", str(tmp_path / "ev2")]) == 0  # its own output: replaced


def test_encode_refuses_a_folder_it_did_not_write(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    prepared, ae = data / "prepared", data / "autoencoder"
    target = tmp_path / "cache"
    shutil.copytree(prepared, target)  # e.g. the prepared folder itself given as the cache
    before = fx.files_of(target)
    res = fx.cli("encode", str(prepared), str(ae), str(target), check=False)
    assert res.returncode == 2 and "did not write" in res.stderr
    assert fx.files_of(target) == before


def test_second_translate_into_the_same_out_keeps_the_first_subject(tmp_path_factory, tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    out = tmp_path / "tr"
    subjects = sorted(p.name for p in (data / "phantom").iterdir() if p.is_dir() and p.name.startswith("PHANTOM"))
    for sid in subjects[:2]:
        assert main(["translate", "--run", str(run), "--input", str(data / "phantom" / sid), "--out", str(out),
                     "--steps", "1", "--device", "cpu"]) == 0
    listed = [s["subject"] for s in json.loads((out / "translate.json").read_text())["subjects"]]
    assert listed == subjects[:2]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("x")
    assert main(["translate", "--run", str(run), "--input", str(data / "phantom" / subjects[0]), "--out", str(junk),
                 "--steps", "1", "--device", "cpu"]) == 2


# item 4 ---------------------------------------------------------------------------------------------------
def test_publish_dir_swaps_all_files_as_one_unit(tmp_path):
    out = tmp_path / "ev"
    with publish_dir(out, "evaluate") as tmp:
        (tmp / "per_subject.csv").write_text("old")
        (tmp / "summary.json").write_text("old")
    with pytest.raises(RuntimeError), publish_dir(out, "evaluate") as tmp:
        (tmp / "per_subject.csv").write_text("new")
        raise RuntimeError("killed before summary.json")
    assert {p.name: p.read_text() for p in out.iterdir() if not p.name.startswith(".")} == {
        "per_subject.csv": "old", "summary.json": "old"}


def test_sigkill_during_evaluate_never_leaves_a_mix(tmp_path):
    tr = _translated(tmp_path, ("sub-A", "sub-B"))
    assert main(["evaluate", str(tr)]) == 0
    ev = tr / "evaluation"
    old = fx.files_of(ev)
    meta = json.loads((tr / "translate.json").read_text())
    meta["subjects"] = meta["subjects"][:1]
    (tr / "translate.json").write_text(json.dumps(meta))
    # Kill evaluate at staggered moments; each time the folder is wholly old or wholly new.
    script = ("import sys, os, signal, phmdiff.fsutil as f\n"
              "real = f.atomic_write_text\n"
              "def slow(path, text):\n"
              "    real(path, text)\n"
              "    if str(path).endswith('summary.json'): os.kill(os.getpid(), signal.SIGKILL)\n"
              "f.atomic_write_text = slow\n"
              "import phmdiff.eval.evaluate as e; e.atomic_write_text = slow\n"
              "from phmdiff.cli import main; sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, "evaluate", str(tr)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert fx.files_of(ev) == old  # per_subject.csv was written, then the kill: nothing of it is visible
    assert main(["evaluate", str(tr)]) == 0
    assert "sub-B" not in (ev / "per_subject.csv").read_text()
    assert not [p for p in tr.iterdir() if p.name.startswith(".evaluation.")]  # the dead run's temp is gone


# item 8 ---------------------------------------------------------------------------------------------------
# The stage folders of dead runs, and user folders that only look like them: test_reliability_ownership.py.


def test_sigkill_during_prepare_leaves_a_temp_that_the_next_prepare_removes(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    out = tmp_path / "prepared"
    args = [sys.executable, "-m", "phmdiff", "prepare", str(data / "phantom"), str(out), "--size", "16", "--fit",
            "resize", "--modalities", "t1", "t2", "flair"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".prepared.*.tmp")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not list(tmp_path.glob(".prepared.*.tmp")):
        pytest.skip("prepare finished before the kill")
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not list(tmp_path.glob(".prepared.*")), list(tmp_path.iterdir())


def test_check_out_dir_accepts_missing_empty_and_own(tmp_path):
    assert check_out_dir(tmp_path / "new", "report") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", "report")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_out_dir(tmp_path / "f", "report")
