"""The checks of a run configuration that types alone cannot make (choices, ranges, consistent sizes), one
function per section, each ending in a sentence that names the file, the key and what was expected.

A leaf: the closed sets are read from torch-free registries (samplers.py, model_presets.py, autoencoder_config.py,
mask_ratio.py, options.py), so reading a config loads no torch and no network.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from phmdiff.autoencoder_config import AE_presets
from phmdiff.data.names import canonical, canonical_list
from phmdiff.mask_ratio import MASK_RATIO_FNS
from phmdiff.model_presets import PRESETS as MODEL_PRESETS
from phmdiff.options import DEVICES
from phmdiff.samplers import RESPACING, SAMPLER_SPECS, STOCHASTIC_SAMPLERS

if TYPE_CHECKING:  # the sections' types; config.py imports this module
    from phmdiff.config import Config, DataConfig, EvalConfig, LogConfig, ModelConfig, TrainConfig

AMP_MODES = ("auto", "bf16", "fp16", "no")
CATEGORIES = ("npy", "lmdb", "tar")
FITS = ("pad", "resize")  # how prepare brings a plane to data.resolution (VolumeSettings.fit)
TARGET_NORMS = ("relative", "own")  # the target normalized by its sources' parameters, or by its own median
# The formulations `factory.PRECONDS` builds and the timestep samplers of `diffusion.timestep_sampler` (tests keep
# the tables equal to these names).
FORMULATIONS = ("edm", "vp", "ve", "ddpm")
TIMESTEP_SAMPLERS = ("uniform", "loss-aware")
LOSS_ON = ("visible", "all")  # the tokens the denoising loss counts (model.denoise_loss_on)
LEVEL_SCHEDULES = ("random", "cycle")  # the pyramid level each step trains (model.level_schedule)
# Autoencoder presets and their downsampling factors; "identity" is pixel-space diffusion.
AE_FACTORS = {**{name: c.downsample_factor for name, c in AE_presets.items()}, "identity": 1}


MAX_SIZE = 1 << 16  # batch sizes and plane sizes beyond this cannot fit in any accelerator's memory


def _check(ok: bool, origin: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{origin}: {message}")


def _choice(origin: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, origin, f"'{key}' is {value!r}; expected one of {', '.join(choices)}.")


def _positive(origin: str, values: dict) -> None:
    for key, value in values.items():
        _check(value > 0, origin, f"'{key}' is {value}; expected a positive number.")


def _non_negative(origin: str, values: dict) -> None:
    for key, value in values.items():
        _check(math.isfinite(value) and value >= 0, origin, f"'{key}' is {value}; expected a number >= 0.")


def _strictly_positive(origin: str, values: dict) -> None:
    for key, value in values.items():
        _check(math.isfinite(value) and value > 0, origin, f"'{key}' is {value}; expected a number > 0.")


def _at_most_max_size(origin: str, values: dict) -> None:
    for key, value in values.items():
        _check(value <= MAX_SIZE, origin, f"'{key}' is {value}; expected at most {MAX_SIZE} (memory is sized by it).")


def _fraction(origin: str, values: dict) -> None:
    for key, value in values.items():
        _check(0 <= value < 1, origin, f"'{key}' is {value}; expected a number in [0, 1).")


def validate_data(d: DataConfig, origin: str) -> None:
    """The `data` section: shard format, canonical modality names, sizes, split, and the run's kind."""
    _choice(origin, "data.category", d.category, CATEGORIES)
    _choice(origin, "data.fit", d.fit, FITS)
    _choice(origin, "data.target_norm", d.target_norm, TARGET_NORMS)
    try:  # BraTS 2023 names (t1n, t2w, t2f, ...) and common spellings are the 2021 names everywhere after this
        d.sources, d.modalities, d.targets = (canonical_list(x) for x in (d.sources, d.modalities, d.targets))
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None
    d.target = canonical(d.target)
    _positive(origin, {"data.resolution": d.resolution, "data.num_channels": d.num_channels})
    _at_most_max_size(origin, {"data.resolution": d.resolution})
    _check(d.split_seed < 2**63, origin, f"'data.split_seed' is {d.split_seed}; expected a whole number below 2**63.")
    _check(
        0 < d.val_fraction + d.test_fraction < 1 and d.val_fraction >= 0 and d.test_fraction >= 0,
        origin,
        "'data.val_fraction' and 'data.test_fraction' must be >= 0 and sum to a number in (0, 1).",
    )
    if d.any_to_any:
        _check(not d.targets, origin, f"'data.targets' ({list(d.targets)}) is for generation runs; an any-to-any run "
               "synthesizes any of 'data.modalities'.")
        _check(len(d.modalities) >= 2, origin,
               f"'data.modalities' is {list(d.modalities)}; an any-to-any run needs two or more distinct "
               "modalities (e.g. [t1, t1ce, t2, flair]).")
        return
    if d.targets:  # label-conditional generation
        _check(not d.sources, origin, f"'data.targets' ({list(d.targets)}) is for generation runs; set "
               "'data.sources: []' to generate them by a modality label, or name one 'data.target' to translate.")
        if d.target not in d.targets:  # the default `flair` of a run that lists other modalities
            d.target = d.targets[0]
    _check(d.target not in d.sources, origin, f"'data.target' ({d.target!r}) is also listed in 'data.sources'; the "
           "target must be the missing modality.")


