"""Inference on a trained run: loading it, encoding sources and decoding targets, and the sampling settings.

`translate`, `generate`, validation during training and the benchmarks share these helpers. Nothing here
imports the training package: checkpoints are read through `phmdiff.checkpoint_io` and the device is chosen
by `phmdiff.devices`, so inference works without the training stack (a test checks it).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from phmdiff.autoencoder import load_autoencoder
from phmdiff.checkpoint_io import load_checkpoint, load_state_dict_file, resolve_checkpoint
from phmdiff.config import SamplingConfig, config_from_yaml
from phmdiff.data.latent_cache import autoencoder_id
from phmdiff.devices import choose_device
from phmdiff.factory import build_denoiser
from phmdiff.masked_dit import masked_dit_config
from phmdiff.mean_net import MeanResidual
from phmdiff.plan import RunPlan, plan_of
from phmdiff.sample import check_churn, sample_pyramid
from phmdiff.samplers import SAMPLER_SPECS, check_respacing, sampler_spec
from phmdiff.std_calibration import recorded_std_scale
from phmdiff.windows import WindowedDenoiser


def autoencoder_path(cfg) -> Path:
    """Where the run's autoencoder lives: model.autoencoder.path, else RUN/autoencoder.safetensors."""
    if cfg.model.autoencoder.path:
        return Path(cfg.model.autoencoder.path)
    return cfg.run_dir / "autoencoder.safetensors"


def load_run_autoencoder(cfg, device) -> torch.nn.Module:
    """The autoencoder the latent cache was made with, frozen, on `device`."""
    path = autoencoder_path(cfg)
    if not path.exists():
        raise ValueError(f"{path}: autoencoder not found; run phmdiff train-ae first or set model.autoencoder.path.")
    return load_autoencoder(path).to(device).eval().requires_grad_(False)


