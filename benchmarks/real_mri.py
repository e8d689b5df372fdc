"""Real brain MRI, leave one subject out (issue 35, item 5): PHMDiff against the U-Net and the copies on real,
co-registered scans from different scanners, every method in the same CPU budget, scored with the intensity scale
and without it.

Folds. Any BraTS-layout folder (`--data`, default ../shared/data/real): one fold per subject held out; the other
subjects train every method. Each fold works on a folder of symbolic links to its subjects, prepared with a fixed
split (`--fit resize` to `--size`): the others in train, the held-out one in test (never in a training split).
The U-Net's learning rate and weights (raw or EMA) are chosen on an inner split of the training subjects, prepared
apart without the held-out subject: trained on all but one of them, scored (scale-free PSNR) on that one (the next
after the held-out subject in sorted order, cyclically); the chosen setting is then trained on all the training
subjects. A folder of two subjects has no inner split: one --unet-lrs value and the raw weights. PHMDiff runs
with no validation split (nothing of it is tuned here), so its std volume is the samples' uncalibrated spread.

Methods, per fold and training seed, each trained inside the same `--budget` of CPU seconds of this process
(`time.process_time`, `common.budget_pacer` for PHMDiff, as quality.py does):
- PHMDiff from `--config` (configs/brats_cpu.yaml, or configs/demo.yaml set to BraTS data at 64 px without it):
  the mean of `--n-samples` samples through translate's per-volume translator (`pipeline.VolumeTranslator`, what
  `phmdiff translate` runs, in memory; its through-plane filter off, for every method alike), and its first
  sample alone;
- its mean network alone (`baselines/mean_alone.py`: the same trained run's `model.mean_net`, no diffusion);
- the U-Net regression (MONAI BasicUNet) with L1 and with L2 at the chosen learning rate;
- the copies of each source (T2, T1), intensity-matched to the reference's foreground percentiles, and the
  real-data ceiling: the true FLAIR through the same prepare -> resize -> invert pipeline (`translate --ceiling`),
  what a perfect model scores at this plane size. These three need no training (one score, repeated per seed).

Scores (`real_scoring.py`): PSNR, SSIM, MAE under the `volume` protocol (the reference's intensity scale) and the
`scalefree` one (each image by its own percentiles); lesion PSNR and the edema ratio over the segmentation where
one exists, else over the documented FLAIR-hyperintensity region. Paired differences PHMDiff - each method per
(fold, seed) with 95 % bootstrap intervals resampling folds (`stats.py`), "best U-Net" being the U-Net loss with
the higher mean PSNR under that protocol; issue 35's targets are checked per fold and on the intervals. A panel per
fold (T1 | T2 | real FLAIR | synthesized | error | std) goes to docs/images/real_mri_<subject>.png.

    python benchmarks/real_mri.py --quick                  # one fold, one seed, 32 px, seconds of training
    python benchmarks/real_mri.py --dry-run                # the folds, settings and expected time, nothing run
    python benchmarks/real_mri.py                          # 3 folds x 3 seeds at --budget CPU-s (it prints its time)
    python benchmarks/real_mri.py --exclude TCGA_DU_7294 --unet-lrs 1e-3 --budget 300   # two subjects: no inner split
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import common  # noqa: F401  (puts src/ and benchmarks/ on the path)
import numpy as np
import real_scoring
import scoring
from baselines.unet_regression import predict_unet, train_unet
from common import ROOT, budget_pacer, set_threads, slicewise_inputs, slicewise_volume, test_subjects, write_result
from quality import UNET_EMA_DECAY, UNET_LRS, Progress
from real_summary import UNETS, summarise

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "real"
# the default folder's sources, as its README.md asks every published figure to cite them
DEFAULT_DATA_CREDIT = ("TCGA_DU_7294: TCGA-LGG, The Cancer Imaging Archive (CC BY 3.0), registered by BraTS-Toolkit; "
                       "BraTS_GLI_00001: BraTS 2023 BraTS-GLI-00001-000 (BraTS challenge terms); AURORA_MET: AURORA "
                       "tutorial example (BrainLesion tutorials)")
RECIPE = ROOT / "configs" / "brats_cpu.yaml"
FALLBACK = ROOT / "configs" / "demo.yaml"  # until the recipe exists: the demo model on BraTS data at 64 px
FALLBACK_SIZE = 64
DEFAULT_BUDGET = 600.0
DEFAULT_WORK = Path("bench_out") / "real_mri"
FIGURES = ROOT / "docs" / "images"
# rough wall seconds on a quiet machine, for the time printed up front: sampling one sample of one volume at a
# 64-pixel plane, scoring one prediction under both protocols, preparing one fold
SAMPLE_S, SCORE_S, PREPARE_S = 12.0, 8.0, 25.0


def link_root(folder: Path, subjects) -> Path:
    """A folder of symbolic links to the given subjects' folders: what a fold may see of the data."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for s in subjects:
        (folder / s.id).symlink_to(Path(next(iter(s.paths.values()))).resolve().parent, target_is_directory=True)
    return folder


