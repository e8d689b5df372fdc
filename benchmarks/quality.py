"""Image quality of PHMDiff against the systems a user would pick instead, on phantom tasks with enough held-out
subjects and training seeds to tell, every method treated alike (issue 25).

Protocol. Each task's phantom has separate training, validation and test subjects (default 8 / 2 / 6). Every
method trains inside the same budget of CPU seconds of this process (`time.process_time`, all its threads; a
busy machine slows wall time, not CPU time), once per seed (default 3 seeds), on the same slices with the same
augmentation: none by default, random left-right flips for every method with `--flips` (PHMDiff's `train.flip`,
the baselines' flipped pairs). Methods:

(a) PHMDiff as shipped (configs/demo.yaml; the step count follows the CPU budget), its n-sample mean and a
    single sample, through `phmdiff translate`;
(b) the U-Net regression (MONAI BasicUNet, L1), its learning rate (UNET_LRS) and EMA (raw or EMA weights) chosen
    per budget on the validation subjects with seed 0, then trained with every seed; (b') the same U-Net with
    L2 at the chosen learning rate;
(c) MONAI's conditional DDPM trained as its tutorial trains (Adam 2.5e-5), run only where a probe shows the budget
    can show it at least DDPM_MIN_SHARE of the tutorial's training images; otherwise its target is removed and
    the JSON says why (`--force-ddpm` runs it anyway, without a target);
(d) copying the last source (intensity-matched) and the noise-free target, as references.

Post-processing: translate's through-plane filter (`--z-sigma`, `consistency.joint_bilateral_z`) is applied by the
benchmark to every method's prediction, and every method is scored with it ("z_on") and without ("z_off").
Scores per (subject, seed) (`scoring.py`): volume-protocol PSNR / SSIM / MAE, lesion PSNR, mean-intensity ratio
per tumour label and healthy tissue, segcheck whole-tumour Dice, and per seed the single-sample MS-SWD against
the real target slices. The paired difference PHMDiff - baseline per (subject, seed) gets a 95 % bootstrap
interval over subjects (`stats.py`): "not resolved" when it holds 0; a target is met only when the interval
clears it. Network calls per volume = samples x calls per slice x slices.

    python benchmarks/quality.py --quick                           # one tiny task, seconds (smoke test)
    python benchmarks/quality.py                                    # 3 tasks, 120 CPU-s, 3 seeds
    python benchmarks/quality.py --tasks brain_t1t2_to_flair --budgets 600
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import numpy as np
import scoring
import stats
from baselines.monai_ddpm import TUTORIAL_IMAGES, predict_ddpm, projected_images, train_ddpm
from baselines.unet_regression import predict_unet, train_unet
from common import RESULTS, apply_slicewise, budget_pacer, set_threads, test_subjects, write_result

from phmdiff.samplers import sampler_spec

DEFAULT_BUDGETS = [120.0]
SPLIT = {"train": 8, "val": 2, "test": 6}
UNET_LRS = (3e-4, 1e-3, 3e-3)
UNET_EMA_DECAY = 0.99
DDPM_MIN_SHARE = 0.5  # of the tutorial's training images
DEFAULT_WORK = Path("bench_out") / "quality"
# issue 26's targets for PHMDiff's n-sample mean against the tuned U-Net, by budget (CPU seconds): PSNR difference
# whose interval must clear the value
PSNR_TARGETS = {120.0: -0.3, 600.0: 0.3}
FILTERS = ("z_off", "z_on")


@dataclass
class Task:
    name: str
    kind: str  # phantom kind: brain | pelvis
    sources: list[str]
    target: str


TASKS = [Task("brain_t1t2_to_flair", "brain", ["t1", "t2"], "flair"),
         Task("brain_t1_to_t2", "brain", ["t1"], "t2"),
         Task("pelvis_mr_to_ct", "pelvis", ["mr"], "ct")]


@dataclass
class TaskData:
    """A task's phantom, prepared data, subjects and what is read once from them."""

    task: Task
    work: Path
    cfg: object
    subjects: dict  # split -> reader Subjects
    refs: dict = field(default_factory=dict)  # sid -> {"ref", "seg", "sources", "tissue", "n_slices"}
    segmenter: object = None
    ae: dict = field(default_factory=dict)
    quick: bool = False
    overrides: list = field(default_factory=list)  # --set, PHMDiff config overrides of the whole run
    split: dict = field(default_factory=lambda: dict(SPLIT))

    @property
    def modality(self) -> str:
        return "ct" if self.task.target == "ct" else "mr"


