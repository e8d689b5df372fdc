"""Typed run configuration: YAML read with OmegaConf, checked against dataclasses.

The sections follow the original MaskDiT configs (`data`, `model`, `train`,
`eval`, `log`, `wandb`). Unknown keys and bad values are refused with one
sentence that names the file, the key and what was expected; `a.b=c`
overrides are applied on top of the file; the resolved config is saved beside
every run and inside every checkpoint.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from phmdiff.autoencoder import AE_presets
from phmdiff.data.names import canonical, canonical_list
from phmdiff.devices import DEVICES
from phmdiff.diffusion.timestep_sampler import SCHEDULE_SAMPLERS
from phmdiff.factory import PRECONDS
from phmdiff.fsutil import atomic_write_text
from phmdiff.masked_dit import PRESETS as MODEL_PRESETS
from phmdiff.sample import CHURN_SAMPLERS, SAMPLERS

AMP_MODES = ("bf16", "fp16", "no")
CATEGORIES = ("npy", "lmdb", "tar")
MASK_RATIO_FNS = ("constant", "linear", "exp", "cosine2", "cosine3", "cosine4", "cosine5", "cosine6")
# The closed sets live in their registries (samplers in sample.py, devices in devices.py, model presets in
# masked_dit.py, autoencoder presets in autoencoder.py); the config only reads them.
# Autoencoder presets and their downsampling factors; "identity" is pixel-space diffusion.
AE_FACTORS = {**{name: c.downsample_factor for name, c in AE_presets.items()}, "identity": 1}


@dataclass
class DataConfig:
    """Where the slices come from and how they are stored (original `data` section)."""

    dataset: str = "phantom"  # brats | synthrad | generic | png | phantom
    category: str = "npy"  # shard format of prepared slices: npy | lmdb | tar
    resolution: int = 256  # prepared slice size (H = W) fed to the autoencoder
    num_channels: int = 1  # image channels per modality
    root: str = ""  # raw data: BraTS / SynthRAD / generic tree / PNG folders / phantom output
    prepared: str = ""  # output of `phmdiff prepare`
    cache: str = ""  # latent cache written by `phmdiff encode`
    sources: list[str] = field(default_factory=lambda: ["t1", "t2"])  # []: a generation run (no sources)
    target: str = "flair"  # the synthesized modality; in a generation run with `targets`, generate's default label
    # Any-to-any (the BraSyn setting): one model synthesizes any of `modalities` from any non-empty subset of
    # the others; training draws the target and the available sources per example. `sources` and `target`
    # are then unused.
    any_to_any: bool = False
    modalities: list[str] = field(default_factory=list)
    # Generation runs only (sources: []): the modalities one model generates, chosen by a modality label
    # (label-conditional, with label dropout for guidance); empty: `target` alone (unconditional).
    targets: list[str] = field(default_factory=list)
    val_fraction: float = 0.1  # split by subject, never by slice
    test_fraction: float = 0.1
    split_seed: int = 0
    min_foreground: float = 0.05  # slices with less foreground are skipped
    num_workers: int = 2

    @property
    def generated(self) -> list[str]:
        """The modalities the model synthesizes: `targets` in a label-conditional generation run, else `target`."""
        return list(self.targets) or [self.target]


@dataclass
class AutoencoderConfig:
    """The KL autoencoder: which preset to build, where it is saved, how `train-ae` trains it."""

    preset: str = "f8"  # tiny | f4 | f8, or identity for pixel-space diffusion
    path: str = ""  # trained autoencoder file; empty: RUN/autoencoder.safetensors
    channels: list[int] = field(default_factory=list)  # widths per resolution; empty: the preset's
    crop: int = 0  # train on random crops of this size (the network is convolutional); 0: whole slices
    steps: int = 20000
    batchsize: int = 16
    lr: float = 1e-4
    kl_weight: float = 1e-6
    ssim_weight: float = 1.0
    min_psnr: float = 28.0  # quality gate: warn when validation PSNR (dB) is below this


@dataclass
class ModelConfig:
    """The masked pyramid DiT and its diffusion formulation (original `model` section)."""

    precond: str = "edm"  # edm | vp | ve | ddpm, each trained with its own loss (factory.PRECONDS)
    timestep_sampler: str = "uniform"  # ddpm only: uniform | loss-aware (iDDPM importance sampling)
    model_type: str = "PHMDiff-XL/2"
    in_size: int = 32  # latent grid size at level 0
    in_channels: int = 4  # latent channels per modality
    use_decoder: bool = True
    mask_ratio: float = 0.5
    mask_ratio_fn: str = "constant"
    mask_ratio_min: float = 0.0
    mask_block_sizes: list[int] = field(default_factory=lambda: [1, 2, 4])  # token block sizes of multi-scale masks
    source_aware_mask_tokens: bool = True  # the mask decoder sees the sources at every token (masked ones too)
    conv_head_width: int = 0  # a full-resolution 3x3 conv head after unpatchify (0: none); pixel-space runs
    output_overlap: bool = False  # tokens paint overlapping 2p x 2p windows (stride p) instead of p x p patches
    # Mean and residual (mean_net.py): "unet" predicts E[target | sources] by a conv U-Net trained jointly with
    # regression loss weight mean_loss_weight; the diffusion models target - mean. "" turns it off.
    mean_net: str = ""
    mean_net_features: list[int] = field(default_factory=lambda: [32, 32, 64, 128, 256, 32])
    mean_loss_weight: float = 1.0
    mean_loss: str = "l2"  # the mean network's regression loss: l2 (the conditional mean) or l1 (the median)
    residual_norm: bool = True  # the diffusion sees the residual divided by its running std (unit scale for EDM)
    mae_loss_coef: float = 0.1
    class_dropout_prob: float = 0.1  # condition dropout for classifier-free guidance
    pyramid_levels: int = 3
    cross_granularity_weight: float = 0.05
    coarse_aug_sigma: float = 0.5  # max sigma of the conditioning augmentation on the coarse condition
    # The autoencoder's latent scale (1 / std of the training latents) gives the latents unit variance, so
    # sigma_data is 1, not EDM's 0.5 for images in [-1, 1].
    sigma_data: float = 1.0
    # Training noise centred higher than EDM's -1.2 (which puts 84 % of the draws below sigma 1): translation
    # decides the image's layout from the sources at high noise (measured +0.4 dB, lesion +0.7 dB, issue 12).
    P_mean: float = 0.4
    P_std: float = 1.2
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)


@dataclass
class TrainConfig:
    """Optimization (original `train` section). Batch sizes are global, over all processes."""

    amp: str = "bf16"
    tf32: bool = True
    device: str = "auto"
    batchsize: int = 256
    grad_accum: int = 1
    lr: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 turns clipping off
    lr_rampup_kimg: float = 0.0
    lr_cooldown: float = 0.0  # share of the last steps over which the learning rate falls linearly to 0
    max_num_steps: int = 400000
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: float = 0.05  # 0 turns the ramp-up off
    seed: int = 0
    unmasked_finetune_steps: int = 0  # last steps trained without masking
    flip: bool = False  # mirror half the training pairs left-right (sources and target alike)
    max_nonfinite_steps: int = 20  # stop after this many non-finite steps in a row
    deterministic: bool = False


@dataclass
class EvalConfig:
    """Validation during training and the default sampling settings (original `eval` section)."""

    sampler: str = "heun"
    num_steps: int = 18
    fine_num_steps: int = 8  # steps at levels finer than the coarsest
    sigma_start: float = 2.0  # noise added to the upsampled coarse result before refining it
    guidance: float = 1.0
    churn: float = 0.0  # EDM's S_churn for heun / euler: stochastic sampling (noise added back each step); 0: none
    n_samples: int = 1
    every: int = 5000  # validate every this many steps; 0 turns validation off
    num_val_slices: int = 64


@dataclass
class LogConfig:
    """Logging and checkpoints (original `log` section)."""

    log_every: int = 100
    ckpt_every: int = 5000
    tag: str = "phmdiff"
    run_dir: str = ""  # empty: runs/<tag>
    tensorboard: bool = True
    keep_checkpoints: int = 3  # older step checkpoints are pruned; `best` is always kept


@dataclass
class WandbConfig:
    """Optional Weights & Biases logging."""

    enabled: bool = False
    project: str = "phmdiff"
    entity: str = ""
    group: str = ""


@dataclass
class Config:
    """A whole run: data, model, training, evaluation, logging."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.log.run_dir) if self.log.run_dir else Path("runs") / self.log.tag


