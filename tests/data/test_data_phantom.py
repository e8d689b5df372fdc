import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from phmdiff import cli
from phmdiff.data.phantom import phantom_affine, subject_seed, write_phantom
from phmdiff.data.phantom_brain import (
    BRAIN_FOV_MM,
    BRAIN_RELAXATION,
    FLAIR,
    TISSUES,
    brain_signals,
    make_brain_subject,
    null_inversion_time,
)
from phmdiff.data.phantom_pelvis import PELVIS_FOV_MM, PELVIS_TISSUES, make_pelvis_subject

BRAIN_SHAPE = (96, 96, 62)
PELVIS_SHAPE = (96, 72, 32)


@pytest.fixture(scope="module")
def brain():
    return make_brain_subject(subject_seed(0, 1), BRAIN_SHAPE, noise=0.05)


@pytest.fixture(scope="module")
def pelvis():
    return make_pelvis_subject(7, PELVIS_SHAPE, noise=0.05, ct_noise_hu=20.0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_arrays_and_bytes(tmp_path, brain):
    again = make_brain_subject(subject_seed(0, 1), BRAIN_SHAPE, noise=0.05)
    assert brain.keys() == again.keys()
    for key in brain:
        np.testing.assert_array_equal(brain[key], again[key], err_msg=key)
    kw = dict(kind="brain", n_subjects=2, shape=(32, 32, 24), seed=3, preview=True)
    write_phantom(tmp_path / "a", **kw)
    write_phantom(tmp_path / "b", **kw)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 2 * 9 + 2 and a == b  # gzip headers carry no time or temporary name


def test_different_seeds_differ(brain, pelvis):
    other = make_brain_subject(subject_seed(0, 2), BRAIN_SHAPE, noise=0.05)
    assert (other["tissue"] != brain["tissue"]).mean() > 0.01  # different anatomy, not only different noise
    assert not np.array_equal(other["seg"], brain["seg"])
    other_pelvis = make_pelvis_subject(8, PELVIS_SHAPE)
    assert (other_pelvis["tissue"] != pelvis["tissue"]).mean() > 0.01
    assert subject_seed(0, 1) != subject_seed(1, 0)


def test_signal_tables_match_the_equations():
    table = brain_signals()
    t1, t2, pd = BRAIN_RELAXATION["wm"]
    assert table["t1"][TISSUES["wm"]] == pytest.approx(1000 * pd * (1 - math.exp(-500 / t1)) * math.exp(-10 / t2),
                                                       rel=1e-6)
    assert table["t2"][TISSUES["wm"]] == pytest.approx(1000 * pd * (1 - math.exp(-4000 / t1)) * math.exp(-100 / t2),
                                                       rel=1e-6)
    # TI nulls CSF: the longitudinal magnetization 1 - 2 exp(-TI/T1) + exp(-TR/T1) is zero at TI
    t1_csf = BRAIN_RELAXATION["csf"][0]
    ti = null_inversion_time(t1_csf, FLAIR[0])
    assert 1 - 2 * math.exp(-ti / t1_csf) + math.exp(-FLAIR[0] / t1_csf) == pytest.approx(0.0, abs=1e-12)
    assert 2000 < ti < 2800  # the usual FLAIR TI at long TR
    assert table["flair"][TISSUES["csf"]] < 1e-3
    t1_gd = 1 / (1 / BRAIN_RELAXATION["enhancing"][0] + 4.0 * 0.25 / 1000)
    t1e, t2e, pde = BRAIN_RELAXATION["enhancing"]
    assert table["t1ce"][TISSUES["enhancing"]] == pytest.approx(
        1000 * pde * (1 - math.exp(-500 / t1_gd)) * math.exp(-10 / t2e), rel=1e-6)


def _median(vol, tissue, *names):
    """Median inside a tissue, away from its border where the PSF mixes tissues (unless it is too thin)."""
    mask = np.isin(tissue, [TISSUES[n] for n in names])
    interior = ndimage.binary_erosion(mask)
    mask = interior if interior.sum() > 20 else mask
    assert mask.sum() > 20, names
    return float(np.median(vol[mask]))


@pytest.mark.parametrize("suffix", ["", "_noise_free"])
def test_tissue_contrast_ordering(brain, suffix):
    tissue = brain["tissue"]
    t1, t1ce, t2, flair = (brain[m + suffix] for m in ("t1", "t1ce", "t2", "flair"))
    m = _median
    assert m(t1, tissue, "csf", "ventricle") < 0.8 * m(t1, tissue, "gm")
    assert m(t1, tissue, "wm") > 1.1 * m(t1, tissue, "gm")
    assert m(t2, tissue, "csf", "ventricle") > 1.5 * m(t2, tissue, "gm")
    assert m(t2, tissue, "gm") > 1.3 * m(t2, tissue, "wm")
    assert m(flair, tissue, "csf", "ventricle") < 0.5 * m(flair, tissue, "wm")
    assert m(flair, tissue, "edema") > 1.2 * max(m(flair, tissue, "wm"), m(flair, tissue, "gm"))
    assert m(t2, tissue, "edema") > 2.0 * m(t2, tissue, "wm")
    assert m(t1ce, tissue, "enhancing") > 1.5 * m(t1, tissue, "enhancing")
    assert m(t1ce, tissue, "enhancing") > 1.3 * m(t1ce, tissue, "wm")


def test_seg_uses_brats_labels_and_tumour_is_optional(brain):
    seg, tissue = brain["seg"], brain["tissue"]
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(seg == 4, tissue == TISSUES["enhancing"])
    np.testing.assert_array_equal(seg == 2, tissue == TISSUES["edema"])
    found = [set(np.unique(make_brain_subject(s, (48, 48, 32), noise=0.0)["seg"])) for s in range(4)]
    assert any(f == {0, 1, 2, 4} for f in found)  # necrosis, edema and rim all occur
    healthy = make_brain_subject(5, (48, 48, 32), tumour=False, noise=0.0)
    assert not healthy["seg"].any()


def test_noise_level_matches_the_setting(brain):
    wm = brain["tissue"] == TISSUES["wm"]
    air = brain["tissue"] == TISSUES["background"]
    for name in ("t1", "t2"):
        clean, noisy = brain[name + "_noise_free"], brain[name]
        sigma = 0.05 * clean[wm].mean()
        # high SNR: the Rician difference is close to Gaussian of std sigma
        assert np.std(noisy[wm] - clean[wm]) == pytest.approx(sigma, rel=0.08)
        # zero signal (air away from the head): Rayleigh with mean sigma sqrt(pi/2)
        zero = air & (clean == 0)
        assert zero.mean() > 0.2
        assert noisy[zero].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)


