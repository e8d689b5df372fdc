"""Time and peak memory of translating one 240x240x155 volume with several samples, before and after batching.

    python benchmarks/translate_speed.py             # demo model (configs/demo.yaml) and T/2, S/2, B/2 on BraTS240
    python benchmarks/translate_speed.py --quick     # a tiny model and plane, seconds (smoke test)

Each variant runs in its own process (so its peak RSS is its own), in turn, on the same source slices:
- `main`: the code of the base commit (`--before-ref`, default main) from a snapshot of its src/: one
  sampling run per sample, and, for the demo model (trained on 64x64), only the centre 64x64 of the plane
  (main cropped larger planes; it did not predict the rest);
- `per_sample`: this tree, the whole plane (blended windows), one sampling run per sample, fp32;
- `batched`: this tree, whole plane, sources encoded once and slices x samples in one batched run, fp32;
- `batched_bf16`: the same under bf16 autocast.
The time of `--slices` slices is measured and scaled to the volume's 155 slices (stated in the JSON). With
`--psnr-run RUN --psnr-input DIR`, the PSNR of fp32 against bf16 translation of real subjects is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
from common import ROOT, print_table, write_result

TARGET_S, TARGET_GB = 60.0, 3.0
# preset -> (config file, overrides): the demo's model, and the BraTS240 preset at three backbone sizes.
PRESETS = {
    "demo": ("configs/demo.yaml", []),
    "T/2": ("configs/BraTS240.yaml", ["model.model_type=PHMDiff-T/2"]),
    "S/2": ("configs/BraTS240.yaml", ["model.model_type=PHMDiff-S/2"]),
    "B/2": ("configs/BraTS240.yaml", ["model.model_type=PHMDiff-B/2"]),
}
QUICK = {"tiny": ("tests/training/tiny.yaml", ["data.resolution=16", "model.in_size=16", "model.in_channels=1",
                                                "model.autoencoder.preset=identity", "eval.sampler=ddim",
                                                "eval.num_steps=2", "eval.fine_num_steps=1"])}
VARIANTS = ("main", "per_sample", "batched", "batched_bf16")


def _trained(config: str, overrides: list[str]):
    """A TrainedRun with random weights (time does not depend on them) for a config, on the CPU."""
    import torch

    from phmdiff.autoencoder import build_autoencoder
    from phmdiff.config import load_config
    from phmdiff.factory import build_denoiser
    from phmdiff.inference import TrainedRun

    cfg = load_config(ROOT / config, overrides)
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, len(cfg.data.sources), len(cfg.data.sources) + 1).eval().requires_grad_(False)
    ae = build_autoencoder(cfg.model.autoencoder.preset).eval().requires_grad_(False)
    mods = [*cfg.data.sources, cfg.data.target]
    try:  # the run plan (a snapshot from before it takes the untyped identity dict)
        from phmdiff.data.volume import NormParams, VolumeSettings
        from phmdiff.plan import RunPlan
    except ImportError:
        plan = {"data": {"latent_scale": 1.0, "modalities": mods}, "sources": list(cfg.data.sources),
                "target": cfg.data.target}
    else:
        volume = VolumeSettings(modalities=mods, size=cfg.data.resolution)
        plan = RunPlan(sources=tuple(cfg.data.sources), target=cfg.data.target, modalities=tuple(mods),
                       volume=volume, intensity={m: volume.scheme(m) for m in mods},
                       target_norms={cfg.data.target: NormParams("median", 0.0, 1.0)}, latent_scale=1.0)
    return TrainedRun(denoiser, ae, cfg, plan, Path(config), torch.device("cpu"))


def child(spec: dict) -> dict:
    """One variant in this process: returns seconds, CPU seconds and peak RSS."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    try:  # the per-volume steps; a snapshot from before pipeline.py holds them in translate.py
        import phmdiff.pipeline as tr
    except ImportError:
        import phmdiff.translate as tr
    from phmdiff.inference import plane_multiple

    trained = _trained(spec["config"], spec["overrides"])
    settings = trained.settings()
    n, size, samples = spec["slices"], spec["plane"], spec["samples"]
    src = np.random.default_rng(0).random((n, len(trained.plan.sources), size, size), dtype=np.float32)
    train_plane = trained.cfg.data.resolution
    if spec["variant"] == "main":  # main's translate: the plane padded or centre-cropped to the training size
        lo = max((size - train_plane) // 2, 0)
        src = src[:, :, lo : lo + train_plane, lo : lo + train_plane]
        pad = max(train_plane - src.shape[-1], 0)
        src = np.pad(src, [(0, 0), (0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)])
    else:
        from phmdiff.plane import pad_plane

        src, _ = pad_plane(src, [0.0] * src.shape[1], train_plane, plane_multiple(trained.cfg))
    seeds = [[1000 * j + i for i in range(n)] for j in range(samples)]
    t0, c0 = time.perf_counter(), time.process_time()
    if spec["variant"] in ("main", "per_sample"):
        out = [tr.translate_slices(trained, src, seeds[j], settings, spec["batch"]) for j in range(samples)]
    else:
        out = tr.translate_samples(trained, src, seeds, settings, spec["batch"],
                                   "bf16" if spec["variant"].endswith("bf16") else "fp32")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert np.isfinite(np.asarray(out)).all()
    return {"seconds": seconds, "cpu_seconds": cpu, "plane": list(src.shape[-2:]),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _snapshot(ref: str, into: Path) -> Path | None:
    """src/ of `ref` extracted into `into` (git archive), or None when git cannot give it."""
    try:
        data = subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
        return into / "src"
    except (OSError, subprocess.CalledProcessError):
        return None


def _run_child(spec: dict, src_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src_dir), "OMP_NUM_THREADS": str(spec["threads"])}
    code = f"import sys; sys.path.insert(0, {str(src_dir)!r}); sys.path.insert(1, {str(Path(__file__).parent)!r})\n" \
           "import json, translate_speed as b; print(json.dumps(b.child(json.loads(sys.argv[1]))))"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {spec['variant']} of {spec['preset']} failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def psnr_fp32_vs_bf16(run: str, input_dir: str, n_samples: int, threads: int) -> dict:
    """Translate the subjects under `input_dir` in fp32 and in bf16; mean PSNR of each against the reference."""
    import torch

    from phmdiff import cli
    from phmdiff.translate import translate

    torch.set_num_threads(threads)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            folder = Path(tmp) / precision
            tic = time.perf_counter()
            translate(run, input_dir, folder, n_samples=n_samples, progress=False, precision=precision)
            seconds = time.perf_counter() - tic
            assert cli.main(["evaluate", str(folder), "--out", str(folder / "ev")]) == 0
            summary = json.loads((folder / "ev" / "summary.json").read_text())
            out[precision] = {"psnr": summary["protocols"]["volume"]["psnr"]["mean"], "seconds": seconds}
    out["delta_db"] = out["bf16"]["psnr"] - out["fp32"]["psnr"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model and plane (smoke test, seconds)")
    p.add_argument("--presets", nargs="+", default=None, help=f"subset of {', '.join(PRESETS)}")
    p.add_argument("--variants", nargs="+", default=None, choices=VARIANTS, help="default: all; quick: main, batched")
    p.add_argument("--slices", type=int, default=None, help="slices measured (scaled to --depth); default 2, quick 1")
    p.add_argument("--plane", type=int, default=240)
    p.add_argument("--depth", type=int, default=155, help="slices of the volume the time is scaled to")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="slices per batch")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--before-ref", default="main", help="git ref whose src/ is the 'main' variant")
    p.add_argument("--psnr-run", default=None, help="a trained run: also measure fp32 against bf16 PSNR")
    p.add_argument("--psnr-input", default=None, help="subjects with their real target for --psnr-run")
    p.add_argument("--psnr-samples", type=int, default=1, help="samples per subject of the PSNR check")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows (and PSNR check) of presets not measured now from the existing result file")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    presets = QUICK if args.quick else {k: PRESETS[k] for k in (args.presets or PRESETS)}
    slices = args.slices or (1 if args.quick else 2)
    plane = 32 if args.quick else args.plane
    samples = 2 if args.quick else args.samples
    args.variants = args.variants or (["main", "batched"] if args.quick else list(VARIANTS))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        before = _snapshot(args.before_ref, Path(tmp)) if "main" in args.variants else None
        for name, (config, overrides) in presets.items():
            for variant in args.variants:
                src_dir = before if variant == "main" else ROOT / "src"
                if src_dir is None:
                    print(f"{name} {variant}: skipped, git could not give {args.before_ref}'s src/", file=sys.stderr)
                    continue
                spec = {"preset": name, "config": config, "overrides": overrides, "variant": variant,
                        "slices": slices, "plane": plane, "samples": samples, "batch": args.batch,
                        "threads": args.threads}
                r = _run_child(spec, src_dir)
                scale = args.depth / slices
                rows.append({"preset": name, "variant": variant, "slices_measured": slices, "samples": samples,
                             "volume_seconds": r["seconds"] * scale, "volume_cpu_seconds": r["cpu_seconds"] * scale,
                             "peak_rss_gb": r["peak_rss_bytes"] / 2**30, "plane_predicted": r["plane"]})
                print_table(rows[-1:], list(rows[-1]))
    old_path = Path(args.out_dir or common.RESULTS) / "translate_speed.json"
    old = json.loads(old_path.read_text())["results"] if args.merge and old_path.exists() else {}
    rows = [r for r in old.get("rows", []) if r["preset"] not in presets] + rows
    by = {(r["preset"], r["variant"]): r for r in rows}
    for r in rows:
        base = by.get((r["preset"], "per_sample"))
        r["speedup_over_per_sample"] = base["volume_seconds"] / r["volume_seconds"] if base else None
    for r in rows:
        r.setdefault("samples", samples)
    results = {"volume": [plane, plane, args.depth], "samples": samples, "threads": args.threads,
               "before_ref": args.before_ref, "rows": rows,
               "note": (f"time of the measured slices x samples scaled to {args.depth} slices; random weights "
                        "and random sources (time does not depend on them); 'main' predicts only the centre "
                        "training-size crop of a larger plane")}
    demo = by.get(("demo", "batched_bf16")) or by.get(("demo", "batched"))
    if demo:
        results["targets"] = {
            "demo_volume_seconds": {"target": f"<= {TARGET_S:g} s", "value_s": demo["volume_seconds"],
                                    "met": demo["volume_seconds"] <= TARGET_S},
            "demo_peak_rss": {"target": f"< {TARGET_GB:g} GB", "value_gb": demo["peak_rss_gb"],
                              "met": demo["peak_rss_gb"] < TARGET_GB}}
    for key in ("bf16_psnr", "targets"):
        if key in old and key not in results:
            results[key] = old[key]
    if args.psnr_run and args.psnr_input:
        results["bf16_psnr"] = psnr_fp32_vs_bf16(args.psnr_run, args.psnr_input, args.psnr_samples, args.threads)
        results["bf16_psnr"]["samples"] = args.psnr_samples
        print(json.dumps(results["bf16_psnr"]))
    print_table(rows, ["preset", "variant", "volume_seconds", "volume_cpu_seconds", "peak_rss_gb",
                       "speedup_over_per_sample"])
    path = write_result("translate_speed", results, out_dir=args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