class Progress:
    """Elapsed time and what runs now, flushed, so a long run is never silent."""

    def __init__(self, expected_s: float):
        self.tic = time.perf_counter()
        self.expected_s = expected_s

    def __call__(self, text: str) -> None:
        used = time.perf_counter() - self.tic
        print(f"[{used / 60:5.1f} / ~{self.expected_s / 60:.0f} min] {text}", flush=True)


def phmdiff_calls_per_slice(cfg) -> int:
    """Network calls per slice of one sample of coarse-to-fine sampling (guidance != 1 doubles each call's batch),
    plus the mean network's one call (`model.mean_net`: `inference.sample_latents` runs it per slice and sample)."""
    e, levels = cfg.eval, cfg.model.pyramid_levels
    calls = sampler_spec(e.sampler).network_calls  # EDM's Heun: no second call on the last step
    total = calls(e.num_steps) + calls(e.fine_num_steps) * (levels - 1)
    return total * (2 if e.guidance != 1.0 else 1) + (1 if getattr(cfg.model, "mean_net", "") else 0)


def config_for(task: Task, work: Path, quick: bool, overrides: list[str], split: dict | None = None):
    """The shipped demo config with this task's folders and split (None: a fifth each to validation and test)."""
    from phmdiff.config import AE_FACTORS, load_config
    from phmdiff.demo import DEMO_CONFIG

    split = split or ({"train": 1, "val": 1, "test": 1} if quick else {"train": 3, "val": 1, "test": 1})
    total = sum(split.values())
    paths = [f"data.root={work / 'phantom'}", f"data.prepared={work / 'prepared'}", f"data.cache={work / 'latents'}",
             f"log.run_dir={work / 'run'}", f"data.sources=[{','.join(task.sources)}]", f"data.target={task.target}",
             "log.tensorboard=false", "eval.every=0", f"data.val_fraction={split['val'] / total}",
             f"data.test_fraction={split['test'] / total}"]
    if quick:
        factor = AE_FACTORS[load_config(DEMO_CONFIG).model.autoencoder.preset]
        paths += ["data.resolution=32", f"model.in_size={32 // factor}", "train.batchsize=8",
                  "model.autoencoder.batchsize=8", "eval.num_steps=2", "eval.fine_num_steps=2",
                  "model.cross_granularity_weight=0"]  # a 2x2-token coarse grid leaves the MMD nothing to compare
    return load_config(DEMO_CONFIG, [*paths, *overrides])


def train_autoencoder(cfg, steps: int) -> dict:
    """The autoencoder of one anatomy, trained once with a fixed step count (outside every budget)."""
    from phmdiff.inference import autoencoder_path
    from phmdiff.training import run_pipeline

    tic = time.perf_counter()
    cfg.model.autoencoder.steps = steps
    report = run_pipeline(cfg, stages=("train-ae",), progress=False, log=lambda *_: None).get("train-ae")
    return {"seconds": time.perf_counter() - tic, "path": str(autoencoder_path(cfg)),
            "val_psnr": report.get("psnr") if isinstance(report, dict) else None}


