"""Timestep samplers: uniform, and loss-second-moment importance sampling alone and across gloo ranks."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from phmdiff.diffusion import create_diffusion
from phmdiff.diffusion.timestep_sampler import (
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)


def small_diffusion(T=8):
    return create_diffusion("", noise_schedule="cosine", diffusion_steps=T)


def test_uniform_sampler():
    s = create_named_schedule_sampler("uniform", small_diffusion())
    assert isinstance(s, UniformSampler)
    t, w = s.sample(4000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 7 and torch.all(w == 1)
    counts = torch.bincount(t, minlength=8).double()
    assert float((counts / 4000 - 1 / 8).abs().max()) < 5 * (1 / 8 * 7 / 8 / 4000) ** 0.5
    with pytest.raises(ValueError, match="Unknown schedule sampler"):
        create_named_schedule_sampler("importance", small_diffusion())


def _expected_weights(history, uniform_prob=0.001):
    w = np.sqrt((np.asarray(history, dtype=np.float64) ** 2).mean(axis=1))
    return w / w.sum() * (1 - uniform_prob) + uniform_prob / len(w)


def test_loss_second_moment_resampler_weights_and_importance():
    s = LossSecondMomentResampler(small_diffusion(), history_per_term=3)
    np.testing.assert_array_equal(s.weights(), np.ones(8))  # uniform until every term has 3 losses
    # Losses 1..4 at each t, scaled by (t + 1); the history keeps the last three: 2, 3, 4 times (t + 1).
    for k in range(1, 5):
        s.update_with_local_losses(torch.arange(8), torch.arange(1, 9, dtype=torch.float32) * k)
    expected = _expected_weights([[2 * (t + 1), 3 * (t + 1), 4 * (t + 1)] for t in range(8)])
    np.testing.assert_allclose(s.weights(), expected, rtol=1e-12)
    t, w = s.sample(20000, generator=torch.Generator().manual_seed(1))
    p = expected / expected.sum()
    torch.testing.assert_close(w, torch.from_numpy(1 / (8 * p[t.numpy()])).float())
    freq = np.bincount(t.numpy(), minlength=8) / 20000
    assert np.abs(freq - p).max() < 5 * np.sqrt(p * (1 - p) / 20000).max()


def _rank_main(rank, world, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s = LossSecondMomentResampler(small_diffusion(4), history_per_term=2)
        # Unequal batch sizes across ranks: rank 0 sees t = 0, 1; rank 1 sees t = 2, 3, 0, 1, 2.
        if rank == 0:
            ts, losses = torch.tensor([0, 1]), torch.tensor([1.0, 2.0])
        else:
            ts, losses = torch.tensor([2, 3, 0, 1, 2]), torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0])
        s.update_with_local_losses(ts, losses)
        s.update_with_local_losses(torch.tensor([3]), torch.tensor([8.0 + rank]))
        results[rank] = s.weights()
    finally:
        dist.destroy_process_group()


def test_loss_second_moment_resampler_gathers_across_ranks(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    # In rank order: t=0: 1, 5; t=1: 2, 6; t=2: 3, 7; t=3: 4, then 8 and 9 (history 2 keeps 8 and 9).
    expected = _expected_weights([[1, 5], [2, 6], [3, 7], [8, 9]])
    np.testing.assert_allclose(results[0], expected, rtol=1e-6)
    np.testing.assert_allclose(results[1], expected, rtol=1e-6)
