"""The Python API (`phmdiff.api`): the README example on the tiny run, in-memory volumes of every kind back in
their own geometry, the same volume as `phmdiff translate` writes, generation by label and scoring."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from phmdiff.api import Translator, as_image, score
from phmdiff.eval.protocols import evaluate_subject
from phmdiff.translate import translate

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def translator(tiny_run):
    return Translator.from_run(tiny_run / "run", device="cpu", sampler="ddim")


def _subject(tiny_run, sid="PHANTOM_00001"):
    folder = tiny_run / "ph" / sid
    return {m: nib.load(folder / f"{sid}_{m}.nii.gz") for m in ("t1", "t2", "flair")}


def test_the_readme_example_runs(tiny_run, tmp_path, monkeypatch, capsys):
    text = README.read_text()
    code = re.search(r"### Python API.*?```python\n(.*?)```", text, re.S).group(1)
    line = next(x for x in code.splitlines() if x.startswith("run, subject = "))
    code = code.replace(line, f"run, subject = Path({str(tiny_run / 'run')!r}), "
                              f"Path({str(tiny_run / 'ph' / 'PHANTOM_00001')!r})")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own example
    written = nib.load(tmp_path / "flair_synth.nii.gz")
    ref = nib.load(tiny_run / "ph" / "PHANTOM_00001" / "PHANTOM_00001_t1.nii.gz")
    assert written.shape == ref.shape and np.allclose(written.affine, ref.affine)
    assert len(scope["result"].samples) == 4 and np.asarray(scope["result"].std.dataobj).max() > 0
    flair = nib.load(tiny_run / "ph" / "PHANTOM_00001" / "PHANTOM_00001_flair.nii.gz").get_fdata()
    printed = float(capsys.readouterr().out.strip())  # the PSNR of the saved mean (a 4-step tiny run: low)
    assert printed == pytest.approx(evaluate_subject(written.get_fdata(), flair)["psnr"], rel=1e-6)
    assert scope["slices"].shape == (4, 16, 16) and np.isfinite(scope["slices"]).all()


def test_in_memory_volumes_give_what_translate_writes_in_their_own_kind(tiny_run, translator, tmp_path):
    meta = translate(tiny_run / "run", tiny_run / "ph" / "PHANTOM_00001", tmp_path / "out", progress=False,
                     sampler="ddim", n_samples=2, seed=3, log=lambda m: None)
    written = nib.load(tmp_path / "out" / meta["subjects"][0]["prediction"]).get_fdata()
    imgs = _subject(tiny_run)
    kw = {"n_samples": 2, "seed": 3, "name": "PHANTOM_00001"}
    as_nib = translator.translate({"t1": imgs["t1"], "t2": imgs["t2"]}, **kw)
    np.testing.assert_array_equal(np.asarray(as_nib.mean.dataobj), written)  # one code path with the CLI
    arrays = {m: np.asarray(imgs[m].dataobj, dtype=np.float32) for m in ("t1", "t2")}
    as_np = translator.translate(arrays, affine=imgs["t1"].affine, **kw)
    assert isinstance(as_np.mean, np.ndarray) and as_np.target == "flair" and as_np.sources == ["t1", "t2"]
    np.testing.assert_array_equal(as_np.mean, written)
    itk = {m: _to_sitk(arrays[m], imgs[m].affine) for m in arrays}
    as_itk = translator.translate(itk, **kw)
    assert isinstance(as_itk.mean, sitk.Image)
    for get in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert getattr(as_itk.mean, get)() == getattr(itk["t1"], get)()
    np.testing.assert_allclose(np.transpose(sitk.GetArrayFromImage(as_itk.mean), (2, 1, 0)), written, atol=1e-5)


def _to_sitk(array, affine):
    """A SimpleITK image of a RAS (x, y, z) volume: LPS origin and direction, (z, y, x) array order."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    return img


def test_geometry_and_choices_are_sentences(tiny_run, translator):
    imgs = _subject(tiny_run)
    with pytest.raises(ValueError, match="numpy array without geometry; pass affine="):
        as_image(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="missing source modality t2"):
        translator.translate({"t1": imgs["t1"]})
    shifted = nib.Nifti1Image(np.asarray(imgs["t2"].dataobj), imgs["t2"].affine @ np.diag([2.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="image 't2' is not on the grid of image 't1'"):
        translator.translate({"t1": imgs["t1"], "t2": shifted})
    with pytest.raises(ValueError, match="--steps is 0"):
        Translator.from_run(tiny_run / "run", device="cpu", steps=0)


def test_generate_is_seeded_per_slice(translator):
    a = translator.generate(seeds=[0, 1, 2])
    b = translator.generate(seeds=[2, 7], batch_size=1)
    assert a.shape == (3, 16, 16)
    np.testing.assert_allclose(a[2], b[0], atol=1e-5)
    assert np.abs(b[1] - b[0]).max() > 1e-3
    with pytest.raises(ValueError, match="this run generates flair only"):
        translator.generate(label="t1")


def test_score_is_evaluates_and_takes_every_kind(tiny_run):
    imgs = _subject(tiny_run)
    ref = np.asarray(imgs["flair"].dataobj, dtype=np.float32)
    pred = ref * 0.9 + 1.0
    expected = evaluate_subject(pred, ref)
    got = score(nib.Nifti1Image(pred, imgs["flair"].affine), imgs["flair"])
    assert got["psnr"] == expected["psnr"] and got["ssim"] == expected["ssim"] and "slices" not in got
    assert score(pred, ref, spacing=(1, 1, 1))["psnr"] == expected["psnr"]
    assert score(ref, ref, spacing=(1, 1, 1))["psnr"] > expected["psnr"]