def test_ct_values_within_hounsfield_ranges(pelvis):
    ranges = {"air": (-1000, -1000), "fat": (-130, -70), "muscle": (30, 60), "bladder": (-10, 20),
              "trabecular": (200, 400), "cortical": (1000, 1800), "rectal_air": (-1000, -1000)}
    clean, noisy, tissue = pelvis["ct_noise_free"], pelvis["ct"], pelvis["tissue"]
    for name, (lo, hi) in ranges.items():
        mask = tissue == PELVIS_TISSUES[name]
        assert mask.sum() > 10, name
        assert lo <= clean[mask].min() and clean[mask].max() <= hi, name
        assert lo - 8 <= noisy[mask].mean() <= hi + 8, name
    body = pelvis["mask"].astype(bool) & (tissue != PELVIS_TISSUES["rectal_air"])
    assert np.std(noisy[body] - clean[body]) == pytest.approx(20.0, rel=0.05)
    mr, muscle = pelvis["mr_noise_free"], tissue == PELVIS_TISSUES["muscle"]
    assert np.median(mr[tissue == PELVIS_TISSUES["bladder"]]) > 3 * np.median(mr[muscle])  # T2: urine bright
    assert np.median(mr[tissue == PELVIS_TISSUES["cortical"]]) < 0.5 * np.median(mr[muscle])  # bone dark
    np.testing.assert_array_equal(pelvis["mask"], (tissue != PELVIS_TISSUES["air"]).astype(np.uint8))


