"""Training-step time, peak memory and FLOP utilization of PHMDiff's masked DiT (MaskDiT, Zheng et al. 2023)
against diffusers' DiTTransformer2DModel (Peebles & Xie 2023) of the same width, depth, heads and patch size,
plus sampling throughput per sampler at equal NFE.

    python benchmarks/speed.py                 # PHMDiff-S/2, 32x32x4 latents, batch 8, CPU, fp32 and bf16, one
                                               # thread, 3 repeats, 2 memory probes: about 10 min on 2 cores
    python benchmarks/speed.py --full          # all cores, 7 repeats, every memory probe (30-60 min)
    python benchmarks/speed.py --quick         # tiny model, seconds (smoke test)
    python benchmarks/speed.py --model PHMDiff-XL/2 --device cuda --compile --batch 64
    git show main:src/phmdiff/masked_dit.py > /tmp/before.py
    python benchmarks/speed.py --before /tmp/before.py   # an older masked_dit.py timed in the same rounds
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import subprocess
import sys
import time

import common  # noqa: F401  (puts src/ on the path)
import torch
import torch.nn.functional as F
from common import matmul_peak, print_table, set_threads, time_interleaved, write_result

from phmdiff.diffusion.edm import EDMPrecond
from phmdiff.losses import masked_denoising_loss
from phmdiff.masked_dit import build_masked_dit, masked_dit_config
from phmdiff.sample import SAMPLERS, get_sigmas_karras
from phmdiff.samplers import SAMPLER_SPECS

MASK_RATIOS = (0.0, 0.5, 0.75)
TARGETS = {"mask0.5_over_unmasked": 0.5, "phmdiff_over_diffusers": 1.0, "bf16_peak_fraction_S2": 0.40,
           "gpu_mfu_XL2": 0.35}


BEFORE: dict = {}  # "module": an older masked_dit module (--before), timed as kind "phmdiff-before"


def load_before(path: str):
    """An older `masked_dit.py` (self-contained: it imports only torch) as its own module."""
    spec = importlib.util.spec_from_file_location("masked_dit_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def phmdiff_setup(model_name: str, size: int, batch: int, device: str, seed: int = 0, before: bool = False):
    """PHMDiff denoiser with two source modalities and the coarse condition, as the pipeline trains it."""
    torch.manual_seed(seed)
    build = BEFORE["module"].build_masked_dit if before else build_masked_dit
    net = build(model_name, input_size=size, latent_channels=4, num_sources=2)
    denoiser = EDMPrecond(net).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=gen).to(device)
    kwargs = {"cond": torch.randn(batch, 8, size, size, generator=gen).to(device),
              "avail": torch.ones(batch, 2, device=device),
              "coarse": torch.randn(batch, 4, size, size, generator=gen).to(device),
              "level": 0, "target_label": torch.zeros(batch, dtype=torch.long, device=device)}
    return denoiser, x, kwargs


def diffusers_setup(model_name: str, size: int, batch: int, device: str, seed: int = 0):
    """diffusers' DiT with PHMDiff's encoder width, depth, heads and patch size (no decoder, no masking)."""
    from diffusers import DiTTransformer2DModel

    cfg = masked_dit_config(model_name)
    torch.manual_seed(seed)
    net = DiTTransformer2DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                                in_channels=4, num_layers=cfg.depth, sample_size=size, patch_size=cfg.patch_size,
                                num_embeds_ada_norm=1000).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=gen).to(device)
    return net, x, torch.zeros(batch, dtype=torch.long, device=device)


def make_step(kind: str, model_name: str, size: int, batch: int, device: str, mask_ratio: float = 0.0,
              dtype: str = "fp32", compile_model: bool = False):
    """One closure = forward + loss + backward + AdamW step; returns (step, model)."""
    amp = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if dtype == "bf16" else None
    gen = torch.Generator().manual_seed(1)
    if kind.startswith("phmdiff"):
        model, x, kwargs = phmdiff_setup(model_name, size, batch, device, before=kind == "phmdiff-before")
        fwd = torch.compile(model) if compile_model else model

        def loss_fn():
            terms, _ = masked_denoising_loss(fwd, x, kwargs, mask_ratio=mask_ratio, generator=gen)
            return terms["loss"]
    else:
        model, x, labels = diffusers_setup(model_name, size, batch, device)
        fwd = torch.compile(model) if compile_model else model

        def loss_fn():
            # The same EDM-sampled noise level and MSE as PHMDiff's denoising term, on diffusers' timestep axis.
            t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
            noise = torch.randn(x.shape, generator=gen).to(device)
            out = fwd(x + noise, timestep=t, class_labels=labels).sample
            return F.mse_loss(out.float(), noise)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # one kernel over all tensors, CPU and GPU

    def step():
        opt.zero_grad(set_to_none=True)
        with amp if amp is not None else contextlib.nullcontext():
            loss = loss_fn()
        loss.backward()
        opt.step()
        return loss
    return step, model


@contextlib.contextmanager
def count_attention_flops(counter: list):
    """Count the FLOPs of F.scaled_dot_product_attention on the CPU (FlopCounterMode misses that kernel): 4 B H Tq Tk d
    forward, twice that backward when a gradient is needed."""
    original = F.scaled_dot_product_attention

    def counted(q, k, v, *args, **kwargs):
        fwd = 4.0 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]
        if q.device.type == "cpu":  # FlopCounterMode counts the CUDA kernels (flash, efficient, cuDNN) itself
            counter[0] += fwd * (3.0 if q.requires_grad else 1.0)
        return original(q, k, v, *args, **kwargs)
    F.scaled_dot_product_attention = counted
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def step_flops(step) -> float:
    """FLOPs of one training step: matmuls/convolutions from FlopCounterMode plus attention counted by hand."""
    from torch.utils.flop_counter import FlopCounterMode

    attention = [0.0]
    with count_attention_flops(attention), FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops()) + attention[0]


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line.")


def probe_memory(spec: dict) -> dict:
    """Run in a child process: build one variant, take 2 steps, report peak and pre-step resident memory.

    The peak is VmHWM, which starts afresh at exec; ru_maxrss would carry the forking parent's peak.
    """
    step, _ = make_step(spec["kind"], spec["model"], spec["size"], spec["batch"], "cpu", spec["mask_ratio"],
                        spec["dtype"])
    before = _status_bytes("VmRSS")
    for _ in range(2):  # the first step allocates AdamW's moments, the second runs with them in place
        step()
    peak = _status_bytes("VmHWM")
    return {"peak_rss_bytes": peak, "rss_before_step_bytes": before, "step_peak_bytes": peak - before}


def cpu_memory(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--probe-memory", json.dumps(spec), "--threads",
                           str(torch.get_num_threads())], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "probe failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def training_variants(args) -> list[dict]:
    out = []
    for dtype in args.dtypes:
        out.append({"kind": "diffusers", "mask_ratio": 0.0, "dtype": dtype})
        out += [{"kind": "phmdiff", "mask_ratio": r, "dtype": dtype} for r in MASK_RATIOS]
        if BEFORE:
            out += [{"kind": "phmdiff-before", "mask_ratio": r, "dtype": dtype} for r in (0.0, 0.5)]
    return out


def matmul_variant(dtype: torch.dtype, size: int, reps: int, device: str):
    """`reps` square products of one dtype, timed beside the training steps so that both meet the same load."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)

    def run():
        for _ in range(reps):
            torch.mm(a, b)
    return run, 2.0 * size**3 * reps


