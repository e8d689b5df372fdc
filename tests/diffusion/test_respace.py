"""Timestep respacing: kept steps, respaced schedules and the timestep map seen by the model."""

import numpy as np
import pytest
import torch

from phmdiff.diffusion import create_diffusion
from phmdiff.diffusion import gaussian_diffusion as gd
from phmdiff.diffusion.respace import SpacedDiffusion, space_timesteps


def test_ddim50_on_1000_steps_keeps_every_20th():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim1000") == set(range(1000))


def guided_diffusion_space_timesteps(num_timesteps, section_counts):
    """guided-diffusion's respace.space_timesteps for section counts, written out as the original has it."""
    if isinstance(section_counts, str):
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        if section_count <= 1:
            frac_stride = 1
        else:
            frac_stride = (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("counts, num, expected", [
    ("10", 100, set(range(0, 100, 11))),  # stride 99/9 = 11: first and last kept
    ([1, 2], 100, {0, 50, 99}),  # two sections of 50
    ("2,2", 7, {0, 3, 4, 6}),  # sections of 4 and 3 steps
    ([1000], 1000, set(range(1000))),
])
def test_section_counts(counts, num, expected):
    assert space_timesteps(num, counts) == expected


@pytest.mark.parametrize("counts, num", [("10,15,20", 300), ("250", 1000), ("10,20,30", 1000), ("7,13", 50),
                                         ("3,3,3,3,3", 37), ("25", 25), ("1,1", 10), ("100,100", 1000)])
def test_section_counts_keep_the_steps_guided_diffusion_keeps(counts, num):
    assert space_timesteps(num, counts) == guided_diffusion_space_timesteps(num, counts)


def test_accumulated_stride_keeps_step_149_of_10_15_20_on_300():
    """The running sum of the stride 99/14 reaches 49.4999..., not 49.5, at the 8th step of the middle section:
    guided-diffusion keeps step 149 there, where multiplying the stride (7 * 99/14 = 49.5) would keep 150."""
    kept = space_timesteps(300, "10,15,20")
    assert 149 in kept and 150 not in kept
    assert [len([k for k in kept if lo <= k < lo + 100]) for lo in (0, 100, 200)] == [10, 15, 20]


def test_section_count_sizes():
    kept = space_timesteps(1000, "250")
    assert len(kept) == 250 and min(kept) == 0 and max(kept) == 999


@pytest.mark.parametrize("bad", ["ddim7", "11", "0", "ten", "5,x"])
def test_bad_respacing_is_refused(bad):
    with pytest.raises(ValueError):
        space_timesteps(10, bad)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("respacing", ["ddim50", "10,20,30", "250"])
def test_respaced_alphas_cumprod_equal_base_at_kept_steps(schedule, respacing):
    base = create_diffusion("", noise_schedule=schedule)
    spaced = create_diffusion(respacing, noise_schedule=schedule)
    kept = sorted(space_timesteps(1000, respacing))
    assert spaced.num_timesteps == len(kept) and spaced.timestep_map == kept
    # An independent product of (1 - beta) over the base betas, up to each kept step.
    expected = np.array([np.prod(1 - base.betas[: k + 1]) for k in kept])
    np.testing.assert_allclose(spaced.alphas_cumprod, expected, rtol=1e-10)
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)


class Recorder:
    """An epsilon model that knows x_start and the base schedule, recording the timesteps it sees."""

    def __init__(self, base, x_start):
        self.base, self.x_start, self.seen = base, x_start, []

    def __call__(self, x, t, **kwargs):
        self.seen.append(t.tolist())
        assert kwargs == {"y": 1}
        ab = torch.from_numpy(self.base.alphas_cumprod)[t].reshape(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x_start) / (1 - ab).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)  # learned-sigma output


def test_spaced_model_sees_original_timesteps_and_samples_exactly():
    base = create_diffusion("", diffusion_steps=1000)
    spaced = create_diffusion("ddim25")
    x_start = torch.rand(2, 1, 2, 2, dtype=torch.float64) - 0.5
    model = Recorder(base, x_start)
    out = spaced.ddim_sample_loop(model, x_start.shape, noise=torch.randn_like(x_start), model_kwargs={"y": 1})
    assert [s[0] for s in model.seen] == list(range(960, -1, -40))
    torch.testing.assert_close(out, x_start, rtol=1e-9, atol=1e-9)
    model.seen.clear()
    terms = spaced.training_losses(model, x_start, torch.tensor([0, 24]), model_kwargs={"y": 1})
    assert model.seen == [[0, 960]]  # mapped once, not twice
    assert float(terms["mse"].abs().max()) < 1e-18


def test_create_diffusion_options():
    d = create_diffusion("", learn_sigma=False, sigma_small=True, predict_xstart=True, noise_schedule="cosine",
                         diffusion_steps=100)
    assert d.model_var_type == gd.ModelVarType.FIXED_SMALL and d.model_mean_type == gd.ModelMeanType.START_X
    assert d.num_timesteps == 100 and d.loss_type == gd.LossType.MSE
    assert create_diffusion(None, learn_sigma=False).model_var_type == gd.ModelVarType.FIXED_LARGE
    assert create_diffusion("", use_kl=True).loss_type == gd.LossType.RESCALED_KL
    d = create_diffusion("", rescale_learned_sigmas=True, predict_v=True)
    assert d.loss_type == gd.LossType.RESCALED_MSE and d.model_mean_type == gd.ModelMeanType.VELOCITY
    with pytest.raises(ValueError, match="not both"):
        create_diffusion("", predict_xstart=True, predict_v=True)
    with pytest.raises(ValueError, match="subset"):
        SpacedDiffusion({5}, betas=np.full(3, 0.1), model_mean_type=gd.ModelMeanType.EPSILON,
                        model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
