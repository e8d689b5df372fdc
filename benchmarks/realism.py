"""How real are generated slices? PHMDiff against MONAI's DDPM at equal CPU budget, and the metric's floor.

On the brain phantom (pixel space, 64x64 planes, one modality, unconditional), each method trains for the
same budget on the same training slices, then samples `--n-samples` slices, which are compared with
the held-out (validation + test subjects') real slices of that modality by

- MS-SWD: the multi-scale sliced Wasserstein distance of Laplacian-pyramid patches (Karras et al. 2018,
  `phmdiff.eval.distribution.ms_swd`), x1e3;
- the tissue histogram distance: the Wasserstein-1 distance between the two intensity histograms (in the
  [0, 1] units of prepared slices), split into the intensity ranges of the tissue classes (1D k-means on the
  held-out real intensities: background and a dark, a mid and a bright tissue band): the parts sum to the
  whole distance, and each says where the intensity profile is wrong.

Methods: PHMDiff as configs/generate_demo.yaml sets it up (mask ratio 0.5, MaskDiT's last 10 % of steps
unmasked) and the same with mask ratio 0 (MaskDiT's training cost claim: training samples per second and the
realism reached at equal wall time); MONAI's `DiffusionModelUNet` with its DDPM schedule and 50 DDIM steps
(`baselines/monai_ddpm.py`, no source channels); the floor: as many real training slices as samples against
the held-out ones (what a perfect generator of training-like slices scores).

    python benchmarks/realism.py [--budget 600] [--n-samples 64] [--threads 1]
    python benchmarks/realism.py --quick        # the smoke-test sizes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from baselines.monai_ddpm import predict_ddpm, train_ddpm
from common import RESULTS, budget_pacer, print_table, set_threads, write_result

DEFAULT_BUDGET_S = 600.0
DEFAULT_WORK = Path("bench_out") / "realism"
# 1D k-means classes of the real intensities, darkest first: background and three tissue bands (which tissue is
# dark or bright depends on the contrast: CSF is dark in FLAIR and T1, bright in T2)
TISSUES = ("background", "dark", "mid", "bright")
TARGETS = {"vs_monai_ddpm": "MS-SWD(PHMDiff) <= MS-SWD(MONAI DDPM)", "vs_floor": "MS-SWD(PHMDiff) <= 2 x floor",
           "mask_speed": "training samples per second while masking 0.5 >= 1.5 x at mask 0"}


def tissue_bounds(real: np.ndarray, k: int = len(TISSUES), iters: int = 50) -> np.ndarray:
    """Intensity boundaries between `k` tissue classes: 1D k-means (Lloyd) on the real pixels, started at
    quantiles; returns the k - 1 midpoints between sorted centres."""
    x = np.sort(np.asarray(real, dtype=np.float64).ravel())
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        cuts = (centres[1:] + centres[:-1]) / 2
        parts = np.split(x, np.searchsorted(x, cuts))
        centres = np.array([p.mean() if len(p) else c for p, c in zip(parts, centres)])
    return (centres[1:] + centres[:-1]) / 2


def tissue_histogram_distance(fake: np.ndarray, real: np.ndarray, bounds: np.ndarray, bins: int = 4096) -> dict:
    """W1 between the intensity distributions, integral of |F_fake - F_real|, split at `bounds` into tissues."""
    a, b = np.asarray(fake, np.float64).ravel(), np.asarray(real, np.float64).ravel()
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi + 1e-12, bins + 1)
    cdf_a = np.cumsum(np.histogram(a, edges)[0]) / len(a)
    cdf_b = np.cumsum(np.histogram(b, edges)[0]) / len(b)
    gap = np.abs(cdf_a - cdf_b) * np.diff(edges)  # (bins,): the W1 integrand on each bin
    tissue = np.searchsorted(bounds, edges[1:])  # the class of each bin's right edge
    parts = {name: float(gap[tissue == i].sum()) for i, name in enumerate(TISSUES[: len(bounds) + 1])}
    return {"total": float(gap.sum()), "tissues": parts}


def real_slices(prepared: Path, split: str, target: str) -> np.ndarray:
    """A split's slices of `target` (N, H, W) in the prepared [0, 1] units."""
    from phmdiff.data.datasets import TargetSlices

    data = TargetSlices(prepared, split, target)
    return np.stack([(data[i]["target"][0].numpy() + 1) / 2 for i in range(len(data))]) if len(data) else \
        np.zeros((0, 1, 1))


