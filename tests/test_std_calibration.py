"""The std calibration: validation fits RMS error / RMS std on its slices, translate scales the std volume by it;
a factor outside the plausible range [0.1, 30] is refused, said, and not applied."""

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from phmdiff.checkpoint_io import load_checkpoint, resolve_checkpoint, sha256_file
from phmdiff.std_calibration import STD_SCALE_RANGE, recorded_std_scale, std_scale_refusal
from phmdiff.training.loop import _calibration_words, calibration_fit, calibration_sums


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
    assert val["n_samples"] == 3 and val["std_scale"] > 0 and val["std_scale_trusted"] is True
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


@pytest.mark.parametrize("factor", [0.1, 1.0, 2.42, 3.5, 30.0])
def test_plausible_factors_are_trusted(factor):
    assert std_scale_refusal(factor) is None
    assert recorded_std_scale({"std_scale": factor}) == (factor, None)


@pytest.mark.parametrize("factor", [368.5, 30.01, 0.099, 1e-6, 0.0, -2.0, math.inf, math.nan])
def test_absurd_factors_are_refused_with_the_range(factor):
    why = std_scale_refusal(factor)
    if math.isfinite(factor) and factor > 0:
        assert why == f"factor {factor:.4g} outside [0.1, 30]"
    else:
        assert "not a positive finite number" in why
    applied, refused = recorded_std_scale({"std_scale": factor})
    assert applied is None and (refused == factor or math.isnan(factor) and math.isnan(refused))


def test_the_range_and_the_sentence_for_368_5():
    assert STD_SCALE_RANGE == (0.1, 30.0)
    assert std_scale_refusal(368.5) == "factor 368.5 outside [0.1, 30]"


def test_no_calibration_and_a_recorded_refusal():
    assert recorded_std_scale(None) == (None, None)
    assert recorded_std_scale({"psnr": 20.0}) == (None, None)  # validation with one sample: no fit
    # a factor training refused stays refused, whatever the range says now
    assert recorded_std_scale({"std_scale": 2.0, "std_scale_trusted": False}) == (None, 2.0)


def test_validation_records_the_fit_and_whether_it_is_trusted():
    ok = calibration_fit(0.066, 0.0275)  # the demo's figures: 2.4
    assert ok["std_scale"] == pytest.approx(2.4) and ok["std_scale_trusted"] is True and "std_scale_refused" not in ok
    assert _calibration_words(ok) == "  std calibration x2.40"
    bad = calibration_fit(3.685, 0.01)  # the real-scan run of issue 35
    assert bad["std_scale"] == pytest.approx(368.5) and bad["std_scale_trusted"] is False
    assert bad["std_scale_refused"] == "factor 368.5 outside [0.1, 30]"
    words = _calibration_words(bad)
    assert "refused (factor 368.5 outside [0.1, 30]" in words and "own spread" in words and "x368" not in words
    assert _calibration_words({"psnr": 20.0}) == "" and _calibration_words(None) == ""


def test_translate_sentence_says_the_calibration_was_refused():
    from phmdiff.translate import _std_sentence

    said = _std_sentence(None, 368.5)
    assert "refused (factor 368.5 outside [0.1, 30]" in said and "own spread" in said and said.count(". ") == 0
    assert "x 2.40" in _std_sentence(2.4) and "uncalibrated" in _std_sentence(None)


def _with_validation(run: Path, val: dict) -> None:
    """Record `val` as the validation of every checkpoint of `run`, with their manifests rewritten to match."""
    for meta_path in run.glob("checkpoints/*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta["validation"] = val
        meta_path.write_text(json.dumps(meta))
        manifest = json.loads((meta_path.parent / "manifest.json").read_text())
        manifest["files"]["meta.json"] = {"sha256": sha256_file(meta_path), "bytes": meta_path.stat().st_size}
        (meta_path.parent / "manifest.json").write_text(json.dumps(manifest))


def test_a_checkpoint_with_an_absurd_factor_translates_uncalibrated_and_says_so(tiny_run, tmp_path):
    from phmdiff.inference import load_trained
    from phmdiff.translate import translate

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    # written before the guard: the factor alone, no trusted flag
    _with_validation(run, {"psnr": 10.0, "ssim": 0.3, "n": 4, "n_samples": 2, "rms_error": 3.685, "rms_std": 0.01,
                           "std_scale": 368.5})
    trained = load_trained(run, device="cpu")
    assert trained.std_scale is None and trained.std_scale_refused == 368.5
    said = []
    meta = translate(run, tiny_run / "ph" / "PHANTOM_00000", tmp_path / "out", n_samples=2, progress=False,
                     log=said.append)
    entry = meta["subjects"][0]
    assert entry["std_scale"] is None
    assert any("refused (factor 368.5 outside [0.1, 30]" in line for line in said), said
    samples = np.stack([nib.load(tmp_path / "out" / p).get_fdata() for p in entry["samples"]])
    std = nib.load(tmp_path / "out" / entry["std"]).get_fdata()
    np.testing.assert_allclose(std, samples.std(0), rtol=1e-4, atol=1e-4 * std.max())  # the samples' own spread
    assert std.max() > 0
