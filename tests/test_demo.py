"""The demo chain end to end on a tiny phantom: scores, panel and NIfTI outputs on the input's grid."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff.demo import demo_config, run_demo

TINY = Path(__file__).parent / "training" / "tiny.yaml"
pytestmark = pytest.mark.slow  # the whole demo chain, learned autoencoder included


def test_demo_runs_the_whole_chain_and_reports_the_four_scores(tmp_path):
    lines = []
    result = run_demo(tmp_path, subjects=4, shape=(32, 32, 16), config=TINY, progress=False, log=lines.append)
    mean = result["scores"]["mean"]
    scored = [row["subject"] for row in result["scores"]["subjects"]]
    assert sorted(scored) == sorted(result["test_subjects"])  # each held-out subject once
    assert set(mean) == {"prediction", "copy_t2", "pipeline_ceiling", "ceiling"}
    for name in mean:
        assert np.isfinite(mean[name]["psnr"]) and -1 <= mean[name]["ssim"] <= 1
        assert np.isfinite(mean[name]["lesion_psnr"])  # every phantom test subject has a tumour
    assert any("lesion PSNR" in line and "pipeline ceiling" in line for line in lines)
    # The pathology and the uncertainty, beside the copy of T2: the edema's intensity ratio and the std's calibration.
    for name in ("prediction", "copy_t2"):
        assert 0 < mean[name]["edema_ratio"] < 5
    p = mean["prediction"]
    assert p["rms_std"] > 0 and p["rms_error"] > 0 and -1 <= p["std_error_correlation"] <= 1
    assert any("edema ratio" in line for line in lines) and any("uncertainty: RMS std" in line for line in lines)
    assert p["error_over_std_tumour"] > 0 and p["error_over_std_healthy"] > 0
    assert any("error / std per subject" in line and all(sid in line for sid in scored) for line in lines)
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "demo.json").is_file() and any("PSNR" in line for line in lines)
    for sid in result["test_subjects"]:
        source = nib.load(tmp_path / "phantom" / sid / f"{sid}_t1.nii.gz")
        pred = nib.load(tmp_path / "translate" / sid / f"{sid}_flair.nii.gz")
        assert pred.shape == source.shape
        np.testing.assert_allclose(pred.affine, source.affine, atol=1e-6)
        # The prediction is the mean of the default 4 samples, each written beside it.
        samples = [nib.load(tmp_path / "translate" / sid / "samples" / f"{sid}_flair_sample{j}.nii.gz").get_fdata()
                   for j in range(4)]
        np.testing.assert_allclose(pred.get_fdata(), np.mean(samples, axis=0), rtol=1e-5, atol=1e-4)


def test_demo_config_puts_every_path_under_the_output_folder(tmp_path):
    cfg = demo_config(tmp_path)
    assert cfg.model.model_type == "PHMDiff-T/4" and cfg.model.autoencoder.preset == "identity"
    for path in (cfg.data.root, cfg.data.prepared, cfg.data.cache, str(cfg.run_dir)):
        assert Path(path).is_relative_to(tmp_path)


def test_demo_refuses_zero_samples(tmp_path, capsys):
    from phmdiff.cli import main

    # argparse's own sentence (phmdiff.argtypes), exit 2
    assert main(["demo", "--out", str(tmp_path / "out"), "--n-samples", "0"]) == 2
    assert "--n-samples" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_demo_writes_one_grid_row_per_modality(tmp_path):
    from PIL import Image

    from phmdiff.demo import run_generate_demo
    from phmdiff.image_grid import GAP, MIN_CELL

    tiny = ["data.resolution=16", "model.in_size=16", "train.max_num_steps=2", "train.unmasked_finetune_steps=0",
            "train.batchsize=4", "eval.sampler=ddim", "eval.churn=0", "eval.num_steps=2", "eval.fine_num_steps=1"]
    lines = []
    result = run_generate_demo(tmp_path, tiny, subjects=3, shape=(16, 16, 16), progress=False, log=lines.append,
                               per_label=2)
    assert list(result["modalities"]) == ["t1", "t2", "flair"]
    # 3 rows (a modality each) of 2 x (sample | nearest training slice), titles above and at the left
    cell = 16 * max(1, -(-MIN_CELL // 16))
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))
    top, left = grid.shape[0] - 3 * (cell + GAP), grid.shape[1] - 4 * (cell + GAP)
    assert top > 0 and left > 0 and (grid[:top] < 128).any() and (grid[top:, :left] < 128).any()
    assert (tmp_path / "run" / "checkpoints").is_dir() and (tmp_path / "generate" / "t2" / "nearest.json").is_file()
    assert any("nearest-slice RMS distance" in line for line in lines)


def test_generate_demo_refuses_a_translation_config(tmp_path, capsys):
    from phmdiff.cli import main

    assert main(["demo", "--task", "generate", "--config", str(TINY), "--out", str(tmp_path / "out")]) == 2
    assert "needs a generation config" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_panel_shows_the_slice_with_the_most_tumour():
    from phmdiff.demo import _tumour_slice

    seg = np.zeros((8, 8, 10))
    seg[2:4, 2:4, 3] = 2
    seg[1:6, 1:6, 7] = 1
    assert _tumour_slice(seg, 10) == 7
    assert _tumour_slice(np.zeros((8, 8, 10)), 10) == 5 and _tumour_slice(None, 9) == 4