def run_config(args, work: Path, root: Path, prepared: Path, run_dir: Path, extra: list[str] = ()):
    """The PHMDiff config of one fold: `--config` with the fold's folders, task, plane size and flips."""
    from phmdiff.config import AE_FACTORS, load_config

    base = load_config(args.config, list(args.set or []))
    factor = AE_FACTORS[base.model.autoencoder.preset]
    size = args.size
    over = [*(["data.dataset=brats"] if Path(args.config).resolve() == FALLBACK.resolve() else []),
            f"data.root={root}", f"data.prepared={prepared}", f"data.cache={work / 'latents'}",
            f"log.run_dir={run_dir}", f"data.sources=[{','.join(args.sources)}]", f"data.target={args.target}",
            f"data.resolution={size}", f"model.in_size={size // factor}", "log.tensorboard=false",
            f"train.flip={'true' if args.flips else 'false'}"]
    if args.quick:  # as quality.py's quick task: a 2x2-token coarse grid leaves the MMD nothing to compare
        over += ["train.batchsize=8", "model.autoencoder.batchsize=8", "eval.num_steps=2", "eval.fine_num_steps=2",
                 "model.cross_granularity_weight=0"]
    if args.ae_steps is not None:
        over.append(f"model.autoencoder.steps={args.ae_steps}")
    return load_config(args.config, [*over, *(args.set or []), *extra])


def prepare_fold(cfg, out: Path, split: dict, fit: str, say) -> str:
    """`phmdiff prepare` of the config's data root with a fixed split and `fit` (resize: the whole plane scaled)."""
    from phmdiff.data.prepare import prepare
    from phmdiff.training import prepare_settings

    split_file = out.parent / f"{out.name}_split.json"
    split_file.write_text(json.dumps(split))
    settings = prepare_settings(cfg)
    settings = replace(settings, split_file=str(split_file), volume=replace(settings.volume, fit=fit))
    return prepare(cfg.data.root, out, settings, settings.volume.modalities, progress=False, log=say)


class CpuProgress(Progress):
    """quality.py's progress lines with this process's CPU seconds beside the wall time (the budgets' clock)."""

    def __init__(self, expected_s: float):
        super().__init__(expected_s)
        self.cpu0 = time.process_time()

    def __call__(self, text: str) -> None:
        super().__call__(f"(CPU {time.process_time() - self.cpu0:5.0f} s) {text}")


def inner_split(ids: list[str], held_out: str) -> tuple[list[str], str | None]:
    """A fold's training subjects (every one but the held-out) and, among them, the inner validation subject of the
    U-Net's learning-rate choice: the next one after the held-out in sorted order, cyclically (None with two
    subjects: one trains, none is left to validate on)."""
    ids = sorted(ids)
    if held_out not in ids or len(ids) < 2:
        raise ValueError(f"cannot hold out {held_out!r} from {ids}; expected one of at least 2 subjects.")
    k = ids.index(held_out)
    train = [i for i in ids if i != held_out]
    return train, (ids[k + 1 :] + ids[:k])[0] if len(train) > 1 else None


