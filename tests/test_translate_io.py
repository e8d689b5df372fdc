"""translate on the data people have: BraTS 2023 names, MHA/NRRD/DICOM with their geometry, integer CT,
and every subject accounted for (a NaN subject and a subject missing a source in one batch)."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from phmdiff import cli
from phmdiff.data.readers import load_volume
from phmdiff.translate import translate

sitk = pytest.importorskip("SimpleITK")
pytestmark = pytest.mark.slow  # end to end on the shared tiny run

TILT = 0.3  # radians about z: a direction matrix that is not the identity
ROTATION = np.array([[np.cos(TILT), -np.sin(TILT), 0.0], [np.sin(TILT), np.cos(TILT), 0.0], [0.0, 0.0, 1.0]])


BRAIN = (15.0, 15.0, 9.6875)  # the 16-voxel brain phantom's spacing (mm): the run's training spacing


def _itk_image(data: np.ndarray, spacing=BRAIN, origin=(12.5, -30.0, 7.0), dtype=np.float32):
    """(x, y, z) voxels as a SimpleITK image with a non-trivial origin and direction (and anisotropic spacing)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype))  # (z, y, x)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(ROTATION.ravel()))
    return img


def _phantom_subject(tiny_run, sid="PHANTOM_00000") -> dict[str, np.ndarray]:
    folder = tiny_run / "ph" / sid
    return {m: load_volume(folder / f"{sid}_{m}.nii.gz")[0] for m in ("t1", "t2", "flair")}


def _same_geometry(a, b):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_a_run_trained_on_2021_names_translates_a_2023_folder(tiny_run, tmp_path):
    names = {"t1": "t1n", "t2": "t2w", "flair": "t2f", "seg": "seg", "t1ce": "t1c"}
    for sid in ("PHANTOM_00001", "PHANTOM_00002"):
        (tmp_path / "in" / sid).mkdir(parents=True)
        for mod, new in names.items():
            shutil.copy(tiny_run / "ph" / sid / f"{sid}_{mod}.nii.gz", tmp_path / "in" / sid / f"{sid}-{new}.nii.gz")
    meta = translate(tiny_run / "run", tmp_path / "in", tmp_path / "out", progress=False)
    assert [e["subject"] for e in meta["subjects"]] == ["PHANTOM_00001", "PHANTOM_00002"] and not meta["skipped"]
    assert meta["subjects"][0]["reference"].endswith("PHANTOM_00001-t2f.nii.gz")
    assert meta["subjects"][0]["source_images"]["t1"].endswith("-t1n.nii.gz")
    assert cli.main(["evaluate", str(tmp_path / "out"), "--out", str(tmp_path / "ev")]) == 0


def test_mha_in_mha_out_with_the_input_geometry_through_prepare_and_translate(tiny_run, tmp_path):
    from phmdiff.data.prepare import PrepareSettings, prepare
    from phmdiff.data.volume import VolumeSettings

    for sid in ("PHANTOM_00000", "PHANTOM_00003"):
        (tmp_path / "in" / sid).mkdir(parents=True)
        for mod, data in _phantom_subject(tiny_run, sid).items():
            sitk.WriteImage(_itk_image(data), str(tmp_path / "in" / sid / f"{mod}.mha"), True)
    settings = PrepareSettings(split=(0.5, 0.5, 0.0), volume=VolumeSettings(size=16))
    assert prepare(tmp_path / "in", tmp_path / "prep", settings, ["t1", "t2", "flair"], progress=False) == "built"
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert manifest["layout"] == "generic" and manifest["splits"]["train"]["n"] > 0
    meta = translate(tiny_run / "run", tmp_path / "in", tmp_path / "out", progress=False)
    entry = meta["subjects"][0]
    assert entry["prediction"] == "PHANTOM_00000/PHANTOM_00000_flair.mha"
    source = sitk.ReadImage(str(tmp_path / "in" / "PHANTOM_00000" / "t1.mha"))
    pred = sitk.ReadImage(str(tmp_path / "out" / entry["prediction"]))
    _same_geometry(pred, source)
    assert pred.GetPixelID() == sitk.sitkFloat32 and np.isfinite(sitk.GetArrayViewFromImage(pred)).all()
    # The same volume as NIfTI (nibabel's RAS affine from the ITK geometry) gives the same prediction.
    nii = tmp_path / "nii" / "PHANTOM_00000"
    nii.mkdir(parents=True)
    for mod in ("t1", "t2"):
        mha = sitk.ReadImage(str(tmp_path / "in" / "PHANTOM_00000" / f"{mod}.mha"))
        sitk.WriteImage(mha, str(nii / f"{mod}.nii.gz"))
    as_nii = translate(tiny_run / "run", nii, tmp_path / "out_nii", progress=False)
    other = sitk.ReadImage(str(tmp_path / "out_nii" / as_nii["subjects"][0]["prediction"]))
    _same_geometry(other, source)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(other), sitk.GetArrayViewFromImage(pred), atol=1e-4)
    assert cli.main(["evaluate", str(tmp_path / "out"), "--out", str(tmp_path / "ev")]) == 0  # evaluate reads .mha


