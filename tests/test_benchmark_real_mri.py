"""benchmarks/real_mri.py (issue 35, item 5): its two protocols against `evaluate_subject`, the hyperintensity
region, the folds' inner split, the mean network alone against the sampler's own mean, the quick run on the real
scans of ../shared/data/real and its rendering."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
REAL = ROOT.parent / "shared" / "data" / "real"


def _brain(shape=(44, 48, 40), seed=0):
    """A bright ellipsoid 'brain' with texture inside a zero background, a lesion blob and a segmentation."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.3
    ref = np.where(inside, 300 + 40 * rng.standard_normal(shape), 0.0)
    lesion = ((grid - np.array([0.2, 0.1, 0.0])[:, None, None, None]) ** 2).sum(0) < 0.03
    ref[lesion] += 250
    seg = np.where(lesion, 2, 0)
    seg[lesion & (grid[0] > 0.25)] = 1
    return ref, seg, inside


@pytest.mark.parametrize("protocol", ["volume", "scalefree"])
def test_scores_match_evaluate_subject(protocol):
    """The cropped scoring is evaluate_subject's: same PSNR, SSIM, MAE and lesion PSNR on a volume whose foreground
    box is smaller than the volume (the crop must leave every masked SSIM value as it was)."""
    import real_scoring

    from phmdiff.eval.protocols import evaluate_subject

    ref, seg, _ = _brain()
    rng = np.random.default_rng(1)
    pred = 1.7 * ref + 20 + 30 * rng.standard_normal(ref.shape)  # another gain: the protocols differ
    r = real_scoring.RealReference.build(ref, seg)
    assert all(b.stop - b.start < n for b, n in zip(r.box, ref.shape))  # the crop crops
    row = next(x for x in real_scoring.score(pred, r) if x["protocol"] == protocol)
    full = evaluate_subject(pred, ref, seg=seg, protocol=protocol)
    for k in ("psnr", "ssim", "mae", "lesion_psnr"):
        assert row[k] == pytest.approx(full[k], rel=1e-9, abs=1e-9), k
    # the edema ratio is over label 2 only, in the protocol's units
    p, t = real_scoring.normalized(pred[r.box], r, protocol)
    edema = (seg == 2)[r.box]
    assert row["edema_ratio"] == pytest.approx(p[edema].mean() / t[edema].mean())


def test_scalefree_forgives_a_gain_the_volume_protocol_does_not():
    import real_scoring

    ref, seg, _ = _brain()
    rows = {x["protocol"]: x for x in real_scoring.score(2.0 * ref + 5.0, real_scoring.RealReference.build(ref, seg))}
    assert rows["scalefree"]["psnr"] > 100 and rows["scalefree"]["edema_ratio"] == pytest.approx(1.0)
    assert rows["volume"]["psnr"] < 10 and rows["volume"]["edema_ratio"] > 1.5


def test_hyperintensity_region_finds_the_lesion_not_the_rim_or_specks():
    import real_scoring

    from phmdiff.eval.protocols import foreground_mask

    ref, seg, inside = _brain(seed=2)
    ref[inside & ~ndimage.binary_erosion(inside, iterations=1)] += 500  # a bright rim
    ref[18, 20:22, 18:20] += 800  # a speck of 4 voxels deep inside
    mask = foreground_mask(ref)
    region = real_scoring.hyperintensity_region(ref, mask)
    lesion = seg > 0
    assert (region & lesion).sum() / region.sum() > 0.95  # the region is lesion
    assert (region & lesion).sum() / lesion.sum() > 0.5  # and most of it
    assert mask[18, 20:22, 18:20].all() and not region[18, 20:22, 18:20].any()
    r = real_scoring.RealReference.build(ref)  # no segmentation: the region stands in for lesion and edema
    assert r.region == "flair_hyperintensity" and (r.lesion == r.hyper).all() and r.hyper_dice_wt is None


def test_inner_split_never_validates_on_the_held_out_subject():
    import real_mri

    ids = ["c", "a", "b", "d"]
    for held in ids:
        train, val = real_mri.inner_split(ids, held)
        assert held not in train and val in train and val != held and sorted(train + [held]) == sorted(ids)
    assert real_mri.inner_split(ids, "a")[1] == "b" and real_mri.inner_split(ids, "d")[1] == "a"  # cyclic
    assert real_mri.inner_split(["a", "b"], "a") == (["b"], None)  # two subjects: nothing to validate on
    with pytest.raises(ValueError, match="at least 2"):
        real_mri.inner_split(["a"], "a")


def test_mean_alone_is_what_the_sampler_adds_to_a_zero_residual():
    """A second path to the mean network's output: translate's own sampling of a mean/residual run whose residual
    denoiser answers 0 ends at exactly the mean."""
    from baselines.mean_alone import has_mean_net, predict_mean_alone

    from phmdiff.autoencoder import IdentityAutoencoder
    from phmdiff.inference import SamplingSettings, TrainedRun
    from phmdiff.mean_net import MeanNet, MeanResidual
    from phmdiff.pipeline import translate_samples

    class Zero(torch.nn.Module):
        def forward(self, x, sigma, **kwargs):
            return torch.zeros_like(x)

    torch.manual_seed(0)
    model = MeanResidual(MeanNet(2, 1, 1, (4, 4, 8, 8, 8, 4)), Zero()).eval()
    cfg = SimpleNamespace(model=SimpleNamespace(pyramid_levels=2, in_channels=1, in_size=16))
    plan = SimpleNamespace(sources=["t1", "t2"], modalities=["t1", "t2", "flair"], target="flair")
    trained = TrainedRun(model, IdentityAutoencoder(), cfg, plan, Path("."), torch.device("cpu"))
    trained.plan.latent_scale = 1.0
    src = np.random.default_rng(0).random((5, 2, 16, 16)).astype(np.float32)
    mean = predict_mean_alone(trained, src, batch=2)
    sampled = translate_samples(trained, src, [[0, 1, 2, 3, 4]], SamplingSettings(sampler="ddim", num_steps=3,
                                                                                  fine_num_steps=2))[0]
    assert has_mean_net(trained) and mean.shape == (5, 16, 16)
    np.testing.assert_allclose(mean, sampled, atol=1e-5)
    with pytest.raises(ValueError, match="takes 2"):
        predict_mean_alone(trained, src[:, :1])


