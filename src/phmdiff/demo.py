"""`phmdiff demo`: the whole chain on the built-in brain phantom, on a CPU, in minutes.

phantom -> prepare -> train-ae -> encode -> train PHMDiff-T/4 (pixel space) on T1 + T2 -> FLAIR -> translate the
held-out (test) subjects -> PSNR/SSIM against the truth, beside two references: the noise-free ceiling (the clean
FLAIR scored against the noisy one: no method can do better) and the copy-the-source baseline (T2,
intensity-matched to the truth, as the prediction). Writes a PNG panel and the NIfTI outputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from phmdiff.argtypes import whole
from phmdiff.fsutil import atomic_path, atomic_write_text

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
GENERATE_CONFIG = DEMO_CONFIG.with_name("generate_demo.yaml")


def demo_config(out: Path, overrides: list[str] | None = None, config: str | Path | None = None):
    """The demo config with every path under `out`."""
    from phmdiff.config import load_config

    path = Path(config) if config else DEMO_CONFIG
    paths = [f"data.root={out / 'phantom'}", f"data.prepared={out / 'prepared'}", f"data.cache={out / 'latents'}",
             f"log.run_dir={out / 'run'}"]
    return load_config(path, [*paths, *(overrides or [])])


def _load(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float64)


def score(meta: dict, out: Path, copy_source: str) -> dict:
    """Mean PSNR/SSIM (volume protocol), lesion PSNR and the edema's intensity ratio (prediction / truth, in the
    reference's normalized units) of the prediction, the copy-the-source baseline and two ceilings: the
    pipeline's (a perfect prediction through normalization, autoencoder and inverse) and the noise-free one (the
    clean target against the noisy reference: no method can do better). For the prediction also its
    uncertainty: the RMS of the samples' std against the RMS error, and their correlation, in the foreground."""
    from phmdiff.eval.ensemble import uncertainty_error_correlation
    from phmdiff.eval.evaluate import ceiling_volumes, load_volume
    from phmdiff.eval.pathology import label_intensity_ratios
    from phmdiff.eval.protocols import evaluate_subject, foreground_mask, matched_copy, normalize_pair

    rows = []
    for s in meta["subjects"]:
        ref, affine = load_volume(s["reference"], what="reference")
        mask = foreground_mask(ref)
        seg = _load(s["seg"]) if s.get("seg") else None
        row = {"subject": s["subject"]}
        tops = ceiling_volumes({**s, "ceiling": str(out / s["ceiling"]) if s.get("ceiling") else None},
                               (ref.shape, affine))
        candidates = {
            "prediction": _load(out / s["prediction"]),
            "copy_" + copy_source: matched_copy(_load(s["source_images"][copy_source]), ref, mask),
            "pipeline_ceiling": tops.get("pipeline_ceiling"),
            "ceiling": tops.get("noise_free"),
        }
        for name, vol in candidates.items():
            if vol is None:
                continue
            r = evaluate_subject(vol, ref, mask=mask, seg=seg, protocol="volume")
            row[name] = {k: r[k] for k in ("psnr", "ssim", "lesion_psnr") if k in r}
            if seg is not None and (seg == 2).any():
                pred_n, ref_n, _ = normalize_pair(vol, ref, mask)
                row[name]["edema_ratio"] = label_intensity_ratios(pred_n, ref_n, seg, mask)["edema"]
        if s.get("std"):
            pred_n, ref_n, (lo, hi) = normalize_pair(candidates["prediction"], ref, mask)
            std = _load(out / s["std"]) / (hi - lo)
            err = pred_n - ref_n
            corr = uncertainty_error_correlation(std, err, mask)["pearson"]
            row["prediction"].update(rms_std=_rms(std[mask]), rms_error=_rms(err[mask]), std_error_correlation=corr)
            if seg is not None and (seg > 0).any() and (mask & (seg == 0)).any():  # calibration per tissue
                for region, where in (("tumour", mask & (seg > 0)), ("healthy", mask & (seg == 0))):
                    row["prediction"][f"error_over_std_{region}"] = _rms(err[where]) / max(_rms(std[where]), 1e-12)
        rows.append(row)
    summary = {}
    for name in rows[0]:
        if name != "subject":
            keys = [k for k in rows[0][name] if all(k in r.get(name, {}) for r in rows)]
            summary[name] = {k: float(np.mean([r[name][k] for r in rows])) for k in keys}
    return {"subjects": rows, "mean": summary}


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))