def setup_task(task: Task, args, autoencoders: dict, say) -> TaskData:
    """Phantom, prepare, the subjects of every split, their references, the segmenter and the autoencoder."""
    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    work = Path(args.work) / task.name
    if work.exists():
        shutil.rmtree(work)  # every run starts from nothing
    work.mkdir(parents=True)
    overrides = [f"train.flip={'true' if args.flips else 'false'}", *(args.set or [])]  # augmentation alike
    cfg = config_for(task, work, args.quick, overrides, args.split)
    shape = (32, 32, 16) if args.quick else ((64, 64, 40) if task.kind == "brain" else (64, 64, 32))
    extra = {"physics": args.physics, "n4": args.n4} if task.kind == "brain" else {}
    write_phantom(cfg.data.root, task.kind, n_subjects=sum(args.split.values()), shape=shape, seed=args.seed,
                  **extra)
    run_pipeline(cfg, stages=("prepare",), progress=False, log=lambda *_: None)
    subjects = {split: test_subjects(cfg.data.root, cfg.data.prepared, [*task.sources, task.target], split)
                for split in ("train", "val", "test")}
    td = TaskData(task, work, cfg, subjects, quick=args.quick, overrides=overrides, split=args.split)
    for s in subjects["val"] + subjects["test"]:
        seg = np.rint(scoring.load(s.mask)) if task.kind == "brain" and s.mask else None
        src = [scoring.load(s.paths[m]) for m in task.sources]
        td.refs[s.id] = {"ref": scoring.load(s.paths[task.target]), "seg": seg, "sources": src,
                         "tissue": scoring.tissue_map(str(cfg.data.root), s.id),
                         "n_slices": int(np.count_nonzero(src[0].reshape(-1, src[0].shape[-1]).any(0)))}
    if task.kind == "brain" and args.seg_steps > 0:
        say(f"{task.name}: segmentation network, {args.seg_steps} steps on the training subjects")
        td.segmenter = scoring.Segmenter(subjects["train"], task.sources, task.target, args.seg_steps)
    if task.kind not in autoencoders:  # one autoencoder per anatomy, outside every budget
        autoencoders[task.kind] = {**train_autoencoder(cfg, args.ae_steps), "trained_for": task.name}
    cfg.model.autoencoder.path = autoencoders[task.kind]["path"]
    td.ae = autoencoders[task.kind]
    run_pipeline(cfg, stages=("encode",), progress=False, log=lambda *_: None)  # outside the budget, once
    return td


def train_phmdiff(td: TaskData, budget_s: float, seed: int, overrides: list[str], tag: str,
                  finetune_share: float = 0.1):
    """PHMDiff trained inside `budget_s` CPU seconds (`common.budget_pacer` on `time.process_time`, counted from
    the call, the last `finetune_share` of the steps unmasked as MaskDiT does); returns (cfg, info)."""
    from phmdiff.training.loop import train

    cfg = config_for(td.task, td.work, td.quick, [*td.overrides, *overrides], td.split)
    cfg.model.autoencoder.path = td.ae["path"]
    cfg.log.run_dir = str(td.work / f"run_{tag}_s{seed}")
    cfg.train.seed = seed
    t = cfg.train
    tic, start = time.perf_counter(), time.process_time()
    after_step, _ = budget_pacer(t, budget_s, clock=time.process_time, origin=start, finetune_share=finetune_share)
    result = train(cfg, resume="auto", progress=False, after_step=after_step)
    return cfg, {"train_seconds": time.perf_counter() - tic, "train_cpu_seconds": time.process_time() - start,
                 "steps": result["step"], "unmasked_finetune_steps": t.unmasked_finetune_steps}


def predict_phmdiff(td: TaskData, cfg, subjects, n_samples: int, seed: int, tag: str) -> tuple[dict, dict]:
    """translate (its own filter off: the benchmark filters every method alike); {sid: {"mean", "single"}}, info."""
    from phmdiff.translate import translate

    out = td.work / f"translate_{tag}_s{seed}"
    preds, tic, cpu = {}, time.perf_counter(), time.process_time()
    for s in subjects:
        meta = translate(cfg.run_dir, Path(cfg.data.root) / s.id, out, n_samples=n_samples, seed=seed,
                         overwrite=True, progress=False, z_sigma=0.0)
        e = next(e for e in meta["subjects"] if e["subject"] == s.id)
        single = e["samples"][0] if n_samples > 1 else e["prediction"]
        preds[s.id] = {"mean": scoring.load(out / e["prediction"]), "single": scoring.load(out / single)}
    n = len(subjects)
    per_slice = phmdiff_calls_per_slice(cfg)
    calls = float(np.mean([td.refs[s.id]["n_slices"] for s in subjects])) * per_slice * n_samples
    return preds, {"seconds_per_volume": (time.perf_counter() - tic) / n,
                   "cpu_seconds_per_volume": (time.process_time() - cpu) / n, "n_samples": n_samples,
                   "calls_per_slice_per_sample": per_slice, "network_calls_per_volume": calls}