class Fold:
    """One held-out subject: its folders, configs, prepared data, volumes (read once), reference and slices."""

    def __init__(self, held_out, subjects: list, args, say):
        from phmdiff.data.volume import load_subject_volumes
        from phmdiff.inference import autoencoder_path
        from phmdiff.training import run_pipeline

        self.id, self.args, self.say = held_out.id, args, say
        self.train, self.val = inner_split([s.id for s in subjects], self.id)
        self.work = Path(args.work) / self.id
        if self.work.exists():
            shutil.rmtree(self.work)  # every fold starts from nothing
        by_id = {s.id: s for s in subjects}
        self.root = link_root(self.work / "data", subjects)
        self.cfg = run_config(args, self.work, self.root, self.work / "prepared", self.work / "run")
        tic = time.perf_counter()
        prepare_fold(self.cfg, self.work / "prepared", {"train": self.train, "val": [], "test": [self.id]},
                     args.fit, say)
        if self.val is not None:  # the inner split's own prepared data: the held-out subject is not in it
            self.inner_root = link_root(self.work / "inner_data", [by_id[i] for i in self.train])
            inner_cfg = run_config(args, self.work / "inner", self.inner_root, self.work / "inner_prepared",
                                   self.work / "inner_run")
            prepare_fold(inner_cfg, self.work / "inner_prepared",
                         {"train": [i for i in self.train if i != self.val], "val": [self.val], "test": []},
                         args.fit, say)
        self.prepare_s = time.perf_counter() - tic
        # the autoencoder (none to train for the identity one), once per fold on its training subjects, outside
        # every budget; the latent cache too
        tic = time.perf_counter()
        report = run_pipeline(self.cfg, stages=("train-ae", "encode"), progress=False, log=lambda *_: None)
        ae = report.get("train-ae")
        self.autoencoder = {"path": str(autoencoder_path(self.cfg)), "seconds": time.perf_counter() - tic,
                            "preset": self.cfg.model.autoencoder.preset,
                            "val_psnr": ae.get("psnr") if isinstance(ae, dict) else None}
        modalities = [*args.sources, args.target]
        self.subject = test_subjects(self.root, self.work / "prepared", modalities, "test")[0]
        self.volumes, self.affine, _ = load_subject_volumes(self.subject, modalities)
        seg = np.rint(scoring.load(self.subject.mask)) if self.subject.mask else None
        self.reference = real_scoring.RealReference.build(self.volumes[args.target], seg)
        # the held-out subject's slices as the baselines see them (the fold's prepared settings), made once
        self.inputs = slicewise_inputs(self.work / "prepared", self.subject, args.sources, args.target, self.volumes,
                                       self.affine)

    def seed_config(self, seed: int):
        cfg = run_config(self.args, self.work, self.root, self.work / "prepared", self.work / f"run_s{seed}")
        cfg.model.autoencoder.path = self.autoencoder["path"]
        cfg.train.seed = seed
        return cfg

    def foreground(self) -> np.ndarray:
        """The reference's foreground mask on the whole grid."""
        mask = np.zeros(self.volumes[self.args.target].shape, dtype=bool)
        mask[self.reference.box] = self.reference.mask
        return mask

    def entry(self) -> dict:
        return {"held_out": self.id, "train": self.train, "inner": {"train": [i for i in self.train if i != self.val],
                                                                    "val": self.val},
                "reference": self.reference.facts(), "prepare_seconds": self.prepare_s,
                "autoencoder": self.autoencoder}


