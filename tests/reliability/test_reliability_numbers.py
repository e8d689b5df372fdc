"""Issue 28, item 5: every number is checked where it enters. Each float option of each command goes through
`argtypes.finite_float` and each sizing integer through `argtypes.whole` (found by walking every parser, so a
new option cannot slip past), environment variables are parsed once at the start; anything else is one
sentence and exit 2, never a traceback and never a NaN output."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest

from phmdiff.argtypes import finite_float, whole
from phmdiff.cli import COMMANDS, build_parser, main

REPO = Path(__file__).resolve().parents[2]
BAD_FLOATS = ["nan", "inf", "-inf", "1e300", "-1e300", "abc", ""]


@pytest.mark.parametrize("text", BAD_FLOATS)
def test_finite_float_refuses_non_finite_huge_and_text(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a"):
        finite_float(0, 100)(text)


def test_finite_float_range_and_open_bound():
    parse = finite_float(0, 10, lo_open=True)
    assert parse("10") == 10.0 and parse("1e-3") == 1e-3
    for text in ("0", "-0.0", "10.0001", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


@pytest.mark.parametrize("text", ["1e3", "2.5", "nan", "9" * 40, "-4", "3"])
def test_whole_refuses_what_is_not_a_whole_number_in_range(text):
    with pytest.raises(argparse.ArgumentTypeError):
        whole(-3, 2)(text)


def _numeric_actions():
    for command in COMMANDS:
        parser, _ = build_parser(command)
        for action in parser._actions:
            if action.option_strings and action.type is not None and action.type not in (str, Path):
                yield command, action


def test_no_option_of_any_command_is_a_bare_float_or_int():
    bare = [(c, a.option_strings[0]) for c, a in _numeric_actions() if a.type in (float, int)]
    assert not bare, f"parse these with phmdiff.argtypes (finite and in range): {bare}"


def _floats():
    return [(c, a.option_strings[0], a.nargs) for c, a in _numeric_actions() if a.type.__name__ == "number"]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, option, nargs", _floats())
@pytest.mark.parametrize("value", ["nan", "inf", "1e300"])
def test_every_float_option_refuses_non_finite_values(command, option, nargs, value, capsys, tmp_path):
    parser, _ = build_parser(command)
    required = [a for a in parser._actions if a.required or (not a.option_strings and a.nargs is None)]
    argv = [command]
    for a in required:
        argv += ([a.option_strings[0]] if a.option_strings else []) + [str(tmp_path / "missing")]
    argv += [option, *([value] * (nargs if isinstance(nargs, int) else 1))]
    code, err = _run(argv, capsys)
    assert code == 2 and option in err and "finite" in err and "Traceback" not in err, err
    assert not (tmp_path / "missing").exists()


def test_evaluate_slice_axis_out_of_range_is_a_sentence(capsys, tmp_path):
    code, err = _run(["evaluate", str(tmp_path), "--slice-axis", "7"], capsys)
    assert code == 2 and "--slice-axis" in err and "from -3 to 2" in err


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "abc", "1e400", "2.5", "1e30"])
def test_a_bad_voxel_limit_in_the_environment_is_one_sentence(value, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", value)
    code, err = _run(["report", str(tmp_path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "PHMDIFF_MAX_VOXELS" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_voxel_limit_accepts_a_whole_number_written_as_a_float(monkeypatch):
    from phmdiff.limits import max_voxels

    monkeypatch.setenv("PHMDIFF_MAX_VOXELS", "1e8")
    assert max_voxels() == 10**8 and not math.isnan(max_voxels())


def test_root_generate_py_refuses_a_nan_guidance(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "generate.py"), "--model-path", str(tmp_path), "--output-dir",
                          str(tmp_path / "out"), "--cfg-scale", "nan"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--cfg-scale" in res.stderr and "Traceback" not in res.stderr, res.stderr