def encode_sources(ae, images: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """Source images (N, n_src, H, W) in [-1, 1] -> scaled posterior means (N, n_src * C, h, w)."""
    n, n_src = images.shape[:2]
    z = ae.encode(images.reshape(n * n_src, 1, *images.shape[2:])).mean * latent_scale  # (N * n_src, C, h, w)
    return z.reshape(n, n_src * z.shape[1], *z.shape[2:])  # (N, n_src * C, h, w)


def decode_target(ae, z: torch.Tensor, latent_scale: float) -> torch.Tensor:
    """Target latents -> images in normalized units (N, 1, H, W); not clipped to [0, 1], since prepared slices
    keep intensities beyond the normalization percentiles (background and bright tails invert exactly)."""
    return (ae.decode(z / latent_scale).float() + 1) / 2


def plane_multiple(cfg) -> int:
    """What every side of an image plane must be a multiple of for this run: the autoencoder's downsampling
    factor x the patch size x 2^(pyramid levels - 1) (the coarsest level's tokens must tile the plane)."""
    ae_factor = max(1, int(cfg.data.resolution) // int(cfg.model.in_size))
    patch = masked_dit_config(cfg.model.model_type).patch_size
    return ae_factor * patch * 2 ** (cfg.model.pyramid_levels - 1)


@dataclass
class SamplingSettings(SamplingConfig):
    """The sampling settings of one run of the pyramid sampler (`config.SamplingConfig`), checked against the
    sampler's facts (`samplers.SAMPLER_SPECS`)."""

    MIN_HEUN_STEPS = SAMPLER_SPECS["heun"].min_steps

    def __post_init__(self) -> None:
        check_churn(self.sampler, self.churn)
        if self.respacing:
            check_respacing(self.respacing)
        spec = sampler_spec(self.sampler)
        if self.num_steps < spec.min_steps:
            warnings.warn(f"{self.sampler.capitalize()} with {self.num_steps} steps from sigma_max cannot integrate "
                          f"the sampling ODE (the samples collapse toward a blurry mean); use at least "
                          f"{spec.min_steps} steps, or ddim / dpmpp_2m for few steps.", stacklevel=3)

    @classmethod
    def resolve(cls, eval_cfg, sampler: str | None = None, steps: int | None = None,
                guidance: float | None = None, churn: float | None = None, fine_steps: int | None = None,
                sigma_start: float | None = None, respacing: str | None = None) -> SamplingSettings:
        """`cfg.eval` with the command line's choices on top; `--steps` also caps the finer levels' steps unless
        `fine_steps` is given. A sampler chosen on the command line that cannot churn samples deterministically
        unless churn is given. `respacing` "" turns the run's eval.respacing off."""
        base = {f.name: getattr(eval_cfg, f.name, f.default) for f in fields(SamplingConfig)}
        sampler = sampler or eval_cfg.sampler
        if churn is None:
            churn = eval_cfg.churn if sampler_spec(sampler).stochastic else 0.0
        if fine_steps is None:
            fine_steps = min(eval_cfg.fine_num_steps, steps or eval_cfg.fine_num_steps)
        return cls(**{**base, "sampler": sampler, "num_steps": steps or eval_cfg.num_steps,
                      "fine_num_steps": fine_steps,
                      "sigma_start": eval_cfg.sigma_start if sigma_start is None else sigma_start,
                      "guidance": eval_cfg.guidance if guidance is None else guidance, "churn": churn,
                      **({} if respacing is None else {"respacing": respacing})})

    def to_dict(self) -> dict:
        return asdict(self)


def sample_latents(denoiser, source: torch.Tensor, avail: torch.Tensor, target_label: torch.Tensor | None,
                   seeds: list[int], model_cfg, settings: SamplingSettings,
                   null_label: int | None = None) -> torch.Tensor:
    """Target latents (N, C, h, w) for the source latents (N, n_src * C, h, w): `sample_pyramid` over the
    run's pyramid (`model_cfg.pyramid_levels`, `model_cfg.in_channels`) with `settings`, one seed per sample;
    `null_label`: a generation run's null modality label, for guidance. A grid larger than the training grid
    (`model_cfg.in_size`) is denoised in blended windows of that size."""
    s = settings
    mean = scale = None
    if isinstance(denoiser, MeanResidual):  # mean + sampled residual (mean_net.py)
        source, avail, mean = denoiser.condition(source, avail, target_label)
        denoiser, scale = denoiser.denoiser, denoiser.scale
    window = getattr(model_cfg, "in_size", None)
    if window and max(source.shape[2:]) > window:
        denoiser = WindowedDenoiser(denoiser, window)
    z = sample_pyramid(denoiser, source, avail, target_label, seeds, model_cfg.pyramid_levels,
                       model_cfg.in_channels, s.sampler, s.num_steps, s.fine_num_steps, s.sigma_start, s.guidance,
                       null_label=null_label, churn=s.churn, respacing=s.respacing)
    return z if mean is None else mean + scale * z


def modality_label(modalities: list[str], name: str) -> int:
    """The model's label of modality `name`: its index among the run's prepared modalities."""
    if name not in modalities:
        raise ValueError(f"modality '{name}' is not one this run knows; expected one of {', '.join(modalities)}.")
    return modalities.index(name)


@dataclass
class TrainedRun:
    """A trained run ready for inference: EMA denoiser, autoencoder, config and run plan."""

    denoiser: torch.nn.Module
    autoencoder: torch.nn.Module
    cfg: object
    plan: RunPlan
    checkpoint: Path
    device: torch.device
    std_scale: float | None = None  # the checkpoint's validation std calibration (training.loop.validate)
    std_scale_refused: float | None = None  # a recorded factor the guard refused (`std_calibration`): not applied

    @property
    def latent_scale(self) -> float:
        return self.plan.latent_scale

    @property
    def target_label(self) -> int:
        """The target modality's index among the prepared modalities (the model's target label)."""
        return self.label_of(self.plan.target)

    def label_of(self, modality: str | None) -> int:
        """The model's target label of `modality` (its index among the prepared modalities)."""
        return modality_label(list(self.plan.modalities), modality)

    @property
    def generated(self) -> list[str]:
        """The modalities this run synthesizes (a label-conditional generation run's `data.targets`, every
        modality of an any-to-any run)."""
        return self.plan.generated

    @property
    def null_label(self) -> int | None:
        """A generation run's null label (its condition is the label, dropped for guidance); None when translating."""
        return None if self.plan.sources else len(self.plan.modalities)

    def settings(self, sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                 churn: float | None = None, fine_steps: int | None = None,
                 sigma_start: float | None = None, respacing: str | None = None) -> SamplingSettings:
        """The run's `cfg.eval` sampling settings with the command line's choices on top."""
        if respacing and self.cfg.model.precond != "ddpm":
            raise ValueError(f"--respacing {respacing} samples a ddpm run through its own loops; this run's "
                             f"model.precond is {self.cfg.model.precond!r}.")
        return SamplingSettings.resolve(self.cfg.eval, sampler, steps, guidance, churn, fine_steps, sigma_start,
                                        respacing)

    def sample(self, source: torch.Tensor, avail: torch.Tensor, seeds: list[int],
               settings: SamplingSettings, target: str | None = None, label: int | None = None) -> torch.Tensor:
        """Target latents for source latents, with this run's denoiser, pyramid and target label (the run's own
        target, or `target` for an any-to-any run, or the label index `label`)."""
        if label is None:
            label = self.label_of(target or self.plan.target)
        label = torch.full((source.shape[0],), label, device=self.device)
        return sample_latents(self.denoiser, source, avail, label, seeds, self.cfg.model, settings, self.null_label)


def load_trained(run: str | Path, device: str = "auto", which: str = "best", ema: bool = True,
                 state_dict: str | Path | None = None) -> TrainedRun:
    """Load the EMA weights (or with `ema=False` the raw ones) of a run's best (or last) checkpoint, or of a
    checkpoint folder, and the autoencoder it was trained with. `state_dict`: a .pth / .pt file whose weights
    replace the checkpoint's (`checkpoint_io.load_state_dict_file`)."""
    path = resolve_checkpoint(run, which)
    ckpt = load_checkpoint(path)
    cfg = config_from_yaml(ckpt.config_yaml, origin=str(path / "config.yaml"))
    plan = plan_of(ckpt.meta, plane_multiple(cfg), str(path / "meta.json"))
    if not cfg.model.autoencoder.path:  # the autoencoder lives beside the checkpoints of its run
        beside = path.parent.parent / "autoencoder.safetensors"
        cfg.model.autoencoder.path = str(beside) if beside.exists() else ""
    ae_path = autoencoder_path(cfg)
    if ae_path.exists() and autoencoder_id(ae_path) != plan.data["autoencoder_id"]:
        raise ValueError(f"{ae_path}: this autoencoder is not the one the checkpoint {path} was trained with "
                         "(its sha256 differs); point model.autoencoder.path at the right one.")
    state = (ckpt.ema_state if ema else None) or ckpt.model_state
    if state_dict is not None:
        state = load_state_dict_file(state_dict, like=state)
    if not any(".decoder_cond_embed." in k for k in state):  # written before source-aware mask tokens existed
        cfg.model.source_aware_mask_tokens = False
    dev = choose_device(device)
    denoiser = build_denoiser(cfg, len(plan.sources), len(plan.modalities))
    denoiser.load_state_dict(state)
    denoiser = denoiser.to(dev).eval().requires_grad_(False)
    # the std calibration was fitted on the checkpoint's EMA weights: none for the raw ones or weights loaded over
    val = ckpt.meta.get("validation") if ema and state_dict is None else None
    scale, refused = recorded_std_scale(val)  # a factor outside the plausible range is no calibration at all
    return TrainedRun(denoiser, load_run_autoencoder(cfg, dev), cfg, plan, path, dev, scale, refused)