def validate_model(m: ModelConfig, d: DataConfig, origin: str) -> None:
    """The `model` section: formulation, network preset and sizes, masking, losses, and the autoencoder, whose
    downsampling must turn `data.resolution` into `model.in_size`."""
    _choice(origin, "model.precond", m.precond, FORMULATIONS)
    _choice(origin, "model.timestep_sampler", m.timestep_sampler, TIMESTEP_SAMPLERS)
    _choice(origin, "model.mask_ratio_fn", m.mask_ratio_fn, MASK_RATIO_FNS)
    _choice(origin, "model.denoise_loss_on", m.denoise_loss_on, LOSS_ON)
    _choice(origin, "model.level_schedule", m.level_schedule, LEVEL_SCHEDULES)
    if m.model_type.startswith("DiT-"):  # the original names map onto our sizes
        m.model_type = "PHMDiff-" + m.model_type[len("DiT-") :]
    _choice(origin, "model.model_type", m.model_type, tuple(MODEL_PRESETS))
    _positive(origin, {"model.in_size": m.in_size, "model.in_channels": m.in_channels,
                       "model.pyramid_levels": m.pyramid_levels, "model.autoencoder.steps": m.autoencoder.steps,
                       "model.autoencoder.batchsize": m.autoencoder.batchsize})
    _at_most_max_size(origin, {"model.autoencoder.batchsize": m.autoencoder.batchsize, "model.in_size": m.in_size})
    _non_negative(origin, {"model.mae_loss_coef": m.mae_loss_coef,
                           "model.cross_granularity_weight": m.cross_granularity_weight,
                           "model.coarse_aug_sigma": m.coarse_aug_sigma})
    _strictly_positive(origin, {"model.autoencoder.lr": m.autoencoder.lr, "model.sigma_data": m.sigma_data})
    _fraction(origin, {"model.mask_ratio": m.mask_ratio, "model.mask_ratio_min": m.mask_ratio_min,
                       "model.class_dropout_prob": m.class_dropout_prob})
    _check(len(m.mask_block_sizes) > 0 and all(b >= 1 for b in m.mask_block_sizes), origin,
           f"'model.mask_block_sizes' is {list(m.mask_block_sizes)}; expected one or more positive whole numbers.")
    _check(m.mean_net in ("", "unet"), origin, f"'model.mean_net' is {m.mean_net!r}; expected 'unet' or '' (off).")
    _check(not m.mean_net or bool(d.sources) or d.any_to_any, origin, "'model.mean_net' is set but the run has no "
           "sources (a generation run): the mean network predicts the target from sources; set model.mean_net=''.")
    _check(m.mean_loss in ("l1", "l2"), origin, f"'model.mean_loss' is {m.mean_loss!r}; expected l1 or l2.")
    _check(m.mean_loss_weight >= 0, origin, f"'model.mean_loss_weight' is {m.mean_loss_weight}; expected 0 or more.")
    _check(m.conv_head_width >= 0, origin, f"'model.conv_head_width' is {m.conv_head_width}; expected 0 (no head) "
           "or a positive number of channels.")
    _check(m.mask_ratio_min <= m.mask_ratio, origin,
           f"'model.mask_ratio_min' ({m.mask_ratio_min}) must not exceed 'model.mask_ratio' ({m.mask_ratio}).")
    patch = int(m.model_type.rsplit("/", 1)[1])
    coarsest = m.in_size // 2 ** (m.pyramid_levels - 1)
    _check(
        m.in_size % (patch * 2 ** (m.pyramid_levels - 1)) == 0,
        origin,
        f"'model.in_size' ({m.in_size}) must be divisible by patch size x 2^(pyramid_levels-1) "
        f"= {patch * 2 ** (m.pyramid_levels - 1)} so every pyramid level has whole patches (coarsest {coarsest}).",
    )
    _validate_autoencoder(m, d, origin)


