"""Does each part of PHMDiff earn its place? The shipped configuration against itself with one part switched
off, at the same CPU budget, with quality.py's protocol: held-out test subjects (default 6), every variant
trained with every seed (default 3) inside the same CPU seconds of this process, scored per (subject, seed) with
and without the through-plane filter, and the paired difference variant - shipped with a 95 % bootstrap
interval over subjects ("not resolved" when it holds 0).

    python benchmarks/ablation.py                        # FLAIR and CT tasks, 120 CPU-s per variant and seed
    python benchmarks/ablation.py --tasks brain_t1t2_to_flair --n-samples 4   # issue 26's training-signal run
    python benchmarks/ablation.py --variants levels_3 conv_head_0             # other variants, with "shipped"
    python benchmarks/ablation.py --quick                # one tiny task, two variants, seconds (smoke test)
"""

from __future__ import annotations

import os
import sys

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import numpy as np
import quality
import stats
from common import write_result

# name -> config overrides on top of the shipped demo config; "shipped" is the configuration as it ships.
VARIANTS = {
    "shipped": [],
    # the mean/residual design (issue 26): the pyramid diffusion alone, as the paper has it
    "mean_net_off": ["model.mean_net=''"],
    # the training signal (issue 26): each part of MaskDiT / PHMDiff's objective against its alternative
    "loss_all_tokens": ["model.denoise_loss_on=all"],
    "level_cycle": ["model.level_schedule=cycle"],
    "source_dropout_0": ["model.class_dropout_prob=0"],
    "mae_0": ["model.mae_loss_coef=0"],
    "cross_granularity_0": ["model.cross_granularity_weight=0"],
    # the architecture (issue 16's table; not in the default run)
    "mask_ratio_0": ["model.mask_ratio=0", "train.unmasked_finetune_steps=0"],
    "levels_1": ["model.pyramid_levels=1"],
    "levels_3": ["model.pyramid_levels=3"],
    "source_aware_off": ["model.source_aware_mask_tokens=false"],
    "conv_head_0": ["model.conv_head_width=0"],
}
DEFAULT_VARIANTS = list(VARIANTS)[:7]
DEFAULT_TASKS = ["brain_t1t2_to_flair", "pelvis_mr_to_ct"]
COMPARED = ("psnr", "lesion_psnr", "ratio_edema")


def parse(argv):
    """quality.py's arguments (budgets, seeds, subjects, filter, ...) plus --variants."""
    argv = list(argv or [])
    variants = None
    if "--variants" in argv:
        i = argv.index("--variants")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        variants = argv[i + 1 : j]
        del argv[i:j]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ValueError(f"--variants {unknown or variants}: expected some of {', '.join(VARIANTS)}.")
    if "--work" not in argv:
        argv += ["--work", "bench_out/ablation"]
    args = quality.parse(argv)
    args.variants = variants or (["shipped", "levels_1"] if args.quick else list(DEFAULT_VARIANTS))
    if "shipped" not in args.variants:
        args.variants.insert(0, "shipped")
    return args


