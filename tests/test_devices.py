"""Threads and devices: every command uses the available cores unless told otherwise, says which device it runs
on, and warns (then runs on the CPU) when its config asks for a GPU that is absent."""

import os
import shutil

import pytest
import torch
from conftest import tiny_config

from phmdiff.devices import run_device
from phmdiff.threads import available_cores, set_threads

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for an absent GPU")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_zero_threads_means_every_available_core_unless_omp_says_otherwise(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= available_cores() <= (os.cpu_count() or 1)
    assert set_threads(0) == available_cores()
    assert set_threads(1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(0) == 1  # told otherwise by the environment: left as it is
    with pytest.raises(ValueError, match="expected 0"):
        set_threads(-1)


@NO_CUDA
def test_an_absent_gpu_is_a_warning_and_the_run_goes_on_on_the_cpu():
    lines = []
    assert run_device("cuda", "train", lines.append).type == "cpu"
    assert "warning: the config asks for device 'cuda' but no CUDA GPU is available" in lines[0]
    assert lines[1].startswith("phmdiff train: running on cpu (") and "threads)" in lines[1]
    lines.clear()
    assert run_device("auto", "translate", lines.append).type == "cpu" and len(lines) == 1


@NO_CUDA
def test_train_without_progress_bar_names_its_device_and_logs_every_n_steps(tiny_run, tmp_path):
    from phmdiff.training.loop import train

    shutil.copytree(tiny_run / "run", tmp_path / "run")  # resume the shared run for 2 more steps
    cfg = tiny_config(tiny_run, f"log.run_dir={tmp_path / 'run'}", "train.max_num_steps=6", "log.log_every=1",
                      "train.device=cuda")
    lines = []
    train(cfg, progress=False, log=lines.append)
    assert "warning: the config asks for device 'cuda' but no CUDA GPU is available" in lines[0]
    assert lines[1].startswith("phmdiff train: running on cpu (") and "threads)" in lines[1]
    assert lines[2] == f"train: resuming {tmp_path / 'run'} from step-000004 at step 4 of 6."  # never silent
    assert [line.split("  ")[0] for line in lines[3:]] == ["train: step 5/6", "train: step 6/6"]


@NO_CUDA
def test_train_ae_without_progress_bar_names_its_device_and_logs_every_n_steps(tiny_run, tmp_path):
    from phmdiff.training.train_ae import train_autoencoder

    cfg = tiny_config(tiny_run, "model.autoencoder.preset=tiny", "model.in_size=4", "model.in_channels=4",
                      "model.autoencoder.steps=2", "model.autoencoder.min_psnr=0", "log.log_every=1",
                      f"log.run_dir={tmp_path / 'ae'}", "train.device=cuda")
    lines = []
    train_autoencoder(cfg, progress=False, log=lines.append)
    assert "no CUDA GPU is available; running on the CPU instead" in lines[0]
    assert lines[1].startswith("phmdiff train-ae: running on cpu")
    assert [line.split("  ")[0] for line in lines[2:]] == ["train-ae: step 1/2", "train-ae: step 2/2"]


@NO_CUDA
def test_translate_names_its_device(tiny_run, tmp_path):
    from phmdiff.translate import translate

    subject = sorted(p for p in (tiny_run / "ph").iterdir() if p.is_dir())[0]
    lines = []
    translate(tiny_run / "run", subject, tmp_path / "out", steps=1, device="cuda", progress=False, log=lines.append)
    assert "warning: --device asks for device 'cuda'" in lines[0]
    assert lines[1].startswith("phmdiff translate: running on cpu")