def bench_training(args) -> tuple[list[dict], dict]:
    """Training steps and the matmul peaks, in the same interleaved rounds; returns (rows, peaks)."""
    rows = []
    variants = training_variants(args)
    steps, peak_flops = {}, {}
    for v in variants:
        name = f"{v['kind']}-m{v['mask_ratio']}-{v['dtype']}"
        steps[name] = make_step(v["kind"], args.model, args.size, args.batch, args.device, v["mask_ratio"], v["dtype"],
                                args.compile)[0]
        v["name"] = name
    size = 512 if args.quick else 2048
    for dtype, reps in ((torch.float32, 2), (torch.bfloat16, 8)):
        key = str(dtype).replace("torch.", "")
        steps[f"matmul-{key}"], peak_flops[key] = matmul_variant(dtype, size, reps, args.device)
    timings = time_interleaved(steps, repeats=args.repeats, warmup=args.warmup, device=args.device,
                               progress=getattr(args, "say", None))
    peaks = {key: {"size": size, "flops_per_s_median": f / timings[f"matmul-{key}"]["median"],
                   "flops_per_s_best": f / min(timings[f"matmul-{key}"]["times"]),
                   "flops_per_s_worst": f / max(timings[f"matmul-{key}"]["times"]),
                   "flops_per_s_cpu_median": f / timings[f"matmul-{key}"]["cpu_median"],
                   "seconds_median": timings[f"matmul-{key}"]["median"], "seconds_iqr": timings[f"matmul-{key}"]["iqr"]}
             for key, f in peak_flops.items()}
    for v in variants:
        t = timings[v["name"]]
        # Every operation is per sample, so the FLOPs of a batch are batch x those of one sample: count on one.
        one = make_step(v["kind"], args.model, args.size, 1, args.device, v["mask_ratio"], v["dtype"])[0]
        flops = args.batch * step_flops(one)
        row = {**v, "step_s": t["median"], "step_iqr_s": t["iqr"], "step_cpu_s": t["cpu_median"], "n": t["n"],
               "flops_per_step": flops,
               "achieved_flops_per_s": flops / t["median"], "slices_per_s": args.batch / t["median"]}
        for peak_dtype, peak in peaks.items():
            row[f"fraction_of_{peak_dtype}_peak"] = row["achieved_flops_per_s"] / peak["flops_per_s_median"]
            # The peak's spread over its repeats gives the fraction's: against the best and the worst repeat.
            row[f"fraction_of_{peak_dtype}_peak_range"] = [row["achieved_flops_per_s"] / peak["flops_per_s_best"],
                                                           row["achieved_flops_per_s"] / peak["flops_per_s_worst"]]
        # Each probe is a fresh process (seconds of imports): --full probes every variant, the default PHMDiff's
        # unmasked and mask-0.5 fp32 steps, --quick the mask-0.5 one.
        wanted = (("phmdiff", 0.5, "fp32"),) if args.quick else (("phmdiff", 0.0, "fp32"), ("phmdiff", 0.5, "fp32"))
        probe = not args.no_memory and (getattr(args, "full", False) or (v["kind"], v["mask_ratio"], v["dtype"])
                                        in wanted) and v["kind"] != "phmdiff-before"  # the child knows only now
        if args.device == "cpu" and probe:
            if hasattr(args, "say"):
                args.say(f"memory probe {v['name']}")
            row["memory"] = cpu_memory({"kind": v["kind"], "model": args.model, "size": args.size,
                                        "batch": args.batch, "mask_ratio": v["mask_ratio"], "dtype": v["dtype"]})
        elif args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            steps[v["name"]]()
            torch.cuda.synchronize()
            row["memory"] = {"peak_allocated_bytes": torch.cuda.max_memory_allocated()}
        rows.append(row)
    return rows, peaks


