"""Issue 28, items 1-3: a command deletes or replaces only what it can prove it wrote. The marker is a claim
checked name by name (plain, inside `--out`, not a link, checksum unchanged); no write goes through a link in
`--out`; temp and backup folders are removed only when their owner record proves a dead writer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.fsutil import OWNER, atomic_dir, atomic_path, check_out_dir, clean_dead_temps, publish_dir  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _victim(root: Path) -> Path:
    victim = root / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "data.txt").write_text("precious")
    (victim / "sub" / "x.txt").write_text("also precious")
    return victim


def _plant(out: Path, command: str, files) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f".phmdiff-{command}.json").write_text(json.dumps({"command": command, "files": files}))


@pytest.mark.parametrize("form", ["list", "dict"])
def test_a_planted_marker_deletes_nothing_outside_out(tmp_path, form):
    victim = _victim(tmp_path)
    before = fx.files_of(victim)
    out = tmp_path / "out"
    names = [str(victim / "data.txt"), str(victim), "../victim", "../victim/sub", "..", "/"]
    _plant(out, "evaluate", names if form == "list" else {n: "0" * 64 for n in names})
    (out / "keep.txt").write_text("mine")
    with publish_dir(out, "evaluate") as tmp:
        (tmp / "summary.json").write_text("{}")
    assert fx.files_of(victim) == before
    assert (out / "keep.txt").read_text() == "mine" and (out / "summary.json").read_text() == "{}"


def test_a_marker_naming_a_users_file_inside_out_does_not_delete_it(tmp_path):
    out = tmp_path / "gen"
    with publish_dir(out, "generate") as tmp:
        (tmp / "sample_0000.png").write_bytes(b"png0")
        (tmp / "sample_0001.png").write_bytes(b"png1")
    # The user puts their own file in, and a marker is edited to claim it (or a file of ours is edited).
    (out / "notes.txt").write_text("mine")
    (out / "sample_0001.png").write_bytes(b"edited by the user")
    meta = json.loads((out / ".phmdiff-generate.json").read_text())
    meta["files"]["notes.txt"] = meta["files"]["sample_0000.png"]
    (out / ".phmdiff-generate.json").write_text(json.dumps(meta))
    with publish_dir(out, "generate") as tmp:  # this run writes fewer samples: 0001 would be stale
        (tmp / "sample_0000.png").write_bytes(b"new0")
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sample_0001.png").read_bytes() == b"edited by the user"
    assert (out / "sample_0000.png").read_bytes() == b"new0"
    # A new output over a changed file of the same name: refused without --overwrite, nothing replaced.
    (out / "sample_0000.png").write_bytes(b"edited again")
    with pytest.raises(ValueError, match="nothing was replaced"), publish_dir(out, "generate") as tmp:
        (tmp / "sample_0000.png").write_bytes(b"newer")
    assert (out / "sample_0000.png").read_bytes() == b"edited again"
    with publish_dir(out, "generate", overwrite=True) as tmp:
        (tmp / "sample_0000.png").write_bytes(b"newer")
    assert (out / "sample_0000.png").read_bytes() == b"newer" and (out / "notes.txt").read_text() == "mine"


def test_unchanged_own_output_is_replaced_and_stale_names_removed(tmp_path):
    out = tmp_path / "rep"
    with publish_dir(out, "report") as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "img").mkdir()
        (tmp / "img" / "p.png").write_bytes(b"x")
    with publish_dir(out, "report") as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [".phmdiff-report.json", "b.txt"]


def test_a_link_in_out_is_neither_followed_nor_deleted_through(tmp_path):
    victim = _victim(tmp_path)
    before = fx.files_of(victim)
    out = tmp_path / "out"
    with publish_dir(out, "report") as tmp:
        (tmp / "img").mkdir()
    os.rename(out / "img", tmp_path / "gone")
    os.symlink(victim, out / "img")  # the claimed folder is now a link to the victim
    with publish_dir(out, "report", overwrite=True) as tmp:
        (tmp / "index.html").write_text("x")
    assert fx.files_of(victim) == before


def test_evaluate_with_a_planted_marker_leaves_the_victim(tmp_path):
    victim = _victim(tmp_path)
    before = fx.files_of(victim)
    tr = tmp_path / "tr"
    tr.mkdir()
    (tr / "translate.json").write_text(json.dumps({"target": "flair", "sources": ["t1"], "subjects": []}))
    _plant(tr / "evaluation", "evaluate", [str(victim), "../../victim"])
    main(["evaluate", str(tr)])
    assert fx.files_of(victim) == before and victim.is_dir()


def test_translate_does_not_write_through_a_linked_subject_folder(tmp_path_factory, tmp_path):
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    sid = sorted(p.name for p in (data / "phantom").iterdir() if p.name.startswith("PHANTOM"))[0]
    out = tmp_path / "tr"
    args = ["translate", "--run", str(run), "--input", str(data / "phantom" / sid), "--out", str(out),
            "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    elsewhere = tmp_path / "elsewhere"
    os.rename(out / sid, elsewhere)
    os.symlink(elsewhere, out / sid)
    before = fx.files_of(elsewhere)
    assert main([*args, "--overwrite"]) == 1  # the subject is listed as not translated, with its reason
    assert fx.files_of(elsewhere) == before
    skipped = json.loads((out / "translate.json").read_text())["skipped"]
    assert "symbolic link" in json.dumps(skipped)


# temp and backup folders -----------------------------------------------------------------------------------
def _lookalikes(root: Path, name: str) -> list[Path]:
    """User folders named like the tool's temp and backup folders, past and present."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    made = []
    for fake in [f".{name}.old", f".{name}.backup.tmp", f".{name}.{dead.pid}-x.tmp", f".{name}.1-abcd.tmp",
                 f".{name}.phmdiff-0123456789abcdef.tmp", f".{name}.phmdiff-fedcba9876543210.tmp"]:
        (root / fake).mkdir()
        (root / fake / "thesis.tex").write_text("years of work")
        made.append(root / fake)
    # A record with a dead pid, but its token does not match the folder's name.
    (made[-1] / OWNER).write_text(json.dumps({"token": "0000000000000000", "pid": dead.pid, "start": None}))
    return made


