import subprocess
import sys

import pytest

from phmdiff import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_one_sentence_and_nonzero(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err
    assert "Traceback" not in err


def test_no_arguments_prints_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: phmdiff" in capsys.readouterr().out


@pytest.mark.parametrize("entry", [["-m", "phmdiff", "--version"]])
def test_module_entry_point_runs(entry):
    out = subprocess.run([sys.executable, *entry], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("phmdiff ")


def test_safetensors_errors_are_one_sentence(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    class Boom:
        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(cli, "build_parser", lambda command: (__import__("argparse").ArgumentParser(), Boom))
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