def predict_slicewise(td: TaskData, predict, subjects, calls_per_slice: int, tag: str, seed: int):
    """A slice predictor on whole volumes with translate's per-volume functions; {sid: {"mean": volume}}, info."""
    cpu = time.process_time()
    rows = apply_slicewise(predict, td.cfg.data.prepared, subjects, td.task.sources, td.task.target,
                           td.work / f"translate_{tag}_s{seed}", seed=seed)
    preds = {r["subject"]: {"mean": scoring.load(r["prediction"])} for r in rows}
    calls = float(np.mean([td.refs[s.id]["n_slices"] for s in subjects])) * calls_per_slice
    return preds, {"seconds_per_volume": float(np.mean([r["seconds"] for r in rows])),
                   "cpu_seconds_per_volume": (time.process_time() - cpu) / len(rows),
                   "network_calls_per_volume": calls}


def score_predictions(td: TaskData, preds: dict, z: dict, realism_seed: int = 0) -> tuple[list[dict], dict]:
    """Rows per (subject, filter) for the "mean" prediction, and MS-SWD of the single-sample slices per filter."""
    rows, slices = [], {f: ([], []) for f in FILTERS}
    for sid, p in preds.items():
        r = td.refs[sid]
        for f in FILTERS:
            sigma = z["sigma"] if f == "z_on" else 0.0
            vol = scoring.z_filter(p["mean"], r["sources"], sigma, z["h"])
            row = {"subject": sid, "filter": f, **scoring.score_volume(vol, r["ref"], td.modality, r["seg"],
                                                                        r["tissue"])}
            if td.segmenter is not None and r["seg"] is not None:
                row["dice_wt"] = td.segmenter.whole_tumour_dice(r["sources"], vol, r["seg"])
            rows.append(row)
            single = scoring.z_filter(p.get("single", p["mean"]), r["sources"], sigma, z["h"])
            ps, rs = scoring.normalized_slices(single, r["ref"], td.modality)
            slices[f][0].append(ps)
            slices[f][1].append(rs)
    return rows, {f: scoring.realism(*slices[f], seed=realism_seed) for f in FILTERS}


def select_unet(td: TaskData, budget: float, args, say) -> dict:
    """The U-Net's learning rate and weights (raw or EMA) with the best validation PSNR, seed 0; the seed-0 models
    are kept for reuse."""
    trials = []
    for lr in args.unet_lrs:
        say(f"{td.task.name} {budget:g} CPU-s: U-Net lr {lr:g} (validation sweep)")
        models, info = train_unet(td.cfg.data.prepared, td.task.sources, td.task.target, budget,
                                  batch=td.cfg.train.batchsize if args.quick else 16, lr=lr, seed=0,
                                  clock=time.process_time, flip=args.flips, ema_decay=UNET_EMA_DECAY)
        for weights, model in models.items():
            preds, _ = predict_slicewise(td, lambda s, seeds, m=model: predict_unet(m, s, seeds),
                                         td.subjects["val"], 1, f"val_unet_{lr:g}_{weights}", 0)
            psnr = float(np.mean([scoring.score_volume(p["mean"], td.refs[sid]["ref"], td.modality)["psnr"]
                                  for sid, p in preds.items()]))
            trials.append({"lr": lr, "weights": weights, "val_psnr": psnr, "model": model, "info": info})
    best = max(trials, key=lambda t: t["val_psnr"])
    return {"lr": best["lr"], "weights": best["weights"], "model": best["model"], "info": best["info"],
            "trials": [{k: t[k] for k in ("lr", "weights", "val_psnr")} for t in trials]}


