"""Non-finite losses and gradients: skipped and counted; a streak stops the run with a sentence naming the step
and leaves the last good checkpoint in place (issue 8). NaN comes in through the data (a latent cache whose
training latents are NaN) and through the loop's own `step_hook`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import rel_fixture as fx  # noqa: E402

from phmdiff.cli import main  # noqa: E402
from phmdiff.config import load_config  # noqa: E402
from phmdiff.training.checkpoint import find_latest, load_checkpoint  # noqa: E402
from phmdiff.training.loop import train  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _nondeterministic_afterwards():
    yield
    torch.use_deterministic_algorithms(False)  # the loop turns it on process-wide; other tests run here too


def _poisoned_cache(cache: Path, out: Path) -> Path:
    """A copy of the latent cache whose training means are NaN (a damaged export, a bad encoder)."""
    shutil.copytree(cache, out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == "npy"
    for shard in meta["splits"]["train"]["shards"]:
        path = out / f"{shard['name']}.mean.npy"
        np.save(path, np.full_like(np.load(path), np.nan))
    return out


def test_a_streak_of_nan_steps_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path_factory, tmp_path,
                                                                                        capsys):
    data = fx.shared(tmp_path_factory)
    run = tmp_path / "run"
    config = fx.write_config(data, run)
    assert main(["train", "--config", str(config), "--no-progress", "train.max_num_steps=2"]) == 0
    good = load_checkpoint(find_latest(run))
    assert good.step == 2
    capsys.readouterr()
    poisoned = _poisoned_cache(data / "latents", tmp_path / "poisoned")
    code = main(["train", "--config", str(config), "--no-progress", "train.max_num_steps=10",
                 "train.max_nonfinite_steps=3", f"data.cache={poisoned}"])
    err = fx.sentences(capsys.readouterr().err)
    assert code == 2 and len(err) == 1, err
    # Steps 3, 4 and 5 are non-finite: the sentence names step 5 and where the good checkpoint is.
    assert "stopped at step 5" in err[0] and "3 steps in a row" in err[0] and str(run) in err[0], err[0]
    kept = load_checkpoint(find_latest(run))
    assert kept.state["nonfinite_total"] in (0, 2)  # step 4 may be checkpointed as skipped, never step 5
    for name in good.model_state:
        assert torch.equal(kept.model_state[name], good.model_state[name]), name
        assert torch.equal(kept.ema_state[name], good.ema_state[name]), name
        assert torch.isfinite(kept.model_state[name]).all()


def test_an_isolated_nan_step_is_skipped_and_counted(tmp_path_factory, tmp_path):
    data = fx.shared(tmp_path_factory)

    def nan_at_step_1(step, terms):
        return {**terms, "loss": terms["loss"] * float("nan")} if step == 1 else terms

    skipped = load_config(fx.write_config(data, tmp_path / "skipped"), ["train.max_num_steps=2"])
    summary = train(skipped, progress=False, step_hook=nan_at_step_1)
    assert summary["step"] == 2 and summary["nonfinite_total"] == 1
    plain = load_config(fx.write_config(data, tmp_path / "plain"), ["train.max_num_steps=1"])
    assert train(plain, progress=False)["nonfinite_total"] == 0
    # A skipped step changes nothing: two steps with the second skipped equal one clean step, bit for bit.
    a, b = load_checkpoint(find_latest(tmp_path / "skipped")), load_checkpoint(find_latest(tmp_path / "plain"))
    assert a.state["nonfinite_total"] == 1
    for name in a.model_state:
        assert torch.equal(a.model_state[name], b.model_state[name]), name
        assert torch.equal(a.ema_state[name], b.ema_state[name]), name
    opt_a, opt_b = a.state["optimizer"]["state"], b.state["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[k][s], opt_b[k][s]) for k in opt_a for s in opt_a[k])
