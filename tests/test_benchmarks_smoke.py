"""Smoke test of the benchmark scripts at their --quick sizes: each runs end to end and writes the JSON fields
that docs/benchmarks.md reads (machine, date, commit, command, results with targets)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from phmdiff.sample import SAMPLERS

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _load(path: Path) -> dict:
    data = json.loads(path.read_text())
    for key in ("benchmark", "machine", "date", "git_commit", "command", "results"):
        assert key in data, key
    for key in ("cpu_model", "cores", "torch_version", "device_name"):
        assert data["machine"][key], key
    return data["results"]


def test_common_statistics():
    import common

    s = common.median_iqr([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["iqr"] == pytest.approx(2.0) and s["n"] == 5
    with pytest.raises(ValueError, match="at least one"):
        common.median_iqr([])
    calls = []
    out = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                                  warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rotating rounds
    assert out["a"]["n"] == 3 and len(out["b"]["times"]) == 3


def test_attention_flops_match_closed_form():
    import speed
    import torch.nn.functional as F

    q = torch.randn(2, 3, 5, 4, requires_grad=True)
    counter = [0.0]
    with speed.count_attention_flops(counter):
        F.scaled_dot_product_attention(q, q, q)
    assert counter[0] == 3 * 4 * 2 * 3 * 5 * 5 * 4  # forward 4 B H T^2 d, backward twice that


@pytest.mark.slow  # 3 methods x 2 seeds of training and scoring: ~40 s on a quiet 2-core machine
def test_quick_quality_scores_every_method_per_subject_and_seed(tmp_path, restore_threads):
    import quality

    out = tmp_path / "results"
    assert quality.main(["--quick", "--force-ddpm", "--out-dir", str(out), "--work", str(tmp_path / "q")]) == 0
    q = _load(out / "quality.json")
    assert q["load_average_before"] and q["load_average_after"] and q["seeds"] == [0, 1]
    task = q["tasks"][0]
    b = task["budgets"]["2"]
    methods = ("phmdiff_mean2", "phmdiff_single", "unet", "unet_l2", "monai_ddpm", "copy_t2", "noise_free_ceiling")
    for method in methods:
        seeds = [0] if method.startswith(("copy", "noise")) else [0, 1]
        for f in quality.FILTERS:
            rows = [r for r in b["rows"] if r["method"] == method and r["filter"] == f]
            assert {(r["subject"], r["seed"]) for r in rows} == {(s, k) for s in task["subjects"]["test"]
                                                                 for k in seeds}, (method, f)
            for r in rows:
                assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 and math.isfinite(r["lesion_psnr"]), r
                assert r["ratio_edema"] > 0 and 0 <= r["dice_wt"] <= 1 and "ratio_wm" in r, r
    on = [r["psnr"] for r in b["rows"] if r["method"] == "unet" and r["filter"] == "z_on"]
    off = [r["psnr"] for r in b["rows"] if r["method"] == "unet" and r["filter"] == "z_off"]
    assert on != off  # the filter reaches the baselines too
    assert set(task["subjects"]["test"]).isdisjoint(task["subjects"]["val"])
    assert [t["weights"] for t in b["unet_selection"]["trials"]] == ["raw", "ema"]
    gate = b["monai_ddpm_gate"]
    assert gate["runs"] and gate["forced"] and gate["share_of_tutorial"] < quality.DDPM_MIN_SHARE
    comp = b["summary"]["z_off"]["comparisons"]
    assert "target" not in comp["monai_ddpm"]["psnr"]  # a forced, undertrained DDPM gets no target
    c = comp["unet"]["psnr"]
    assert c["n_pairs"] == 4 and c["ci"][0] <= c["mean"] <= c["ci"][1] and c["verdict"] in ("resolved", "not resolved")
    assert "ms_swd_single" in comp["unet"]
    run = b["runs"]["phmdiff_mean2"][0]
    assert run["network_calls_per_volume"] == 16 * run["calls_per_slice_per_sample"] * 2  # 16 slices x 2 samples
    assert run["calls_per_slice_per_sample"] == 4 + 1  # DDIM 2 + 2 steps over two levels, and the mean network
    assert b["runs"]["unet"][0]["train_clock_seconds"] >= 2.0

    # rendered: tables from the JSON, and a learning curve once a second budget exists (here a relabelled copy)
    import run_all

    data = json.loads((out / "quality.json").read_text())
    data["results"]["tasks"][0]["budgets"] = {"6": b}
    (out / "quality_6.json").write_text(json.dumps(data))
    text = run_all.markdown(out, tmp_path)
    assert "| phmdiff_mean2 |" in text and "| unet | " in text and "through-plane filter on every method" in text
    assert "![learning curve, brain_t1t2_to_flair](images/learning_brain_t1t2_to_flair.png)" in text
    png = tmp_path / "docs" / "images" / "learning_brain_t1t2_to_flair.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_targets_follow_the_budget_and_the_ddpm_gate():
    import quality

    assert quality._target("psnr", "unet", 120.0, None) == -0.3
    assert quality._target("psnr", "unet", 600.0, None) == 0.3
    assert quality._target("lesion_psnr", "unet", 600.0, None) == 0.0
    assert quality._target("lesion_psnr", "unet", 120.0, None) is None
    assert quality._target("psnr", "monai_ddpm", 600.0, {"runs": True, "forced": False}) == 0.0
    assert quality._target("psnr", "monai_ddpm", 600.0, {"runs": True, "forced": True}) is None


NO_MEAN = "model.mean_net=''"


@pytest.mark.parametrize("overrides, calls", [
    ([NO_MEAN], 14),  # DDIM 8 + 6 over two levels
    ([NO_MEAN, "eval.sampler=heun", "eval.num_steps=4", "eval.fine_num_steps=3"], 7 + 5),  # Heun: 2n - 1 per level
    ([NO_MEAN, "eval.guidance=1.5"], 28),  # guidance: conditional and unconditional halves
    ([NO_MEAN, "model.pyramid_levels=3"], 8 + 6 + 6),
    ([], 14 + 1),  # the demo ships the mean network: once per slice and sample
    (["eval.guidance=1.5"], 28 + 1),
])
def test_calls_per_slice_closed_form(tmp_path, overrides, calls):
    import quality

    cfg = quality.config_for(quality.TASKS[0], tmp_path, False, overrides)
    assert quality.phmdiff_calls_per_slice(cfg) == calls


def test_flips_reach_every_method_or_none():
    import quality

    assert not quality.parse(["--quick"]).flips and quality.parse(["--quick", "--flips"]).flips
    src = Path(quality.__file__).read_text()
    assert 'f"train.flip={\'true\' if args.flips else \'false\'}"' in src  # PHMDiff's flag follows --flips
    assert src.count("flip=args.flips") == 3  # the U-Net's two trainings and the DDPM's


@pytest.mark.slow
def test_quick_ablation_pairs_each_variant_with_shipped(tmp_path, restore_threads):
    import ablation

    out = tmp_path / "results"
    assert ablation.main(["--quick", "--seg-steps", "0", "--out-dir", str(out), "--work", str(tmp_path / "a")]) == 0
    a = _load(out / "ablation.json")
    table = a["tasks"][0]["budgets"]["2"]["summary"]["z_on"]
    assert set(table) == {"shipped", "levels_1"}
    c = table["levels_1"]["psnr_minus_shipped"]
    assert c["n_pairs"] == 4 and c["mean"] == pytest.approx(table["levels_1"]["psnr"] - table["shipped"]["psnr"])


def test_quick_benchmarks_write_their_fields(tmp_path, restore_threads):
    import memory
    import sampling
    import speed

    out = tmp_path / "results"
    # quality.py's PHMDiff has one pyramid level; sampling.py trains its own two-level run for the pyramid curve.
    assert sampling.main(["--quick", "--out-dir", str(out), "--work", str(tmp_path / "s")]) == 0
    s = _load(out / "sampling.json")
    assert {r["curve"] for r in s["rows"]} == {*SAMPLERS, "pyramid_heun"}  # every registered sampler
    heun = {r["num_steps"]: r["nfe"] for r in s["rows"] if r["curve"] == "heun"}
    assert heun == {1: 2, 2: 6}  # 2n - 1 calls per level, two levels
    assert s["fewest_nfe_within_0.1db"]["overall"]["psnr"] >= s["fewest_nfe_within_0.1db"]["overall"]["best_psnr"] - 0.1

    assert speed.main(["--quick", "--out-dir", str(out), "--no-memory"]) == 0
    r = _load(out / "speed.json")
    kinds = {(t["kind"], t["mask_ratio"], t["dtype"]) for t in r["training"]}
    assert ("diffusers", 0.0, "bf16") in kinds and ("phmdiff", 0.75, "fp32") in kinds
    assert all(t["step_s"] > 0 and t["flops_per_step"] > 0 for t in r["training"])
    assert {x["sampler"] for x in r["sampling"]} == set(SAMPLERS)
    assert all(x["nfe"] == 3 for x in r["sampling"])
    assert r["matmul_peak"]["bfloat16"]["flops_per_s_median"] > 0
    assert "mask0.5_over_unmasked_fp32" in r["targets"] and "no GPU" in r["gpu_section"]

    assert memory.main(["--quick", "--out-dir", str(out), "--work", str(tmp_path / "m")]) == 0
    mem = _load(out / "memory.json")
    assert mem["prepare"]["rc"] == 0 and mem["translate"]["rc"] == 0
    assert 10 * 2**20 < mem["translate"]["peak_rss_bytes"] < 8 * 2**30
    assert (tmp_path / "m" / "translate").exists()


def test_quick_anytoany_benchmark_writes_its_table(tmp_path, restore_threads):
    import anytoany
    import run_all

    out = tmp_path / "results"
    assert anytoany.main(["--quick", "--out-dir", str(out), "--work", str(tmp_path / "a")]) == 0
    r = _load(out / "anytoany.json")
    assert [d["target"] for d in r["directions"]] == ["flair", "t2", "t1ce"]
    assert r["budget_s_anytoany"] == 3 * r["budget_s_per_dedicated_model"]
    steps = {k: v["diffusion_steps"] for k, v in r["training"].items()}  # --quick trains a step budget
    assert steps == {"flair_from_t1_t2": 6, "t2_from_t1": 6, "t1ce_from_t1_t2_flair": 6, "anytoany": 18}
    for d in r["directions"]:
        m = d["methods"]
        assert all(math.isfinite(m[k]["psnr"]) and 0 <= m[k]["ssim"] <= 1 for k in m)
        assert d["anytoany_minus_dedicated_psnr_db"] == pytest.approx(m["anytoany"]["psnr"] - m["dedicated"]["psnr"])
        assert m["noise_free_ceiling"]["psnr"] > max(m["anytoany"]["psnr"], m["dedicated"]["psnr"])
    assert "| flair_from_t1_t2 |" in run_all.markdown(out)


def test_tissue_histogram_parts_sum_to_scipys_wasserstein_distance():
    import realism
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0.0, 0.02, 4000), rng.normal(0.3, 0.05, 3000), rng.normal(0.6, 0.05, 3000),
                           rng.normal(0.9, 0.05, 3000)])
    fake = real * 1.1 + 0.02
    bounds = realism.tissue_bounds(real)
    assert len(bounds) == 3 and 0.0 < bounds[0] < 0.3 < bounds[1] < 0.6 < bounds[2] < 0.9  # between the modes
    d = realism.tissue_histogram_distance(fake, real, bounds)
    assert d["total"] == pytest.approx(wasserstein_distance(fake, real), rel=1e-3)
    assert sum(d["tissues"].values()) == pytest.approx(d["total"])
    assert d["tissues"]["bright"] > d["tissues"]["background"]  # the bright shift grows with intensity
    assert realism.tissue_histogram_distance(real, real, bounds)["total"] == 0.0


def test_quick_realism_writes_its_fields(tmp_path, restore_threads):
    import realism

    assert realism.main(["--quick", "--out-dir", str(tmp_path / "results"), "--work", str(tmp_path / "r")]) == 0
    r = _load(tmp_path / "results" / "realism.json")
    assert set(r["methods"]) == {"floor_real_train", "phmdiff_mask0.5", "phmdiff_mask0.0", "monai_ddpm"}
    for name, m in r["methods"].items():
        assert math.isfinite(m["ms_swd"]) and m["ms_swd"] >= 0 and m["tissue_hist"] >= 0, name
        assert sum(m["tissue_hist_parts"].values()) == pytest.approx(m["tissue_hist"]), name
    assert r["targets"]["vs_floor"]["met"] == (r["methods"]["phmdiff_mask0.5"]["ms_swd"]
                                               <= 2 * r["methods"]["floor_real_train"]["ms_swd"])
    assert (tmp_path / "r" / "samples_run_mask0.5" / "grid.png").is_file()


def test_quick_translate_speed_writes_before_and_after(tmp_path, restore_threads):
    import translate_speed

    assert translate_speed.main(["--quick", "--out-dir", str(tmp_path), "--threads", "1"]) == 0
    r = _load(tmp_path / "translate_speed.json")
    variants = {x["variant"]: x for x in r["rows"]}
    assert "batched" in variants
    for x in variants.values():
        assert x["volume_seconds"] > 0 and x["volume_cpu_seconds"] > 0 and 10 * 2**20 < x["peak_rss_gb"] * 2**30
    assert variants["batched"]["plane_predicted"] == [32, 32]  # the whole plane, not the 16x16 training crop
    if "main" in variants:  # where git can give main's src/
        assert variants["main"]["plane_predicted"] == [16, 16]


def test_through_plane_scores_every_filter_setting(tiny_run, tmp_path, restore_threads):
    import through_plane

    assert through_plane.main(["--run", str(tiny_run / "run"), "--input", str(tiny_run / "ph"), "--subjects",
                               "PHANTOM_00000", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    rows = _load(tmp_path / "through_plane.json")["rows"]
    assert len(rows) == len(through_plane.GRID)
    assert all(math.isfinite(r["grad_error_through"]) and math.isfinite(r["psnr_through"]) for r in rows)


def test_local_ceiling_bin_mean_is_the_conditional_mean(tmp_path, restore_threads):
    """Constructed subjects: where one (T1, T2) bin holds healthy voxels (FLAIR 0.5) and as many tumour voxels
    (FLAIR 1.0), the best voxel-wise prediction is their mean 0.75 for both; a tumour with a (T1, T2) of its own
    is predicted exactly; an unseen fine bin falls back to its coarse bin. Then the quick run on both phantoms."""
    import local_ceiling
    import run_all

    t1, t2 = np.full((8, 8, 4), 1.0, np.float32), np.full((8, 8, 4), 1.0, np.float32)
    flair, seg = np.full((8, 8, 4), 0.5, np.float32), np.zeros((8, 8, 4), np.float32)
    t1[0] = t2[0] = flair[0] = 0.0  # a background row: the rest is the foreground
    seg[1:3] = 2  # 16 tumour voxels ...
    flair[1:3] = 1.0
    seg[3:5, :, :] = 0  # ... and 16 healthy ones in the same bin (rows 3-4); rows 5-7 too
    a = {"t1": t1, "t2": t2, "flair": flair, "seg": seg, "unit": 1.0}
    model = local_ceiling.fit_bins([a], 200)
    pred = local_ceiling.predict_bins(model, a)
    n_t, n_h = 2 * 8 * 4, 5 * 8 * 4
    assert pred[1, 0, 0] == pytest.approx((n_t * 1.0 + n_h * 0.5) / (n_t + n_h))
    own = dict(a, t2=np.where(seg > 0, 2.5, t2).astype(np.float32))
    pred = local_ceiling.predict_bins(local_ceiling.fit_bins([own], 200), own)
    assert pred[1, 0, 0] == pytest.approx(1.0) and pred[6, 0, 0] == pytest.approx(0.5)
    unseen = dict(own, t2=np.where(seg > 0, 2.51, t2).astype(np.float32))  # the next fine bin, same coarse bin
    assert local_ceiling.predict_bins(local_ceiling.fit_bins([own], 200), unseen)[1, 0, 0] == pytest.approx(1.0)

    out = tmp_path / "results"
    assert local_ceiling.main(["--quick", "--out-dir", str(out), "--work", str(tmp_path / "w")]) == 0
    r = _load(out / "local_ceiling.json")
    assert [g["phantom"] for g in r["grids"]] == ["default", "literature"]
    for g in r["grids"]:
        b = g["bin_mean"]
        assert len(g["test_subjects"]) == 2 and b["train"]["psnr"] > b["test"]["psnr"]  # seen data is easier
        lo, hi = b["test"]["lesion_psnr_ci"]
        assert lo <= b["test"]["lesion_psnr"] <= hi and 0 < b["test"]["ratio_edema"] < 2
    assert "| literature | 32x32x16 | bin mean |" in run_all.markdown(out)


def test_level_diagnosis_runs_on_a_trained_run(tiny_run, tmp_path, restore_threads):
    """Every level x sigma gets a row; `figures` of the truth itself is exact (zero error, equal means)."""
    import level_diagnosis

    truth = torch.randn(3, 1, 8, 8)
    tumour = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    tumour[:, :, 2:5, 2:5] = True
    f = level_diagnosis.figures(truth, truth, tumour)
    assert f["tumour_rmse"] == 0 and f["elsewhere_rmse"] == 0 and f["tumour_mean"] == f["truth_tumour_mean"]
    shifted = level_diagnosis.figures(truth + tumour.float() * 0.5, truth, tumour)
    assert shifted["tumour_rmse"] == pytest.approx(0.5) and shifted["elsewhere_rmse"] == 0

    assert level_diagnosis.main(["--run", str(tiny_run / "run"), "--input", str(tiny_run / "ph"), "--min-voxels", "1",
                                 "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    r = _load(tmp_path / "level_diagnosis.json")
    levels = {row["level"] for row in r["denoiser"]}
    assert len(r["denoiser"]) == len(levels) * len(level_diagnosis.SIGMAS) and len(levels) >= 2
    assert all(math.isfinite(row["elsewhere_rmse"]) for row in r["denoiser"])
    assert all(math.isfinite(row["tumour_rmse"]) for row in r["denoiser"] if row["level"] == 0)
    assert math.isfinite(r["sampled"]["tumour_rmse"])


def test_budget_pacer_keeps_the_planned_tail_when_the_machine_slows_down():
    from types import SimpleNamespace

    from common import budget_pacer

    from phmdiff.training.schedules import lr_at, mask_ratio_at

    t = SimpleNamespace(max_num_steps=0, unmasked_finetune_steps=0, lr_cooldown=0.3)
    clock = {"now": 0.0}
    after_step, mark = budget_pacer(t, 100.0, clock=lambda: clock["now"], finetune_share=0.1)
    step, masks, lrs = 0, [], []
    while step < t.max_num_steps:  # the loop as training runs it: the hook after each step, the limit re-read
        masks.append(mask_ratio_at(step, t.max_num_steps, t.unmasked_finetune_steps, ratio_scale=0.5))
        lrs.append(lr_at(step, 16, 1.0, 0, t.max_num_steps, t.lr_cooldown))
        clock["now"] += 5.0 if step == 0 else (0.1 if step < 200 else 0.2)  # first step slow; half pace from 200
        step += 1
        after_step(step, None, None)
    used = clock["now"] - 5.0
    assert 100.0 - 0.2 <= used <= 100.0 + 0.2  # the budget counts from the end of the first step
    assert mark["steps"] == step - 1 and mark["used"] == pytest.approx(used)
    # The unmasked tail and the cool-down ran as planned for the final count: 10 % and 30 % of it.
    assert masks.count(0.0) == int(0.1 * step) and masks[-1] == 0.0
    assert lrs[-1] == pytest.approx(1 / math.ceil(0.3 * step)) and min(lrs[: step - math.ceil(0.3 * step)]) == 1.0
    # A pace planned once from the first steps (0.1 s) would have asked for 1000 steps and been cut at 700.
    assert 550 < step < 650