def _write_dicom_series(img, folder: Path) -> None:
    """One int16 DICOM file per slice, with the position and orientation tags SimpleITK's series reader uses."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    for k in range(img.GetDepth()):
        plane = img[:, :, k]
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        plane.SetMetaData("0020|0037", "\\".join(f"{v:.6f}" for v in [*direction[:, 0], *direction[:, 1]]))
        plane.SetMetaData("0020|0013", str(k + 1))
        plane.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.1")
        plane.SetMetaData("0020|000e", f"1.2.826.0.1.3680043.2.1125.1.{folder.name == 't2' and 2 or 1}")
        plane.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_series_and_nrrd_with_other_spellings_are_read(tiny_run, tmp_path):
    data = _phantom_subject(tiny_run, "PHANTOM_00002")
    scale = 1000.0 / max(float(v.max()) for v in data.values())  # MR in whole scanner units, as int16 DICOM
    dicom = tmp_path / "dicom" / "pat1"
    for mod in ("t1", "t2"):
        _write_dicom_series(_itk_image(np.rint(data[mod] * scale), dtype=np.int16), dicom / mod)
    nrrd = tmp_path / "nrrd" / "pat2"
    nrrd.mkdir(parents=True)
    for mod, name in (("t1", "T1w"), ("t2", "T2w")):
        sitk.WriteImage(_itk_image(data[mod]), str(nrrd / f"{name}.nrrd"))
    meta = translate(tiny_run / "run", tmp_path / "dicom", tmp_path / "out_dcm", progress=False)
    pred = tmp_path / "out_dcm" / meta["subjects"][0]["prediction"]
    assert pred.name == "pat1_flair.nii.gz"  # a DICOM series in, NIfTI out (documented)
    series = sitk.ImageSeriesReader()
    series.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom / "t1")))
    _same_geometry(sitk.ReadImage(str(pred)), series.Execute())
    meta = translate(tiny_run / "run", tmp_path / "nrrd" / "pat2", tmp_path / "out_nrrd", progress=False)
    pred = sitk.ReadImage(str(tmp_path / "out_nrrd" / meta["subjects"][0]["prediction"]))
    assert meta["subjects"][0]["prediction"].endswith("pat2_flair.nrrd")
    _same_geometry(pred, sitk.ReadImage(str(nrrd / "T1w.nrrd")))


def test_every_subject_is_accounted_for_and_one_bad_subject_stops_no_other(tiny_run, tmp_path, capsys):
    src = tiny_run / "ph"
    for sid in ("PHANTOM_00000", "PHANTOM_00001", "PHANTOM_00002", "PHANTOM_00003"):
        shutil.copytree(src / sid, tmp_path / "in" / sid)
    bad = tmp_path / "in" / "PHANTOM_00001" / "PHANTOM_00001_t2.nii.gz"
    img = nib.load(bad)
    data = img.get_fdata(dtype=np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    (tmp_path / "in" / "PHANTOM_00003" / "PHANTOM_00003_t1.nii.gz").unlink()
    cut = tmp_path / "in" / "PHANTOM_00004" / "PHANTOM_00004_t1.nii.gz"  # a file cut short in a copy
    cut.parent.mkdir()
    for f in (src / "PHANTOM_00000").glob("*.nii.gz"):
        shutil.copy(f, cut.parent / f.name.replace("PHANTOM_00000", "PHANTOM_00004"))
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    args = ["translate", "--run", str(tiny_run / "run"), "--input", str(tmp_path / "in"), "--out",
            str(tmp_path / "out"), "--no-progress"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "2 subject(s) translated" in err and "3 subject(s) not translated" in err and "Traceback" not in err
    meta = json.loads((tmp_path / "out" / "translate.json").read_text())
    assert [e["subject"] for e in meta["subjects"]] == ["PHANTOM_00000", "PHANTOM_00002"]
    reasons = {s["subject"]: s["reason"] for s in meta["skipped"]}
    assert "NaN or Inf voxels" in reasons["PHANTOM_00001"] and str(bad) in reasons["PHANTOM_00001"]
    assert reasons["PHANTOM_00003"].startswith("missing source modality t1")
    assert "PHANTOM_00003_t1.nii.gz" in reasons["PHANTOM_00003"]
    assert reasons["PHANTOM_00004"].startswith(f"{cut}: truncated or corrupt")
    assert f"  PHANTOM_00001: {reasons['PHANTOM_00001']}" in err
    assert not (tmp_path / "out" / "PHANTOM_00001").exists() or not any((tmp_path / "out" / "PHANTOM_00001").iterdir())


@pytest.fixture(scope="module")
def pelvis_run(tmp_path_factory) -> Path:
    """A tiny MR -> CT run on the pelvis phantom (CT stored as int16 HU): root / {ph, prep, lat, run}."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_config

    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    root = tmp_path_factory.mktemp("pelvis_run")
    write_phantom(root / "ph", "pelvis", n_subjects=3, shape=(16, 16, 16), seed=1)
    run_pipeline(tiny_config(root, "data.sources=[mr]", "data.target=ct", "data.dataset=synthrad"), progress=False,
                 log=lambda m: None)
    return root


