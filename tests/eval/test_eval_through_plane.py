"""3D consistency metrics (`metrics.view_scores`, `gradient_error`, `through_plane_scores`) against direct numpy
and scikit-image computations, and their columns in `phmdiff evaluate`."""

import csv
import io
import json

import nibabel as nib
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from phmdiff import cli
from phmdiff.eval import metrics as M


def _volumes(seed=0, shape=(16, 18, 13)):
    rng = np.random.default_rng(seed)
    ref = rng.random(shape)
    pred = ref + 0.05 * rng.standard_normal(shape)
    mask = np.zeros(shape, bool)
    mask[2:-2, 3:-3, 1:-1] = True
    return pred, ref, mask


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_view_scores_are_per_slice_means(axis):
    pred, ref, mask = _volumes()
    got = M.view_scores(pred, ref, 1.0, axis, mask)
    p, r, m = (np.moveaxis(a, axis, 0) for a in (pred, ref, mask))
    direct = [10 * np.log10(1.0 / np.mean((a[k] - b[k]) ** 2)) for a, b, k in zip(p, r, m) if k.any()]
    assert got["n_slices"] == len(direct)
    assert got["psnr"] == pytest.approx(np.mean(direct), rel=1e-12)
    unmasked = M.view_scores(pred, ref, 1.0, axis)
    sk = [structural_similarity(b, a, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False) for a, b in zip(p, r)]
    assert unmasked["ssim"] == pytest.approx(np.mean(sk), abs=1e-6)


def test_gradient_error_is_the_rms_error_of_the_finite_difference():
    pred, ref, mask = _volumes(1)
    direct = []
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            for k in range(pred.shape[2] - 1):
                if mask[i, j, k] and mask[i, j, k + 1]:
                    direct.append((pred[i, j, k + 1] - pred[i, j, k]) - (ref[i, j, k + 1] - ref[i, j, k]))
    assert M.gradient_error(pred, ref, 2, mask) == pytest.approx(np.sqrt(np.mean(np.square(direct))), rel=1e-12)
    assert M.gradient_error(ref + 3.0, ref, 0) == pytest.approx(0.0, abs=1e-12)  # an offset has no gradient error


def test_stripes_raise_the_through_plane_error_only():
    _, ref, mask = _volumes(2)
    stripes = ref + 0.1 * (np.arange(ref.shape[2]) % 2)[None, None, :]  # a per-slice offset, as slice-wise synthesis
    s = M.through_plane_scores(stripes, ref, 1.0, 2, mask)
    assert s["grad_error_through"] == pytest.approx(0.1, rel=1e-9) and s["grad_error_inplane"] < 1e-12
    assert s["psnr_through"] < 25 and s["ssim_through"] < 1


def test_evaluate_writes_the_through_plane_columns(tmp_path):
    pred, ref, _ = _volumes(3, (20, 20, 12))
    for name, v in (("pred", pred), ("ref", ref)):
        nib.save(nib.Nifti1Image((v * 100 + 10).astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "ev"
    assert cli.main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"), "--out", str(out)]) == 0
    header = (out / "per_subject.csv").read_text().splitlines()[0].split(",")
    assert {"psnr_through", "ssim_through", "grad_error_through", "grad_error_inplane"} <= set(header)
    summary = json.loads((out / "summary.json").read_text())["protocols"]["volume"]
    assert summary["grad_error_through"]["mean"] > 0 and summary["psnr_through"]["mean"] > 10


@pytest.mark.parametrize("named,codes,expected", [
    ("axial (S-I)", ("S", "A", "R"), 0), ("axial (S-I)", ("L", "P", "S"), 2), ("coronal (A-P)", ("L", "I", "P"), 2),
    ("sagittal (R-L)", ("A", "L", "S"), 1), (None, ("S", "A", "R"), -1)])
def test_the_slice_axis_follows_the_files_orientation(named, codes, expected):
    from phmdiff.eval.evaluate import array_axis

    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, c in enumerate(codes):  # voxel axis i runs along world axis "RAS"/"LPI".index(c), + for R, A, S
        affine["RLAPSI".index(c) // 2, i] = 1.0 if c in "RAS" else -1.0
    assert nib.aff2axcodes(affine) == codes
    assert array_axis(None, named, affine) == expected
    assert array_axis(1, named, affine) == 1  # --slice-axis wins


def test_evaluate_slices_a_translate_folder_along_translates_axis(tmp_path):
    """translate.json names the anatomical axis; in a file stored S-A-R, axial slices run along array axis 0,
    so a per-slice offset there is a through-plane error, not an in-plane one."""
    _, ref, _ = _volumes(4, (12, 20, 20))
    stripes = ref + 0.1 * (np.arange(ref.shape[0]) % 2)[:, None, None]
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)  # axis 0 runs S
    for name, v in (("pred.nii.gz", stripes), ("ref.nii.gz", ref)):
        nib.save(nib.Nifti1Image((v * 100 + 10).astype(np.float32), affine), tmp_path / name)
    subject = {"subject": "s1", "prediction": "pred.nii.gz", "reference": str(tmp_path / "ref.nii.gz"),
               "slice_axis": "axial (S-I)"}
    (tmp_path / "translate.json").write_text(json.dumps({"target": "flair", "modality_kind": "mr",
                                                         "subjects": [subject]}))
    rows = {}
    for axis in (None, "0", "2"):
        out = tmp_path / f"ev{axis}"
        extra = [] if axis is None else ["--slice-axis", axis]
        assert cli.main(["evaluate", str(tmp_path), "--out", str(out), *extra]) == 0
        rows[axis] = next(csv.DictReader(io.StringIO((out / "per_subject.csv").read_text())))
    assert rows[None]["grad_error_through"] == rows["0"]["grad_error_through"] != rows["2"]["grad_error_through"]
    assert float(rows[None]["grad_error_inplane"]) < 1e-6 < float(rows["2"]["grad_error_inplane"])
