"""Training: the autoencoder, the PHMDiff loop, checkpoints, EMA, schedules, devices and run locks.

`run_pipeline(cfg)` is the whole training chain of one config (what `python main.py --config ...` runs):
prepare -> train-ae -> encode -> train, each stage reusing its output when it is already up to date.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

STAGES = ("prepare", "train-ae", "encode", "train")
CACHE_BACKENDS = {"npy": "npy", "lmdb": "lmdb", "tar": "wds"}


def prepare_settings(cfg):
    """`phmdiff prepare` settings that match a run config."""
    from phmdiff.config import data_modalities
    from phmdiff.data.prepare import PrepareSettings
    from phmdiff.data.volume import VolumeSettings

    d = cfg.data
    split = (round(1.0 - d.val_fraction - d.test_fraction, 6), d.val_fraction, d.test_fraction)
    mods = data_modalities(d)
    volume = VolumeSettings(modalities=mods, size=d.resolution, min_foreground=d.min_foreground, fit=d.fit)
    # data.target_norm relative: an MR target from MR sources is normalized by its sources' parameters, so
    # translate inverts it exactly. own: the target keeps its own median normalization, and translate estimates its
    # scale through the training subjects' gain ratios (`prepare.gain_ratios`). Any-to-any: every modality is its
    # own (median) normalization, since any of them may be the target.
    if (d.target_norm == "relative" and d.sources and not d.any_to_any
            and not any(volume.scheme(m).fixed for m in mods)):
        volume = replace(volume, relative={d.target: list(d.sources)})
    return PrepareSettings(split=split, split_file=d.split_file or None, seed=d.split_seed, volume=volume)


def run_pipeline(cfg, stages=STAGES, progress: bool = True, log=print, allow_config_change: bool = False) -> dict:
    """Run the chosen stages of the training chain for `cfg`; returns what each stage did. `allow_config_change`
    lets training resume a checkpoint whose seed, batch size, lr, mask ratio or model differ."""
    from phmdiff.inference import autoencoder_path

    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {', '.join(STAGES)}.")
    done: dict = {}
    d = cfg.data
    if "prepare" in stages:
        from phmdiff.data.prepare import prepare

        if not d.root or not d.prepared:
            raise ValueError("data.root and data.prepared must be set to prepare the data.")
        if d.dataset == "phantom" and not Path(d.root).exists():
            from phmdiff.data.phantom import write_phantom

            write_phantom(d.root, "brain", progress=progress)
        settings = prepare_settings(cfg)
        done["prepare"] = prepare(d.root, d.prepared, settings, settings.volume.modalities, progress=progress)
        log(f"prepare: {d.prepared} {done['prepare']}")
    if "train-ae" in stages:
        if autoencoder_path(cfg).exists():
            done["train-ae"] = "reused"
        else:
            from phmdiff.training.train_ae import train_autoencoder

            report = train_autoencoder(cfg, progress=progress, log=log)
            done["train-ae"] = report
            if report.get("preset") == "identity":
                log("train-ae: identity autoencoder (pixel-space diffusion): nothing to train")
            else:
                log(f"train-ae: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f} (volume protocol, "
                    "validation subjects)")
    if "encode" in stages:
        from phmdiff.autoencoder import load_autoencoder
        from phmdiff.data.latent_cache import autoencoder_id, encode_prepared
        from phmdiff.devices import choose_device

        path = autoencoder_path(cfg)
        if not d.cache:
            raise ValueError("data.cache must be set to encode the latents.")
        done["encode"] = encode_prepared(d.prepared, load_autoencoder(path), d.cache, autoencoder_id(path),
                                         backend=CACHE_BACKENDS[d.category],
                                         device=str(choose_device(cfg.train.device)), progress=progress)
        log(f"encode: {d.cache} {done['encode']}")
    if "train" in stages:
        from phmdiff.training.loop import train

        done["train"] = train(cfg, resume="auto", progress=progress, log=log, allow_config_change=allow_config_change)
        log(f"train: {done['train']['run_dir']} at step {done['train']['step']}")
    return done