def run_budget(td: TaskData, budget: float, args, say) -> dict:
    """Every method at one budget, every seed: per-(subject, seed) rows, realism per seed, summaries."""
    task, test = td.task, td.subjects["test"]
    rows: list[dict] = []
    realism: list[dict] = []
    info: dict = {}
    z = {"sigma": args.z_sigma, "h": args.z_h}

    def add(method: str, seed: int, preds: dict, extra: dict) -> None:
        r, swd = score_predictions(td, preds, z, realism_seed=seed)
        rows.extend({"method": method, "seed": seed, **x} for x in r)
        realism.extend({"method": method, "seed": seed, "filter": f, "ms_swd_single": v} for f, v in swd.items())
        info.setdefault(method, []).append({"seed": seed, **extra})

    unet = select_unet(td, budget, args, say) if "unet" in args.methods else None
    ddpm_gate = None
    if "monai_ddpm" in args.methods:
        ddpm_gate = projected_images(td.cfg.data.prepared, task.sources, task.target, budget,
                                     batch=td.cfg.train.batchsize if args.quick else 16, probe_s=min(3.0, budget / 4))
        ddpm_gate["runs"] = args.force_ddpm or ddpm_gate["share_of_tutorial"] >= DDPM_MIN_SHARE
        ddpm_gate["forced"] = ddpm_gate["runs"] and ddpm_gate["share_of_tutorial"] < DDPM_MIN_SHARE  # no target
        if not ddpm_gate["runs"]:
            ddpm_gate["reason"] = (f"{budget:g} CPU-s shows the DDPM about {ddpm_gate['projected_images']} images, "
                                   f"{ddpm_gate['share_of_tutorial']:.1%} of the ~{TUTORIAL_IMAGES} its tutorial "
                                   f"trains on (needs {DDPM_MIN_SHARE:.0%}): not trained, target removed")
            say(f"{task.name} {budget:g} CPU-s: MONAI DDPM skipped: {ddpm_gate['reason']}")
    for seed in args.seeds:
        if "phmdiff" in args.methods:
            say(f"{task.name} {budget:g} CPU-s seed {seed}: PHMDiff training")
            cfg, fit = train_phmdiff(td, budget, seed, [], f"b{budget:g}")
            say(f"{task.name} {budget:g} CPU-s seed {seed}: PHMDiff {fit['steps']} steps; translating "
                f"{len(test)} subjects x {args.n_samples} samples")
            preds, pinfo = predict_phmdiff(td, cfg, test, args.n_samples, seed, f"b{budget:g}")
            add(f"phmdiff_mean{args.n_samples}", seed, preds, {**fit, **pinfo})
            one = {sid: {"mean": p["single"]} for sid, p in preds.items()}
            add("phmdiff_single", seed, one, {**fit, **pinfo, "n_samples": 1,
                                              "network_calls_per_volume": pinfo["network_calls_per_volume"]
                                              / args.n_samples})
        if unet is not None:
            batch = td.cfg.train.batchsize if args.quick else 16
            for name, loss in (("unet", "l1"), ("unet_l2", "l2")):
                if name == "unet" and seed == 0:
                    model, fit = unet["model"], unet["info"]
                else:
                    say(f"{task.name} {budget:g} CPU-s seed {seed}: U-Net {loss.upper()} training")
                    models, fit = train_unet(td.cfg.data.prepared, task.sources, task.target, budget, batch=batch,
                                             lr=unet["lr"], seed=seed, clock=time.process_time, flip=args.flips,
                                             loss=loss, ema_decay=UNET_EMA_DECAY)
                    model = models[unet["weights"]]
                preds, pinfo = predict_slicewise(td, lambda s, seeds, m=model: predict_unet(m, s, seeds), test, 1,
                                                 f"b{budget:g}_{name}", seed)
                add(name, seed, preds, {**fit, **pinfo, "weights": unet["weights"]})
        if ddpm_gate and ddpm_gate["runs"]:
            say(f"{task.name} {budget:g} CPU-s seed {seed}: MONAI DDPM training")
            model, fit = train_ddpm(td.cfg.data.prepared, task.sources, task.target, budget,
                                    batch=td.cfg.train.batchsize if args.quick else 16, seed=seed,
                                    clock=time.process_time, flip=args.flips)
            preds, pinfo = predict_slicewise(
                td, lambda s, seeds, m=model: predict_ddpm(m, s, seeds, num_steps=args.ddim_steps), test,
                args.ddim_steps, f"b{budget:g}_ddpm", seed)
            add("monai_ddpm", seed, preds, {**fit, **pinfo})
    say(f"{task.name} {budget:g} CPU-s: references (copy of the source, noise-free target)")
    add_references(td, add)
    return {"budget_cpu_s": budget, "rows": rows, "realism": realism, "runs": info,
            "unet_selection": None if unet is None else {k: unet[k] for k in ("lr", "weights", "trials")},
            "monai_ddpm_gate": ddpm_gate,
            "summary": summarise(rows, realism, f"phmdiff_mean{args.n_samples}", budget, ddpm_gate)}


