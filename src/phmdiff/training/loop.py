"""`phmdiff train`: one `train(cfg)` over Hugging Face Accelerate for the pyramid masked diffusion model.

Per step: a global batch of latent pairs (split over processes and accumulation rounds), one random pyramid
level, the MaskDiT loss plus the cross-granularity term, AdamW with EDM's lr ramp-up, EMA by half-life in
images. Non-finite steps are skipped and counted. Everything random is a function of (seed, step, rank) or
of (seed, epoch, index), and checkpoints hold the data position, so `--resume auto` continues bit-exactly.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from phmdiff.config import Config, add_config_arguments, config_from_args, save_config, source_slots, to_yaml
from phmdiff.data.datasets import PairedSlices
from phmdiff.data.latent_cache import LatentPairs, LatentTargets, load_cache_meta
from phmdiff.data.prepare import load_manifest
from phmdiff.devices import run_device
from phmdiff.eval.metrics import psnr, ssim
from phmdiff.factory import build_denoiser, build_objective
from phmdiff.fsutil import atomic_write_text, clean_dead_stages_in
from phmdiff.inference import (
    SamplingSettings,
    decode_target,
    encode_sources,
    load_run_autoencoder,
    plane_multiple,
    sample_latents,
)
from phmdiff.options import add_allow_config_change, add_progress
from phmdiff.plan import RunPlan, build_plan, plan_of
from phmdiff.std_calibration import WHY_REFUSED, std_scale_refusal
from phmdiff.training import checkpoint as ckpt_lib
from phmdiff.training.distributed import cleanup, seed_everything, set_deterministic, setup_accelerator
from phmdiff.training.ema import EMA
from phmdiff.training.interrupt import StopSignals
from phmdiff.training.lock import RunLock
from phmdiff.training.resume_check import check_resume_config, record_config_change
from phmdiff.training.schedules import lr_at, mask_ratio_at

LOG_COLUMNS = ("step", "kimg", "loss", "denoise", "mae", "coarse_loss", "cross_granularity", "mean", "lr", "mask_ratio",
               "nonfinite_total", "sec_per_step", "val_psnr", "val_ssim")


class EpochStream(Dataset):
    """Item k of an endless stream: epoch k // n, position k % n of that epoch's seeded permutation."""

    def __init__(self, base: Dataset, seed: int):
        self.base, self.seed, self.n = base, seed, len(base)
        self._perm: tuple[int, np.ndarray] | None = None
        if self.n == 0:
            raise ValueError("the training split is empty; prepare more subjects or lower data.val_fraction.")

    def __len__(self) -> int:  # DataLoader only needs some length; the sampler is endless
        return self.n

    def __getitem__(self, k: int):
        epoch, pos = divmod(int(k), self.n)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        self.base.set_epoch(epoch)
        return self.base[int(self._perm[1][pos])]


class PositionSampler(Sampler):
    """Stream indices of this rank from global micro-batch `start` on: the data position survives restarts."""

    def __init__(self, micro_batch: int, rank: int, world: int, start: int):
        self.micro_batch, self.rank, self.world, self.start = micro_batch, rank, world, start

    def __iter__(self):
        j = self.start
        while True:
            base = (j * self.world + self.rank) * self.micro_batch
            yield from range(base, base + self.micro_batch)
            j += 1


def _latent_data(cfg: Config):

    if not cfg.data.cache:
        raise ValueError("data.cache is empty; set it to the latent cache written by phmdiff encode.")
    if cfg.data.sources or cfg.data.any_to_any:
        data = LatentPairs(cfg.data.cache, "train", source_slots(cfg.data), cfg.data.target, seed=cfg.train.seed,
                           any_to_any=cfg.data.any_to_any, flip=cfg.train.flip)
    else:  # a generation run: the target-only latents of every generated modality, each with its label
        data = LatentTargets(cfg.data.cache, "train", cfg.data.generated, seed=cfg.train.seed)
    n_mod, c, h, w = data.meta["item_shape"]
    if c != cfg.model.in_channels or min(h, w) < cfg.model.in_size:
        raise ValueError(
            f"{cfg.data.cache}: latents are {c}x{h}x{w} but the config expects model.in_channels x in_size x in_size "
            f"= {cfg.model.in_channels}x{cfg.model.in_size}x{cfg.model.in_size} (or larger planes, trained on random "
            "crops of in_size); fix the config or re-encode."
        )
    data.crop = cfg.model.in_size if (h, w) != (cfg.model.in_size,) * 2 else None  # larger planes: random crops
    return data


