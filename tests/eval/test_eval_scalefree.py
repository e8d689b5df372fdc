"""The `scalefree` protocol on closed forms: each image by its own percentiles over the reference's foreground, so a
gain and an offset cost nothing there and everything under `volume`; the CLI path; the foreground rule it reads."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from phmdiff.cli import main
from phmdiff.data.intensity import MR_PERCENTILES
from phmdiff.eval import protocols as P
from phmdiff.eval.protocols import evaluate_subject, foreground_mask, own_scale

PERFECT = 250.0  # dB: identical up to float64 rounding (an error of 1e-12 of the unit range is 240 dB)


def _head(shape=(24, 24, 12), seed=0):
    """A ball of uniform intensities 100..400 in a zero background, and the ball."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (z**2 + y**2 + x**2) < 0.7
    return np.where(head, 100 + 300 * rng.random(shape), 0.0), head


def _middle_error(ref, head, delta):
    """`delta` added to the head voxels whose value lies in 200..300: they stay inside 200..300 + delta, well away
    from the 0.5 / 99.5 percentiles, so neither image's percentiles move. Returns (prediction, the changed voxels)."""
    hit = head & (ref > 200) & (ref < 300)
    return ref + delta * hit, hit


def test_gain_and_offset_cost_nothing_scale_free_and_everything_on_the_reference_scale():
    ref, head = _head()
    pred = 3 * ref + 100  # another scanner's gain and offset, the contrast exactly right
    free = evaluate_subject(pred, ref, mask=head, protocol="scalefree")
    assert free["psnr"] > PERFECT and free["ssim"] == pytest.approx(1.0)
    assert free["mae"] < 1e-12 and abs(free["mean_error"]) < 1e-12
    lo, hi = np.percentile(ref[head], MR_PERCENTILES)
    assert (free["pred_norm_low"], free["pred_norm_high"]) == pytest.approx((3 * lo + 100, 3 * hi + 100))
    vol = evaluate_subject(pred, ref, mask=head, protocol="volume")
    # on the reference's scale the error is (2 ref + 100) / (hi - lo): PSNR far below the perfect one
    err = (2 * ref[head] + 100) / (hi - lo)
    assert vol["psnr"] == pytest.approx(-10 * math.log10(np.mean(err**2)), abs=1e-9) and vol["psnr"] < 0


def test_a_known_error_gives_the_closed_form_psnr_mae_and_lesion_scores():
    ref, head = _head(seed=1)
    delta = 30.0
    err_pred, hit = _middle_error(ref, head, delta)
    lo, hi = np.percentile(ref[head], MR_PERCENTILES)
    e = delta / (hi - lo)  # the error in each image's own [0, 1] units (the percentiles did not move)
    frac = hit.sum() / head.sum()
    seg = hit.astype(np.uint8)  # the lesion is where the error is
    for pred in (err_pred, 0.5 * err_pred - 40):  # and under another gain and offset: the same figures
        res = evaluate_subject(pred, ref, mask=head, seg=seg, protocol="scalefree")
        assert res["psnr"] == pytest.approx(-10 * math.log10(frac * e**2), abs=1e-9)
        assert res["mae"] == pytest.approx(frac * e) and res["mean_error"] == pytest.approx(frac * e)
        assert res["lesion_psnr"] == pytest.approx(-20 * math.log10(e), abs=1e-9)
        assert res["lesion_mae"] == pytest.approx(e)
        assert res["slices"] == []  # one 3D volume per subject: no per-slice rows to pay for
    shifted = evaluate_subject(0.5 * err_pred - 40, ref, mask=head, seg=seg, protocol="volume")
    assert shifted["psnr"] < res["psnr"] - 10  # the reference's scale sees the gain