def _tumour_slice(seg: np.ndarray | None, depth: int) -> int:
    """The axial slice with the most tumour (the middle one when there is no segmentation or no tumour)."""
    if seg is None or not (seg > 0).any():
        return depth // 2
    return int(np.argmax((seg > 0).sum(axis=(0, 1))))


def write_panel(meta: dict, out: Path, path: Path) -> None:
    """Per test subject, the axial slice with the most tumour: each source | target | prediction | |error| |
    uncertainty (the samples' std), the tumour outlined (the reference segmentation) on target and prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = meta["subjects"]
    sources = list(subjects[0]["source_images"])
    target = meta.get("target", "target")
    cols = len(sources) + 3 + (1 if subjects[0].get("std") else 0)
    fig, axes = plt.subplots(len(subjects), cols, figsize=(2 * cols, 2.6 * len(subjects)), squeeze=False)
    for row, s in zip(axes, subjects):
        ref, pred = _load(s["reference"]), _load(out / s["prediction"])
        seg = _load(s["seg"]) if s.get("seg") else None
        z = _tumour_slice(seg, ref.shape[2])
        hi = np.percentile(ref, 99.5)
        panels = [(_load(s["source_images"][m]), f"{m} (source)", None) for m in sources]
        panels = [(img, t, np.percentile(img, 99.5)) for img, t, _ in panels]
        panels += [(ref, f"{target} (real)", hi), (pred, f"{target} (PHMDiff)", hi),
                   (np.abs(pred - ref), "|error|", hi / 2)]
        if s.get("std"):
            panels.append((_load(out / s["std"]), "uncertainty (std)", hi / 2))
        for k, (ax, (img, title, vmax)) in enumerate(zip(row, panels)):
            ax.imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=0, vmax=vmax)
            if seg is not None and (seg[:, :, z] > 0).any() and title.startswith(target):
                ax.contour(np.rot90(seg[:, :, z] > 0), levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(f"{s['subject']}, z={z}\n{title}" if k == 0 else f"\n{title}", fontsize=7)
            ax.axis("off")
    fig.suptitle("red: tumour outline (reference segmentation)", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _phantom(cfg, subjects: int, shape, progress: bool, log, step: str) -> float:
    """The demo's brain phantom under data.root unless it is there already; returns the seconds it took."""
    from phmdiff.data.phantom import write_phantom

    tic = time.perf_counter()
    if not Path(cfg.data.root).exists():
        log(f"{step} phantom: {subjects} brain subjects {shape[0]}x{shape[1]}x{shape[2]} -> {cfg.data.root}")
        write_phantom(cfg.data.root, "brain", n_subjects=subjects, shape=shape, seed=cfg.data.split_seed,
                      progress=progress)
    return time.perf_counter() - tic