@pytest.mark.parametrize("kind", ["brain", "pelvis"])
def test_files_layout_affine_and_spacing(tmp_path, kind):
    shape = (32, 32, 20) if kind == "brain" else (48, 36, 20)
    root = tmp_path / kind
    dirs = write_phantom(root, kind=kind, n_subjects=2, shape=shape, seed=1)
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["kind"] == kind and meta["seed"] == 1 and meta["shape"] == list(shape)
    assert [s["id"] for s in meta["subjects"]] == [d.name for d in dirs]
    affine = phantom_affine(kind, shape)
    fov = BRAIN_FOV_MM if kind == "brain" else PELVIS_FOV_MM
    sid = dirs[0].name
    if kind == "brain":
        assert sid == "PHANTOM_00000"
        names = [f"{sid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg")]
        clean = [f"noise_free/{sid}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    else:
        assert sid == "1PA000"
        names, clean = ["mr.nii.gz", "ct.nii.gz", "mask.nii.gz"], ["noise_free/mr.nii.gz", "noise_free/ct.nii.gz"]
        assert abs(affine[0, 1]) > 1e-3  # the small rotation is in the affine
    assert sorted(str(p.relative_to(dirs[0])) for p in dirs[0].rglob("*.nii.gz")) == sorted(names + clean)
    volumes = (make_brain_subject if kind == "brain" else make_pelvis_subject)(meta["subjects"][0]["seed"], shape)
    for name in names + clean:
        img = nib.load(dirs[0] / name)
        assert img.shape == shape
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        np.testing.assert_allclose(img.header.get_zooms(), np.array(fov) / shape, rtol=1e-5)
        key = name.replace("noise_free/", "").replace(f"{sid}_", "").replace(".nii.gz", "")
        key = key + "_noise_free" if name.startswith("noise_free") else key
        data = np.asanyarray(img.dataobj)
        if key.startswith("ct"):
            assert data.dtype == np.int16
            np.testing.assert_array_equal(data, np.rint(volumes[key]).astype(np.int16))
        else:
            assert data.dtype == (np.uint8 if key in ("seg", "mask") else np.float32)
            np.testing.assert_array_equal(data, volumes[key])


def test_same_seed_gives_the_same_subject_at_another_resolution():
    coarse = make_brain_subject(11, (48, 48, 31), noise=0.0)["tissue"]
    fine = make_brain_subject(11, (96, 96, 62), noise=0.0)["tissue"]
    for name in ("wm", "edema", "enhancing"):
        vol_coarse = (coarse == TISSUES[name]).sum() * 8
        assert (fine == TISSUES[name]).sum() == pytest.approx(vol_coarse, rel=0.2), name


def _cli(args, capsys):
    try:
        code = cli.main(["phantom", *map(str, args)])
    except SystemExit as stop:  # argparse's own errors (range-checked option types) exit 2 themselves
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--subjects", "0"], "argument --subjects: '0' is out of range"),
        (["--shape", "8", "64", "64"], "Phantom shape (8, 64, 64)"),
        (["--noise", "-0.1"], "argument --noise: '-0.1' is out of range"),
        (["--seed", "-1"], "argument --seed: '-1' is out of range"),
    ],
)
def test_cli_bad_values_are_one_sentence(tmp_path, capsys, extra, message):
    code, _, err = _cli([tmp_path / "out", *extra], capsys)
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err  # one sentence
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_folder_then_overwrites(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, err = _cli([out, "--subjects", "1", "--shape", "24", "24", "16"], capsys)
    assert code == 2 and "folder is not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "user data"
    (tmp_path / "file").write_text("x")
    code, _, err = _cli([tmp_path / "file", "--subjects", "1"], capsys)
    assert code == 2 and "is not a folder" in err
    code, stdout, _ = _cli([out, "--kind", "pelvis", "--subjects", "1", "--shape", "32", "24", "16", "--overwrite",
                            "--preview"], capsys)
    assert code == 0 and str(out) in stdout
    assert not (out / "keep.txt").exists() and (out / "1PA000" / "ct.nii.gz").is_file()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the literature-physics option, N4 and the finer grid (issue 25); the default phantom stays as it was


def test_default_brain_is_pinned():
    """The default brain's arrays are those of before the physics option (sha256 taken before it was added)."""
    import hashlib

    v = make_brain_subject(7, (24, 24, 16))
    h = hashlib.sha256()
    for k in sorted(v):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v[k]).tobytes())
    assert h.hexdigest() == "166688df7b9c9f8110735bcfaaa59fbb65234e9e08ca356337342dd7932118b4"


