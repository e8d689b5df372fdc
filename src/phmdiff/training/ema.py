"""Exponential moving average of weights with a half-life counted in images (EDM, Karras et al. 2022)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(batchsize: int, cur_nimg: int, ema_halflife_kimg: float, ema_rampup_ratio: float = 0.0) -> float:
    """EDM's decay: beta = 0.5 ** (batch / halflife_nimg), the half-life capped by ramp-up ratio x images seen."""
    ema_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio > 0:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup_ratio)
    return 0.5 ** (batchsize / max(ema_nimg, 1e-8))


class EMA(nn.Module):
    """A frozen copy of a network, updated as ema = beta * ema + (1 - beta) * net after each step."""

    def __init__(self, model: nn.Module, ema_halflife_kimg: float = 500.0, ema_rampup_ratio: float = 0.05):
        super().__init__()
        self.ema_halflife_kimg = ema_halflife_kimg
        self.ema_rampup_ratio = ema_rampup_ratio
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, cur_nimg: int, batchsize: int) -> float:
        """Move the average towards `model` after `cur_nimg` images were seen; return the beta used."""
        beta = ema_beta(batchsize, cur_nimg, self.ema_halflife_kimg, self.ema_rampup_ratio)
        for p_ema, p_net in zip(self.module.parameters(), model.parameters(), strict=True):
            p_ema.copy_(p_net.detach().to(p_ema.dtype).lerp(p_ema, beta))
        # Buffers (e.g. normalization statistics, latent scales) are copied, not averaged.
        for b_ema, b_net in zip(self.module.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b_net)
        return beta

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