def run_demo(out: str | Path = "demo_out", overrides: list[str] | None = None, subjects: int = 16,
             shape: tuple[int, int, int] = (64, 64, 40), config: str | Path | None = None, progress: bool = True,
             log=print, threads: int | None = None, n_samples: int = 4) -> dict:
    """Run the demo; returns the scores and timings (also written to OUT/demo.json).

    The prediction is the mean of `n_samples` samples per subject: a single posterior sample has about twice
    the squared error of the posterior mean, which PSNR/SSIM reward (measured on the demo: +0.9 dB, +0.07 SSIM
    for 4 samples; `--n-samples 8`: +0.13 dB and lesion +0.15 dB over 4, for 25 s more, which would take the demo
    to 4.9 minutes on the 2-core machine); translate also writes each sample and their std.
    """
    from phmdiff.threads import set_threads

    set_threads(threads or 0)  # 0 or None: every available core
    from phmdiff.training import run_pipeline
    from phmdiff.translate import translate

    out = Path(out)
    cfg = demo_config(out, overrides, config)
    tic = time.perf_counter()
    times = {"phantom": _phantom(cfg, subjects, shape, progress, log, "[1/6]")}
    stages = [("prepare", "[2/6] prepare"), ("train-ae", "[3/6] train the autoencoder"),
              ("encode", "[4/6] encode the latent cache"), ("train", f"[5/6] train {cfg.model.model_type}")]
    for stage, title in stages:
        log(title)
        t0 = time.perf_counter()
        run_pipeline(cfg, stages=(stage,), progress=progress, log=log)
        times[stage] = time.perf_counter() - t0
    log("[6/6] translate the held-out subjects")
    t0 = time.perf_counter()
    from phmdiff.data.prepare import load_manifest

    manifest = load_manifest(cfg.data.prepared)
    test_ids = sorted(sid for sid, split in manifest["split"].items() if split == "test")
    pred_dir = out / "translate"
    metas = [translate(cfg.run_dir, Path(cfg.data.root) / sid, pred_dir, n_samples=n_samples, overwrite=True,
                       progress=progress, ceiling=True) for sid in test_ids]
    # translate adds to an earlier translate.json in the same folder: one entry per subject, the newest
    latest = {s["subject"]: s for m in metas for s in m["subjects"] if s["subject"] in test_ids}
    meta = {**metas[-1], "subjects": [latest[sid] for sid in test_ids]}
    atomic_write_text(pred_dir / "translate.json", json.dumps(meta, indent=1))
    times["translate"] = time.perf_counter() - t0
    copy_source = "t2" if "t2" in cfg.data.sources else cfg.data.sources[0]
    scores = score(meta, pred_dir, copy_source)
    write_panel(meta, pred_dir, out / "panel.png")
    times["total"] = time.perf_counter() - tic
    result = {"scores": scores, "seconds": {k: round(v, 1) for k, v in times.items()}, "test_subjects": test_ids,
              "panel": str(out / "panel.png"), "predictions": str(pred_dir)}
    atomic_write_text(out / "demo.json", json.dumps(result, indent=1))
    m = scores["mean"]
    log("")
    log(f"PHMDiff demo on {len(test_ids)} held-out phantom subjects (T1 + T2 -> FLAIR, volume protocol):")
    key = "copy_" + copy_source
    names = {"prediction": f"prediction ({n_samples} smp)", key: f"copy {copy_source} (matched)",
             "pipeline_ceiling": "pipeline ceiling", "ceiling": "noise-free ceiling"}
    for name, label in names.items():
        if name in m:
            lesion = f"   lesion PSNR {m[name]['lesion_psnr']:6.2f} dB" if "lesion_psnr" in m[name] else ""
            edema = f"   edema ratio {m[name]['edema_ratio']:.2f}" if "edema_ratio" in m[name] else ""
            log(f"  {label:<20} PSNR {m[name]['psnr']:6.2f} dB   SSIM {m[name]['ssim']:.4f}{lesion}{edema}")
    p = m["prediction"]
    if "rms_std" in p:
        log(f"  uncertainty: RMS std {p['rms_std']:.3f} against RMS error {p['rms_error']:.3f} "
            f"({p['rms_error'] / max(p['rms_std'], 1e-12):.1f}x), std-error correlation "
            f"{p['std_error_correlation']:.2f} (normalized units, foreground)")
        per = ", ".join(f"{r['subject']} {r['prediction']['rms_error'] / max(r['prediction']['rms_std'], 1e-12):.1f}x"
                        f" (r {r['prediction']['std_error_correlation']:.2f})" for r in scores["subjects"])
        log(f"  error / std per subject (r: correlation): {per}")
        if "error_over_std_tumour" in p:
            log(f"  error / std in the tumour {p['error_over_std_tumour']:.1f}x, in healthy tissue "
                f"{p['error_over_std_healthy']:.1f}x (mean over subjects; 1.0x: the std matches the error)")
    if key in m and m["prediction"].get("lesion_psnr", np.inf) < m[key].get("lesion_psnr", -np.inf):
        log(f"  note: in the lesion the prediction scores below the copy of {copy_source}.")
    log(f"  time {times['total'] / 60:.1f} min; panel {out / 'panel.png'}; NIfTI in {pred_dir}")
    return result