def train_phmdiff(fold: Fold, seed: int) -> tuple[object, dict]:
    """PHMDiff trained inside the budget (CPU seconds from the call, the last tenth unmasked as MaskDiT does)."""
    from phmdiff.training.loop import train

    cfg = fold.seed_config(seed)
    tic, start = time.perf_counter(), time.process_time()
    after_step, _ = budget_pacer(cfg.train, fold.args.budget, clock=time.process_time, origin=start)
    result = train(cfg, resume="auto", progress=False, after_step=after_step, log=lambda *_: None)
    return cfg, {"train_seconds": time.perf_counter() - tic, "train_cpu_seconds": time.process_time() - start,
                 "steps": result["step"], "unmasked_finetune_steps": cfg.train.unmasked_finetune_steps}


def translate_phmdiff(fold: Fold, trained, seed: int, ceiling: bool) -> tuple[dict, dict]:
    """The held-out subject through translate's per-volume translator (`pipeline.VolumeTranslator`, what
    `phmdiff translate` runs, in memory: no file written), its through-plane filter off; {"mean", "single", "std"
    and with `ceiling` "ceiling" (`ceiling.oracle_volume`, as `translate --ceiling`)} and timings."""
    from phmdiff.ceiling import oracle_volume
    from phmdiff.pipeline import VolumeOptions, VolumeTranslator
    from phmdiff.sampling_args import SamplingChoices

    args, n = fold.args, fold.args.n_samples
    tic, cpu = time.perf_counter(), time.process_time()
    translator = VolumeTranslator(trained, SamplingChoices().settings(trained),
                                  VolumeOptions(n_samples=n, seed=seed, z_sigma=0.0), fold.say)
    pred = translator.predict({m: fold.volumes[m] for m in args.sources}, fold.affine, args.target, args.sources,
                              fold.id)
    info = {"seconds_per_volume": time.perf_counter() - tic, "cpu_seconds_per_volume": time.process_time() - cpu,
            "n_samples": n, "std_calibrated": trained.std_scale is not None}
    vols = {"mean": pred.mean, "single": pred.samples[0], "std": pred.std if n > 1 else None}
    if ceiling:
        vols["ceiling"] = oracle_volume(trained, fold.subject, pred.grid.settings, args.sources, args.target,
                                        pred.norm, pred.grid.resampling)
    return vols, info


def predict_slicewise(predict, inputs: tuple, subject_id: str, target: str, seed: int) -> tuple[np.ndarray, dict]:
    """A slice predictor on one whole volume (`common.slicewise_volume`: translate's per-volume functions)."""
    tic, cpu = time.perf_counter(), time.process_time()
    vol = slicewise_volume(predict, *inputs, subject_id, target, seed)
    return vol, {"seconds_per_volume": time.perf_counter() - tic, "cpu_seconds_per_volume": time.process_time() - cpu}


def unet_batch(fold: Fold) -> int:
    return fold.cfg.train.batchsize if fold.args.quick else 16