def source_slots(d: DataConfig) -> list[str]:
    """The model's source slots: every modality of an any-to-any run (the target's slot masked out), else
    `data.sources`."""
    return list(d.modalities) if d.any_to_any else list(d.sources)


def data_modalities(d: DataConfig) -> list[str]:
    """The modalities a run prepares and encodes, each once: sources, then what it synthesizes (the target, or a
    generation run's `targets`), or all of an any-to-any run."""
    return list(d.modalities) if d.any_to_any else [*d.sources, *d.generated]


MAX_SIZE = 1 << 16  # batch sizes and plane sizes beyond this cannot fit in any accelerator's memory


def _omegaconf_sentence(exc: OmegaConfBaseException, origin: str) -> str:
    """Turn an OmegaConf structured-config error into one sentence."""
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        section, _, name = str(key).rpartition(".")
        known = _known_keys(section)
        hint = f" (known keys: {', '.join(known)})" if known else ""
        return f"{origin}: unknown key '{key}'{hint}."
    if isinstance(exc, ValidationError):
        value = getattr(exc, "value", None)
        expected = _expected_type(str(key))
        return f"{origin}: bad value {value!r} for '{key}'; expected {expected}."
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{origin}: invalid config at '{key}' ({first})."


def _section_class(section: str):
    cls = Config
    for part in filter(None, section.split(".")):
        match = {f.name: f for f in fields(cls)}.get(part)
        if match is None or not is_dataclass(match.default_factory()):  # type: ignore[misc]
            return None
        cls = type(match.default_factory())  # type: ignore[misc]
    return cls