def score(fake: np.ndarray, real: np.ndarray, bounds: np.ndarray, seed: int = 0) -> dict:
    from phmdiff.eval.distribution import ms_swd

    swd = ms_swd(fake, real, seed=seed)
    hist = tissue_histogram_distance(fake, real, bounds)
    return {"ms_swd": swd["ms_swd"], "ms_swd_levels": swd["ms_swd_levels"], "tissue_hist": hist["total"],
            "tissue_hist_parts": hist["tissues"], "mean_intensity": float(fake.mean())}


def config(work: Path, quick: bool, target: str, mask_ratio: float, run: str):
    from phmdiff.config import load_config
    from phmdiff.demo import GENERATE_CONFIG

    over = [f"data.root={work / 'phantom'}", f"data.prepared={work / 'prepared'}", f"data.cache={work / 'latents'}",
            f"log.run_dir={work / run}", "data.targets=[]", f"data.target={target}", "data.val_fraction=0.125",
            "data.test_fraction=0.25", f"model.mask_ratio={mask_ratio}", "train.device=cpu",
            f"model.autoencoder.path={work / 'autoencoder.safetensors'}",  # identity, shared by both runs
            f"log.log_every={1 if quick else 10}"]  # the seconds per step of each window give the training pace
    if quick:
        over += ["data.resolution=32", "model.in_size=32", "train.batchsize=4", "eval.num_steps=3",
                 "eval.fine_num_steps=2", "eval.sampler=ddim", "eval.churn=0", "data.val_fraction=0.34",
                 "data.test_fraction=0.34", "model.cross_granularity_weight=0"]
    return load_config(GENERATE_CONFIG, over)


def steady_samples_per_s(log_csv: Path, batch: int, mask_ratio: float) -> float:
    """Training samples per second at `mask_ratio` from the run's log: batch / median seconds per step over the
    logged windows at that ratio (not the unmasked fine-tune), leaving out the first (start-up) window."""
    import csv

    rows = [r for r in csv.DictReader(log_csv.open()) if r["sec_per_step"] and
            abs(float(r["mask_ratio"]) - mask_ratio) < 1e-9]
    secs = [float(r["sec_per_step"]) for r in (rows[1:] if len(rows) > 1 else rows)]
    return batch / float(np.median(secs)) if secs else float("nan")


def train_phmdiff_cpu(cfg, budget_s: float, finetune_share: float = 0.1) -> dict:
    """PHMDiff training inside `budget_s` seconds of this process's CPU time (a shared machine's load changes
    wall time, not CPU time), paced by `common.budget_pacer` as quality.py paces its wall-clock budget, with the
    last `finetune_share` of the steps unmasked (MaskDiT)."""
    from phmdiff.training import run_pipeline
    from phmdiff.training.loop import train

    run_pipeline(cfg, stages=("encode",), progress=False, log=lambda *_: None)
    t = cfg.train
    tic, start = time.perf_counter(), time.process_time()
    after_step, mark = budget_pacer(t, budget_s, clock=time.process_time, finetune_share=finetune_share)
    result = train(cfg, resume="auto", progress=False, after_step=after_step)
    return {"train_seconds": time.perf_counter() - tic, "train_cpu_seconds": time.process_time() - start,
            "diffusion_steps": result["step"], "unmasked_finetune_steps": t.unmasked_finetune_steps,
            "train_samples_per_cpu_s": mark.get("steps", 0) * t.batchsize / max(mark.get("used", 0.0), 1e-9)}