def test_each_image_is_clipped_to_its_own_unit_range():
    ref, head = _head(seed=2)
    pred = ref.copy()
    pred[head & (ref > 399)] = 1e6  # a bright tail above the prediction's own 99.5th percentile
    x, lo, hi = own_scale(pred, head)
    assert x.min() == 0.0 and x.max() == 1.0 and hi < 1e6
    res = evaluate_subject(pred, ref, mask=head, protocol="scalefree")
    # the tail lies above both images' own 99.5th percentiles: clipped to 1 in both, it costs nothing here ...
    assert res["psnr"] == math.inf
    assert evaluate_subject(pred, ref, mask=head, protocol="volume")["psnr"] < 0  # ... and everything unclipped
    flat = evaluate_subject(np.full(ref.shape, 7.0), ref, mask=head, protocol="scalefree")
    r_lo, r_hi = np.percentile(ref[head], MR_PERCENTILES)
    assert "constant" in flat["scalefree_note"]  # no contrast to scale: 0 everywhere, the error is the reference
    assert flat["mae"] == pytest.approx(np.mean(np.clip((ref[head] - r_lo) / (r_hi - r_lo), 0, 1)))


def test_ct_is_left_blank_with_a_sentence():
    ref = np.full((20, 20, 10), -1000.0)
    ref[4:16, 4:16, :] = 40.0
    res = evaluate_subject(ref + 10, ref, modality="ct", protocol="scalefree")
    assert "HU" in res["scalefree_note"] and "psnr" not in res and res["slices"] == []


def test_the_foreground_is_the_intensity_rule_so_a_z_scored_reference_keeps_its_brain(monkeypatch):
    ref, head = _head(seed=3)
    z = np.where(head, (ref - 250) / 90, -3.0)  # z-scored: a constant negative background, half the brain < 0
    assert (z[head] < 0).mean() > 0.3
    np.testing.assert_array_equal(foreground_mask(z), head)
    res = evaluate_subject(3 * z + 1, z, protocol="scalefree")
    assert res["psnr"] > PERFECT and res["n_voxels"] == head.sum()
    # foreground_mask asks `intensity.foreground` (one rule for prepare, translate and evaluate), then keeps the
    # largest component with its holes filled
    seen = []

    def rule(v, is_ct):
        seen.append(is_ct)
        return v > 0

    monkeypatch.setattr(P, "foreground", rule)
    blob = np.zeros((10, 10, 10))
    blob[2:8, 2:8, 2:8] = 1.0
    blob[4, 4, 4] = 0.0  # a hole
    blob[0, 0, 0] = 1.0  # a speck
    expected = np.zeros(blob.shape, bool)
    expected[2:8, 2:8, 2:8] = True
    np.testing.assert_array_equal(foreground_mask(blob), expected)
    foreground_mask(blob, "ct")
    assert seen == [False, True]
    with pytest.raises(ValueError, match="no foreground"):
        foreground_mask(np.zeros((6, 6, 6)))


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))
    return path


def test_cli_scores_scalefree_alone_and_under_all(tmp_path, capsys):
    ref, head = _head(shape=(24, 24, 16), seed=4)
    pred, _ = _middle_error(ref, head, 30.0)
    r, p = _write(tmp_path / "ref.nii.gz", ref), _write(tmp_path / "pred.nii.gz", 2 * pred + 50)
    out = tmp_path / "ev"
    assert main(["evaluate", str(p), str(r), "--protocol", "scalefree", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["protocols"]
    assert list(summary) == ["scalefree"]
    expected = evaluate_subject(2 * pred + 50, ref, protocol="scalefree")["psnr"]
    assert summary["scalefree"]["psnr"]["mean"] == pytest.approx(expected, abs=1e-4)  # float32 on disk
    row = next(csv.DictReader((out / "per_subject.csv").open()))
    assert row["protocol"] == "scalefree" and float(row["pred_norm_high"]) > 2 * float(row["norm_high"])
    assert "scalefree" in capsys.readouterr().out
    out_all = tmp_path / "ev_all"
    assert main(["evaluate", str(p), str(r), "--protocol", "all", "--out", str(out_all)]) == 0
    every = json.loads((out_all / "summary.json").read_text())["protocols"]
    assert "scalefree" in every and every["scalefree"]["psnr"]["mean"] > every["volume"]["psnr"]["mean"] + 10
