"""The paper cuts of issue 29 item 5: the entry points share their options (phmdiff.options), every option has
help and shows its default, and each entry point says what happened in one sentence."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phmdiff import options
from phmdiff.cli import COMMANDS, build_parser
from phmdiff.cli import main as cli_main
from phmdiff.translate import translate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "training" / "tiny.yaml"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for an absent GPU")
SHARED = ("--threads", "--device", "--overwrite", "--no-progress", "--allow-config-change")


def _entry(name: str):
    """The root main.py or generate.py as a module."""
    spec = importlib.util.spec_from_file_location(f"entry_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parsers():
    """Every command's parser, and the root entry points' (their parsers are built inside main: captured)."""
    found = {f"phmdiff {c}": build_parser(c)[0] for c in COMMANDS}
    for name in ("main", "generate"):
        captured = {}
        real = options.new_parser

        def spy(prog, description, captured=captured, real=real):
            captured["parser"] = real(prog, description)
            return captured["parser"]

        options.new_parser = spy
        try:
            assert _entry(name).main(["--help"]) == 0
        except SystemExit:
            pass
        finally:
            options.new_parser = real
        found[f"{name}.py"] = captured["parser"]
    return found


@pytest.fixture(scope="module")
def parsers():
    return _parsers()


def test_every_option_of_every_entry_point_has_help_and_shows_its_default(parsers):
    for name, parser in parsers.items():
        parser.format_help()  # a stray % in a help text fails here
        formatter = parser._get_formatter()
        for action in parser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
            shown = action.default not in (None, False, [], "") and action.option_strings
            if shown and action.dest != "help":
                text = formatter._expand_help(action)
                assert "default" in text.lower(), f"{name} {action.option_strings} does not show its default"


def test_shared_options_are_spelled_and_explained_the_same_everywhere(parsers):
    helps = {}
    for name, parser in parsers.items():
        assert any("--threads" in a.option_strings for a in parser._actions), f"{name} lacks --threads"
        for action in parser._actions:
            for flag in set(action.option_strings) & {"--threads", "--device", "--allow-config-change"}:
                helps.setdefault(flag, set()).add(action.help.split(";")[0])  # main.py adds what it sets
                if flag == "--device":
                    assert tuple(action.choices) == options.DEVICES, name
    assert all(len(h) == 1 for h in helps.values()), helps
    for name in ("main.py", "phmdiff train"):
        assert any("--allow-config-change" in a.option_strings for a in parsers[name]._actions), name


def test_main_py_passes_allow_config_change_threads_and_device_on(monkeypatch, tmp_path):
    import phmdiff.threads
    import phmdiff.training

    seen = {}
    monkeypatch.setattr(phmdiff.training, "run_pipeline",
                        lambda cfg, **kw: seen.update(kw, device=cfg.train.device))
    monkeypatch.setattr(phmdiff.threads, "set_threads", lambda n: seen.update(threads=n))
    rc = _entry("main").main(["--config", str(TINY), f"log.run_dir={tmp_path}", "--allow-config-change",
                              "--threads", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert seen["allow_config_change"] is True and seen["threads"] == 1 and seen["device"] == "cpu"
    assert seen["progress"] is False


def test_a_user_error_a_closed_pipe_and_ctrl_c_end_the_same_way(capsys):
    def boom(exc):
        def body():
            raise exc
        return body

    assert options.run_entry("x", boom(ValueError("a.nii: bad."))) == 2
    assert capsys.readouterr().err == "x: error: a.nii: bad.\n"
    assert options.run_entry("x", boom(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "x: interrupted.\n"
    assert options.run_entry("x", boom(BrokenPipeError())) == options.EXIT_BROKEN_PIPE
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [[str(ROOT / "main.py"), "--config", str(ROOT / "configs" / "BraTS240.yaml"),
                                   "--dry-run"],
                                  ["-m", "phmdiff", "translate", "--help"]])
def test_a_reader_that_stops_early_gets_no_traceback(args, tmp_path):
    """`main.py --dry-run | head -1`: the pipe closes before the command writes; it ends quietly."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    proc.stdout.close()  # the reader is gone before the command starts writing
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipeError" not in err, err
    assert rc in (0, options.EXIT_BROKEN_PIPE), err  # --help exits 0 before its output is flushed


def test_a_file_given_as_input_folder_says_it_is_a_file(tiny_run, tmp_path, capsys):
    nifti = next((tiny_run / "ph" / "PHANTOM_00000").glob("*t1.nii.gz"))
    rc = cli_main(["translate", "--run", str(tiny_run / "run"), "--input", str(nifti), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{nifti}: is a file, not a folder; expected a subject folder or a folder of subjects." in err
    rc = cli_main(["prepare", str(nifti), str(tmp_path / "p")])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err


@NO_CUDA
def test_device_cuda_without_a_gpu_names_the_flag_not_the_config(tiny_run, tmp_path, capsys):
    lines = []
    translate(tiny_run / "run", tiny_run / "ph" / "PHANTOM_00000", tmp_path / "t", steps=1, device="cuda",
              progress=False, log=lines.append)
    assert lines[0].startswith("phmdiff translate: warning: --device asks for device 'cuda' but no CUDA GPU")
    assert "config" not in lines[0] and "pass --device auto or cpu" in lines[0]
    rc = cli_main(["encode", str(tiny_run / "prep"), str(tmp_path / "none.safetensors"), str(tmp_path / "lat"),
                   "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device is 'cuda' but no CUDA GPU is available; pass --device auto or cpu." in err
    assert "config" not in err


@pytest.fixture(scope="module")
def two_subjects(tiny_run, tmp_path_factory):
    """A folder holding two of the tiny run's phantom subjects (links, not copies)."""
    root = tmp_path_factory.mktemp("two")
    for sid in ("PHANTOM_00000", "PHANTOM_00001"):
        (root / sid).symlink_to(tiny_run / "ph" / sid, target_is_directory=True)
    return root


def test_translate_progress_bar_counts_subjects_not_sample_volumes(tiny_run, two_subjects, tmp_path, capsys):
    translate(tiny_run / "run", two_subjects, tmp_path / "out", n_samples=2, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "subject" in err
    assert "/4" not in err and "volume" not in err.split("translate:")[-1]


def test_gitignore_lists_the_readme_output_folders():
    lines = (ROOT / ".gitignore").read_text().split()
    for folder in ("/out/", "/demo_gen/", "/demo_out/", "/runs/"):
        assert folder in lines