@torch.no_grad()
def bench_sampling(args) -> list[dict]:
    """Slices per second of each sampler on the unmasked model at (about) the same number of network calls."""
    model, x, kwargs = phmdiff_setup(args.model, args.size, args.batch, args.device)
    model.eval()
    calls = {}

    def counting(name):
        def denoiser(x_, sigma, **kw):
            calls[name] += 1
            return model(x_, sigma, **kw)
        return denoiser
    nfe = args.nfe
    # The most steps each sampler takes within the budget of calls (Heun's last step is Euler: 2n - 1 calls).
    plans = {name: SAMPLER_SPECS[name].steps_for_calls(nfe) for name in SAMPLERS}
    variants = {}
    for name, n_steps in plans.items():
        sigmas = get_sigmas_karras(n_steps, 0.002, 80.0, device=args.device).float()
        calls[name] = 0

        def run(name=name, sigmas=sigmas):
            return SAMPLERS[name](counting(name), x * sigmas[0], sigmas, extra_args=kwargs, disable=True)
        variants[name] = run
    rounds = max(1, args.repeats // 3)
    timings = time_interleaved(variants, repeats=rounds, warmup=0, device=args.device,
                               progress=getattr(args, "say", None))
    return [{"sampler": name, "steps": plans[name], "nfe": calls[name] / timings[name]["n"],
             "seconds": timings[name]["median"], "iqr_s": timings[name]["iqr"],
             "slices_per_s": args.batch / timings[name]["median"]} for name in plans]


def summarize(rows: list[dict], model: str, device: str) -> dict:
    """Each target against its measured value (wall-time medians; CPU-time ratios beside them), and the same
    ratios of the older code when --before was given."""
    by = {(r["kind"], r["mask_ratio"], r["dtype"]): r for r in rows}
    out = {}

    def ratios(kind: str, dtype: str) -> dict:
        un, half, dit = by[(kind, 0.0, dtype)], by[(kind, 0.5, dtype)], by[("diffusers", 0.0, dtype)]
        return {"mask": half["step_s"] / un["step_s"], "mask_cpu": half["step_cpu_s"] / un["step_cpu_s"],
                "dit": un["step_s"] / dit["step_s"], "dit_cpu": un["step_cpu_s"] / dit["step_cpu_s"]}
    for dtype in sorted({r["dtype"] for r in rows}):
        now = ratios("phmdiff", dtype)
        before = ratios("phmdiff-before", dtype) if ("phmdiff-before", 0.0, dtype) in by else None
        for key, name, target in (("mask", "mask0.5_over_unmasked", TARGETS["mask0.5_over_unmasked"]),
                                  ("dit", "phmdiff_over_diffusers", TARGETS["phmdiff_over_diffusers"])):
            entry = {"target": f"<= {target}", "value": now[key], "met": now[key] <= target,
                     "value_cpu_time": now[f"{key}_cpu"]}
            if before is not None:
                entry.update(before=before[key], before_cpu_time=before[f"{key}_cpu"])
            out[f"{name}_{dtype}"] = entry
    if ("phmdiff", 0.0, "bf16") in by:
        r = by[("phmdiff", 0.0, "bf16")]
        key, goal = ("gpu_mfu", TARGETS["gpu_mfu_XL2"]) if device.startswith("cuda") else \
            ("bf16_peak_fraction", TARGETS["bf16_peak_fraction_S2"])
        frac = r.get("fraction_of_bfloat16_peak")
        if frac is not None:
            out[f"{key}_{model}"] = {"target": f">= {goal}", "value": frac, "met": frac >= goal,
                                     "range_over_peak_repeats": r.get("fraction_of_bfloat16_peak_range"),
                                     "applies": model in ("PHMDiff-S/2", "PHMDiff-XL/2")}
    return out


def progress_printer(tic: float):
    """print(text) with the minutes since `tic`, flushed: a long run is never silent."""
    def say(text: str) -> None:
        print(f"[{(time.perf_counter() - tic) / 60:5.1f} min] {text}", flush=True)
    return say


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny model and few repeats (smoke test)")
    p.add_argument("--full", action="store_true", help="the long run: all cores, 7 repeats, a memory probe per "
                                                      "variant (default: 1 thread, 3 repeats, 2 probes, ~10 min)")
    p.add_argument("--model", default=None, help="PHMDiff preset (default PHMDiff-S/2; --quick: PHMDiff-T/2)")
    p.add_argument("--size", type=int, default=None, help="latent grid (default 32; --quick: 8)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8; --quick: 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (GPU runs)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--nfe", type=int, default=None, help="network calls per sampler (default 11; --quick: 3)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory child processes")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--before", default=None, help="an older masked_dit.py, timed beside the current one")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampler throughput section")
    p.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # --quick uses one thread: on a loaded 2-core machine two OpenMP threads wait on each other for seconds.
    # The default run also uses one thread: it must finish within 15 minutes on a shared 2-core machine (issue 25).
    threads = set_threads(args.threads or (None if args.full else 1))
    if args.probe_memory:
        print(json.dumps(probe_memory(json.loads(args.probe_memory))))
        return 0
    if args.before:
        BEFORE["module"] = load_before(args.before)
    args.model = args.model or ("PHMDiff-T/2" if args.quick else "PHMDiff-S/2")
    args.size = args.size or (8 if args.quick else 32)
    args.batch = args.batch or (2 if args.quick else 8)
    args.repeats = args.repeats or (2 if args.quick else 7 if args.full else 3)
    args.warmup = 1 if args.quick else args.warmup
    args.nfe = args.nfe or (3 if args.quick else 11)
    tic = time.perf_counter()
    expected = "seconds" if args.quick else ("30-60 min" if args.full else "about 10 min")
    say = progress_printer(tic)
    say(f"speed: {args.model}, batch {args.batch}, {threads} thread(s), {args.repeats} repeats, dtypes "
        f"{' '.join(args.dtypes)}; expected {expected}")
    args.say = say
    # The peak alone, first, and again interleaved with the steps (the fractions use the interleaved one).
    peaks_alone = matmul_peak(size=512 if args.quick else 2048, repeats=2 if args.quick else 5, device=args.device)
    say("matmul peak alone done; training steps next")
    training, peaks = bench_training(args)
    say("training steps done" + ("" if args.no_sampling else "; samplers next"))
    sampling = [] if args.no_sampling else bench_sampling(args)
    targets = summarize(training, args.model, args.device)
    gpu = ("run on " + args.device) if args.device.startswith("cuda") else \
        "not run: no GPU was lent to this session (run `--model PHMDiff-XL/2 --device cuda --compile` on one)"
    results = {"model": args.model, "latent": [4, args.size, args.size], "batch": args.batch, "device": args.device,
               "threads": threads, "compile": args.compile, "quick": args.quick, "before": args.before,
               "matmul_peak": peaks,
               "matmul_peak_alone": peaks_alone,
               "training": training, "sampling": sampling, "targets": targets, "gpu_section": gpu,
               "wall_s": time.perf_counter() - tic}
    path = write_result("speed", results, args.device, args.out_dir)
    print_table(training, ["kind", "mask_ratio", "dtype", "step_s", "step_cpu_s", "step_iqr_s", "achieved_flops_per_s",
                           "fraction_of_float32_peak", "fraction_of_bfloat16_peak"])
    print_table(sampling, ["sampler", "steps", "nfe", "seconds", "slices_per_s"])
    for name, t in targets.items():
        before = f", before {t['before']:.3f}" if "before" in t else ""
        print(f"{name}: {t['value']:.3f} (target {t['target']}) {'met' if t['met'] else 'MISSED'}{before}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

