"""One any-to-any model (the BraSyn setting) against dedicated single-direction models at equal total budget.

On the brain phantom (t1, t1ce, t2, flair), three directions: FLAIR from {T1, T2}, T2 from {T1} and T1ce from
{T1, T2, FLAIR}. Each dedicated model is the shipped demo config for its direction, trained for `--budget`
seconds; the any-to-any model (same config, `data.any_to_any: true` over the four modalities) is trained once
for the sum of their budgets and then asked each direction with `translate --target X --sources ...`. All
share one phantom and the same held-out subjects; scored with the volume protocol (PSNR, SSIM, lesion PSNR)
on the mean of n samples, beside the noise-free ceiling.

    python benchmarks/anytoany.py                 # default budget (120 s per dedicated model, 360 s any-to-any)
    python benchmarks/anytoany.py --steps 300     # a step budget instead: 300 per dedicated model, 900 any-to-any
    python benchmarks/anytoany.py --quick         # tiny sizes, 6 steps per dedicated model (smoke test)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import numpy as np
import scoring
from common import budget_pacer, print_table, set_threads, test_subjects, write_result
from quality import Task

DEFAULT_BUDGET_S = 120.0
MODALITIES = ["t1", "t1ce", "t2", "flair"]
DIRECTIONS = [Task("flair_from_t1_t2", "brain", ["t1", "t2"], "flair"),
              Task("t2_from_t1", "brain", ["t1"], "t2"),
              Task("t1ce_from_t1_t2_flair", "brain", ["t1", "t2", "flair"], "t1ce")]
DEFAULT_WORK = Path("bench_out") / "anytoany"


def config_for(work: Path, phantom: Path, data: list[str], quick: bool, overrides: list[str]):
    """The shipped demo config at `work`'s folders with `data` (the direction, or any-to-any) on top."""
    from phmdiff.config import load_config
    from phmdiff.demo import DEMO_CONFIG

    paths = [f"data.root={phantom}", f"data.prepared={work / 'prepared'}", f"data.cache={work / 'latents'}",
             f"log.run_dir={work / 'run'}", "log.tensorboard=false", "eval.every=0", "data.val_fraction=0.2",
             "data.test_fraction=0.2"]
    if quick:  # the demo is pixel space: 16x16 planes, 2 sampling steps, cross-granularity off on 2x2 tokens
        paths += ["data.resolution=16", "model.in_size=16", "train.batchsize=8", "eval.num_steps=2",
                  "eval.fine_num_steps=2", "data.val_fraction=0.34", "data.test_fraction=0.34",
                  "model.cross_granularity_weight=0"]
    return load_config(DEMO_CONFIG, [*paths, *data, *overrides])


def score(pred_path, subject, task: Task) -> dict:
    """Volume-protocol PSNR / SSIM / MAE and lesion PSNR (`scoring.score_volume`) of one prediction file."""
    seg = np.rint(scoring.load(subject.mask)) if subject.mask else None
    return scoring.score_volume(scoring.load(pred_path), scoring.load(subject.paths[task.target]), "mr", seg)