def _known_keys(section: str) -> list[str]:
    cls = _section_class(section)
    return [f.name for f in fields(cls)] if cls is not None else []


def _expected_type(key: str) -> str:
    section, _, name = key.rpartition(".")
    cls = _section_class(section)
    for f in fields(cls) if cls is not None else []:
        if f.name == name:
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
                t, f"a value of type {t}"
            )
    return "a value of the declared type"


def _check(ok: bool, origin: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{origin}: {message}")


def _choice(origin: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, origin, f"'{key}' is {value!r}; expected one of {', '.join(choices)}.")


def validate(cfg: Config, origin: str = "config") -> Config:
    """Check values that types alone cannot (choices, ranges, consistent sizes); return cfg."""
    d, m, t, e, lg = cfg.data, cfg.model, cfg.train, cfg.eval, cfg.log
    if t.amp in ("False", "false"):  # YAML 1.1 reads an unquoted `no` as false
        t.amp = "no"
    _choice(origin, "data.category", d.category, CATEGORIES)
    try:  # BraTS 2023 names (t1n, t2w, t2f, ...) and common spellings are the 2021 names everywhere after this
        d.sources, d.modalities, d.targets = (canonical_list(x) for x in (d.sources, d.modalities, d.targets))
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None
    d.target = canonical(d.target)
    _choice(origin, "model.precond", m.precond, tuple(PRECONDS))
    _choice(origin, "model.timestep_sampler", m.timestep_sampler, tuple(SCHEDULE_SAMPLERS))
    _choice(origin, "model.mask_ratio_fn", m.mask_ratio_fn, MASK_RATIO_FNS)
    _choice(origin, "train.amp", t.amp, AMP_MODES)
    _choice(origin, "train.device", t.device, DEVICES)
    _choice(origin, "eval.sampler", e.sampler, tuple(SAMPLERS))
    _check(e.churn == 0 or e.sampler in CHURN_SAMPLERS, origin, f"'eval.churn' is {e.churn:g} but 'eval.sampler' is "
           f"{e.sampler!r}, which samples deterministically; churn needs {' or '.join(CHURN_SAMPLERS)} (or churn 0).")
    if m.model_type.startswith("DiT-"):  # the original names map onto our sizes
        m.model_type = "PHMDiff-" + m.model_type[len("DiT-") :]
    _check(
        m.model_type in MODEL_PRESETS,
        origin,
        f"'model.model_type' is {m.model_type!r}; expected one of {', '.join(MODEL_PRESETS)}.",
    )
    positive = {
        "data.resolution": d.resolution,
        "data.num_channels": d.num_channels,
        "model.in_size": m.in_size,
        "model.in_channels": m.in_channels,
        "model.pyramid_levels": m.pyramid_levels,
        "model.autoencoder.steps": m.autoencoder.steps,
        "model.autoencoder.batchsize": m.autoencoder.batchsize,
        "train.batchsize": t.batchsize,
        "train.grad_accum": t.grad_accum,
        "train.max_num_steps": t.max_num_steps,
        "train.max_nonfinite_steps": t.max_nonfinite_steps,
        "eval.num_steps": e.num_steps,
        "eval.fine_num_steps": e.fine_num_steps,
        "eval.n_samples": e.n_samples,
        "log.log_every": lg.log_every,
        "log.ckpt_every": lg.ckpt_every,
        "log.keep_checkpoints": lg.keep_checkpoints,
    }
    for key, value in positive.items():
        _check(value > 0, origin, f"'{key}' is {value}; expected a positive number.")
    for key, value in {"train.batchsize": t.batchsize, "model.autoencoder.batchsize": m.autoencoder.batchsize,
                       "model.in_size": m.in_size, "data.resolution": d.resolution}.items():
        _check(value <= MAX_SIZE, origin, f"'{key}' is {value}; expected at most {MAX_SIZE} (memory is sized by it).")
    for key, value in {"train.seed": t.seed, "data.split_seed": d.split_seed}.items():
        _check(value < 2**63, origin, f"'{key}' is {value}; expected a whole number below 2**63.")
    non_negative = {
        "train.lr_rampup_kimg": t.lr_rampup_kimg,
        "train.ema_halflife_kimg": t.ema_halflife_kimg,
        "train.ema_rampup_ratio": t.ema_rampup_ratio,
        "train.weight_decay": t.weight_decay,
        "train.grad_clip": t.grad_clip,
        "train.unmasked_finetune_steps": t.unmasked_finetune_steps,
        "train.seed": t.seed,
        "model.mae_loss_coef": m.mae_loss_coef,
        "model.cross_granularity_weight": m.cross_granularity_weight,
        "model.coarse_aug_sigma": m.coarse_aug_sigma,
        "eval.every": e.every,
        "eval.num_val_slices": e.num_val_slices,
        "eval.sigma_start": e.sigma_start,
        "eval.guidance": e.guidance,
        "eval.churn": e.churn,
    }
    for key, value in non_negative.items():
        _check(math.isfinite(value) and value >= 0, origin, f"'{key}' is {value}; expected a number >= 0.")
    strictly_positive = {"train.lr": t.lr, "model.autoencoder.lr": m.autoencoder.lr, "model.sigma_data": m.sigma_data}
    for key, value in strictly_positive.items():
        _check(math.isfinite(value) and value > 0, origin, f"'{key}' is {value}; expected a number > 0.")
    for key, value in {
        "model.mask_ratio": m.mask_ratio,
        "model.mask_ratio_min": m.mask_ratio_min,
        "model.class_dropout_prob": m.class_dropout_prob,
    }.items():
        _check(0 <= value < 1, origin, f"'{key}' is {value}; expected a number in [0, 1).")
    _check(0 <= t.lr_cooldown <= 1, origin, f"'train.lr_cooldown' is {t.lr_cooldown}; expected a share of the steps "
           "in [0, 1].")
    _check(
        len(m.mask_block_sizes) > 0 and all(b >= 1 for b in m.mask_block_sizes),
        origin,
        f"'model.mask_block_sizes' is {list(m.mask_block_sizes)}; expected one or more positive whole numbers.",
    )
    _check(m.mean_net in ("", "unet"), origin, f"'model.mean_net' is {m.mean_net!r}; expected 'unet' or '' (off).")
    _check(not m.mean_net or bool(d.sources) or d.any_to_any, origin, "'model.mean_net' is set but the run has no "
           "sources (a generation run): the mean network predicts the target from sources; set model.mean_net=''.")
    _check(m.mean_loss in ("l1", "l2"), origin, f"'model.mean_loss' is {m.mean_loss!r}; expected l1 or l2.")
    _check(m.mean_loss_weight >= 0, origin, f"'model.mean_loss_weight' is {m.mean_loss_weight}; expected 0 or more.")
    _check(m.conv_head_width >= 0, origin, f"'model.conv_head_width' is {m.conv_head_width}; expected 0 (no head) "
           "or a positive number of channels.")
    _check(
        m.mask_ratio_min <= m.mask_ratio,
        origin,
        f"'model.mask_ratio_min' ({m.mask_ratio_min}) must not exceed 'model.mask_ratio' ({m.mask_ratio}).",
    )
    _check(
        len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
        origin,
        f"'train.adam_betas' is {list(t.adam_betas)}; expected two numbers in [0, 1).",
    )
    _check(
        t.batchsize % t.grad_accum == 0,
        origin,
        f"'train.batchsize' ({t.batchsize}) must be a multiple of 'train.grad_accum' ({t.grad_accum}).",
    )
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
    else:
        if d.targets:  # label-conditional generation
            _check(not d.sources, origin, f"'data.targets' ({list(d.targets)}) is for generation runs; set "
                   "'data.sources: []' to generate them by a modality label, or name one 'data.target' to translate.")
            if d.target not in d.targets:  # the default `flair` of a run that lists other modalities
                d.target = d.targets[0]
        _check(
            d.target not in d.sources,
            origin,
            f"'data.target' ({d.target!r}) is also listed in 'data.sources'; the target must be the missing "
            "modality.",
        )
    patch = int(m.model_type.rsplit("/", 1)[1])
    coarsest = m.in_size // 2 ** (m.pyramid_levels - 1)
    _check(
        m.in_size % (patch * 2 ** (m.pyramid_levels - 1)) == 0,
        origin,
        f"'model.in_size' ({m.in_size}) must be divisible by patch size x 2^(pyramid_levels-1) "
        f"= {patch * 2 ** (m.pyramid_levels - 1)} so every pyramid level has whole patches (coarsest {coarsest}).",
    )
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
        _check(
            m.in_channels == d.num_channels,
            origin,
            "an 'identity' autoencoder needs 'model.in_channels' == 'data.num_channels' (pixel-space diffusion).",
        )
    return cfg


def _from_container(data, origin: str, overrides: list[str]) -> Config:
    schema = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(schema, data)
    except OmegaConfBaseException as exc:
        raise ValueError(_omegaconf_sentence(exc, origin)) from None
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"override {item!r} is not of the form 'section.key=value'.")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ValueError(_omegaconf_sentence(exc, f"override {item!r}")) from None
        except Exception as exc:  # a malformed YAML value in the override
            raise ValueError(f"override {item!r} could not be parsed ({' '.join(str(exc).split())}).") from None
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ValueError(_omegaconf_sentence(exc, origin)) from None
    return validate(cfg, origin)  # type: ignore[arg-type]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when `path` is None), apply `a.b=c` overrides, validate."""
    overrides = list(overrides or [])
    if path is None:
        return _from_container({}, "defaults", overrides)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found.")
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ValueError(f"{path}: not a valid YAML file ({' '.join(str(exc).split())[:200]}).") from None
    if not OmegaConf.is_dict(data):
        raise ValueError(f"{path}: expected a mapping of sections (data, model, train, ...), not a list or value.")
    return _from_container(data, str(path), overrides)


def config_from_yaml(text: str, origin: str = "config") -> Config:
    """Parse a resolved config saved as YAML text (e.g. inside a checkpoint)."""
    try:
        data = OmegaConf.create(text)
    except Exception as exc:
        raise ValueError(f"{origin}: not valid YAML ({' '.join(str(exc).split())[:200]}).") from None
    return _from_container(data, origin, [])


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    atomic_write_text(path, to_yaml(cfg))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE [a.b=c ...] [--dry-run]` arguments shared by training commands."""
    parser.add_argument("--config", default=None, help="YAML config (configs/BraTS240.yaml, configs/demo.yaml, ...)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides such as train.lr=2e-4")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace) -> Config | None:
    """Load the config named by the arguments; on `--dry-run` print it and return None."""
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "dry_run", False):
        sys.stdout.write(to_yaml(cfg))
        return None
    return cfg