def test_ct_output_is_int16_in_the_hu_window_for_nifti_and_mha(pelvis_run, tmp_path):
    sid = sorted(p.name for p in (pelvis_run / "ph").iterdir() if p.is_dir())[0]
    meta = translate(pelvis_run / "run", pelvis_run / "ph" / sid, tmp_path / "nii", progress=False)
    pred = nib.load(tmp_path / "nii" / meta["subjects"][0]["prediction"])
    assert pred.get_data_dtype() == np.int16 and meta["subjects"][0]["dtype"] == "int16"
    values = np.asarray(pred.dataobj)
    assert values.min() >= -1024 and values.max() <= 3071 and values.std() > 0
    # SynthRAD 2025 ships .mha: the same subject as .mha (CT int16) comes back as .mha int16, same geometry.
    mha = tmp_path / "mha" / sid
    mha.mkdir(parents=True)
    for mod, dtype in (("mr", np.float32), ("ct", np.int16), ("mask", np.uint8)):
        data, affine, _ = load_volume(pelvis_run / "ph" / sid / f"{mod}.nii.gz")
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
        sitk.WriteImage(_itk_image(data, spacing=zooms, dtype=dtype), str(mha / f"{mod}.mha"), True)
    meta = translate(pelvis_run / "run", mha, tmp_path / "out", progress=False)
    out = sitk.ReadImage(str(tmp_path / "out" / meta["subjects"][0]["prediction"]))
    assert meta["subjects"][0]["prediction"].endswith(".mha") and out.GetPixelID() == sitk.sitkInt16
    _same_geometry(out, sitk.ReadImage(str(mha / "mr.mha")))
    values = sitk.GetArrayViewFromImage(out)
    assert values.min() >= -1024 and values.max() <= 3071
    assert meta["subjects"][0]["mask"].endswith("mask.mha")
    assert cli.main(["evaluate", str(tmp_path / "out"), "--out", str(tmp_path / "ev")]) == 0  # MAE in HU, .mha
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["modality"] == "ct"


def test_an_anisotropic_input_is_resampled_to_the_training_spacing_and_back(tiny_run, tmp_path, capsys):
    from phmdiff.data.spacing import resize

    manifest = json.loads((tiny_run / "prep" / "manifest.json").read_text())
    # The 16-voxel phantom is sliced along R, its coarsest axis (15 mm): the slice plane is A x S.
    assert manifest["config"]["volume"]["spacing"] == [15.0, 9.6875]  # prepare recorded the training spacing
    data = _phantom_subject(tiny_run, "PHANTOM_00001")
    shape = (12, 24, 26)  # 20 mm slices (still the coarsest axis), 10 x 6 mm in-plane
    affine = np.diag([-20.0, -10.0, 6.0, 1.0])
    affine[:3, 3] = (100.0, 90.0, -60.0)
    subject = tmp_path / "in" / "PHANTOM_00001"
    subject.mkdir(parents=True)
    for mod in ("t1", "t2"):
        nib.save(nib.Nifti1Image(resize(data[mod], shape), affine), subject / f"{mod}.nii.gz")
    args = ["translate", "--run", str(tiny_run / "run"), "--input", str(subject), "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "PHANTOM_00001: in-plane spacing 10 x 6 mm, training 15 x 9.69 mm: resampled to 15 x 9.75 mm" in err
    pred = nib.load(tmp_path / "out" / "PHANTOM_00001" / "PHANTOM_00001_flair.nii.gz")
    assert pred.shape == shape and np.allclose(pred.affine, affine)
    assert np.asarray(pred.dataobj).std() > 0
    entry = json.loads((tmp_path / "out" / "translate.json").read_text())["subjects"][0]
    assert entry["spacing"] == {"input": [10.0, 6.0], "training": [15.0, 9.6875], "resampled": True}
    # Resampling off: the input's own grid, and a sentence saying the scale is not the trained one.
    assert cli.main([*args, "--out", str(tmp_path / "off"), "--no-resample"]) == 0
    err = capsys.readouterr().err
    assert "in-plane spacing 10 x 6 mm differs by more than 10% from the training spacing 15 x 9.69 mm" in err
    assert nib.load(tmp_path / "off" / "PHANTOM_00001" / "PHANTOM_00001_flair.nii.gz").shape == shape


def test_a_run_without_a_recorded_spacing_says_it_is_not_checked(tiny_run, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "reliability" / "scripts"))
    from rel_fixture import crafted_run

    def drop_spacing(meta):  # a run trained before prepare recorded the spacing
        meta["plan"]["volume"].pop("spacing")

    run = crafted_run(tmp_path, tiny_run / "run", edit_meta=drop_spacing)
    args = ["translate", "--run", str(run), "--input", str(tiny_run / "ph" / "PHANTOM_00000"), "--out",
            str(tmp_path / "out"), "--no-progress"]
    assert cli.main(args) == 0
    assert "this run records no training voxel spacing" in capsys.readouterr().err