def test_summary_pairs_folds_and_seeds_against_the_best_unet():
    from real_summary import summarise

    rows = []
    for fold in ("a", "b", "c"):
        for seed in (0, 1):
            base = {"a": 18.0, "b": 20.0, "c": 22.0}[fold] + 0.1 * seed
            for protocol, shift in (("volume", -3.0), ("scalefree", 0.0)):
                for method, d in (("phmdiff_mean8", 1.0), ("unet_l1", -0.5), ("unet_l2", 0.0), ("copy_t2", -4.0)):
                    # under the volume protocol the L1 U-Net is the better one
                    d = {"unet_l1": 0.5, "unet_l2": -0.5}.get(method, d) if protocol == "volume" else d
                    rows.append({"fold": fold, "subject": fold, "seed": seed, "method": method, "protocol": protocol,
                                 "psnr": base + shift + d, "lesion_psnr": base - 5 + d, "edema_ratio": 0.9})
    s = summarise(rows, "phmdiff_mean8")
    assert s["scalefree"]["best_unet"] == "unet_l2" and s["volume"]["best_unet"] == "unet_l1"
    c = s["scalefree"]["comparisons"]["best_unet"]["psnr"]
    assert c["mean"] == pytest.approx(1.0) and c["n_pairs"] == 6 and c["n_subjects"] == 3
    assert c["target"] == 0.3 and c["target_met"]  # every pair is +1 dB: the interval is [1, 1]
    assert s["scalefree"]["comparisons"]["best_unet"]["lesion_psnr"]["target"] == 0.0
    assert "target" not in s["scalefree"]["comparisons"]["unet_l1"]["psnr"]
    assert "target" not in s["volume"]["comparisons"]["best_unet"]["psnr"]  # the targets are scale-free ones
    assert s["scalefree"]["methods"]["phmdiff_mean8"]["per_fold"]["a"]["psnr"] == pytest.approx(19.05)
    t = s["fold_targets"]
    assert not t["a"]["psnr"]["met"] and t["c"]["psnr"]["met"] and t["a"]["edema_ratio"]["met"]
    assert t["b"]["volume_gap"]["value"] == pytest.approx(3.0) and not t["b"]["volume_gap"]["met"]


def test_bad_data_folder_is_one_sentence(tmp_path):
    import real_mri

    with pytest.raises(ValueError, match="no such folder"):
        real_mri.main(["--quick", "--data", str(tmp_path / "none"), "--out-dir", str(tmp_path)])


@pytest.mark.slow  # one fold, one seed, 2 CPU-s per method on the real scans: about a minute of CPU
def test_quick_real_mri_scores_every_method_under_both_protocols(tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"the real scans are not here ({REAL}): the real-data benchmark has nothing to run on.")
    import real_mri
    import render_quality

    out = tmp_path / "results"
    n = torch.get_num_threads()
    try:
        assert real_mri.main(["--quick", "--work", str(tmp_path / "work"), "--out-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(n)
    data = json.loads((out / "real_mri_quick.json").read_text())
    r = data["results"]
    assert data["machine"]["cpu_model"] and data["git_commit"] and r["seeds"] == [0] and r["size"] == 32
    fold = r["folds"][0]
    held = fold["held_out"]
    assert held == "TCGA_DU_7294" and held not in fold["train"] and fold["inner"]["val"] != held
    assert fold["reference"]["lesion_region"] == "segmentation"  # the one subject with a _seg
    methods = {"phmdiff_mean2", "phmdiff_single", "mean_alone", "unet_l1", "unet_l2", "copy_t2", "copy_t1",
               "ceiling"}
    assert {x["method"] for x in r["rows"]} == methods
    for m in methods:
        for protocol in ("volume", "scalefree"):
            rows = [x for x in r["rows"] if x["method"] == m and x["protocol"] == protocol]
            assert len(rows) == 1 and rows[0]["seed"] == 0, (m, protocol)
            x = rows[0]
            assert all(math.isfinite(x[k]) for k in ("psnr", "mae", "lesion_psnr", "edema_ratio", "hyper_psnr")), x
    assert fold["runs"]["phmdiff_mean2"][0]["steps"] >= 1
    assert fold["runs"]["unet_l1"][0]["train_clock_seconds"] >= 2.0
    assert [t["weights"] for t in fold["unet_selection"]["trials"]] == ["raw", "ema"]
    sf = r["summary"]["scalefree"]
    assert sf["best_unet"] in ("unet_l1", "unet_l2")
    c = sf["comparisons"]["best_unet"]["psnr"]
    assert c["target"] == 0.3 and c["n_pairs"] == 1 and "target_met" in c
    assert r["summary"]["fold_targets"][held]["psnr"]["target"] == ">= 20"
    assert Path(fold["panel"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(render_quality.real_mri_lines(r, "python benchmarks/real_mri.py --quick"))
    assert "| phmdiff_mean2 |" in text and "best U-Net (unet" in text and f"| {held} | segmentation |" in text
