"""One set of sampling options (`phmdiff.sampling_args`) for translate, generate and the root generate.py: each
flag reaches the sampler, a flag left out keeps the run's eval setting, and a bad value is one sentence."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

import phmdiff.inference as inference
from phmdiff import cli
from phmdiff.sampling_args import SamplingChoices

ROOT = Path(__file__).parents[1]
FLAGS = ["--sampler", "euler", "--steps", "3", "--fine-steps", "2", "--sigma-start", "1.5", "--churn", "5",
         "--guidance", "1.25", "--precision", "bf16"]
CHOSEN = {"sampler": "euler", "num_steps": 3, "fine_num_steps": 2, "sigma_start": 1.5, "churn": 5.0, "guidance": 1.25,
          "bf16": True}


def _root_generate(argv):
    spec = importlib.util.spec_from_file_location("root_generate", ROOT / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture
def calls(monkeypatch):
    """What every sampling run received (the pyramid sampler replaced by one that records and returns zeros)."""
    seen = []

    def fake(denoiser, source, avail, target_label, seeds, levels, channels, sampler, num_steps, fine_num_steps,
             sigma_start, guidance, null_label=None, churn=0.0, respacing=""):
        seen.append({"sampler": sampler, "num_steps": num_steps, "fine_num_steps": fine_num_steps,
                     "sigma_start": sigma_start, "churn": churn, "guidance": guidance,
                     "bf16": torch.is_autocast_enabled("cpu")})
        return torch.zeros(source.shape[0], channels, *source.shape[2:])

    monkeypatch.setattr(inference, "sample_pyramid", fake)
    return seen


def _commands(run: Path, tmp_path: Path, name: str):
    subject = run.parent / "ph" / "PHANTOM_00001"
    return {"translate": lambda extra: cli.main(["translate", "--run", str(run), "--input", str(subject), "--out",
                                                 str(tmp_path / f"t{name}"), "--no-progress", *extra]),
            "generate": lambda extra: cli.main(["generate", "--run", str(run), "--out", str(tmp_path / f"g{name}"),
                                                "--seeds", "0-1", "--no-nearest", *extra]),
            "generate.py": lambda extra: _root_generate(["--model-path", str(run), "--output-dir",
                                                         str(tmp_path / f"r{name}"), "--seeds", "0", "--no-nearest",
                                                         *extra])}


@pytest.mark.parametrize("command", ["translate", "generate", "generate.py"])
def test_each_sampling_flag_reaches_the_sampler(tiny_run, tmp_path, calls, command):
    run = _commands(tiny_run / "run", tmp_path, "a")[command]
    assert run(FLAGS) == 0
    assert calls and all(c == CHOSEN for c in calls)
    calls.clear()
    assert _commands(tiny_run / "run", tmp_path, "b")[command]([]) == 0  # left out: the run's eval settings
    assert calls[0] == {"sampler": "heun", "num_steps": 2, "fine_num_steps": 1, "sigma_start": 2.0, "churn": 0.0,
                        "guidance": 1.0, "bf16": False}


def test_the_original_names_reach_the_sampler_too(tiny_run, tmp_path, calls):
    assert _root_generate(["--model-path", str(tiny_run / "run"), "--output-dir", str(tmp_path / "o"), "--seeds", "0",
                           "--no-nearest", "--num-steps", "4", "--cfg-scale", "2"]) == 0
    assert calls[0]["num_steps"] == 4 and calls[0]["guidance"] == 2.0
    assert calls[0]["fine_num_steps"] == 1  # --steps caps the finer levels, which keep the run's 1


@pytest.mark.parametrize("flag, value", [("--fine-steps", "0"), ("--sigma-start", "nan"), ("--sigma-start", "0"),
                                         ("--churn", "-2"), ("--guidance", "inf"), ("--steps", "0")])
@pytest.mark.parametrize("command", ["translate", "generate", "generate.py"])
def test_a_bad_sampling_value_is_one_sentence(tiny_run, tmp_path, capsys, calls, command, flag, value):
    try:  # argparse's own exit, before any work: phmdiff's main returns its code, the root generate.py exits
        code = _commands(tiny_run / "run", tmp_path, "x")[command]([flag, value])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then the sentence
    assert f"argument {flag}" in last and f"{value!r} is" in last and "expected" in last and "Traceback" not in err
    assert not calls


def test_choices_keep_none_for_the_runs_own_setting():
    assert SamplingChoices() == SamplingChoices(None, None, None, None, None, None)
    assert SamplingChoices(guidance=0.0).guidance == 0.0 and SamplingChoices(sigma_start=80.0).sigma_start == 80
    for bad, needle in [({"sampler": "rk4"}, "--sampler is 'rk4'"), ({"fine_steps": 0}, "--fine-steps is 0"),
                        ({"sigma_start": math.nan}, "--sigma-start is nan"), ({"churn": -1.0}, "--churn is -1.0"),
                        ({"guidance": math.inf}, "--guidance is inf"), ({"steps": True}, "--steps is True")]:
        with pytest.raises(ValueError, match=needle):  # the same values from Python (the API) are sentences too
            SamplingChoices(**bad)
