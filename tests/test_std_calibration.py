"""The std calibration: validation fits RMS error / RMS std on its slices, translate scales the std volume by it."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from phmdiff.checkpoint_io import load_checkpoint, resolve_checkpoint
from phmdiff.training.loop import calibration_sums


def test_calibration_sums_match_a_closed_form():
    # Two samples at ref + 0.1 +- 0.05 on the foreground: the mean errs by 0.1, the population std is 0.05.
    ref = torch.zeros(3, 1, 4, 5)
    ref[:, :, 1:3, 1:4] = 0.5  # 6 foreground pixels per slice
    src = torch.full((3, 2, 4, 5), -1.0)
    src[0, 1, 0, 0] = 0.0  # one more foreground pixel, seen by a source only: its target is 0
    sign = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1)
    samples = ref + 0.1 + 0.05 * sign
    err2, std2, n = calibration_sums(samples, ref, src)
    assert n == 3 * 6 + 1
    assert err2 == pytest.approx(n * 0.1**2) and std2 == pytest.approx(n * 0.05**2)
    assert math.sqrt(err2 / std2) == pytest.approx(2.0)


def test_the_background_does_not_count():
    ref, src = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), -1.0)
    samples = torch.rand(3, 1, 1, 4, 4)  # noise in the air: nothing to calibrate on
    assert calibration_sums(samples, ref, src) == (0.0, 0.0, 0.0)


def test_validation_fits_the_scale_and_translate_applies_it(tmp_path):
    from conftest import tiny_config

    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline
    from phmdiff.translate import translate

    write_phantom(tmp_path / "ph", "brain", n_subjects=4, shape=(16, 16, 16), seed=1)
    cfg = tiny_config(tmp_path, "eval.every=4", "eval.n_samples=3")
    run_pipeline(cfg, progress=False, log=lambda m: None)
    val = load_checkpoint(resolve_checkpoint(tmp_path / "run", "best")).meta["validation"]
    assert val["n_samples"] == 3 and val["std_scale"] > 0
    assert val["std_scale"] == pytest.approx(val["rms_error"] / val["rms_std"])

    said = []
    meta = translate(tmp_path / "run", tmp_path / "ph" / "PHANTOM_00000", tmp_path / "out", n_samples=2,
                     progress=False, log=said.append)
    entry = meta["subjects"][0]
    assert entry["std_scale"] == pytest.approx(val["std_scale"])
    assert json.loads((tmp_path / "out" / "translate.json").read_text())["subjects"][0]["std_scale"] == \
        entry["std_scale"]
    assert any(f"x {val['std_scale']:.2f}" in line for line in said), said
    samples = np.stack([nib.load(tmp_path / "out" / p).get_fdata() for p in entry["samples"]])
    std = nib.load(tmp_path / "out" / entry["std"]).get_fdata()
    np.testing.assert_allclose(std, samples.std(0) * val["std_scale"], rtol=1e-4, atol=1e-4 * std.max())
    assert std.max() > 0


def test_a_run_without_calibration_writes_the_raw_spread_and_says_so(tiny_run, tmp_path):
    from phmdiff.translate import translate

    said = []
    meta = translate(tiny_run / "run", tiny_run / "ph" / "PHANTOM_00000", tmp_path, n_samples=2, progress=False,
                     log=said.append)
    assert meta["subjects"][0]["std_scale"] is None
    assert any("uncalibrated" in line for line in said), said