def add_references(td: TaskData, add) -> None:
    """Copy of the last source (intensity-matched) and the noise-free target, scored as methods (seed 0)."""
    from phmdiff.eval.protocols import foreground_mask, matched_copy

    copies, clean = {}, {}
    for s in td.subjects["test"]:
        r = td.refs[s.id]
        copies[s.id] = {"mean": matched_copy(r["sources"][-1], r["ref"], foreground_mask(r["ref"], td.modality))}
        path = s.paths[td.task.target].parent / "noise_free" / s.paths[td.task.target].name
        if path.exists():
            clean[s.id] = {"mean": scoring.load(path)}
    add(f"copy_{td.task.sources[-1]}", 0, copies, {"network_calls_per_volume": 0})
    if len(clean) == len(copies):
        add("noise_free_ceiling", 0, clean, {"network_calls_per_volume": 0})


METRICS = ("psnr", "ssim", "mae", "lesion_psnr", "dice_wt", "ratio_edema", "ratio_enhancing", "ratio_necrosis",
           "ratio_wm", "ratio_gm", "ratio_csf", "ratio_healthy")
COMPARED = ("psnr", "lesion_psnr", "ratio_edema", "dice_wt")


def summarise(rows: list[dict], realism: list[dict], ours: str, budget: float, ddpm_gate: dict | None) -> dict:
    """Per filter: each method's means (and seeds' spread of PSNR), and the paired comparisons with targets."""
    out = {}
    for f in FILTERS:
        fr = [r for r in rows if r["filter"] == f]
        methods = {}
        for m in dict.fromkeys(r["method"] for r in fr):
            mr = [r for r in fr if r["method"] == m]
            means = {k: float(np.mean([r[k] for r in mr if k in r and np.isfinite(r[k])]))
                     for k in METRICS if any(k in r and np.isfinite(r[k]) for r in mr)}
            per_seed = [float(np.mean([r["psnr"] for r in mr if r["seed"] == s])) for s in
                        sorted({r["seed"] for r in mr})]
            swd = [x["ms_swd_single"] for x in realism if x["method"] == m and x["filter"] == f]
            methods[m] = {**means, "psnr_per_seed": per_seed, "ms_swd_single": float(np.mean(swd)),
                          "n_seeds": len(per_seed), "n_subjects": len({r["subject"] for r in mr})}
        comparisons = {}
        if ours in methods:
            for other in [m for m in methods if m not in (ours, "phmdiff_single")]:
                comp = {}
                for k in COMPARED:
                    a, b = _keyed(fr, ours, k), _keyed(fr, other, k)
                    shared = set(a) & set(b)
                    if shared:
                        comp[k] = stats.compare({x: a[x] for x in shared}, {x: b[x] for x in shared},
                                                target=_target(k, other, budget, ddpm_gate))
                sa = {(f"seed{x['seed']}",): x["ms_swd_single"] for x in realism if x["method"] == ours
                      and x["filter"] == f}
                sb = {(f"seed{x['seed']}",): x["ms_swd_single"] for x in realism if x["method"] == other
                      and x["filter"] == f}
                if set(sa) == set(sb):  # realism is per seed (pooled over subjects): seeds are the units
                    comp["ms_swd_single"] = stats.compare(sa, sb)
                comparisons[other] = comp
        out[f] = {"methods": methods, "comparisons": comparisons}
    return out


def _keyed(rows, method: str, key: str) -> dict:
    return {(r["subject"], r["seed"]): r[key] for r in rows if r["method"] == method and key in r}


def _target(metric: str, other: str, budget: float, ddpm_gate: dict | None) -> float | None:
    """issue 26's targets on the PHMDiff - baseline difference (None: no target for this pair)."""
    if other == "unet" and metric == "psnr":
        return PSNR_TARGETS.get(budget)
    if other == "unet" and metric == "lesion_psnr" and budget >= 600:
        return 0.0
    if other == "monai_ddpm" and metric == "psnr" and ddpm_gate and not ddpm_gate.get("forced"):
        return 0.0
    return None


