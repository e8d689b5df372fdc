"""The PHMDiff training objective over a latent pyramid (masked DiT of MaskDiT, Zheng et al. 2023, on
Burt-Adelson pyramids).

Each call picks one pyramid level. At level l the network sees the noisy target at level l, the source latents
at level l and, when l is not the coarsest, the target of level l+1 upsampled and noised (conditioning
augmentation, so sampling tolerates its own imperfect coarse results). The same examples are also seen one
level coarser, at the same noise level, for the cross-granularity term (`losses.phmdiff_loss`).
"""

from __future__ import annotations

import torch
from torch import nn

from phmdiff.losses import phmdiff_loss
from phmdiff.masked_dit import keep_condition
from phmdiff.mean_net import MeanResidual
from phmdiff.pyramid import gaussian_pyramid
from phmdiff.sample import level_kwargs


def _augment(x: torch.Tensor, max_sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Conditioning augmentation: per example, Gaussian noise with sigma ~ U(0, max_sigma)."""
    if max_sigma <= 0:
        return x
    n = x.shape[0]
    sigma = torch.rand(n, generator=generator).to(x) * max_sigma
    noise = torch.randn(x.shape, generator=generator).to(x)
    return x + sigma.reshape(n, 1, 1, 1) * noise


def pyramid_loss(denoiser, source: torch.Tensor, target: torch.Tensor, avail: torch.Tensor,
                 target_label: torch.Tensor | None, *, levels: int, mask_ratio: float, mae_loss_coef: float = 0.1,
                 class_dropout_prob: float = 0.1, coarse_aug_sigma: float = 0.5,
                 cross_granularity_weight: float = 0.05, loss_fn=None,
                 generator: torch.Generator | None = None, null_label: int | None = None, loss_on: str = "visible",
                 level: int | None = None) -> dict:
    """PHMDiff training terms for one batch at a random pyramid level (and the same examples one level coarser).

    `source` (N, n_src*C, H, W) and `target` (N, C, H, W) are latents at level 0, `avail` (N, n_src). `loss_fn`
    is the formulation's per-level denoising loss (`factory.LOSSES`; EDM's when None). With `null_label` (a
    generation run, whose condition is the modality label) condition dropout also puts the null label in place of
    `target_label`, as MaskDiT drops its class label for classifier-free guidance. `level` chooses the level (a
    schedule's); None draws it. `loss_on`: the tokens the denoising loss counts (visible | all). Returns
    {"loss", "denoise", "mae", "level"[, "coarse_loss", "cross_granularity"]} as scalars.
    """
    drawn = int(torch.randint(levels, (1,), generator=generator))  # drawn either way: the later draws stay put
    level = drawn if level is None else int(level)
    if not 0 <= level < levels:
        raise ValueError(f"level {level} is outside the pyramid's {levels} levels.")
    src_pyr = gaussian_pyramid(source, levels)  # finest first
    tgt_pyr = gaussian_pyramid(target, levels)
    # One dropout draw for both levels: an example without its condition loses it at the coarse level too.
    keep = (torch.rand(target.shape[0], generator=generator) >= class_dropout_prob).to(target.device)  # (N,)
    if null_label is not None and target_label is not None:
        label = torch.as_tensor(target_label, device=target.device).long().reshape(-1).expand(target.shape[0])
        target_label = torch.where(keep, label, torch.full_like(label, null_label))  # (N,)

    def kwargs_at(l: int) -> dict:
        coarse = _augment(tgt_pyr[l + 1], coarse_aug_sigma, generator) if l + 1 < levels else None
        return keep_condition(level_kwargs(src_pyr, coarse, l, avail, target_label), keep)

    coarse_x = coarse_kw = None
    if level + 1 < levels and cross_granularity_weight > 0:
        coarse_x, coarse_kw = tgt_pyr[level + 1], kwargs_at(level + 1)
    fine_kw = kwargs_at(level)
    terms, _ = phmdiff_loss(denoiser, tgt_pyr[level], fine_kw, mask_ratio=mask_ratio, mae_loss_coef=mae_loss_coef,
                            coarse_x_start=coarse_x, coarse_kwargs=coarse_kw,
                            cross_granularity_weight=cross_granularity_weight, generator=generator, loss_fn=loss_fn,
                            loss_on=loss_on)
    terms["level"] = torch.tensor(float(level))
    return terms


class PyramidObjective(nn.Module):
    """`pyramid_loss` as one module call, the module that DDP wraps during training.

    The objective evaluates the denoiser twice per batch (a level and the same examples one level coarser).
    DDP's gradient reducer expects one forward per backward, so it must wrap this whole objective, not the
    denoiser; the denoiser itself still knows nothing of losses. The loss options are typed constructor
    arguments and `loss_fn` the formulation's loss (`factory.build_objective` reads them from the config).
    """

    def __init__(self, denoiser: nn.Module, levels: int, mae_loss_coef: float = 0.1, class_dropout_prob: float = 0.1,
                 coarse_aug_sigma: float = 0.5, cross_granularity_weight: float = 0.05, loss_fn=None,
                 null_label: int | None = None, mean_loss_weight: float = 1.0, mean_loss: str = "l2",
                 loss_on: str = "visible"):
        super().__init__()
        self.denoiser = denoiser
        self.loss_fn = loss_fn
        self.mean_loss_weight, self.mean_loss = float(mean_loss_weight), mean_loss
        self.options = dict(levels=int(levels), mae_loss_coef=float(mae_loss_coef),
                            class_dropout_prob=float(class_dropout_prob), coarse_aug_sigma=float(coarse_aug_sigma),
                            cross_granularity_weight=float(cross_granularity_weight), null_label=null_label,
                            loss_on=loss_on)

    def forward(self, source, target, avail, target_label, mask_ratio: float, generator=None, level=None) -> dict:
        if not isinstance(self.denoiser, MeanResidual):
            return pyramid_loss(self.denoiser, source, target, avail, target_label, mask_ratio=mask_ratio,
                                loss_fn=self.loss_fn, generator=generator, level=level, **self.options)
        # Mean and residual (CorrDiff): the mean network learns E[target | sources] by regression; the diffusion
        # learns target - mean given the sources and the mean, which it sees detached.
        source, avail, mu = self.denoiser.condition(source, avail, target_label)
        residual = target - mu.detach()
        if self.training:
            self.denoiser.track(residual)
        terms = pyramid_loss(self.denoiser.denoiser, source, residual / self.denoiser.scale, avail, target_label,
                             mask_ratio=mask_ratio, loss_fn=self.loss_fn, generator=generator, level=level,
                             **self.options)
        error = mu - target
        terms["mean"] = torch.mean(error.abs() if self.mean_loss == "l1" else error**2)
        terms["loss"] = terms["loss"] + self.mean_loss_weight * terms["mean"]
        return terms
