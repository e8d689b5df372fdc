"""MaskDiT's mask-ratio schedules against their closed forms (Zheng et al. 2023)."""

import math

import pytest

from phmdiff.config import load_config
from phmdiff.mask_ratio import MASK_RATIO_FNS, get_mask_ratio_fn, mask_ratio_at


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


def test_the_config_offers_exactly_the_schedules():
    for name in MASK_RATIO_FNS:
        assert load_config(None, [f"model.mask_ratio_fn={name}"]).model.mask_ratio_fn == name
    with pytest.raises(ValueError, match="'model.mask_ratio_fn' is 'cosine9'; expected one of constant, linear"):
        load_config(None, ["model.mask_ratio_fn=cosine9"])