def phmdiff(cfg, budget: float, seeds: list[int], work: Path) -> tuple[np.ndarray, dict]:
    """Train inside `budget` CPU seconds, then sample through `phmdiff generate`."""
    from phmdiff.generate import generate

    info = train_phmdiff_cpu(cfg, budget)
    info["train_samples_per_s"] = steady_samples_per_s(Path(cfg.run_dir) / "log.csv", cfg.train.batchsize,
                                                       cfg.model.mask_ratio)
    tic = time.perf_counter()
    out = work / f"samples_{Path(cfg.run_dir).name}"
    generate(cfg.run_dir, out, seeds, device="cpu", overwrite=True)
    info["sample_seconds"] = time.perf_counter() - tic
    info["grid"] = str(out / "grid.png")
    samples = np.asarray(nib.load(str(out / "samples.nii.gz")).get_fdata()).transpose(2, 0, 1)  # (N, H, W)
    return samples, info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=None, help=f"training CPU seconds per method (default "
                   f"{DEFAULT_BUDGET_S:g}; --quick: 1)")
    p.add_argument("--n-samples", type=int, default=None, help="generated slices per method (default 64; --quick 4)")
    p.add_argument("--target", default="flair", help="the modality generated (default flair)")
    p.add_argument("--subjects", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", default=str(DEFAULT_WORK))
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    budget = args.budget or (1.0 if args.quick else DEFAULT_BUDGET_S)
    n = args.n_samples or (4 if args.quick else 64)
    threads = set_threads(args.threads)
    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    work = Path(args.work)
    tic = time.perf_counter()
    shape = (32, 32, 16) if args.quick else (64, 64, 40)
    subjects = 3 if args.quick else args.subjects
    base = config(work, args.quick, args.target, 0.5, "run_mask0.5")
    if not Path(base.data.root).exists():
        write_phantom(base.data.root, "brain", n_subjects=subjects, shape=shape, seed=0, progress=False)
    run_pipeline(base, stages=("prepare", "train-ae", "encode"), progress=False, log=lambda *_: None)
    prepared = Path(base.data.prepared)
    train = real_slices(prepared, "train", args.target)
    held = np.concatenate([x for x in (real_slices(prepared, s, args.target) for s in ("val", "test")) if len(x)])
    bounds = tissue_bounds(held)
    seeds = list(range(n))
    rng = np.random.default_rng(0)
    methods = {"floor_real_train": {**score(train[rng.choice(len(train), min(n, len(train)), replace=False)],
                                             held, bounds), "train_seconds": 0.0}}
    for ratio in (0.5, 0.0):
        cfg = config(work, args.quick, args.target, ratio, f"run_mask{ratio}")
        samples, info = phmdiff(cfg, budget, seeds, work)
        methods[f"phmdiff_mask{ratio}"] = {**score(samples, held, bounds), **info}
    model, info = train_ddpm(prepared, [], args.target, budget, batch=base.train.batchsize, clock=time.process_time)
    info["train_cpu_seconds"] = info.pop("train_clock_seconds")
    t0 = time.perf_counter()
    samples = predict_ddpm(model, np.zeros((n, 0, *held.shape[1:]), np.float32), seeds)
    info["diffusion_steps"] = info.pop("steps")
    info.update(sample_seconds=time.perf_counter() - t0,
                train_samples_per_s=info["diffusion_steps"] * base.train.batchsize / info["train_seconds"])
    methods["monai_ddpm"] = {**score(samples, held, bounds), **info}
    # Per CPU second, what the budget counts (PHMDiff after its first step; the mask-0.5 run's last 10 % unmasked)
    methods["monai_ddpm"]["train_samples_per_cpu_s"] = (methods["monai_ddpm"]["diffusion_steps"]
                                                        * base.train.batchsize / info["train_cpu_seconds"])

    ph, floor = methods["phmdiff_mask0.5"], methods["floor_real_train"]["ms_swd"]
    # The pace of the masked steps (the median logged window): the mask-0.5 arm's last 10 % train unmasked, at
    # mask 0's pace, so its whole-run rate (train_samples_per_cpu_s) mixes the two.
    speed = ph["train_samples_per_s"] / methods["phmdiff_mask0.0"]["train_samples_per_s"]
    targets = {
        "vs_monai_ddpm": {"target": TARGETS["vs_monai_ddpm"], "value_ratio": ph["ms_swd"] / methods["monai_ddpm"][
            "ms_swd"], "met": ph["ms_swd"] <= methods["monai_ddpm"]["ms_swd"]},
        "vs_floor": {"target": TARGETS["vs_floor"], "value_ratio": ph["ms_swd"] / floor,
                     "met": ph["ms_swd"] <= 2 * floor},
        "mask_speed": {"target": TARGETS["mask_speed"], "value_ratio": speed, "met": speed >= 1.5},
    }
    results = {"target": args.target, "budget_s_per_method": budget, "n_samples": n, "n_train_slices": len(train),
               "n_heldout_slices": len(held), "plane": list(held.shape[1:]), "threads": threads,
               "tissue_bounds": bounds.tolist(), "methods": methods, "targets": targets,
               "seconds_total": time.perf_counter() - tic}
    path = write_result("realism", results, out_dir=args.out_dir)
    print_table([{"method": k, "ms_swd": v["ms_swd"], "tissue_hist": v["tissue_hist"],
                  "train_samples_per_s": v.get("train_samples_per_s"), "train_cpu_s": v.get("train_cpu_seconds"),
                  "train_wall_s": v.get("train_seconds")} for k, v in methods.items()],
                ["method", "ms_swd", "tissue_hist", "train_samples_per_s", "train_cpu_s", "train_wall_s"])
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