def test_user_folders_named_like_temps_are_never_touched(tmp_path):
    made = _lookalikes(tmp_path, "results")
    before = {p: fx.files_of(p) for p in made}
    check_out_dir(tmp_path / "results", "evaluate")
    assert not (tmp_path / "results").exists()  # `.results.old` is not moved into place
    with atomic_dir(tmp_path / "results") as tmp:
        (tmp / "a").write_text("1")
    with publish_dir(tmp_path / "results", "evaluate", overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert {p: fx.files_of(p) for p in made if p.exists()} == before


@pytest.mark.parametrize("name", ["cache", "c" * 240])  # a name near the 255-byte limit has a stage too
def test_a_killed_writers_stage_is_removed_and_a_torn_swap_completed(tmp_path, name):
    out = tmp_path / name
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    script = ("import os, signal, sys\nfrom phmdiff.fsutil import atomic_dir\n"
              "with atomic_dir(sys.argv[1]) as tmp:\n"
              "    (tmp / 'a').write_text('2')\n"
              "    os.replace(sys.argv[1], tmp.with_name('previous'))\n"  # the first rename of a fallback swap
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(out)], env={**os.environ}, timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    stages = list(tmp_path.glob(".*.phmdiff-*.tmp"))
    assert len(stages) == 1
    assert clean_dead_temps(out) == stages
    assert (out / "a").read_text() == "1" and not stages[0].exists()
    with atomic_path(tmp_path / f"{name}.json") as tmp:  # a file of such a name too
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.json"])


def test_a_file_writer_killed_mid_write_leaves_a_stage_that_the_next_run_removes(tmp_path):
    """A single-file atomic write killed by SIGKILL leaves only a hidden stage with its owner record; the next
    command into that folder removes it (and keeps the user's files)."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    script = ("import os, signal, sys\nfrom phmdiff.fsutil import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('half')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    for name in ("evaluation.json", "scores.csv"):
        proc = subprocess.run([sys.executable, "-c", script, str(out / name)], env={**os.environ}, timeout=60)
        assert proc.returncode == -signal.SIGKILL
    stages = sorted(out.glob(".*.phmdiff-*.tmp"))
    assert len(stages) == 2 and all((s / OWNER).is_file() for s in stages)
    assert sorted(p.name for p in out.iterdir() if p not in stages) == ["notes.txt"]
    with pytest.raises(ValueError, match="did not write"):
        check_out_dir(out, "evaluate")  # refused for the user's file, after removing the dead stages
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_resumed_training_removes_the_temp_of_a_write_killed_in_its_run_folder(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=1")
    script = ("import os, signal, sys\nfrom phmdiff.fsutil import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('step,loss\\n1,')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(run / "log.csv")], env={**os.environ}, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stage = next(run.glob(".log.csv.phmdiff-*.tmp"))
    fx.in_process("train", "--config", str(config), "--no-progress", "train.max_num_steps=2")
    assert not stage.exists() and not list(run.glob(".*.phmdiff-*"))


def test_a_live_writers_stage_is_kept_and_a_reused_pid_is_seen(tmp_path):
    out = tmp_path / "cache"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with atomic_dir(out) as tmp:
            stage = tmp.parent
            record = json.loads((stage / OWNER).read_text())
            # Hand the stage to the live process (its real start time): kept while it runs.
            from phmdiff.fsutil import pid_start
            (stage / OWNER).write_text(json.dumps({**record, "pid": live.pid, "start": pid_start(live.pid)}))
            assert clean_dead_temps(out) == [] and stage.exists()
            if pid_start(live.pid) is not None:  # same pid, another start time: a reused pid, the owner is gone
                (stage / OWNER).write_text(json.dumps({**record, "pid": live.pid, "start": "1"}))
                assert clean_dead_temps(out) == [stage]
                (tmp).mkdir(parents=True)
    finally:
        live.kill()
        live.wait()


def test_prepare_replaces_only_a_folder_that_is_wholly_its_own(tmp_path_factory, tmp_path):
    from phmdiff.data.prepare import PrepareSettings, prepare

    data = fx.shared(tmp_path_factory)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"another tool": 1}')  # a manifest.json is a claim, not a proof
    (out / "thesis.tex").write_text("years of work")
    before = fx.files_of(out)
    settings = PrepareSettings()
    settings.volume.size = 16
    with pytest.raises(ValueError, match="not a prepared folder"):
        prepare(data / "phantom", out, settings, ["t1", "t2", "flair"], progress=False)
    assert fx.files_of(out) == before
    (out / "thesis.tex").unlink()
    with pytest.raises(ValueError, match="not a prepared folder"):
        prepare(data / "phantom", out, settings, ["t1", "t2", "flair"], progress=False)
    assert (out / "manifest.json").read_text() == '{"another tool": 1}'
