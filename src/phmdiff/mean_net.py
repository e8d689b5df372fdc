"""Mean and residual: a regression network for E[target | sources], and the diffusion model for what is left.

As CorrDiff does it (Mardani et al. 2024, "Residual corrective diffusion modeling for km-scale atmospheric
downscaling"): a deterministic U-Net predicts the conditional mean `mu(sources)`; the pyramid masked diffusion
model denoises the residual `target - mu`, conditioned on the sources and on `mu` (one more source slot);
a translation is `mu + sampled residual`. The n-sample mean then starts from a regression-quality estimate and the
samples' spread is the model's uncertainty about the residual.

Here the two are trained jointly (one optimizer, one checkpoint, one EMA): the regression loss trains `mu`, and the
diffusion sees `mu` detached, so its gradients never reach the mean network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanNet(nn.Module):
    """E[target latent | source latents] by a 2D convolutional U-Net (MONAI's BasicUNet).

    Input: the source latents (N, n_src * C, h, w), their availability (N, n_src) as constant channels and, when the
    run serves several targets, the target label one-hot (N, num_targets) the same way. Any plane size: the input
    is padded to a multiple of the U-Net's downsampling (16), and to at least 32 so that its deepest level keeps
    more than one pixel for instance norm, and the output cropped back.
    """

    MULTIPLE, MIN_SIDE = 16, 32  # BasicUNet downsamples 4 times

    def __init__(self, num_sources: int, channels: int, num_targets: int = 1,
                 features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)):
        super().__init__()
        from monai.networks.nets import BasicUNet

        if len(features) != 6 or min(features) < 1:
            raise ValueError(f"model.mean_net_features is {list(features)}; expected 6 positive channel counts "
                             "(BasicUNet: 5 encoder levels and the output block).")
        self.num_sources, self.channels, self.num_targets = num_sources, channels, num_targets
        extra = num_sources + (num_targets if num_targets > 1 else 0)
        self.unet = BasicUNet(spatial_dims=2, in_channels=num_sources * channels + extra, out_channels=channels,
                              features=tuple(features))

    def forward(self, source: torch.Tensor, avail: torch.Tensor,
                target_label: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = source.shape
        planes = [source, avail.to(source.dtype)[:, :, None, None].expand(n, -1, h, w)]
        if self.num_targets > 1:
            label = torch.zeros(n, dtype=torch.long, device=source.device) if target_label is None else (
                torch.as_tensor(target_label, device=source.device).long().reshape(-1).expand(n))
            planes.append(F.one_hot(label.clamp(0, self.num_targets - 1), self.num_targets).to(source.dtype)[
                :, :, None, None].expand(n, -1, h, w))
        x = torch.cat(planes, dim=1)  # (N, n_src * C + n_src [+ T], h, w)
        ph, pw = (max(self.MIN_SIDE, -(-s // self.MULTIPLE) * self.MULTIPLE) - s for s in (h, w))
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        y = self.unet(x)  # (N, C, h + ph, w + pw)
        return y[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]  # (N, C, h, w)


class MeanResidual(nn.Module):
    """The mean network and the residual's preconditioned denoiser, held (and checkpointed, EMA'd) as one module.

    `denoiser` is D(x, sigma, **cond) for the residual, with the mean as its last source slot; calling this module
    calls it, so code that only denoises needs nothing else. `condition` turns the sources into the residual
    model's condition and returns the mean to add back.

    With `normalize`, the diffusion sees the residual divided by `residual_std`, a running estimate of its
    standard deviation (updated by `track`, a buffer, so checkpoints and the EMA copy carry it): the residual is
    many times smaller than the target, and EDM's preconditioning (sigma_data) and noise levels assume unit-scale
    data. A translation is then `mean + residual_std * sampled residual`.
    """

    MOMENTUM = 0.99  # the running std follows the shrinking residual over about a hundred steps

    def __init__(self, mean_net: MeanNet, denoiser: nn.Module, normalize: bool = True):
        super().__init__()
        self.mean_net, self.denoiser, self.normalize = mean_net, denoiser, bool(normalize)
        if self.normalize:
            self.register_buffer("residual_std", torch.ones(()))

    @torch.no_grad()
    def track(self, residual: torch.Tensor) -> None:
        """Update the running std with one training batch's residual (N, C, h, w)."""
        if self.normalize:
            self.residual_std.mul_(self.MOMENTUM).add_((1 - self.MOMENTUM) * residual.float().std())

    @property
    def scale(self) -> torch.Tensor | float:
        """What the diffusion's unit-scale residual is multiplied by to be the residual (1 without `normalize`)."""
        return self.residual_std if self.normalize else 1.0

    def forward(self, x, sigma, **model_kwargs):
        return self.denoiser(x, sigma, **model_kwargs)

    def condition(self, source: torch.Tensor, avail: torch.Tensor, target_label: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(source with the mean appended (N, (n_src + 1) * C, h, w), avail with a 1 appended (N, n_src + 1),
        the mean (N, C, h, w))."""
        mu = self.mean_net(source, avail, target_label)
        return torch.cat([source, mu.detach()], dim=1), torch.cat([avail, avail.new_ones(avail.shape[0], 1)], 1), mu
