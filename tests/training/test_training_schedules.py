import math

import pytest

from phmdiff.training.schedules import MASK_RATIO_FNS, get_mask_ratio_fn, lr_at, mask_ratio_at


@pytest.mark.parametrize("x", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_mask_ratio_schedules_match_closed_forms(x):
    scale, low = 0.5, 0.1
    expected = {
        "constant": scale,
        "linear": (scale - low) * x + low,
        "exp": (scale - low) * math.exp(-7 * x) + low,
        **{f"cosine{k}": (scale - low) * math.cos(math.pi * x / 2) ** k + low for k in range(2, 7)},
    }
    assert set(expected) == set(MASK_RATIO_FNS)
    for name, value in expected.items():
        assert get_mask_ratio_fn(name, scale, low)(x) == pytest.approx(value, abs=1e-12)


def test_cosine_schedules_fall_from_scale_to_min():
    fn = get_mask_ratio_fn("cosine4", 0.75, 0.25)
    assert fn(0.0) == pytest.approx(0.75) and fn(1.0) == pytest.approx(0.25)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="cosine9"):
        get_mask_ratio_fn("cosine9")


def test_unmasked_finetune_phase_at_the_end():
    kw = dict(max_num_steps=100, unmasked_finetune_steps=20, name="linear", ratio_scale=0.5, ratio_min=0.1)
    assert mask_ratio_at(0, **kw) == pytest.approx(0.1)
    assert mask_ratio_at(40, **kw) == pytest.approx(0.1 + 0.4 * 40 / 80)
    assert mask_ratio_at(79, **kw) > 0
    assert mask_ratio_at(80, **kw) == 0.0 and mask_ratio_at(99, **kw) == 0.0


def test_lr_rampup_is_linear_in_images():
    assert lr_at(0, 32, 1e-3, 0) == 1e-3
    assert lr_at(10, 32, 1e-3, 1.28) == pytest.approx(1e-3 * 320 / 1280)
    assert lr_at(1000, 32, 1e-3, 1.28) == pytest.approx(1e-3)


def test_lr_cooldown_falls_linearly_to_zero_over_the_last_steps():
    # 10 steps, cool-down 0.3: ceil(3) steps at 3/3 .. 1/3 of the rate, after the ramp-up (4 steps of 100 images)
    lrs = [lr_at(s, 100, 1.0, 0.4, max_num_steps=10, lr_cooldown=0.3) for s in range(10)]
    assert lrs == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 2 / 3, 1 / 3])
    assert lr_at(5, 100, 1.0, 0, max_num_steps=10, lr_cooldown=1.0) == pytest.approx(0.5)
    assert [lr_at(s, 100, 1.0, 0, max_num_steps=10) for s in range(10)] == [1.0] * 10