def train_model(cfg, budget_s: float, steps: int | None = None) -> dict:
    """Prepare the data of `cfg` and train it for `budget_s` seconds of wall clock (encoding included, paced by
    `common.budget_pacer`), or for exactly `steps` steps (a budget that the machine's load cannot move), the last
    tenth unmasked."""
    from phmdiff.training import run_pipeline
    from phmdiff.training.loop import train

    run_pipeline(cfg, stages=("prepare", "train-ae"), progress=False, log=lambda *_: None)
    cpu = time.process_time()
    if steps is None:
        tic = time.perf_counter()
        run_pipeline(cfg, stages=("encode",), progress=False, log=lambda *_: None)
        after_step, _ = budget_pacer(cfg.train, budget_s, origin=tic)
        result = train(cfg, resume="auto", progress=False, after_step=after_step)
        info = {"train_seconds": time.perf_counter() - tic, "diffusion_steps": result["step"],
                "unmasked_finetune_steps": cfg.train.unmasked_finetune_steps}
    else:
        tic = time.perf_counter()
        cfg.train.max_num_steps, cfg.train.unmasked_finetune_steps = steps, steps // 10
        done = run_pipeline(cfg, stages=("encode", "train"), progress=False, log=lambda *_: None)["train"]
        info = {"train_seconds": time.perf_counter() - tic, "diffusion_steps": done["step"],
                "unmasked_finetune_steps": steps // 10}
    return {**info, "train_cpu_seconds": time.process_time() - cpu, "budget_s": budget_s, "budget_steps": steps}


def run(args) -> dict:
    from phmdiff.data.phantom import write_phantom
    from phmdiff.translate import translate

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)  # every run starts from nothing
    work.mkdir(parents=True)
    phantom = work / "phantom"
    shape = (16, 16, 16) if args.quick else (64, 64, 40)
    write_phantom(phantom, "brain", n_subjects=3 if args.quick else args.subjects, shape=shape, seed=args.seed)
    overrides = args.set or []

    runs, training = {}, {}
    for task in DIRECTIONS:  # (a) one dedicated model per direction, `budget` seconds each
        cfg = config_for(work / task.name, phantom, [f"data.sources=[{','.join(task.sources)}]",
                                                    f"data.target={task.target}"], args.quick, overrides)
        training[task.name] = train_model(cfg, args.budget, args.steps)
        runs[task.name] = cfg
    # (b) one any-to-any model for the sum of their budgets
    any_cfg = config_for(work / "anytoany", phantom, ["data.any_to_any=true",
                                                      f"data.modalities=[{','.join(MODALITIES)}]"], args.quick,
                         overrides)
    training["anytoany"] = train_model(any_cfg, args.budget * len(DIRECTIONS),
                                       args.steps * len(DIRECTIONS) if args.steps else None)

    subjects = test_subjects(phantom, any_cfg.data.prepared, MODALITIES)
    for task in DIRECTIONS:  # the same subjects are held out by every run (same ids, same split seed)
        assert [s.id for s in test_subjects(phantom, runs[task.name].data.prepared, MODALITIES)] == \
            [s.id for s in subjects]
    rows = []
    for task in DIRECTIONS:
        methods = {}
        for name, run_dir, extra in (
                ("dedicated", runs[task.name].run_dir, {}),
                ("anytoany", any_cfg.run_dir, {"target": task.target, "use_sources": task.sources})):
            tic, scores = time.perf_counter(), []
            for s in subjects:
                out = work / "translate" / name / task.name
                meta = translate(run_dir, phantom / s.id, out, n_samples=args.n_samples, seed=args.seed,
                                 overwrite=True, progress=False, **extra)
                entry = next(e for e in meta["subjects"] if e["subject"] == s.id)
                assert entry.get("sources", task.sources) == task.sources and entry.get("target", task.target) == \
                    task.target
                scores.append({"subject": s.id, **score(out / entry["prediction"], s, task)})
            info = training["anytoany" if name == "anytoany" else task.name]
            methods[name] = {**_mean(scores), "seconds_per_volume": (time.perf_counter() - tic) / len(subjects),
                             "diffusion_steps": info["diffusion_steps"], "train_seconds": info["train_seconds"],
                             "train_cpu_seconds": info["train_cpu_seconds"], "budget_s": info["budget_s"]}
        clean = [{"subject": s.id, **score(s.paths[task.target].parent / "noise_free" / s.paths[task.target].name,
                                           s, task)} for s in subjects]
        methods["noise_free_ceiling"] = _mean(clean)
        rows.append({"task": task.name, "sources": task.sources, "target": task.target,
                     "test_subjects": [s.id for s in subjects], "methods": methods,
                     "anytoany_minus_dedicated_psnr_db": methods["anytoany"]["psnr"] - methods["dedicated"]["psnr"],
                     "anytoany_minus_dedicated_ssim": methods["anytoany"]["ssim"] - methods["dedicated"]["ssim"]})
    return {"directions": rows, "training": training}


def _mean(scores: list[dict]) -> dict:
    keys = [k for k in ("psnr", "ssim", "lesion_psnr") if all(k in r for r in scores)]
    return {**{k: float(np.mean([r[k] for r in scores])) for k in keys},
            "std": {k: float(np.std([r[k] for r in scores])) for k in keys}, "subjects": scores}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 6 training steps per dedicated model (smoke test)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"training seconds per dedicated model (default {DEFAULT_BUDGET_S:g}; --quick: 1); the "
                        "any-to-any model gets three times this")
    p.add_argument("--steps", type=int, default=None,
                   help="train each dedicated model exactly this many steps instead of --budget seconds (the "
                        "any-to-any model: three times as many); --quick: 6")
    p.add_argument("--subjects", type=int, default=10, help="phantom subjects (20%% held out)")
    p.add_argument("--n-samples", type=int, default=None, help="samples averaged per volume (default 4; --quick: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default 1)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder (phantom, runs, predictions)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides for every model")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    threads = set_threads(args.threads or 1)
    args.budget = args.budget or (1.0 if args.quick else DEFAULT_BUDGET_S)
    args.n_samples = args.n_samples or (2 if args.quick else 4)
    args.steps = args.steps or (6 if args.quick else None)
    if args.budget <= 0 or args.n_samples < 1 or (args.steps is not None and args.steps < 1):
        raise ValueError("--budget, --steps and --n-samples must be positive.")
    tic = time.perf_counter()
    result = run(args)
    result.update({"budget_s_per_dedicated_model": args.budget,
                   "budget_s_anytoany": args.budget * len(DIRECTIONS), "budget_steps_per_dedicated_model": args.steps,
                   "threads": threads, "quick": args.quick,
                   "n_samples": args.n_samples, "protocol": "volume", "wall_s": time.perf_counter() - tic})
    path = write_result("anytoany", result, "cpu", args.out_dir)
    for r in result["directions"]:
        print(f"\n{r['task']} ({'+'.join(r['sources'])} -> {r['target']}), held-out {', '.join(r['test_subjects'])}")
        print_table([{"method": k, **v} for k, v in r["methods"].items()],
                    ["method", "psnr", "ssim", "lesion_psnr", "diffusion_steps", "train_seconds", "budget_s"])
        print(f"  any-to-any - dedicated: {r['anytoany_minus_dedicated_psnr_db']:+.2f} dB PSNR, "
              f"{r['anytoany_minus_dedicated_ssim']:+.4f} SSIM")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
