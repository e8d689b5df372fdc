"""Typed run configuration: YAML read with OmegaConf, checked against dataclasses (`config_checks.py`).

The sections follow the original MaskDiT configs (`data`, `model`, `train`,
`eval`, `log`, `wandb`). Unknown keys and bad values are refused with one
sentence that names the file, the key and what was expected; `a.b=c`
overrides are applied on top of the file; the resolved config is saved beside
every run and inside every checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from phmdiff.config_checks import AE_FACTORS, MAX_SIZE, validate  # noqa: F401 - read through the config
from phmdiff.fsutil import atomic_write_text


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
    # A fixed split instead of the random one: JSON {"train": [ids], "val": [...], "test": [...]} or lines
    # `<id> <split>` (`phmdiff prepare --split-file`); every subject must be named. Empty: the random split by
    # val_fraction / test_fraction.
    split_file: str = ""
    fit: str = "pad"  # pad | resize: to data.resolution by centred pad/crop, or padded square and resized
    # How the target's intensities are normalized. relative: by its sources' parameters, so translate inverts it
    # exactly from the subject's own sources, as long as the target/source gain ratio holds across scanners.
    # own: by its own foreground median like every other modality, which keeps training targets consistent when
    # the gain ratio varies (real scanners); translate then estimates the scale from the sources through the
    # training subjects' gain ratios.
    target_norm: str = "relative"
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
    denoise_loss_on: str = "visible"  # the tokens the denoising loss counts: visible (MaskDiT) | all (masked ones too)
    level_schedule: str = "random"  # the pyramid level each step trains: random | cycle (step % pyramid_levels)
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
class SamplingConfig:
    """How the pyramid is sampled: the sampler, its steps at the coarsest and the finer levels, the noise level
    finer levels restart from, the classifier-free guidance scale (1 = none) and EDM's S_churn. The `eval`
    section's sampling keys; `inference.SamplingSettings` is this with the command line's choices on top."""

    sampler: str = "heun"
    num_steps: int = 18
    fine_num_steps: int = 8  # steps at levels finer than the coarsest
    sigma_start: float = 2.0  # noise added to the upsampled coarse result before refining it
    guidance: float = 1.0
    churn: float = 0.0  # EDM's S_churn for heun / euler: stochastic sampling (noise added back each step); 0: none
    # A `ddpm` run only: sample through its own Gaussian-diffusion loops over the steps this spacing keeps
    # (ddimN: DDIM with N steps; N or N1,N2,...: ancestral), instead of `sampler` on the sigma axis. "": off.
    respacing: str = ""


@dataclass
class EvalConfig(SamplingConfig):
    """Validation during training and the default sampling settings (original `eval` section)."""

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
