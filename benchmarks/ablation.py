"""Does each part of PHMDiff earn its place? The shipped configuration against itself with one part switched
off, at the same CPU budget, on quality.py's phantom tasks (held-out subjects, volume protocol, n-sample mean):
pyramid levels 1 / 2 / 3, cross-granularity weight 0, mask ratio 0, source-aware mask tokens off, no conv head.

    python benchmarks/ablation.py                        # FLAIR and CT tasks, 120 s per variant
    python benchmarks/ablation.py --quick                # one tiny task, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import sys
import time

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import quality
from common import print_table, set_threads, write_result

# name -> config overrides on top of the shipped demo config; "shipped" is the configuration as it ships.
VARIANTS = {
    "shipped": [],
    "levels_1": ["model.pyramid_levels=1"],
    "levels_3": ["model.pyramid_levels=3"],
    "cross_granularity_0": ["model.cross_granularity_weight=0"],
    "mask_ratio_0": ["model.mask_ratio=0", "train.unmasked_finetune_steps=0"],
    "source_aware_off": ["model.source_aware_mask_tokens=false"],
    "conv_head_0": ["model.conv_head_width=0"],
}
DEFAULT_TASKS = ["brain_t1t2_to_flair", "pelvis_mr_to_ct"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny task, two variants, seconds of training")
    p.add_argument("--budget", type=float, default=None, help="training seconds per variant (default 120)")
    p.add_argument("--tasks", nargs="+", default=None, choices=[t.name for t in quality.TASKS])
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    p.add_argument("--subjects", type=int, default=10)
    p.add_argument("--n-samples", type=int, default=None, help="samples averaged (default 4; --quick: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default="bench_out/ablation")
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    threads = set_threads(args.threads or (1 if args.quick else None))
    budget = args.budget or (4.0 if args.quick else quality.DEFAULT_BUDGET_S)
    variants = args.variants or (["shipped", "levels_1"] if args.quick else list(VARIANTS))
    tasks = args.tasks or (["brain_t1t2_to_flair"] if args.quick else DEFAULT_TASKS)
    n_samples = args.n_samples or (1 if args.quick else 4)
    tic = time.perf_counter()
    rows = []
    for task in [t for t in quality.TASKS if t.name in tasks]:
        for name in variants:
            run_args = argparse.Namespace(
                quick=args.quick, budget=budget, ae_steps=5 if args.quick else 2000, subjects=args.subjects,
                n_samples=n_samples, ddim_steps=3, seed=args.seed, work=f"{args.work}/{name}",
                set=VARIANTS[name], phmdiff_only=True)
            result = quality.run_task(task, run_args, {})
            methods = result["methods"]
            best = methods[f"phmdiff_mean{n_samples}"]
            rows.append({"task": task.name, "variant": name, "overrides": VARIANTS[name], "psnr": best["psnr"],
                         "ssim": best["ssim"], "lesion_psnr": best.get("lesion_psnr"),
                         "single_psnr": methods["phmdiff_single"]["psnr"],
                         "diffusion_steps": best["diffusion_steps"],
                         "pipeline_ceiling_psnr": methods["pipeline_ceiling"]["psnr"],
                         "noise_free_psnr": methods.get("noise_free_ceiling", {}).get("psnr")})
            summary = {"budget_s_per_variant": budget, "threads": threads, "n_samples": n_samples, "rows": rows,
                       "wall_s": time.perf_counter() - tic, "protocol": "volume"}
            path = write_result("ablation", summary, "cpu", args.out_dir)  # so far
    print_table(rows, ["task", "variant", "psnr", "ssim", "lesion_psnr", "single_psnr", "diffusion_steps",
                       "pipeline_ceiling_psnr"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