def expected_seconds(args, n_tasks: int) -> float:
    """A rough wall-time estimate on a quiet machine: CPU budgets over the threads used, plus sampling."""
    per_seed = len(args.seeds) * (("phmdiff" in args.methods) + 2 * ("unet" in args.methods))
    sweep = len(args.unet_lrs) - 1 if "unet" in args.methods else 0
    train = sum(args.budgets) * (per_seed + sweep) / max(args.threads, 1) * 1.15
    sample = (("phmdiff" in args.methods) * len(args.seeds) * len(args.budgets) * args.split["test"]
              * args.n_samples * 3.0)  # about 3 s per sample and volume of 40 slices
    return n_tasks * (train + sample + 60.0 + args.seg_steps * 0.1)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one tiny task, seconds of training (smoke test)")
    p.add_argument("--budgets", type=float, nargs="+", default=None,
                   help="CPU seconds per method per task and seed (default 120; --quick: 2)")
    p.add_argument("--tasks", nargs="+", default=None, choices=[t.name for t in TASKS])
    p.add_argument("--methods", nargs="+", default=["phmdiff", "unet", "monai_ddpm"],
                   choices=["phmdiff", "unet", "monai_ddpm"])
    p.add_argument("--seeds", type=int, default=None, help="training seeds per method (default 3; --quick: 2)")
    p.add_argument("--train-subjects", type=int, default=SPLIT["train"])
    p.add_argument("--val-subjects", type=int, default=SPLIT["val"])
    p.add_argument("--test-subjects", type=int, default=SPLIT["test"])
    p.add_argument("--physics", choices=["default", "literature"], default="default",
                   help="brain phantom physics (the brain tasks; see phmdiff phantom --physics)")
    p.add_argument("--n4", action="store_true", help="brain phantom N4 bias-corrected (see phmdiff phantom --n4)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps, once per anatomy, outside the "
                                                               "budget (default 2000; --quick: 5)")
    p.add_argument("--n-samples", type=int, default=None, help="PHMDiff samples averaged (default 8; --quick: 2)")
    p.add_argument("--ddim-steps", type=int, default=None, help="MONAI DDIM steps (default 50; --quick: 3)")
    p.add_argument("--force-ddpm", action="store_true", help="train the DDPM even where the budget is too short "
                                                             "for its tutorial's training (no target then)")
    p.add_argument("--flips", action="store_true", help="random left-right flips for every method (PHMDiff's "
                                                        "train.flip, the baselines' pairs); default none for all")
    p.add_argument("--unet-lrs", type=float, nargs="+", default=list(UNET_LRS))
    p.add_argument("--z-sigma", type=float, default=None, help="through-plane filter sigma for every method's "
                                                               "'z_on' score (default translate's)")
    p.add_argument("--z-h", type=float, default=None)
    p.add_argument("--seg-steps", type=int, default=None, help="segcheck network steps per brain task (default "
                                                                "300; --quick: 3; 0: no Dice)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default all cores; --quick: 1)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder (phantoms, runs, predictions)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="PHMDiff config overrides, e.g. train.lr=1e-3")
    p.add_argument("--out-dir", default=None, help=f"results folder (default {RESULTS})")
    p.add_argument("--name", default=None, help="result file name (default quality, or quality_<budgets>)")
    args = p.parse_args(argv)
    from phmdiff.pipeline import Z_H, Z_SIGMA

    args.threads = set_threads(args.threads or (1 if args.quick else None))
    args.budgets = args.budgets or ([2.0] if args.quick else DEFAULT_BUDGETS)
    args.ae_steps = args.ae_steps or (5 if args.quick else 2000)
    args.n_samples = args.n_samples or (2 if args.quick else 8)
    args.ddim_steps = args.ddim_steps or (3 if args.quick else 50)
    args.seg_steps = (3 if args.quick else 300) if args.seg_steps is None else args.seg_steps
    args.z_sigma = Z_SIGMA if args.z_sigma is None else args.z_sigma
    args.z_h = Z_H if args.z_h is None else args.z_h
    args.seeds = list(range(args.seeds or (2 if args.quick else 3)))
    args.split = {"train": args.train_subjects, "val": args.val_subjects, "test": args.test_subjects}
    if args.quick:
        args.split = {"train": 2, "val": 1, "test": 2}
        args.unet_lrs = args.unet_lrs[1:2]
    if min(args.budgets) <= 0 or args.n_samples < 1 or args.ddim_steps < 1 or not args.seeds:
        raise ValueError("--budgets, --n-samples, --ddim-steps and --seeds must be positive.")
    if min(args.split.values()) < 1:
        raise ValueError(f"subject counts {args.split} are not valid; expected at least 1 per split.")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    names = args.tasks or ([TASKS[0].name] if args.quick else [t.name for t in TASKS])
    tasks_todo = [t for t in TASKS if t.name in names]
    name = args.name or ("quality" if args.budgets == DEFAULT_BUDGETS or args.quick else
                         "quality_" + "_".join(f"{b:g}" for b in args.budgets))
    say = Progress(expected_seconds(args, len(tasks_todo)))
    load_before = list(os.getloadavg())
    say(f"quality: {len(tasks_todo)} task(s), budgets {args.budgets} CPU-s, seeds {args.seeds}, "
        f"{args.split['test']} test subjects, threads {args.threads}; load average {load_before[0]:.2f}; "
        f"expected about {say.expected_s / 60:.0f} min")
    autoencoders: dict = {}
    tasks = []
    for task in tasks_todo:
        td = setup_task(task, args, autoencoders, say)
        entry = {"task": task.name, "sources": task.sources, "target": task.target,
                 "physics": args.physics if task.kind == "brain" else None,
                 "n4": args.n4 if task.kind == "brain" else None,
                 "subjects": {k: [s.id for s in v] for k, v in td.subjects.items()}, "budgets": {}}
        tasks.append(entry)
        for budget in args.budgets:
            entry["budgets"][f"{budget:g}"] = run_budget(td, budget, args, say)
            write_result(name, results(args, tasks, autoencoders, load_before, say), "cpu", args.out_dir)
            print_summary(entry, f"{budget:g}", args.n_samples)
    path = write_result(name, results(args, tasks, autoencoders, load_before, say), "cpu", args.out_dir)
    say(f"wrote {path}")
    return 0


def results(args, tasks, autoencoders, load_before, say) -> dict:
    return {"protocol": "volume", "budget_clock": "process_time (CPU seconds of this process, all threads)",
            "budgets_cpu_s": args.budgets, "seeds": args.seeds, "split": args.split, "threads": args.threads,
            "n_samples": args.n_samples, "ddim_steps": args.ddim_steps, "flips": args.flips,
            "z_filter": {"sigma": args.z_sigma, "h": args.z_h}, "unet_lrs": args.unet_lrs,
            "unet_ema_decay": UNET_EMA_DECAY, "quick": args.quick, "autoencoder_steps": args.ae_steps,
            "autoencoders": autoencoders, "load_average_before": load_before,
            "load_average_after": list(os.getloadavg()), "tasks": tasks,
            "wall_s": time.perf_counter() - say.tic}


def print_summary(entry: dict, budget: str, n_samples: int) -> None:
    b = entry["budgets"][budget]
    for f in FILTERS:
        s = b["summary"][f]
        print(f"\n{entry['task']} at {budget} CPU-s, through-plane filter {'on' if f == 'z_on' else 'off'}")
        for m, v in s["methods"].items():
            lesion = f"  lesion {v['lesion_psnr']:6.2f}" if "lesion_psnr" in v else ""
            edema = f"  edema x{v['ratio_edema']:.2f}" if "ratio_edema" in v else ""
            print(f"  {m:<20} PSNR {v['psnr']:6.2f}{lesion}{edema}  MS-SWD {v['ms_swd_single']:7.2f}")
        for other, comp in s["comparisons"].items():
            for k, c in comp.items():
                print(f"  phmdiff_mean{n_samples} - {other} {k}: {stats.describe(c, 'dB' if 'psnr' in k else '')}")


if __name__ == "__main__":
    sys.exit(main())