def select_unet(fold: Fold, say) -> dict:
    """The U-Net learning rate and weights (raw or EMA) with the best scale-free PSNR on the inner validation
    subject, trained on the other training subjects (seed 0)."""
    from phmdiff.data.volume import load_subject_volumes

    args, trials = fold.args, []
    if fold.val is None:  # two subjects: nothing left to validate on; parse() allows one lr only here
        return {"lr": args.unet_lrs[0], "weights": "raw", "validation_subject": None, "trials": [],
                "why": "two subjects: no inner split, the one lr given and the raw weights"}
    sub = test_subjects(fold.inner_root, fold.work / "inner_prepared", [*args.sources, args.target], "val")[0]
    volumes, affine, _ = load_subject_volumes(sub, [*args.sources, args.target])
    ref = real_scoring.RealReference.build(volumes[args.target], regions=False)
    inputs = slicewise_inputs(fold.work / "inner_prepared", sub, args.sources, args.target, volumes, affine)
    del volumes
    for lr in args.unet_lrs:
        say(f"{fold.id}: U-Net lr {lr:g} on {', '.join(i for i in fold.train if i != fold.val)}, "
            f"validated on {fold.val}")
        models, _ = train_unet(fold.work / "inner_prepared", args.sources, args.target, args.budget,
                               batch=unet_batch(fold), lr=lr, seed=0, clock=time.process_time, flip=args.flips,
                               ema_decay=UNET_EMA_DECAY)
        for weights, model in models.items():
            pred, _ = predict_slicewise(lambda s, seeds, m=model: predict_unet(m, s, seeds), inputs, sub.id,
                                        args.target, 0)
            scores = {r["protocol"]: r["psnr"] for r in real_scoring.score(pred, ref, ssim=False)}
            trials.append({"lr": lr, "weights": weights, "val_psnr_scalefree": scores["scalefree"],
                           "val_psnr_volume": scores["volume"]})
    best = max(trials, key=lambda t: t["val_psnr_scalefree"])
    return {"lr": best["lr"], "weights": best["weights"], "validation_subject": fold.val, "trials": trials}


def run_fold(fold: Fold, say) -> tuple[dict, list[dict]]:
    """Every method, every seed, on one held-out subject; the fold's entry and its score rows."""
    from baselines.mean_alone import has_mean_net, predict_mean_alone

    from phmdiff.eval.protocols import matched_copy
    from phmdiff.inference import load_trained

    args, rows, runs = fold.args, [], {}
    ours = f"phmdiff_mean{args.n_samples}"

    def add(method: str, seeds: list[int], volume: np.ndarray, info: dict) -> None:
        scored = real_scoring.score(volume, fold.reference, ssim=not args.no_ssim)
        rows.extend({"fold": fold.id, "subject": fold.id, "seed": s, "method": method, **r}
                    for s in seeds for r in scored)
        runs.setdefault(method, []).append({"seeds": seeds, **info})

    entry = fold.entry()
    entry["unet_selection"] = sel = select_unet(fold, say)
    panel = None
    for seed in args.seeds:
        say(f"{fold.id} seed {seed}: PHMDiff training ({args.budget:g} CPU-s)")
        cfg, fit = train_phmdiff(fold, seed)
        say(f"{fold.id} seed {seed}: PHMDiff {fit['steps']} steps; translating with {args.n_samples} samples")
        trained = load_trained(cfg.run_dir, "cpu")  # the EMA weights of the best checkpoint, as translate loads
        vols, info = translate_phmdiff(fold, trained, seed, ceiling=seed == args.seeds[0])
        add(ours, [seed], vols["mean"], {**fit, **info})
        add("phmdiff_single", [seed], vols["single"], {**fit, **info, "n_samples": 1})
        if "ceiling" in vols:  # needs no training: one score for every seed
            add("ceiling", list(args.seeds), vols.pop("ceiling"),
                {"what": "the true target through prepare -> resize -> invert (translate --ceiling)"})
        if panel is None:
            panel = {"synthesized": vols["mean"], "std": vols["std"]}
        if has_mean_net(trained):
            pred, info = predict_slicewise(lambda s, seeds, t=trained: predict_mean_alone(t, s, seeds), fold.inputs,
                                           fold.id, args.target, seed)
            add("mean_alone", [seed], pred, {**fit, **info, "what": "the run's mean network, no diffusion"})
        del vols, trained
        for name, loss in zip(UNETS, ("l1", "l2")):
            say(f"{fold.id} seed {seed}: U-Net {loss.upper()} training (lr {sel['lr']:g}, {sel['weights']} weights)")
            models, fit_u = train_unet(fold.work / "prepared", args.sources, args.target, args.budget,
                                       batch=unet_batch(fold), lr=sel["lr"], seed=seed, clock=time.process_time,
                                       flip=args.flips, loss=loss, ema_decay=UNET_EMA_DECAY)
            pred, info = predict_slicewise(lambda s, seeds, m=models[sel["weights"]]: predict_unet(m, s, seeds),
                                           fold.inputs, fold.id, args.target, seed)
            add(name, [seed], pred, {**fit_u, **info, "weights": sel["weights"]})
    mask = fold.foreground()
    ref = fold.volumes[args.target]
    for m in reversed(args.sources):  # the last source first: T2 is FLAIR's nearest contrast
        add(f"copy_{m}", list(args.seeds), matched_copy(fold.volumes[m], ref, mask),
            {"what": f"{m} mapped onto the reference's foreground 0.5/99.5 percentiles"})
    entry["runs"] = runs
    entry["panel"] = write_panel(fold, panel, mask)
    return entry, rows