def _plan(meta: dict, cfg: Config) -> RunPlan:
    """What a checkpoint must know to be used on new volumes (`phmdiff.plan`): slots, volume settings, each
    modality's intensity scheme and the synthesized modalities' training scales (translate repeats and inverts
    them), latent scale, plane multiple, data and autoencoder identity."""
    d = cfg.data
    return build_plan(load_manifest(meta["prepared_dir"]), meta, source_slots(d), d.target, list(d.targets),
                      d.any_to_any, plane_multiple(cfg), str(d.cache))


def _csv_rows(path: Path) -> list[dict]:
    try:
        return list(csv.DictReader(io.StringIO(path.read_text())))
    except OSError:
        return []


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(value) -> str:
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def train(cfg: Config, resume: str = "auto", progress: bool = True, step_hook=None, after_step=None,
          allow_config_change: bool = False, log=None) -> dict:
    """Train until `train.max_num_steps`; returns {"run_dir", "step", "nonfinite_total", "best_psnr", ...}.

    `resume`: "auto" continues from the newest valid checkpoint of the run folder, "none" refuses a run
    folder that already has checkpoints, any other value is a checkpoint folder to start from.
    `step_hook(step, terms)` may edit the loss terms (tests inject non-finite losses with it);
    `after_step(step, model, accelerator)` is called on every rank after each step (tests check replicas).
    `log(line)` receives the device line and, without a progress bar, a line every `log.log_every` steps
    (stderr when None).
    """
    t, m = cfg.train, cfg.model
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    device_lines = []  # said once the data is found, so that bad input stays one sentence
    device_type = run_device(t.device, "train", device_lines.append).type  # a GPU asked for but absent: warn, CPU
    accelerator = setup_accelerator(t.amp, t.grad_accum, device_type)
    if t.amp == "auto":
        bf16 = accelerator.mixed_precision == "bf16"
        why = "computes bf16 natively" if bf16 else "has no native bf16 (emulated, it is many times slower)"
        device_lines.append(f"train: train.amp auto: {'bf16' if bf16 else 'fp32'}, since this {device_type} {why}.")
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    run_dir = cfg.run_dir
    lock = RunLock(run_dir).acquire() if is_main else None
    if is_main:
        clean_dead_stages_in(run_dir)  # the temp files of a killed run's writes (log.csv, plan), provably its own
    writer = None
    stop = StopSignals()
    try:
        if t.deterministic:
            set_deterministic(True)
        if t.tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        seed_everything(t.seed, rank)
        per_rank = t.batchsize // t.grad_accum
        if per_rank % world:
            raise ValueError(f"train.batchsize / train.grad_accum = {per_rank} must be divisible by the {world} "
                             "processes; change train.batchsize or train.grad_accum.")
        micro = per_rank // world
        data = _latent_data(cfg)
        plan = _plan(data.meta, cfg)
        num_sources = len(source_slots(cfg.data))
        denoiser = build_denoiser(cfg, num_sources, len(data.meta["modalities"]))
        for line in device_lines if is_main else ():
            log(line)
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=t.lr, betas=tuple(t.adam_betas),
                                      weight_decay=t.weight_decay, fused=True)
        ema = EMA(denoiser, t.ema_halflife_kimg, t.ema_rampup_ratio)
        state = {"step": 0, "nonfinite_total": 0, "best_psnr": None}
        start = _resume_from(resume, run_dir)
        if start is not None:
            loaded = ckpt_lib.load_checkpoint(start)
            changed = check_resume_config(loaded.config_yaml, cfg, start, allow_config_change)
            old = plan_of(loaded.meta, plan.plane_multiple, str(start)).data
            for key in ("autoencoder_id", "prepared_id"):
                if old.get(key) and old.get(key) != plan.data[key]:
                    raise ValueError(f"{start}: checkpoint was trained on another latent cache ({key} differs); "
                                     "resume with the same data.cache or start a new run folder.")
            denoiser.load_state_dict(loaded.model_state)
            ema.module.load_state_dict(loaded.ema_state or loaded.model_state)
            optimizer.load_state_dict(loaded.state["optimizer"])
            ckpt_lib.restore_rng_state(loaded.state["rng"])
            for key in ("nonfinite_total", "best_psnr"):
                state[key] = loaded.state.get(key, state[key])
            state["step"] = loaded.step
            if is_main:  # continuing is never silent
                log(f"train: resuming {run_dir} from {start.name} at step {loaded.step} of {t.max_num_steps}.")
                record_config_change(run_dir, start, loaded.step, changed, log)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            log_path = run_dir / "log.csv"
            # A resumed run forgets the log rows written after its checkpoint, so the CSV has each step once.
            _write_csv(log_path, [r for r in _csv_rows(log_path)  # a row torn by a kill is dropped
                                  if str(r.get("step") or "").isdigit() and int(r["step"]) <= state["step"]])
            if cfg.log.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / "tensorboard"))
            if cfg.wandb.enabled:
                _init_wandb(cfg, run_dir)
        # A generation run's condition is the modality label: it is the one dropped for guidance (to the null label).
        null_label = None if num_sources else len(data.meta["modalities"])
        model, optimizer = accelerator.prepare(build_objective(denoiser, m, null_label), optimizer)
        unwrapped = accelerator.unwrap_model(model).denoiser
        if start is None:  # DDP broadcast rank 0's initial weights; the EMA copy was taken from this rank's own
            ema.module.load_state_dict(unwrapped.state_dict())
        stream = EpochStream(data, t.seed)
        loader = DataLoader(stream, batch_size=micro, sampler=PositionSampler(micro, rank, world,
                            state["step"] * t.grad_accum), num_workers=cfg.data.num_workers,
                            persistent_workers=cfg.data.num_workers > 0,
                            # Its own generator: iter() would otherwise draw a worker seed from the global RNG.
                            generator=torch.Generator().manual_seed(t.seed))
        batches = iter(loader)
        device = accelerator.device
        bar = None
        if progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=t.max_num_steps, initial=state["step"], desc="train", unit="step", dynamic_ncols=True)
        streak, window, tic, said_empty = 0, [], time.perf_counter(), False
        stop.install()  # SIGINT/SIGTERM: finish the step, save, exit 130/143
        while state["step"] < t.max_num_steps:
            step = state["step"]
            lr = lr_at(step, t.batchsize, t.lr, t.lr_rampup_kimg, t.max_num_steps, t.lr_cooldown)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mask_ratio = mask_ratio_at(step, t.max_num_steps, t.unmasked_finetune_steps, m.mask_ratio_fn,
                                       m.mask_ratio, m.mask_ratio_min)
            sums: dict[str, float] = {}
            finite = True
            for a in range(t.grad_accum):
                batch = next(batches)
                # One CPU generator per (seed, step, round, rank) on every device (draws move to the device):
                # noise, masks, levels and dropout repeat on resume.
                g = torch.Generator().manual_seed(
                    int(np.random.SeedSequence([t.seed, step, a, rank]).generate_state(1)[0]))
                with accelerator.accumulate(model), accelerator.autocast():
                    terms = _terms(model, batch, device, mask_ratio, g,
                                   step % m.pyramid_levels if m.level_schedule == "cycle" else None)
                    if step_hook is not None:
                        terms = step_hook(step, terms)
                    finite &= bool(torch.isfinite(terms["loss"]).item())
                    accelerator.backward(terms["loss"])
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) / t.grad_accum
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(),
                                                                t.grad_clip if t.grad_clip > 0 else math.inf)
                        flag = torch.tensor([0.0 if finite and math.isfinite(float(grad_norm)) else 1.0],
                                            device=device)
                        finite = float(accelerator.reduce(flag, "max")) == 0.0  # every rank skips together
                        if finite:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
            state["step"] = step = step + 1
            if finite:
                streak = 0
                ema.update(unwrapped, step * t.batchsize, t.batchsize)
                window.append(sums)
            else:
                streak += 1
                state["nonfinite_total"] += 1
                if streak >= t.max_nonfinite_steps:
                    raise RuntimeError(
                        f"training stopped at step {step}: {streak} steps in a row had a non-finite loss or "
                        f"gradient (train.max_nonfinite_steps={t.max_nonfinite_steps}); the last good checkpoint "
                        f"is kept in {ckpt_lib.checkpoints_dir(run_dir)}."
                    )
            if after_step is not None:
                after_step(step, unwrapped, accelerator)
            if bar is not None:
                bar.update(1)
                if window:
                    bar.set_postfix(loss=f"{window[-1]['loss']:.4f}", level=int(window[-1].get("level", 0)))
            val = None
            # Validation scores translations against the real target; a generation run has none to score.
            translating = cfg.data.sources or cfg.data.any_to_any
            if cfg.eval.every and translating and (step % cfg.eval.every == 0 or step == t.max_num_steps):
                val = validate(ema.module, cfg, accelerator, step, writer)
                if val is None and is_main and not said_empty:
                    said_empty = True
                    log("train: the val split is empty: no validation score, no best-checkpoint choice (translate "
                        "uses the last) and no std calibration (the std volume stays the samples' own spread).")
            if step % cfg.log.log_every == 0 or step == t.max_num_steps or val is not None:
                row = _log_row(accelerator, window, step, t, lr, mask_ratio, state, tic, val)
                window, tic = [], time.perf_counter()
                if is_main:
                    if bar is None:  # --no-progress: one line every log.log_every steps instead of the bar
                        log(f"train: step {step}/{t.max_num_steps}  loss {row['loss']:.4f}  "
                            f"{row['sec_per_step']:.3f} s/step" + (f"  val PSNR {val['psnr']:.2f} dB" if val else "")
                            + _calibration_words(val))
                    elif val and val.get("std_scale_trusted") is False:  # a refusal is said under the bar too
                        log(f"train: step {step}: {_calibration_words(val).strip()}.")
                    _append_csv(run_dir / "log.csv", row)
                    if writer is not None:
                        for k, v in row.items():
                            if k != "step" and isinstance(v, float) and math.isfinite(v):
                                writer.add_scalar(f"train/{k}", v, step)
                    if cfg.wandb.enabled:
                        import wandb

                        wandb.log({k: v for k, v in row.items() if v is not None}, step=step)
            best = False
            if val is not None and (state["best_psnr"] is None or val["psnr"] > state["best_psnr"]):
                state["best_psnr"], best = val["psnr"], True
            # A skipped step changed nothing, but its checkpoint would hide which step was the last good one;
            # the final step is saved even when skipped, or the good steps since the last checkpoint are lost.
            stopping = stop.agreed(accelerator)
            if stopping or (finite or step == t.max_num_steps) and (
                    step % cfg.log.ckpt_every == 0 or step == t.max_num_steps or best):
                _save(cfg, run_dir, unwrapped, ema, optimizer, state, plan, val, best, is_main)
                accelerator.wait_for_everyone()
            if stopping:
                raise stop.interrupted(step, ckpt_lib.checkpoints_dir(run_dir) / ckpt_lib.step_name(step))
        if bar is not None:
            bar.close()
        return {"run_dir": str(run_dir), "step": state["step"], "nonfinite_total": state["nonfinite_total"],
                "best_psnr": state["best_psnr"]}
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
        if lock is not None:
            lock.release()
        cleanup()


