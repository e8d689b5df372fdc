"""train-ae: latent scale against its closed form, reconstruction metrics in original units, quality gate."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from phmdiff.autoencoder import load_autoencoder
from phmdiff.config import load_config
from phmdiff.training import run_pipeline
from phmdiff.training.train_ae import random_crop, slice_datasets, train_autoencoder

TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from phmdiff.data.phantom import write_phantom

    root = tmp_path_factory.mktemp("ae")
    write_phantom(root / "ph", "brain", n_subjects=4, shape=(16, 16, 16), seed=3)
    return root


def _cfg(root, run, *extra):
    return load_config(TINY, [f"data.root={root / 'ph'}", f"data.prepared={root / 'prep'}", "data.resolution=16",
                              "model.in_size=4", f"log.run_dir={root / run}", *extra])


def test_identity_autoencoder_scale_is_one_over_the_std_of_the_training_images(prepared, capsys):
    cfg = _cfg(prepared, "ident", "model.autoencoder.preset=identity", "model.in_size=16", "model.in_channels=1")
    run_pipeline(cfg, stages=("prepare",), progress=False, log=lambda m: None)
    report = train_autoencoder(cfg, progress=False)
    data = slice_datasets(cfg, "train")
    images = torch.stack([data[i]["target"] for i in range(len(data))]).double()
    assert len(data) <= 512  # so the scale saw every slice and the closed form applies exactly
    assert report["latent_scale"] == pytest.approx(1 / images.std().item(), rel=1e-6)
    assert report["psnr"] == float("inf") and report["ssim"] == pytest.approx(1.0)
    assert report["quality_gate"] == "pass" and "warning" not in capsys.readouterr().err
    ae = load_autoencoder(cfg.run_dir / "autoencoder.safetensors")
    assert float(ae.latent_scale) == pytest.approx(report["latent_scale"])
    saved = json.loads((cfg.run_dir / "autoencoder_report.json").read_text())
    assert saved["latent_scale"] == pytest.approx(report["latent_scale"])


def test_a_poor_autoencoder_trains_saves_and_warns(prepared, capsys):
    cfg = _cfg(prepared, "tinyae", "model.autoencoder.steps=2", "model.autoencoder.min_psnr=60",
               "model.autoencoder.crop=8")
    run_pipeline(cfg, stages=("prepare",), progress=False, log=lambda m: None)
    report = train_autoencoder(cfg, progress=False)
    assert report["steps"] == 2 and report["quality_gate"] == "warn"
    assert np.isfinite(report["psnr"]) and report["n"] > 0
    assert "below model.autoencoder.min_psnr = 60.0 dB" in capsys.readouterr().err
    with pytest.raises(ValueError, match="an autoencoder already exists; pass --overwrite"):
        train_autoencoder(cfg, progress=False)


def test_random_crop_takes_windows_of_each_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    crops = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert crops.shape == (2, 1, 4, 4)
    for img, crop in zip(x, crops):
        top, left = divmod(int((crop[0, 0, 0] - img[0, 0, 0]).item()), 6)
        assert torch.equal(crop, img[:, top : top + 4, left : left + 4])