def write_panel(fold: Fold, panel: dict, mask: np.ndarray) -> str:
    from real_panels import draw_panel

    r, args = fold.reference, fold.args
    region = np.zeros(mask.shape, dtype=bool)
    region[r.box] = r.lesion
    images = {"T1": fold.volumes.get("t1"), "T2": fold.volumes.get("t2"), "real FLAIR": fold.volumes[args.target],
              **panel}
    images = {k: v for k, v in images.items() if v is not None}  # no std from a single sample
    name = ("whole tumour (segmentation)" if r.region == "segmentation"
            else "FLAIR-hyperintensity region (no segmentation)")
    path = draw_panel(Path(args.figures) / f"real_mri_{fold.id}.png", images, fold.affine, mask, region,
                      f"{fold.id} held out; PHMDiff mean of {args.n_samples}, seed {args.seeds[0]}", name)
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def expected_seconds(args, n_folds: int) -> float:
    """A rough wall-time estimate on a quiet machine: CPU budgets over the threads used, sampling, scoring and
    preparing; printed up front."""
    trainings = n_folds * (len(args.unet_lrs) + 3 * len(args.seeds))
    train = trainings * args.budget / max(args.threads, 1) * 1.15
    sample = n_folds * len(args.seeds) * (args.n_samples + 1) * SAMPLE_S * (args.size / 64) ** 2
    score = n_folds * (5 * len(args.seeds) + 3 + 2 * len(args.unet_lrs)) * SCORE_S * (0.5 if args.no_ssim else 1.0)
    return train + sample + score + n_folds * PREPARE_S * 2


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a BraTS-layout folder (default ../shared/data/real)")
    p.add_argument("--quick", action="store_true", help="smoke test: one fold, one seed, 32 px, 2 CPU-s per method")
    p.add_argument("--config", default=None, help="PHMDiff config (default configs/brats_cpu.yaml, else "
                                                  "configs/demo.yaml with data.dataset=brats at 64 px)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="PHMDiff config overrides, e.g. train.lr=1e-3")
    p.add_argument("--budget", type=float, default=None,
                   help=f"CPU seconds per method, fold and seed (default {DEFAULT_BUDGET:g}; --quick: 2)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds per method (default 3; --quick: 1)")
    p.add_argument("--folds", nargs="+", default=None, help="subjects to hold out (default every one; --quick: "
                                                            "the first with a segmentation)")
    p.add_argument("--exclude", nargs="+", default=[], help="subjects left out of every fold and every training")
    p.add_argument("--size", type=int, default=None, help="plane size (default the config's data.resolution; the demo "
                                                          "fallback 64; --quick: 32)")
    p.add_argument("--fit", choices=("resize", "pad"), default="resize", help="how a plane reaches --size")
    p.add_argument("--n-samples", type=int, default=None, help="PHMDiff samples averaged (default 8; --quick: 2)")
    p.add_argument("--unet-lrs", type=float, nargs="+", default=None,
                   help=f"U-Net learning rates tried on the inner split (default {list(UNET_LRS)}; --quick: 1e-3)")
    p.add_argument("--sources", nargs="+", default=["t1", "t2"])
    p.add_argument("--target", default="flair")
    p.add_argument("--no-flips", dest="flips", action="store_false",
                   help="no random left-right flips (default: flips for every method, PHMDiff's train.flip too)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps per fold, outside the budget "
                                                              "(default the config's; none for the identity one)")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (a 240x240x155 SSIM costs seconds; --quick)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default all cores; --quick: 1)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder (links, prepared data, runs)")
    p.add_argument("--figures", default=None, help="panel folder (default docs/images; --quick: WORK/images)")
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results; --quick: WORK)")
    p.add_argument("--name", default=None, help="result file name (default real_mri; --quick: real_mri_quick)")
    p.add_argument("--dry-run", action="store_true", help="print the folds, settings and expected time, and stop")
    args = p.parse_args(argv)
    args.config = args.config or str(RECIPE if RECIPE.exists() else FALLBACK)
    if not Path(args.config).is_file():
        raise ValueError(f"{args.config}: config not found; pass --config PATH.")
    if args.size is None:
        from phmdiff.config import load_config

        fallback = Path(args.config).resolve() == FALLBACK.resolve()
        args.size = FALLBACK_SIZE if fallback else load_config(args.config, list(args.set or [])).data.resolution
    args.threads = set_threads(args.threads or (1 if args.quick else None))
    args.budget = args.budget or (2.0 if args.quick else DEFAULT_BUDGET)
    args.seeds = list(range(args.seeds or (1 if args.quick else 3)))
    args.n_samples = args.n_samples or (2 if args.quick else 8)
    args.unet_lrs = args.unet_lrs or ([1e-3] if args.quick else list(UNET_LRS))
    if args.quick:
        args.size, args.no_ssim = 32, True
    args.name = args.name or ("real_mri_quick" if args.quick else "real_mri")
    if args.quick:  # a smoke test writes nothing into the repository unless told to
        args.out_dir = args.out_dir or args.work
    args.figures = args.figures or (str(Path(args.work) / "images") if args.quick else str(FIGURES))
    if args.budget <= 0 or args.n_samples < 1 or not args.seeds:
        raise ValueError("--budget, --n-samples and --seeds must be positive.")
    return args