def _validate_autoencoder(m: ModelConfig, d: DataConfig, origin: str) -> None:
    factor = d.resolution / m.in_size
    _check(
        factor >= 1 and factor == int(factor) and (int(factor) & (int(factor) - 1)) == 0,
        origin,
        f"'data.resolution' ({d.resolution}) must be 'model.in_size' ({m.in_size}) times a power of two "
        "(the autoencoder's downsampling factor).",
    )
    _choice(origin, "model.autoencoder.preset", m.autoencoder.preset, tuple(AE_FACTORS))
    _check(
        m.autoencoder.crop == 0 or (8 <= m.autoencoder.crop <= d.resolution and m.autoencoder.crop % 8 == 0),
        origin,
        f"'model.autoencoder.crop' is {m.autoencoder.crop}; expected 0 or a multiple of 8 up to data.resolution.",
    )
    _check(
        factor == AE_FACTORS[m.autoencoder.preset],
        origin,
        f"'data.resolution' / 'model.in_size' = {factor:g} but the {m.autoencoder.preset!r} autoencoder "
        f"downsamples by {AE_FACTORS[m.autoencoder.preset]}.",
    )
    if m.autoencoder.preset == "identity":
        _check(m.in_channels == d.num_channels, origin,
               "an 'identity' autoencoder needs 'model.in_channels' == 'data.num_channels' (pixel-space diffusion).")


def validate_train(t: TrainConfig, origin: str) -> None:
    """The `train` section: precision, device, batch sizes, optimizer and schedule numbers."""
    if t.amp in ("False", "false"):  # YAML 1.1 reads an unquoted `no` as false
        t.amp = "no"
    _choice(origin, "train.amp", t.amp, AMP_MODES)
    _choice(origin, "train.device", t.device, DEVICES)
    _positive(origin, {"train.batchsize": t.batchsize, "train.grad_accum": t.grad_accum,
                       "train.max_num_steps": t.max_num_steps, "train.max_nonfinite_steps": t.max_nonfinite_steps})
    _at_most_max_size(origin, {"train.batchsize": t.batchsize})
    _check(t.seed < 2**63, origin, f"'train.seed' is {t.seed}; expected a whole number below 2**63.")
    _non_negative(origin, {"train.lr_rampup_kimg": t.lr_rampup_kimg, "train.ema_halflife_kimg": t.ema_halflife_kimg,
                           "train.ema_rampup_ratio": t.ema_rampup_ratio, "train.weight_decay": t.weight_decay,
                           "train.grad_clip": t.grad_clip, "train.unmasked_finetune_steps": t.unmasked_finetune_steps,
                           "train.seed": t.seed})
    _strictly_positive(origin, {"train.lr": t.lr})
    _check(0 <= t.lr_cooldown <= 1, origin, f"'train.lr_cooldown' is {t.lr_cooldown}; expected a share of the steps "
           "in [0, 1].")
    _check(len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas), origin,
           f"'train.adam_betas' is {list(t.adam_betas)}; expected two numbers in [0, 1).")
    _check(t.batchsize % t.grad_accum == 0, origin,
           f"'train.batchsize' ({t.batchsize}) must be a multiple of 'train.grad_accum' ({t.grad_accum}).")


def validate_eval(e: EvalConfig, origin: str) -> None:
    """The `eval` section: the sampler and its settings, and validation during training."""
    _choice(origin, "eval.sampler", e.sampler, tuple(SAMPLER_SPECS))
    _check(e.churn == 0 or e.sampler in STOCHASTIC_SAMPLERS, origin, f"'eval.churn' is {e.churn:g} but 'eval.sampler' "
           f"is {e.sampler!r}, which samples deterministically; churn needs {' or '.join(STOCHASTIC_SAMPLERS)} (or "
           "churn 0).")
    _check(not e.respacing or bool(RESPACING.match(e.respacing)), origin, f"'eval.respacing' is {e.respacing!r}; "
           "expected empty, ddimN (DDIM, N steps), N or N1,N2,... (ancestral), e.g. ddim25 or 250.")
    _positive(origin, {"eval.num_steps": e.num_steps, "eval.fine_num_steps": e.fine_num_steps,
                       "eval.n_samples": e.n_samples})
    _non_negative(origin, {"eval.every": e.every, "eval.num_val_slices": e.num_val_slices,
                           "eval.sigma_start": e.sigma_start, "eval.guidance": e.guidance, "eval.churn": e.churn})


def validate_log(lg: LogConfig, origin: str) -> None:
    """The `log` section: logging and checkpoint intervals."""
    _positive(origin, {"log.log_every": lg.log_every, "log.ckpt_every": lg.ckpt_every,
                       "log.keep_checkpoints": lg.keep_checkpoints})


def validate(cfg: Config, origin: str = "config") -> Config:
    """Check values that types alone cannot (choices, ranges, consistent sizes), section by section; return cfg."""
    validate_data(cfg.data, origin)
    validate_model(cfg.model, cfg.data, origin)
    validate_train(cfg.train, origin)
    validate_eval(cfg.eval, origin)
    _check(not cfg.eval.respacing or cfg.model.precond == "ddpm", origin, f"'eval.respacing' is "
           f"{cfg.eval.respacing!r} but 'model.precond' is {cfg.model.precond!r}; respacing samples a ddpm run through "
           "its own loops (leave it empty for the other formulations).")
    validate_log(cfg.log, origin)
    return cfg
