
import pytest

from phmdiff.training.schedules import lr_at


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