def find_real_subjects(args) -> tuple[list, dict]:
    """The subjects of --data with every source and the target (sorted), and those left out with the reason."""
    from phmdiff.data.readers import find_subjects

    data = Path(args.data)
    if not data.is_dir():
        raise ValueError(f"{data}: no such folder; pass --data DIR, a folder of BraTS-layout subjects.")
    need, usable, left_out = [*args.sources, args.target], [], {}
    for s in find_subjects(data):
        if s.id in args.exclude:
            left_out[s.id] = "--exclude"
        elif missing := [m for m in need if m not in s.paths]:
            left_out[s.id] = f"no {', '.join(missing)}"
        else:
            usable.append(s)
    unknown = sorted(set(args.exclude) - {s.id for s in usable} - set(left_out))
    if unknown:
        raise ValueError(f"--exclude {' '.join(unknown)}: no such subject under {data}.")
    if len(usable) < 2 or (len(usable) == 2 and len(args.unet_lrs) > 1):
        raise ValueError(f"{data}: {len(usable)} usable subject(s) ({', '.join(s.id for s in usable) or 'none'}); "
                         "leave-one-out with an inner validation split needs at least 3 (with 2, pass a single "
                         "--unet-lrs: no split is left to choose it on).")
    return usable, left_out


def main(argv=None) -> int:
    args = parse(argv)
    subjects, left_out = find_real_subjects(args)
    ids = [s.id for s in subjects]
    if args.folds:
        bad = sorted(set(args.folds) - set(ids))
        if bad:
            raise ValueError(f"--folds {' '.join(bad)}: not among the usable subjects {', '.join(ids)}.")
        held = [s for s in subjects if s.id in args.folds]
    elif args.quick:
        held = [next((s for s in subjects if s.mask), subjects[0])]
    else:
        held = subjects
    say = CpuProgress(expected_seconds(args, len(held)))
    load_before = list(os.getloadavg())
    say(f"real_mri: {len(held)} fold(s) ({', '.join(s.id for s in held)}) of {len(ids)} subjects, budget "
        f"{args.budget:g} CPU-s per method, seeds {args.seeds}, {args.n_samples} samples, plane {args.size}"
        f" ({args.fit}), config {Path(args.config).name}, threads {args.threads}; load average "
        f"{load_before[0]:.2f}; expected about {say.expected_s / 60:.0f} min on a quiet machine")
    if left_out:
        say("left out: " + "; ".join(f"{k} ({v})" for k, v in left_out.items()))
    if args.dry_run:
        return 0
    folds, rows = [], []
    ours = f"phmdiff_mean{args.n_samples}"

    def save():
        return write_result(args.name, results(args, folds, rows, left_out, load_before, say, ours), "cpu",
                            args.out_dir)

    for h in held:
        say(f"{h.id}: preparing the fold (train {', '.join(i for i in ids if i != h.id)})")
        fold = Fold(h, subjects, args, say)
        entry, fold_rows = run_fold(fold, say)
        folds.append(entry)
        rows.extend(fold_rows)
        save()
        print_fold(entry, fold_rows, ours)
    path = save()
    say(f"wrote {path}")
    return 0


