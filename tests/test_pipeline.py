"""The per-volume translator (`phmdiff.pipeline`): its steps one by one, and the chain against what translate writes."""

import ast
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff.data.readers import find_subjects
from phmdiff.data.volume import VolumeSettings
from phmdiff.inference import load_trained
from phmdiff.pipeline import VolumeOptions, VolumeTranslator, output_dtype, to_output, to_training_grid
from phmdiff.sampling_args import SamplingChoices
from phmdiff.translate import TranslateOptions, translate

SRC = Path(__file__).parents[1] / "src" / "phmdiff"


def test_the_plane_is_resampled_to_the_training_spacing_and_back():
    x = np.linspace(0, 1, 32, dtype=np.float32)
    vol = {"t1": np.broadcast_to(x[:, None, None], (32, 32, 8)).copy()}  # a ramp along the first axis
    affine = np.diag([1.0, 1.0, 4.0, 1.0])  # axial slices of a 1 x 1 mm plane
    said = []
    settings = VolumeSettings(["t1"], size=16, spacing=[2.0, 2.0])
    out, new_affine, grid = to_training_grid(vol, affine, settings, say=said.append, name="s1")
    assert out["t1"].shape == (16, 16, 8) and np.allclose(np.diag(new_affine)[:3], [2, 2, 4])
    assert grid.settings.axis == 2 and grid.in_plane == [1.0, 1.0] and "s1" in said[0]
    back = grid.back(out["t1"])
    assert back.shape == (32, 32, 8)
    np.testing.assert_allclose(back[2:-2], vol["t1"][2:-2], atol=1e-6)  # a ramp survives linear resampling
    kept, same_affine, off = to_training_grid(vol, affine, settings, resample=False, say=said.append, name="s1")
    assert kept["t1"] is vol["t1"] and same_affine is affine and off.resampling is None
    assert "warning" in said[-1] and "--no-resample" in said[-1]


def test_integer_ct_is_written_in_whole_hu_inside_the_window(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)
    settings = VolumeSettings(["t1", "ct"], ct_window=(-1000.0, 2000.0))
    assert output_dtype("ct", settings, path) == np.int16 and output_dtype("t1", settings, path) == np.float32
    np.testing.assert_array_equal(to_output(np.array([-5000.0, 10.4, 10.6, 9000.0]), np.dtype(np.int16),
                                            settings.ct_window), [-1000, 10, 11, 2000])


@pytest.mark.parametrize("field, value, needle", [
    ("steps", 0, "--steps is 0"), ("n_samples", 0, "--n-samples is 0"), ("seed", -1, "--seed is -1"),
    ("batch_size", 0, "--batch-size is 0"), ("precision", "fp8", "--precision is 'fp8'"), ("z_h", 0.0, "--z-h 0.0"),
])
def test_options_are_checked_when_made(field, value, needle):
    with pytest.raises(ValueError, match=needle):  # the sampling choices are checked in their own dataclass
        replace(SamplingChoices() if field == "steps" else TranslateOptions(), **{field: value})
    assert isinstance(TranslateOptions(n_samples=3), VolumeOptions)


@pytest.mark.parametrize("module", ["translate", "ceiling", "pipeline", "plane"])
def test_no_function_level_imports_and_no_circle(module):
    tree = ast.parse((SRC / f"{module}.py").read_text())
    inner = [n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert not inner, f"{module}.py imports inside functions at lines {inner}"
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    if module != "translate":  # the steps never reach back into the batch command
        assert "phmdiff.translate" not in imported


@pytest.mark.slow
def test_the_translator_in_memory_gives_what_translate_writes(tiny_run, tmp_path):
    subject = tiny_run / "ph" / "PHANTOM_00002"
    meta = translate(tiny_run / "run", subject, tmp_path, TranslateOptions(n_samples=2, seed=5, progress=False),
                     log=lambda m: None)
    entry = meta["subjects"][0]
    trained = load_trained(tiny_run / "run", "cpu")
    translator = VolumeTranslator(trained, trained.settings(), VolumeOptions(n_samples=2, seed=5), say=lambda m: None)
    sub = find_subjects(tiny_run / "ph")[2]
    volumes, affine = translator.read(sub, ["t1", "t2"])
    done = []
    pred = translator.predict(volumes, affine, "flair", ["t1", "t2"], sub.id, on_sample=done.append)
    assert done == [0, 1] and pred.samples.shape == (2, *volumes["t1"].shape)
    np.testing.assert_array_equal(pred.mean.astype(np.float32), nib.load(tmp_path / entry["prediction"]).get_fdata())
    np.testing.assert_array_equal(pred.samples[1], nib.load(tmp_path / entry["samples"][1]).get_fdata())
    other = replace(translator, options=VolumeOptions(n_samples=2, seed=6))
    assert np.abs(other.predict(volumes, affine, "flair", ["t1", "t2"], sub.id).mean - pred.mean).max() > 0