def run_task(td, budget: float, args, say) -> dict:
    """Every variant x seed at one budget: rows per (subject, seed, filter) and the paired comparisons."""
    rows, runs = [], {}
    # One untimed short training first: the process's first-call costs (imports, allocations) would otherwise
    # fall inside the budget of whichever variant trains first.
    quality.train_phmdiff(td, min(budget / 3, 3.0), 0, [], "warmup")
    # Interleaved: every variant once per seed, each seed's round in a rotated order, so a machine whose speed
    # drifts during the hour (it did: 161 steps in 120 CPU-s for the first variant, 204 an hour later) shifts
    # every variant alike instead of the ones that ran late.
    for i, seed in enumerate(args.seeds):
        k = i * len(args.variants) // len(args.seeds)
        for name in args.variants[k:] + args.variants[:k]:
            say(f"{td.task.name} {budget:g} CPU-s {name} seed {seed}: training")
            cfg, fit = quality.train_phmdiff(td, budget, seed, VARIANTS[name], name)
            preds, pinfo = quality.predict_phmdiff(td, cfg, td.subjects["test"], args.n_samples, seed, name)
            r, swd = quality.score_predictions(td, preds, {"sigma": args.z_sigma, "h": args.z_h}, seed)
            rows.extend({"variant": name, "seed": seed, **x} for x in r)
            runs.setdefault(name, []).append({"seed": seed, "order": sum(map(len, runs.values())), **fit, **pinfo,
                                              "ms_swd_single": swd})
    summary = {}
    for f in quality.FILTERS:
        fr = [r for r in rows if r["filter"] == f]
        table = {}
        for name in args.variants:
            vr = [r for r in fr if r["variant"] == name]
            entry = {k: float(np.mean([r[k] for r in vr if k in r])) for k in COMPARED if any(k in r for r in vr)}
            entry["steps"] = float(np.mean([x["steps"] for x in runs[name]]))
            if name != "shipped":
                for k in COMPARED:
                    a = {(r["subject"], r["seed"]): r[k] for r in vr if k in r}
                    b = {(r["subject"], r["seed"]): r[k] for r in fr if r["variant"] == "shipped" and k in r}
                    if a and set(a) == set(b):
                        entry[f"{k}_minus_shipped"] = stats.compare(a, b)
            table[name] = entry
        summary[f] = table
    return {"budget_cpu_s": budget, "rows": rows, "runs": runs, "summary": summary}


def main(argv=None) -> int:
    args = parse(argv if argv is not None else sys.argv[1:])
    names = args.tasks or (["brain_t1t2_to_flair"] if args.quick else DEFAULT_TASKS)
    todo = [t for t in quality.TASKS if t.name in names]
    per_run = sum(args.budgets) * 1.15 / max(args.threads, 1) + args.split["test"] * args.n_samples * 3.0
    say = quality.Progress(len(todo) * len(args.variants) * len(args.seeds) * per_run + 60.0 * len(todo))
    load_before = list(os.getloadavg())
    say(f"ablation: {len(todo)} task(s) x {len(args.variants)} variants x {len(args.seeds)} seeds, budgets "
        f"{args.budgets} CPU-s; load average {load_before[0]:.2f}; expected about {say.expected_s / 60:.0f} min")
    args.methods = ["phmdiff"]
    out, autoencoders = [], {}
    for task in todo:
        td = quality.setup_task(task, args, autoencoders, say)
        entry = {"task": task.name, "subjects": {k: [s.id for s in v] for k, v in td.subjects.items()},
                 "budgets": {}}
        out.append(entry)
        for budget in args.budgets:
            entry["budgets"][f"{budget:g}"] = run_task(td, budget, args, say)
            print_summary(entry, f"{budget:g}")
            path = write_result("ablation", results(args, out, load_before, say), "cpu", args.out_dir)
    path = write_result("ablation", results(args, out, load_before, say), "cpu", args.out_dir)
    say(f"wrote {path}")
    return 0


def results(args, tasks, load_before, say) -> dict:
    return {"protocol": "volume", "budget_clock": "process_time (CPU seconds of this process, all threads)",
            "budgets_cpu_s": args.budgets, "seeds": args.seeds, "split": args.split, "threads": args.threads,
            "n_samples": args.n_samples, "z_filter": {"sigma": args.z_sigma, "h": args.z_h},
            "variants": {v: VARIANTS[v] for v in args.variants}, "quick": args.quick, "tasks": tasks,
            "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
            "wall_s": quality.time.perf_counter() - say.tic}


def print_summary(entry: dict, budget: str) -> None:
    for f, table in entry["budgets"][budget]["summary"].items():
        print(f"\n{entry['task']} at {budget} CPU-s, through-plane filter {'on' if f == 'z_on' else 'off'}")
        for name, v in table.items():
            diff = v.get("psnr_minus_shipped")
            text = f"   {stats.describe(diff)} vs shipped" if diff else ""
            print(f"  {name:<22} PSNR {v['psnr']:6.2f}  steps {v['steps']:6.0f}{text}")


if __name__ == "__main__":
    sys.exit(main())