def results(args, folds, rows, left_out, load_before, say, ours) -> dict:
    return {"protocols": {"volume": "prediction and reference by the reference's foreground 0.5/99.5 percentiles",
                          "scalefree": "each image by its own 0.5/99.5 percentiles over the reference's foreground, "
                                       "clipped to [0, 1]; PSNR over that foreground, data range 1"},
            "data": str(args.data),
            "data_credit": DEFAULT_DATA_CREDIT if Path(args.data).resolve() == DEFAULT_DATA.resolve() else None,
            "budget_cpu_s": args.budget, "budget_clock": "process_time (CPU seconds of this process, all threads)",
            "seeds": args.seeds, "n_samples": args.n_samples, "ours": ours, "config": str(Path(args.config).name),
            "config_sha256": hashlib.sha256(Path(args.config).read_bytes()).hexdigest(),
            "overrides": args.set or [], "size": args.size,
            "fit": args.fit, "sources": args.sources, "target": args.target, "flips": args.flips,
            "unet_lrs": args.unet_lrs, "unet_ema_decay": UNET_EMA_DECAY, "ssim": not args.no_ssim,
            "quick": args.quick, "threads": args.threads, "left_out": left_out,
            "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
            "expected_s": say.expected_s, "wall_s": time.perf_counter() - say.tic, "folds": folds, "rows": rows,
            "interval_units": "folds, each with all its seeds (stats.compare groups by subject)",
            "summary": summarise(rows, ours) if rows else {}}


def print_fold(entry: dict, rows: list[dict], ours: str) -> None:
    """The fold's means per method under both protocols."""
    print(f"\nheld out {entry['held_out']} (lesion region: {entry['reference']['lesion_region']})")
    for method in dict.fromkeys(r["method"] for r in rows):
        parts = []
        for protocol in real_scoring.PROTOCOLS:
            mr = [r for r in rows if r["method"] == method and r["protocol"] == protocol]
            psnr = np.mean([r["psnr"] for r in mr])
            lesion = np.mean([r["lesion_psnr"] for r in mr]) if all("lesion_psnr" in r for r in mr) else np.nan
            edema = np.mean([r["edema_ratio"] for r in mr]) if all("edema_ratio" in r for r in mr) else np.nan
            parts.append(f"{protocol} {psnr:6.2f} / lesion {lesion:6.2f} / edema x{edema:.2f}")
        print(f"  {method:<16} " + "   ".join(parts))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as exc:  # bad input: one sentence, no traceback
        print(f"real_mri: {exc}", file=sys.stderr)
        sys.exit(2)