def test_literature_tissues_and_edema_graded_from_the_core():
    from phmdiff.data.phantom_brain import brain_anatomy
    from phmdiff.data.phantom_physics import EDEMA_PEAK, LITERATURE_RELAXATION, edema_distance, tissue_maps

    shape = (64, 64, 40)
    labels, _ = brain_anatomy(subject_seed(0, 1), shape)
    spacing = [f / n for f, n in zip(BRAIN_FOV_MM, shape)]
    t1, t2, pd = tissue_maps(labels, spacing)
    wm = labels == TISSUES["wm"]
    assert np.all(t1[wm] == 1084.0) and np.all(t2[wm] == 69.0)  # Stanisz 2005, 3 T
    assert np.all(t1[labels == TISSUES["gm"]] == 1820.0) and LITERATURE_RELAXATION["csf"][0] == 4163.0
    edema = labels == TISSUES["edema"]
    g = edema_distance(labels, spacing)
    assert edema.sum() > 100 and 0 <= g[edema].min() < 0.2 and 0.6 < g[edema].max() <= 1 and not g[~edema].any()
    np.testing.assert_allclose(t1[edema], EDEMA_PEAK[0] + (1084.0 - EDEMA_PEAK[0]) * g[edema], rtol=1e-5)
    np.testing.assert_allclose(t2[edema], EDEMA_PEAK[1] + (69.0 - EDEMA_PEAK[1]) * g[edema], rtol=1e-5)
    core = ndimage.binary_dilation(np.isin(labels, [TISSUES["enhancing"], TISSUES["necrosis"]]))
    assert g[edema & core].mean() < g[edema & ~core].mean()  # next to the core: the rawest edema


def test_literature_contrasts_keep_brats_ordering():
    from phmdiff.data.phantom_physics import make_brain_subject_literature

    v = make_brain_subject_literature(subject_seed(0, 1), (64, 64, 40), noise=0.0)
    lab = v["tissue"]
    mean = {m: {n: float(v[f"{m}_noise_free"][lab == TISSUES[n]].mean()) for n in ("wm", "gm", "csf", "edema")}
            for m in ("t1", "t2", "flair")}
    assert mean["t1"]["wm"] > mean["t1"]["gm"] > mean["t1"]["csf"]
    assert mean["t2"]["csf"] > mean["t2"]["wm"] and mean["t2"]["edema"] > 1.3 * mean["t2"]["wm"]
    assert mean["flair"]["edema"] > 1.3 * mean["flair"]["wm"] and mean["flair"]["csf"] < mean["flair"]["wm"]
    assert set(v) == set(make_brain_subject(3, (24, 24, 16)))  # the same keys as the default phantom


def test_sequence_bias_is_partly_shared():
    from phmdiff.data.phantom_physics import BIAS_AMPLITUDE, sequence_bias

    rng = np.random.default_rng(0)
    coil, a, b = (rng.standard_normal(200_000).astype(np.float32) for _ in range(3))
    assert np.array_equal(sequence_bias(coil, a, shared=1.0), sequence_bias(coil, b, shared=1.0))
    la, lb = np.log(sequence_bias(coil, a, 0.5)), np.log(sequence_bias(coil, b, 0.5))
    assert np.corrcoef(la, lb)[0, 1] == pytest.approx(0.5, abs=0.01)  # the shared share of the variance
    assert la.std() == pytest.approx(BIAS_AMPLITUDE, rel=0.01)


def test_n4_removes_a_known_bias():
    from phmdiff.data.phantom_n4 import n4_field

    pytest.importorskip("SimpleITK")
    n = 24
    x, y, z = np.meshgrid(*(np.arange(n) - n / 2 + 0.5,) * 3, indexing="ij")
    head = x**2 + y**2 + z**2 < (0.45 * n) ** 2
    field = np.exp(0.25 * x / n * 2 + 0.1 * y / n * 2)
    image = np.where(head, 100.0 * field, 0.0).astype(np.float32)
    est = n4_field(image, head)
    corrected = image[head] / est[head]
    assert corrected.std() / corrected.mean() < 0.3 * image[head].std() / image[head].mean()
    assert est[head].mean() == pytest.approx(1.0, rel=1e-5)


def test_write_phantom_with_physics_and_n4(tmp_path, capsys):
    root = tmp_path / "lit"
    write_phantom(root, "brain", n_subjects=1, shape=(24, 24, 16), seed=2, physics="literature", n4=True)
    meta = json.loads((root / "phantom.json").read_text())
    assert meta["physics"] == "literature" and meta["n4"] is True
    write_phantom(tmp_path / "default", "brain", n_subjects=1, shape=(24, 24, 16), seed=2)
    assert "physics" not in json.loads((tmp_path / "default" / "phantom.json").read_text())
    with pytest.raises(ValueError, match="apply to the brain phantom"):
        write_phantom(tmp_path / "p", "pelvis", n_subjects=1, physics="literature")
    with pytest.raises(ValueError, match="not known"):
        write_phantom(tmp_path / "q", "brain", n_subjects=1, physics="textbook")
    code, _, err = _cli([tmp_path / "c", "--grid", "fine", "--shape", "24", "24", "16"], capsys)
    assert code == 2 and "--grid fine and --shape" in err
