"""Issue 28, "a fuzzing tier": hypothesis drives every option of every command with non-finite, huge, negative
and wrongly typed values. Parsing ends in a namespace or one argparse sentence (exit 2); running evaluate and
report with such options ends in exit 0, 1 or 2, never a traceback, and no file outside --out changes (a victim
folder beside it is checksummed before and after). A few examples by default, many under PHMDIFF_STRESS=1."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import COMMANDS, build_parser, main  # noqa: E402

STRESS = os.environ.get("PHMDIFF_STRESS") == "1"
PARSE = settings(max_examples=1000 if STRESS else 30, deadline=None, derandomize=not STRESS, database=None,
                 phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RUN = settings(PARSE, max_examples=150 if STRESS else 4)
pytestmark = pytest.mark.timeout(3600 if STRESS else 300)

BAD = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e309", "1e300", "-1e300", "-1", "0", "-0", "2.5", "1e3",
                       str(2**70), str(-2**70), "", " ", "abc", "0x10", "None", "[]", "\0", "9" * 400])
VALUES = BAD | st.text(max_size=12) | st.integers(-2**80, 2**80).map(str) | st.floats().map(repr)


def _options(command: str) -> list[argparse.Action]:
    parser, _ = build_parser(command)
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and "--help" not in a.option_strings]


def _required(parser, where: Path) -> list[str]:
    argv = []
    for a in parser._actions:
        if a.required or (not a.option_strings and a.nargs in (None, 1)):
            argv += ([a.option_strings[0]] if a.option_strings else []) + [str(where / "missing")]
    return argv


def _args(action: argparse.Action, value: str) -> list[str]:
    n = action.nargs if isinstance(action.nargs, int) else 1
    return [action.option_strings[0], *[value] * n]


@PARSE
@given(command=st.sampled_from(sorted(COMMANDS)), which=st.integers(0, 10**6), value=VALUES)
def test_every_option_of_every_command_parses_or_is_one_sentence(tmp_path_factory, capsys, command, which, value):
    parser, _ = build_parser(command)
    options = _options(command)
    action = options[which % len(options)]
    argv = [*_required(parser, tmp_path_factory.getbasetemp()), *_args(action, value)]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 2 and "Traceback" not in err and "error:" in err.strip().splitlines()[-1], err
        return
    got = getattr(args, action.dest)
    for v in got if isinstance(got, list) else [got]:  # a parsed number is finite
        if isinstance(v, float):
            assert np.isfinite(v), (command, action.option_strings, value)


def _save(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.eye(4)), str(path))
    return str(path.resolve())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A translate-like folder with its evaluation, and a victim folder beside it that nothing may touch."""
    root = tmp_path_factory.mktemp("stress-cli")
    rng = np.random.default_rng(0)
    entries = []
    for sid in ("sub-A", "sub-B"):
        ref = np.pad(100 + 50 * rng.random((8, 8, 6)), 2)
        entries.append({"subject": sid, "prediction": f"{sid}.nii.gz", "std": None, "samples": [],
                        "reference": _save(root / "refs" / f"{sid}.nii.gz", ref), "mask": None, "seg": None})
        _save(root / "tr" / f"{sid}.nii.gz", ref + rng.standard_normal(ref.shape))
    (root / "tr" / "translate.json").write_text(json.dumps(
        {"target": "flair", "sources": ["t1"], "modality_kind": "mr", "subjects": entries}))
    assert main(["evaluate", str(root / "tr")]) == 0
    victim = root / "victim"
    (victim / "deep").mkdir(parents=True)
    (victim / "thesis.tex").write_text("years of work")
    (victim / "deep" / "data.bin").write_bytes(os.urandom(256))
    return root, fx.files_of(victim)


@RUN
@given(command=st.sampled_from(["evaluate", "report"]), picks=st.lists(st.tuples(st.integers(0, 10**6), VALUES),
                                                                       min_size=1, max_size=3))
def test_fuzzed_options_end_in_0_1_2_and_touch_nothing_outside_out(world, tmp_path_factory, capsys, command, picks):
    root, victim_before = world
    work = tmp_path_factory.mktemp("run")
    shutil.copytree(root / "tr", work / "tr")
    options = _options(command)
    argv = [command, str(work / "tr" / ("evaluation" if command == "report" else "")).rstrip("/"),
            "--out", str(work / "out")]
    for which, value in picks:
        argv += _args(options[which % len(options)], value)
    (work / "cwd").mkdir()
    try:  # a fuzzed relative --out (e.g. "-") is a folder the user named: it lands in this cwd, not the repository
        with contextlib.chdir(work / "cwd"):
            code = main(argv)
    except SystemExit as exc:  # argparse refused an option
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err, (argv, err)
    assert fx.files_of(root / "victim") == victim_before
    outside = {p.name for p in work.iterdir()} - {"tr", "out", "cwd"}
    assert not outside, outside


# Whole translate and generate runs on the shared tiny run. Their values are the crafted ones (non-finite, huge,
# negative, wrong type, text) and small whole numbers: a valid but large count would only make the run long.
RUN_VALUES = BAD | st.sampled_from(["1", "2", "3"]) | st.text(max_size=6)


def _finite_outputs(out: Path) -> None:
    """Every volume and JSON a run published holds only finite numbers."""
    for path in out.rglob("*.nii.gz"):
        assert np.isfinite(np.asarray(nib.load(str(path)).dataobj)).all(), path
    for path in out.rglob("*.json"):
        text = path.read_text()
        json.loads(text, parse_constant=lambda c, where=path: pytest.fail(f"{where}: {c}"))


@RUN
@given(command=st.sampled_from(["translate", "generate"]),
       picks=st.lists(st.tuples(st.integers(0, 10**6), RUN_VALUES), min_size=1, max_size=2))
def test_fuzzed_translate_and_generate_runs_end_in_0_1_2_with_finite_outputs(world, tmp_path_factory, capsys,
                                                                             command, picks):
    root, victim_before = world
    data, run = fx.shared(tmp_path_factory), fx.trained_run(tmp_path_factory)
    work = tmp_path_factory.mktemp("run")
    base = {"translate": ["--input", str(data / "phantom" / "PHANTOM_00001"), "--n-samples", "2", "--no-progress"],
            "generate": ["--seeds", "0-1"]}[command]  # each exits 0 as it stands
    argv = [command, "--run", str(run), "--out", str(work / "out"), *base, "--steps", "2", "--device", "cpu"]
    options = [a for a in _options(command) if "--device" not in a.option_strings]
    for which, value in picks:
        argv += _args(options[which % len(options)], value)
    (work / "cwd").mkdir()
    try:
        with contextlib.chdir(work / "cwd"):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err, (argv, err)
    assert fx.files_of(root / "victim") == victim_before
    assert not {p.name for p in work.iterdir()} - {"out", "cwd"}
    for out in (work / "out", work / "cwd"):
        _finite_outputs(out)
