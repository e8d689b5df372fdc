"""translate on a tiny trained run: the input's grid and header, determinism, n-samples, refusals."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff import cli
from phmdiff.translate import translate

pytestmark = pytest.mark.slow  # end to end: trains (or reads) a whole tiny run


@pytest.fixture
def trained(tiny_run):
    return tiny_run


def test_outputs_keep_the_input_grid_header_and_translate_json(trained, tmp_path):
    subject = trained / "ph" / "PHANTOM_00002"
    meta = translate(trained / "run", subject, tmp_path, progress=False)
    ref = nib.load(subject / "PHANTOM_00002_t1.nii.gz")
    pred = nib.load(tmp_path / meta["subjects"][0]["prediction"])
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    assert pred.header.get_zooms() == ref.header.get_zooms()
    assert np.isfinite(pred.get_fdata()).all()
    entry = meta["subjects"][0]
    assert entry["reference"].endswith("PHANTOM_00002_flair.nii.gz") and entry["seg"].endswith("_seg.nii.gz")
    assert json.loads((tmp_path / "translate.json").read_text())["target"] == "flair"
    assert cli.main(["evaluate", str(tmp_path), "--out", str(tmp_path / "ev")]) == 0  # phmdiff evaluate reads it


def test_same_seed_same_bytes_and_batch_size_does_not_matter(trained, tmp_path):
    subject = trained / "ph" / "PHANTOM_00001"
    a = translate(trained / "run", subject, tmp_path / "a", batch_size=16, seed=3, progress=False)
    translate(trained / "run", subject, tmp_path / "a2", batch_size=16, seed=3, progress=False)
    translate(trained / "run", subject, tmp_path / "b", batch_size=3, seed=3, progress=False)
    translate(trained / "run", subject, tmp_path / "c", batch_size=16, seed=4, progress=False)
    rel = a["subjects"][0]["prediction"]
    assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "a2" / rel).read_bytes()
    vol = {d: nib.load(tmp_path / d / rel).get_fdata() for d in ("a", "b", "c")}
    # Per-slice seeds make the batch irrelevant up to float rounding of batched matrix products.
    scale = np.abs(vol["a"]).max()
    np.testing.assert_allclose(vol["b"], vol["a"], rtol=0, atol=1e-4 * scale)
    assert np.abs(vol["c"] - vol["a"]).max() > 1e-2 * scale, "a different seed must give a different sample"


def test_n_samples_writes_mean_and_std(trained, tmp_path):
    meta = translate(trained / "run", trained / "ph" / "PHANTOM_00000", tmp_path, n_samples=2, progress=False)
    entry = meta["subjects"][0]
    samples = np.stack([nib.load(tmp_path / p).get_fdata() for p in entry["samples"]])
    mean = nib.load(tmp_path / entry["prediction"]).get_fdata()
    std = nib.load(tmp_path / entry["std"]).get_fdata()
    np.testing.assert_allclose(mean, samples.mean(0), atol=1e-4)
    np.testing.assert_allclose(std, samples.std(0), atol=1e-4)
    assert std.max() > 0


def test_existing_outputs_are_not_overwritten_without_the_flag(trained, tmp_path):
    subject = trained / "ph" / "PHANTOM_00003"
    meta = translate(trained / "run", subject, tmp_path, progress=False)
    target = tmp_path / meta["subjects"][0]["prediction"]
    before = target.read_bytes()
    with pytest.raises(ValueError, match="output exists from an earlier .* pass --continue .* or --overwrite"):
        translate(trained / "run", subject, tmp_path, seed=9, progress=False)
    assert target.read_bytes() == before
    translate(trained / "run", subject, tmp_path, seed=9, overwrite=True, progress=False)
    assert target.read_bytes() != before


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "argument --steps: '0' is out of range"),
    (["--n-samples", "0"], "argument --n-samples: '0' is out of range"),
    (["--seed", "-1"], "argument --seed: '-1' is out of range"),
])
def test_bad_command_line_values_are_one_sentence(trained, tmp_path, capsys, extra, needle):
    args = ["translate", "--run", str(trained / "run"), "--input", str(trained / "ph"), "--out", str(tmp_path / "o")]
    code = cli.main(args + extra)  # refused by argparse (`phmdiff.argtypes`) before any work; main returns its code
    err = capsys.readouterr().err
    assert code == 2 and needle in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_subject_without_a_source_modality_is_refused(trained, tmp_path):
    subject = tmp_path / "in" / "PHANTOM_00000"
    shutil.copytree(trained / "ph" / "PHANTOM_00000", subject)
    (subject / "PHANTOM_00000_t2.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"no subject has all source modalities \['t1', 't2'\]"):
        translate(trained / "run", subject, tmp_path / "out", progress=False)


def test_a_damaged_checkpoint_is_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    for ckpt in (run / "checkpoints").glob("step-*"):
        data = bytearray((ckpt / "ema.safetensors").read_bytes())
        data[-10] ^= 0xFF
        (ckpt / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        translate(run, trained / "ph" / "PHANTOM_00000", tmp_path / "out", progress=False)


def test_translate_writes_through_volume_write_like(trained, tmp_path, monkeypatch):
    import phmdiff.translate as translate_module
    from phmdiff.data import volume

    assert not hasattr(translate_module, "write_like")  # translate writes through volume.write_like only
    calls = []
    real = volume.write_like
    monkeypatch.setattr(volume, "write_like", lambda *a: calls.append(a) or real(*a))
    translate(trained / "run", trained / "ph" / "PHANTOM_00000", tmp_path, n_samples=2, progress=False)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.nii.gz")}

    def published(path):  # a subject is written into its stage folder, then published whole
        stage, _, *rest = Path(path).relative_to(tmp_path).parts
        return Path(stage[1:].split(".phmdiff-")[0], *rest)

    assert len(written) == 4 and {published(c[2]) for c in calls} == written


def test_respacing_an_edm_run_is_one_sentence(tiny_run, tmp_path, capsys):
    from phmdiff import cli

    args = ["translate", "--run", str(tiny_run / "run"), "--input", str(tiny_run / "ph" / "PHANTOM_00002"), "--out",
            str(tmp_path / "out"), "--respacing", "ddim5"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--respacing ddim5 samples a ddpm run through its own loops" in err[-1] and not (tmp_path / "out").exists()


def test_slices_along_the_runs_axis_whatever_the_inputs_spacing(trained, tmp_path):
    from phmdiff.checkpoint_io import load_checkpoint, resolve_checkpoint
    from phmdiff.fingerprint import AXIS_NAMES

    recorded = load_checkpoint(resolve_checkpoint(trained / "run", "best")).meta["plan"]["slice_axis"]
    other = (recorded["axis"] + 1) % 3  # phantom arrays are RAS: array axis = RAS axis
    sub = tmp_path / "in" / "PHANTOM_00002"
    sub.mkdir(parents=True)
    for f in (trained / "ph" / "PHANTOM_00002").glob("*.nii.gz"):
        img = nib.load(f)
        affine = img.affine.copy()
        affine[:3, other] *= 10  # now the coarsest: the input's own slicing rule would cut along `other`
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), sub / f.name)
    said = []
    meta = translate(trained / "run", sub, tmp_path / "out", progress=False, resample=False, log=said.append)
    entry = meta["subjects"][0]
    assert entry["slice_axis"] == recorded["name"] == AXIS_NAMES[recorded["axis"]]
    assert any(f"sliced along the {recorded['name']}" in m and AXIS_NAMES[other] in m for m in said), said
    pred = nib.load(tmp_path / "out" / entry["prediction"])
    assert pred.shape == (16, 16, 16) and np.allclose(pred.affine, affine)
    assert np.isfinite(pred.get_fdata()).all() and pred.get_fdata().std() > 0
    # --axis overrides the run's axis, with a sentence that the model sees planes it was not trained on
    said.clear()
    meta = translate(trained / "run", sub, tmp_path / "axis", progress=False, resample=False, axis=other,
                     log=said.append)
    assert meta["subjects"][0]["slice_axis"] == AXIS_NAMES[other]
    assert any(f"--axis {other}" in m and "not trained on" in m for m in said), said
    assert meta["settings"]["axis"] == other


def test_run_may_be_a_state_dict_file(trained, tmp_path):
    import torch

    from phmdiff.checkpoint_io import load_checkpoint, resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    ema = load_checkpoint(resolve_checkpoint(run, "best")).ema_state
    torch.save(ema, run / "same.pth")
    torch.save({k: v * 1.5 if v.is_floating_point() else v for k, v in ema.items()}, run / "other.pth")
    subject = trained / "ph" / "PHANTOM_00001"
    metas = {name: translate(where, subject, tmp_path / name, progress=False)
             for name, where in (("folder", run), ("same", run / "same.pth"), ("other", run / "other.pth"))}
    rel = metas["folder"]["subjects"][0]["prediction"]
    data = {name: (tmp_path / name / rel).read_bytes() for name in metas}
    assert data["same"] == data["folder"] != data["other"]
    assert metas["folder"]["weights"] == "ema" and metas["same"]["weights"] == str((run / "same.pth").resolve())
