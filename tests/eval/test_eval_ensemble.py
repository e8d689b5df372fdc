"""eval/ensemble.py: metrics of single samples vs their mean, and the std-error correlation."""

import numpy as np
import pytest

from phmdiff.eval.ensemble import evaluate_ensemble, uncertainty_error_correlation


def test_correlation_closed_forms():
    mask = np.ones(50, bool)
    e = np.linspace(0, 1, 50)
    out = uncertainty_error_correlation(2 * e + 1, e, mask)
    assert out["pearson"] == pytest.approx(1.0) and out["spearman"] == pytest.approx(1.0)
    assert uncertainty_error_correlation(-e, e, mask)["spearman"] == pytest.approx(-1.0)
    nan = uncertainty_error_correlation(np.ones(50), e, mask)  # a constant std says nothing
    assert np.isnan(nan["pearson"]) and np.isnan(nan["spearman"])
    masked = mask.copy()
    masked[:25] = False
    assert uncertainty_error_correlation(e**2, e, masked)["spearman"] == pytest.approx(1.0)


def test_ensemble_mean_beats_single_samples_and_std_points_at_errors():
    rng = np.random.default_rng(3)
    ref = 100 + 300 * rng.random((20, 20, 8))
    head = np.ones(ref.shape, bool)
    sigma = np.linspace(1, 40, ref.size).reshape(ref.shape)  # the model is unsure where it errs more
    samples = [ref + sigma * rng.standard_normal(ref.shape) for _ in range(8)]
    out = evaluate_ensemble(samples, ref, mask=head)
    assert out["n_samples"] == 8
    assert out["mean_psnr"] > out["single_psnr_mean"] + 3  # averaging 8 samples: ~9 dB better
    assert out["std_error_pearson"] > 0.3 and out["std_error_spearman"] > 0.3
    flat = uncertainty_error_correlation(np.ones(ref.shape), ref, head)
    assert np.isnan(flat["pearson"])
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate_ensemble(samples[:1], ref)
