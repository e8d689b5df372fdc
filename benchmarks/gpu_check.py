"""One prepared GPU check (issue 16), run by `benchmarks/gpu_check.sh`: the CUDA-only tests, a bf16 (eager and
torch.compile'd) training step of PHMDiff-B/2 and -XL/2 on 32x32x4 latents at mask ratio 0 and 0.5 with the
achieved fraction of the GPU's measured bf16 matmul peak and the peak GPU memory, and the translation of one
240x240x155 phantom volume by a tiny quickly-trained run of the demo-size model. Writes ONE JSON.

    bash benchmarks/gpu_check.sh                           # on a CUDA machine, under 8 minutes
    bash benchmarks/gpu_check.sh --device cpu --quick      # the same code at tiny sizes (the test runs this)

The fraction of peak counts the FLOPs of one step exactly (FlopCounterMode, attention by hand on the CPU) and
divides by the median of repeated large bf16 matmuls; the best and worst repeat give its range.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGET_MFU_XL2 = 0.35


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _bench():
    """speed.py and common.py, imported once the arguments are checked (they import diffusers and phmdiff)."""
    import common  # noqa: F401  (puts src/ on the path)
    import speed

    return speed, common


def bf16_peak(device: str, size: int, repeats: int) -> dict:
    """FLOP/s of repeated size^3 bf16 matmuls: median, best and worst repeat."""
    speed, common = _bench()
    time_interleaved = common.time_interleaved
    run, flops = speed.matmul_variant(torch.bfloat16, size, 4, device)
    t = time_interleaved({"mm": run}, repeats=repeats, warmup=2, device=device)["mm"]
    return {"size": size, "flops_per_s_median": flops / t["median"], "flops_per_s_best": flops / min(t["times"]),
            "flops_per_s_worst": flops / max(t["times"]), "repeats": t["n"]}


def peak_memory(step, device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def training_steps(args, peak: dict, plan: list[tuple[str, bool]], deadline: float) -> list[dict]:
    """bf16 steps per (model, compiled) in `plan` at mask ratio 0 and 0.5 on `args.size` latents; a compiled
    model is skipped once `deadline` has passed (compiling takes minutes)."""
    speed, common = _bench()
    time_interleaved = common.time_interleaved
    rows = []
    for model, compiled in plan:
        if compiled and time.perf_counter() > deadline:
            rows.append({"model": model, "compiled": True, "skipped": "time budget spent"})
            continue
        variants, flops = {}, {}
        for ratio in (0.0, 0.5):
            name = f"m{ratio}"
            variants[name] = speed.make_step("phmdiff", model, args.size, args.batch, args.device, ratio, "bf16",
                                             compiled)[0]
            # Every operation is per sample: count one sample's step (eager, same FLOPs) and scale.
            one = speed.make_step("phmdiff", model, args.size, 1, args.device, ratio, "bf16")[0]
            flops[name] = args.batch * speed.step_flops(one)
        tic = time.perf_counter()
        timings = time_interleaved(variants, repeats=args.repeats, warmup=3 if compiled else 1,
                                   device=args.device)
        for ratio in (0.0, 0.5):
            name, t = f"m{ratio}", timings[f"m{ratio}"]
            achieved = flops[name] / t["median"]
            rows.append({"model": model, "compiled": compiled, "mask_ratio": ratio, "batch": args.batch,
                         "latent": [4, args.size, args.size], "step_s": t["median"], "step_iqr_s": t["iqr"],
                         "step_cpu_s": t["cpu_median"], "flops_per_step": flops[name],
                         "achieved_flops_per_s": achieved,
                         "fraction_of_bf16_peak": achieved / peak["flops_per_s_median"],
                         "fraction_range": [achieved / peak["flops_per_s_best"],
                                            achieved / peak["flops_per_s_worst"]],
                         "peak_memory_bytes": peak_memory(variants[name], args.device),
                         "wall_s_with_compile": time.perf_counter() - tic})
        log(f"{model} compiled={compiled}: " + ", ".join(
            f"mask {r['mask_ratio']}: {r['step_s'] * 1e3:.1f} ms, {100 * r['fraction_of_bf16_peak']:.1f}% of peak"
            for r in rows[-2:]))
        del variants
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def translate_volume(args, work: Path) -> dict:
    """Train a tiny run of the demo-size model on small phantoms, then translate one big phantom volume."""
    from phmdiff.data.phantom import write_phantom
    from phmdiff.demo import demo_config
    from phmdiff.training import run_pipeline
    from phmdiff.translate import translate

    small, big = (list(args.train_shape), list(args.volume))
    amp = "bf16" if args.device.startswith("cuda") else "no"
    overrides = [f"train.max_num_steps={args.train_steps}", f"train.device={args.device}", "log.ckpt_every=100000",
                 "train.unmasked_finetune_steps=0", f"train.amp={amp}"]
    if small[0] != 64:  # the demo's 64x64 planes, or smaller ones in --quick
        overrides += [f"data.resolution={small[0]}", f"model.in_size={small[0]}"]
    cfg = demo_config(work, overrides)
    tic = time.perf_counter()
    write_phantom(cfg.data.root, "brain", n_subjects=4, shape=tuple(small), seed=0)
    run_pipeline(cfg, progress=False, log=lambda m: None)
    train_s = time.perf_counter() - tic
    subject = write_phantom(work / "big", "brain", n_subjects=1, shape=tuple(big), seed=7)[0]
    out = {"model": cfg.model.model_type, "weights": f"a tiny run trained {args.train_steps} steps on "
                                                     f"{small[0]}x{small[1]}x{small[2]} phantoms (its quality "
                                                     "is not the point: time and memory are)",
           "volume": big, "train_s": train_s, "sampler": cfg.eval.sampler,
           "steps": [cfg.eval.num_steps, cfg.eval.fine_num_steps]}
    for n_samples in args.samples:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        tic = time.perf_counter()
        translate(cfg.run_dir, subject, work / f"pred{n_samples}", n_samples=n_samples, overwrite=True,
                  device=args.device, progress=False, log=lambda m: None)
        out[f"seconds_{n_samples}_samples"] = time.perf_counter() - tic
        if args.device.startswith("cuda"):
            out[f"peak_memory_bytes_{n_samples}_samples"] = int(torch.cuda.max_memory_allocated())
        log(f"translate {'x'.join(map(str, big))}, {n_samples} sample(s): {out[f'seconds_{n_samples}_samples']:.1f} s")
    return out


def cuda_tests(device: str, timeout: int) -> dict:
    """The tests that need CUDA (their ids name it; they are skipped on a machine without it)."""
    if not device.startswith("cuda"):
        return {"skipped": "no CUDA device: the CUDA-only tests skip themselves here"}
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    return {"rc": proc.returncode, "summary": lines[-1] if lines else "", "seconds": time.perf_counter() - tic,
            "failures": [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:20]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the same code in seconds (CPU test)")
    p.add_argument("--out", default=None, help="the JSON (default benchmarks/results/gpu_check.json)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; compiled steps start only before 55%% of it (default 420; --quick: 0, so the "
                        "compiled steps are planned and skipped: compiling on a CPU takes minutes)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: error: --device cuda but no CUDA GPU is available; use --device cpu --quick to test the "
              "script itself.", file=sys.stderr)
        return 2
    if args.quick:
        args.models, args.size, args.batch, args.repeats = ["PHMDiff-T/2"], 8, 2, 2
        args.compile, args.train_shape, args.volume, args.train_steps, args.samples = True, (32, 32, 16), \
            (48, 40, 16), 2, (2,)
        peak_size, peak_repeats = 256, 3
    else:
        args.models, args.size, args.batch, args.repeats = ["PHMDiff-B/2", "PHMDiff-XL/2"], 32, 64, 10
        args.compile, args.train_shape, args.volume, args.train_steps, args.samples = True, (64, 64, 40), \
            (240, 240, 155), 200, (1, 4)
        peak_size, peak_repeats = 8192, 10
    if args.budget is None:
        args.budget = 0.0 if args.quick else 420.0
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = {"device": args.device, "quick": args.quick, "machine": _bench()[1].machine(args.device)}
    log(f"device {args.device}; CUDA-only tests")
    result["cuda_tests"] = cuda_tests(args.device, timeout=120)
    log(f"tests: {result['cuda_tests'].get('summary', result['cuda_tests'].get('skipped'))}")
    result["bf16_peak"] = peak = bf16_peak(args.device, peak_size, peak_repeats)
    log(f"bf16 matmul peak {peak['flops_per_s_median'] / 1e12:.1f} TFLOP/s (median of {peak['repeats']})")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "gpu_check.json"

    def save(complete: bool) -> None:
        """The JSON after every section (a check stopped by the time limit still leaves what it measured)."""
        xl = [r for r in result.get("training", []) if r.get("model") == "PHMDiff-XL/2"
              and r.get("mask_ratio") == 0.0 and "skipped" not in r]
        best = max((r["fraction_of_bf16_peak"] for r in xl), default=None)
        result["targets"] = {"mfu_XL2": {"target": f">= {TARGET_MFU_XL2}", "value": best,
                                         "met": best is not None and best >= TARGET_MFU_XL2}}
        result["complete"], result["wall_s"] = complete, time.perf_counter() - start
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(json.dumps(result, indent=1))
        tmp_out.replace(out)

    # Eager steps, then the translation, then the compiled steps (XL/2 first) while the budget lasts.
    result["training"] = training_steps(args, peak, [(m, False) for m in args.models], deadline=math.inf)
    save(False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        result["translate"] = translate_volume(args, work)
    save(False)
    if args.compile:
        result["training"] += training_steps(args, peak, [(m, True) for m in reversed(args.models)],
                                             deadline=start + args.budget * 0.55)
    save(True)
    log(f"wrote {out} in {result['wall_s']:.0f} s")
    return 0 if result["cuda_tests"].get("rc", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
