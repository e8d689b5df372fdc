import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from phmdiff.data.readers import detect_layout, find_subjects, load_png, load_png_stack, load_volume


def _nii(path, shape=(6, 5, 4), affine=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(0, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return data


def test_brats2021_layout_skips_noise_free_and_finds_mask(tmp_path):
    for sid in ("BraTS2021_00001", "BraTS2021_00000"):
        for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
            _nii(tmp_path / sid / f"{sid}_{suffix}.nii.gz")
        _nii(tmp_path / sid / "noise_free" / f"{sid}_t1.nii.gz")  # the phantom's clean reference
    (tmp_path / "noise_free").mkdir()
    assert detect_layout(tmp_path) == "brats2021"
    subjects = find_subjects(tmp_path)
    assert [s.id for s in subjects] == ["BraTS2021_00000", "BraTS2021_00001"]
    s = subjects[0]
    assert s.modalities == ["flair", "t1", "t1ce", "t2"]
    assert s.paths["t1ce"].name == "BraTS2021_00000_t1ce.nii.gz"
    assert s.mask.name == "BraTS2021_00000_seg.nii.gz"
    assert s.problems == []


def test_brats2023_names_map_to_canonical_modalities(tmp_path):
    sid = "BraTS-GLI-00000-000"
    for suffix in ("t1n", "t1c", "t2w", "t2f", "seg"):
        _nii(tmp_path / sid / f"{sid}-{suffix}.nii.gz")
    assert detect_layout(tmp_path) == "brats2023"
    (s,) = find_subjects(tmp_path)
    assert s.id == sid and s.modalities == ["flair", "t1", "t1ce", "t2"]
    assert s.paths["flair"].name.endswith("-t2f.nii.gz") and s.paths["t1ce"].name.endswith("-t1c.nii.gz")


def test_synthrad_and_missing_modality_is_a_named_problem(tmp_path):
    for sid in ("1PA001", "1PA002"):
        _nii(tmp_path / sid / "mr.nii.gz")
        _nii(tmp_path / sid / "mask.nii.gz")
    _nii(tmp_path / "1PA001" / "ct.nii.gz")
    assert detect_layout(tmp_path) == "synthrad"
    a, b = find_subjects(tmp_path)
    assert a.modalities == ["ct", "mr"] and a.mask.name == "mask.nii.gz" and a.problems == []
    assert b.modalities == ["mr"]
    assert b.problems == [f"{tmp_path / '1PA002' / 'ct.nii.gz'}: missing modality file (ct)."]


def test_generic_layout_accepts_nii_and_nii_gz(tmp_path):
    _nii(tmp_path / "sub-01" / "T1.nii")
    _nii(tmp_path / "sub-01" / "pd.nii.gz")
    _nii(tmp_path / "sub-01" / "label.nii.gz")
    (tmp_path / "sub-01" / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "generic"
    (s,) = find_subjects(tmp_path)
    assert s.modalities == ["pd", "t1"] and s.mask.name == "label.nii.gz"


def test_png_layout_groups_numbered_slices_and_keeps_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    for mod in ("t1", "t2"):
        (tmp_path / mod).mkdir()
        for name in ("pat1_2", "pat1_10", "pat1_1", "single"):
            Image.fromarray(rng.integers(0, 65535, (8, 6), dtype=np.uint16)).save(tmp_path / mod / f"{name}.png")
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(8, 6)).save(tmp_path / "t1" / "eight_0.png")
    assert detect_layout(tmp_path) == "png"
    subjects = {s.id: s for s in find_subjects(tmp_path)}
    assert sorted(subjects) == ["eight", "pat1", "single"]
    assert [p.stem for p in subjects["pat1"].png_slices["t1"]] == ["pat1_1", "pat1_2", "pat1_10"]  # numeric order
    assert any("(t2)" in p for p in subjects["eight"].problems)
    big = np.array([[0, 40000], [65535, 7]], dtype=np.uint16)
    Image.fromarray(big).save(tmp_path / "big.png")
    assert np.array_equal(load_png(tmp_path / "big.png"), big.astype(np.float32))  # 16-bit kept exactly
    stack = load_png_stack(subjects["pat1"].png_slices["t1"])
    assert stack.shape == (8, 6, 3) and stack.dtype == np.float32
    assert np.array_equal(stack[..., 2], load_png(tmp_path / "t1" / "pat1_10.png"))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="colour mode RGB"):
        load_png(tmp_path / "rgb.png")


def test_load_volume_returns_float32_affine_and_squeezes_a_singleton_4th_axis(tmp_path):
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    data = _nii(tmp_path / "v.nii.gz", shape=(6, 5, 4, 1), affine=affine)
    vol, aff, header = load_volume(tmp_path / "v.nii.gz")
    assert vol.dtype == np.float32 and vol.shape == (6, 5, 4)
    np.testing.assert_array_equal(vol, data[..., 0])
    np.testing.assert_array_equal(aff, affine)
    assert header.get_zooms()[:3] == (1.5, 1.0, 2.0)


def test_empty_folder_and_unknown_layout_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no subjects found"):
        find_subjects(tmp_path)
    with pytest.raises(ValueError, match="layout 'nifti' is unknown"):
        find_subjects(tmp_path, layout="nifti")


@pytest.mark.parametrize("kind, layout, mods", [("brain", "brats2021", ["flair", "t1", "t1ce", "t2"]),
                                                ("pelvis", "synthrad", ["ct", "mr"])])
def test_readers_find_the_phantom_subjects(tmp_path, kind, layout, mods):
    phantom = pytest.importorskip("phmdiff.data.phantom")
    phantom.write_phantom(tmp_path / "ph", kind=kind, n_subjects=2, shape=(24, 24, 16), seed=0)
    assert detect_layout(tmp_path / "ph") == layout
    subjects = find_subjects(tmp_path / "ph")
    assert len(subjects) == 2 and all(s.modalities == mods and s.problems == [] for s in subjects)
    assert all(s.mask is not None and "noise_free" not in str(s.paths[mods[0]]) for s in subjects)
    vol, _, _ = load_volume(subjects[0].paths[mods[0]])
    assert vol.shape == (24, 24, 16)