@torch.no_grad()
def validate(denoiser, cfg: Config, accelerator, step: int, writer=None) -> dict | None:
    """Few-step coarse-to-fine translation of validation slices, `eval.n_samples` samples each: PSNR/SSIM of
    their mean in [0, 1] units over all ranks and, with 2 or more samples, the std calibration: `std_scale`, the
    RMS error of the mean over the RMS of the samples' std on the slices' foreground (translate multiplies the
    std volume it writes by it, so that the reported uncertainty matches the error seen on validation), recorded
    with whether it is trusted (`calibration_fit`: a factor outside `std_calibration.STD_SCALE_RANGE` is refused)."""

    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    meta = load_cache_meta(cfg.data.cache)
    scale = float(meta["latent_scale"])
    ae = load_run_autoencoder(cfg, device)
    val = PairedSlices(meta["prepared_dir"], "val", source_slots(cfg.data), cfg.data.target,
                       any_to_any=cfg.data.any_to_any)
    if len(val) == 0:  # nothing to score: no NaN in the log, meta.json or the best-checkpoint choice
        return None
    picks = np.unique(np.linspace(0, len(val) - 1, min(cfg.eval.num_val_slices, len(val))).round().astype(int))
    mine = picks[rank::world]  # validation is split across ranks
    n_samples = max(int(cfg.eval.n_samples), 1)
    # psnr, ssim, slices; then over the foreground: error^2, std^2, pixels
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    denoiser.eval()
    settings = SamplingSettings.resolve(cfg.eval)
    panel = None
    for lo in range(0, len(mine), 16):
        items = [val[int(i)] for i in mine[lo : lo + 16]]
        k = val.k
        src = torch.stack([it["source"][k // 2 :: k] for it in items]).to(device)  # centre slices (N, n_src, H, W)
        ref = (torch.stack([it["target"] for it in items]) + 1) / 2  # (N, 1, H, W)
        cond = encode_sources(ae, src, scale)
        avail = torch.stack([it["avail"] for it in items]).to(device)  # (N, n_src): ones unless any-to-any
        label = torch.tensor([it["target_label"] for it in items], device=device)
        preds = torch.stack([decode_target(ae, sample_latents(
            denoiser, cond, avail, label, [int(i) + j * len(val) for i in mine[lo : lo + 16]], cfg.model, settings),
            scale).cpu() for j in range(n_samples)])  # (n_samples, N, 1, H, W)
        pred = preds.mean(0)
        for p, r in zip(pred[:, 0].numpy(), ref[:, 0].numpy()):
            sums[:3] += torch.tensor([psnr(p, r, data_range=1.0), ssim(p, r, data_range=1.0), 1.0],
                                     dtype=torch.float64, device=device)
        if n_samples > 1:
            sums[3:] += torch.tensor(calibration_sums(preds, ref, src.cpu()), dtype=torch.float64, device=device)
        if panel is None:
            panel = torch.cat([(src[:4, 0:1].cpu() + 1) / 2, ref[:4], pred[:4], (pred[:4] - ref[:4]).abs()], dim=3)
    sums = accelerator.reduce(sums, "sum")
    if writer is not None and panel is not None:
        writer.add_images("val/source|target|prediction|error", panel.clamp(0, 1), step)
    n = max(float(sums[2]), 1.0)
    out = {"psnr": float(sums[0]) / n, "ssim": float(sums[1]) / n, "n": int(sums[2]), "n_samples": n_samples}
    if n_samples > 1 and float(sums[5]) > 0 and float(sums[4]) > 0:
        out.update(calibration_fit(math.sqrt(float(sums[3] / sums[5])), math.sqrt(float(sums[4] / sums[5]))))
    return out


def calibration_fit(rms_error: float, rms_std: float) -> dict:
    """The std calibration as validation records it: the fitted factor `std_scale` = rms_error / rms_std, whether
    it is trusted (`std_calibration.STD_SCALE_RANGE`) and, when not, why (`std_scale_refused`). Inference reads a
    refused factor as no calibration."""
    scale = rms_error / rms_std
    refusal = std_scale_refusal(scale)
    out = {"rms_error": rms_error, "rms_std": rms_std, "std_scale": scale, "std_scale_trusted": refusal is None}
    return out if refusal is None else {**out, "std_scale_refused": refusal}


def _calibration_words(val: dict | None) -> str:
    """The log line's words on the std calibration: its factor, or one sentence on why it was refused."""
    if not val or "std_scale" not in val:
        return ""
    if val.get("std_scale_trusted") is False:
        return (f"  std calibration refused ({val.get('std_scale_refused') or std_scale_refusal(val['std_scale'])}: "
                f"{WHY_REFUSED}); translate will write the samples' own spread")
    return f"  std calibration x{val['std_scale']:.2f}"


def calibration_sums(samples: torch.Tensor, ref: torch.Tensor, src: torch.Tensor) -> tuple[float, float, float]:
    """The std calibration's sums over the foreground (anything above 2 % of the range in the target or a source):
    squared error of the samples' mean, squared std of the samples (population std, as translate's std volume),
    and the pixel count. `samples` (n, N, 1, H, W) and `ref` (N, 1, H, W) in [0, 1]; `src` (N, n_src, H, W) in
    [-1, 1]."""
    fg = (ref > 0.02) | ((src + 1) / 2 > 0.02).any(1, keepdim=True)
    samples = samples.double()
    err2 = float(((samples.mean(0) - ref.double())[fg] ** 2).sum())
    std2 = float((samples.std(0, unbiased=False)[fg] ** 2).sum())
    return err2, std2, float(fg.sum())


def _resume_from(resume: str, run_dir: Path) -> Path | None:
    if resume == "auto":
        return ckpt_lib.find_latest(run_dir)
    if resume == "none":
        if ckpt_lib.find_latest(run_dir) is not None:
            raise ValueError(f"{run_dir}: run folder already has checkpoints; pass --resume auto to continue it "
                             "or choose another log.run_dir.")
        return None
    return ckpt_lib.resolve_checkpoint(resume, "last")


def _terms(model, batch, device, mask_ratio, generator, level=None) -> dict:
    """Training terms of one batch through the (DDP-wrapped) PyramidObjective; `level`: a schedule's (None: drawn)."""
    source = batch["source"].to(device, torch.float32)
    target = batch["target"].to(device, torch.float32)
    avail = batch["avail"].to(device, torch.float32)
    label = torch.as_tensor(batch["target_label"], device=device)
    return model(source, target, avail, label, mask_ratio, generator, level)


def _log_row(accelerator, window, step, t, lr, mask_ratio, state, tic, val) -> dict:
    keys = ("loss", "denoise", "mae", "coarse_loss", "cross_granularity", "mean")
    means = torch.tensor([np.mean([w.get(k, 0.0) for w in window]) if window else math.nan for k in keys],
                         device=accelerator.device, dtype=torch.float64)
    means = accelerator.reduce(means, "mean")
    row = {"step": step, "kimg": step * t.batchsize / 1000, "lr": lr, "mask_ratio": mask_ratio,
           "nonfinite_total": state["nonfinite_total"], "sec_per_step": (time.perf_counter() - tic) / max(
               len(window), 1)}
    row.update({k: float(v) for k, v in zip(keys, means.cpu())})
    if val is not None:
        row.update({"val_psnr": val["psnr"], "val_ssim": val["ssim"]})
    return row


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(row.get(k)) for k in LOG_COLUMNS})


def _save(cfg, run_dir, unwrapped, ema, optimizer, state, plan, val, best, is_main) -> None:
    training_state = {"optimizer": optimizer.state_dict(), "rng": ckpt_lib.capture_rng_state(),
                      "nonfinite_total": state["nonfinite_total"], "best_psnr": state["best_psnr"],
                      "data_position": state["step"] * cfg.train.grad_accum}
    meta = {"plan": plan.to_dict(), "validation": val, "model_type": cfg.model.model_type}
    ckpt_lib.save_checkpoint(run_dir, state["step"], unwrapped.state_dict(), training_state, to_yaml(cfg),
                             ema_state=ema.module.state_dict(), meta=meta, best=best,
                             keep=cfg.log.keep_checkpoints, is_main=is_main)


def _init_wandb(cfg: Config, run_dir: Path) -> None:
    try:
        import wandb
    except ImportError:
        raise ValueError("wandb.enabled is true but the wandb package is not installed; "
                         "pip install 'phmdiff[wandb]' or set wandb.enabled=false.") from None
    from omegaconf import OmegaConf

    wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity or None, group=cfg.wandb.group or None,
               name=cfg.log.tag, dir=str(run_dir), resume="allow",
               config=OmegaConf.to_container(OmegaConf.structured(cfg)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--resume", default="auto",
                        help="auto (newest valid checkpoint of the run folder), none, or a checkpoint folder")
    add_progress(parser, "a line every log.log_every steps instead")
    add_allow_config_change(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg is None:
        return 0
    summary = train(cfg, resume=args.resume, progress=not args.no_progress,
                    allow_config_change=args.allow_config_change)
    print(f"{summary['run_dir']}: trained to step {summary['step']} "
          f"({summary['nonfinite_total']} non-finite steps skipped).", file=sys.stderr)
    return 0