def run_generate_demo(out: str | Path = "demo_gen", overrides: list[str] | None = None, subjects: int = 8,
                      shape: tuple[int, int, int] = (64, 64, 40), config: str | Path | None = None,
                      progress: bool = True, log=print, threads: int | None = None, per_label: int = 8) -> dict:
    """The generation demo: phantom -> prepare -> train a label-conditional PHMDiff (configs/generate_demo.yaml)
    -> `per_label` samples of each modality under OUT/generate/<modality>, and OUT/grid.png with one row per
    modality, each sample beside its nearest training slice. Returns (and writes to OUT/demo.json) the timings
    and per modality the mean intensity of the samples and of the training slices, and the median distance to
    the nearest training slice."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from phmdiff.data.datasets import TargetSlices
    from phmdiff.generate import _save_png, _seed_text, generate
    from phmdiff.image_grid import labelled_grid
    from phmdiff.training import run_pipeline

    out = Path(out)
    cfg = demo_config(out, overrides, config or GENERATE_CONFIG)
    if cfg.data.sources:
        raise ValueError(f"{config}: the generation demo needs a generation config ('data.sources: []').")
    tic = time.perf_counter()
    times = {"phantom": _phantom(cfg, subjects, shape, progress, log, "[1/4]")}
    for stage, title in [("prepare", "[2/4] prepare"), ("train", f"[3/4] train {cfg.model.model_type} to generate "
                                                               f"{', '.join(cfg.data.generated)}")]:
        log(title)
        t0 = time.perf_counter()
        run_pipeline(cfg, stages=("prepare", "train-ae", "encode") if stage == "prepare" else (stage,),
                     progress=progress, log=log)
        times[stage] = time.perf_counter() - t0
    log(f"[4/4] generate {per_label} samples of each modality")
    t0 = time.perf_counter()
    rows, stats = [], {}
    for label in cfg.data.generated:
        folder = out / "generate" / label
        meta = generate(cfg.run_dir, folder, list(range(per_label)), label=label, device=cfg.train.device,
                        overwrite=True)
        import nibabel as nib

        samples = np.asarray(nib.load(str(folder / "samples.nii.gz")).get_fdata()).transpose(2, 0, 1)  # (N, H, W)
        near = json.loads((folder / "nearest.json").read_text())
        train = TargetSlices(cfg.data.prepared, "train", label)
        nearest = np.stack([(train[s["train_slice"]]["target"][0].numpy() + 1) / 2 for s in near["samples"]])
        rows.append([cell for pair in zip(samples, nearest) for cell in pair])  # sample, its nearest, ...
        real_mean = float(np.mean([(train[i]["target"].numpy().mean() + 1) / 2 for i in range(len(train))]))
        stats[label] = {"sample_mean": float(samples.mean()), "train_mean": real_mean,
                        "nearest_rms_median": meta["nearest_rms_median"]}
    seeds = _seed_text(list(range(per_label)))
    _save_png(out / "grid.png", labelled_grid(rows, [f"{label}\n{seeds}" for label in stats],
                                              ["sample", "nearest training slice"] * per_label))
    times["generate"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - tic
    result = {"task": "generate", "modalities": stats, "grid": str(out / "grid.png"), "run": str(cfg.run_dir),
              "seconds": {k: round(v, 1) for k, v in times.items()}}
    atomic_write_text(out / "demo.json", json.dumps(result, indent=1))
    log("")
    log(f"PHMDiff generation demo: {per_label} samples per modality, each beside its nearest training slice:")
    for label, st in stats.items():
        log(f"  {label:<6} mean intensity {st['sample_mean']:.3f} (training slices {st['train_mean']:.3f}), "
            f"nearest-slice RMS distance {st['nearest_rms_median']:.3f}")
    log(f"  time {times['total'] / 60:.1f} min; grid {out / 'grid.png'} (rows: {', '.join(stats)}); run {cfg.run_dir}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="translate", choices=("translate", "generate"),
                        help="translate (T1 + T2 -> FLAIR, the default) or generate (T1, T2, FLAIR from noise by a "
                             "modality label, configs/generate_demo.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default demo_out, or demo_gen for --task generate)")
    parser.add_argument("--config", default=None,
                        help="config file (default configs/demo.yaml, or configs/generate_demo.yaml)")
    parser.add_argument("--subjects", type=whole(1, 100_000), default=None,
                        help="phantom subjects (default 16 to translate: 10 train, 2 val, 4 test; 8 to generate)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_num_steps=500")
    parser.add_argument("--threads", type=whole(0, 4096), default=0,
                        help="torch intra-op threads (default 0: every available core, or OMP_NUM_THREADS when set)")
    parser.add_argument("--n-samples", type=whole(1, 1000), default=4,
                        help="samples per test subject; the prediction is their mean (default 4)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    # Translation learns each tumour's appearance from the training subjects: with 5 of them (8 subjects) the lesion
    # of a new subject came out 30 % too dark; with 10, much less (docs/benchmarks.md, "Mean and residual").
    args.subjects = args.subjects or (8 if args.task == "generate" else 16)
    if args.subjects < 3:
        raise ValueError(f"--subjects is {args.subjects}; the demo needs at least 3 (train, validation, test).")
    if args.task == "generate":
        run_generate_demo(args.out or "demo_gen", args.overrides, args.subjects, config=args.config,
                          progress=not args.no_progress, log=lambda msg: print(msg, flush=True), threads=args.threads)
        return 0
    run_demo(args.out or "demo_out", args.overrides, args.subjects, config=args.config, progress=not args.no_progress,
             log=lambda msg: print(msg, flush=True), threads=args.threads, n_samples=args.n_samples)
    return 0
