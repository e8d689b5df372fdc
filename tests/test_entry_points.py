"""`python main.py --config ...` and `python generate.py --model-path RUN --output-dir OUT` on the tiny config."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: trains (or reads) a whole tiny run

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "training" / "tiny.yaml"


def _py(*args, cwd):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from phmdiff.data.phantom import write_phantom

    work = tmp_path_factory.mktemp("entry")
    write_phantom(work / "ph", "brain", n_subjects=4, shape=(32, 32, 16), seed=2)
    out = _py(ROOT / "main.py", "--config", TINY, "data.root=ph", "data.prepared=prep", "data.cache=lat",
              "log.run_dir=run", "--no-progress", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work


def test_main_runs_the_training_chain(run):
    assert (run / "run" / "autoencoder.safetensors").is_file()
    assert (run / "run" / "checkpoints" / "step-000004" / "manifest.json").is_file()
    assert (run / "prep" / "manifest.json").is_file() and (run / "lat" / "meta.json").is_file()


def test_main_again_reuses_every_stage(run):
    out = _py(ROOT / "main.py", "--config", TINY, "data.root=ph", "data.prepared=prep", "data.cache=lat",
              "log.run_dir=run", "--no-progress", cwd=run)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "prepare: prep reused" in out.stderr and "encode: lat reused" in out.stderr


def test_generate_writes_pngs_and_does_not_depend_on_batch_size(run):
    a = _py(ROOT / "generate.py", "--model-path", "run", "--output-dir", "gen_a", "--seeds", "0-2", "--batch-size", "3",
            cwd=run)
    assert a.returncode == 0, a.stderr[-3000:]
    b = _py(ROOT / "generate.py", "--model-path", "run", "--output-dir", "gen_b", "--seeds", "1,2", "--batch-size", "1",
            cwd=run)
    assert b.returncode == 0, b.stderr[-3000:]
    assert (run / "gen_a" / "grid.png").is_file() and (run / "gen_a" / "samples.nii.gz").is_file()
    for seed in (1, 2):
        name = f"png/seed{seed:06d}.png"
        assert (run / "gen_a" / name).read_bytes() == (run / "gen_b" / name).read_bytes()


@pytest.mark.parametrize("args, needle", [
    (["generate.py", "--model-path", "run", "--output-dir", "g", "--seeds", "5-1"], "runs backwards"),
    (["generate.py", "--model-path", "run", "--output-dir", "g", "--seeds", "x"], "not a whole number"),
    (["generate.py", "--model-path", "nowhere", "--output-dir", "g"], "not found"),
    (["main.py", "--config", str(TINY), "train.nonsense=1"], "unknown key 'train.nonsense'"),
])
def test_bad_input_is_one_sentence_and_exit_2(run, args, needle):
    out = _py(ROOT / args[0], *args[1:], cwd=run)
    assert out.returncode == 2
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert not (run / "g").exists() or not any((run / "g").iterdir())


def test_main_dry_run_prints_the_resolved_config(tmp_path):
    out = _py(ROOT / "main.py", "--config", ROOT / "configs" / "BraTS240.yaml", "train.lr=0.0002", "--dry-run",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model_type: PHMDiff-XL/2" in out.stdout and "lr: 0.0002" in out.stdout
