"""Evaluation: metrics, named protocols, distribution metrics, ensembles, `phmdiff evaluate` and `phmdiff report`."""

from phmdiff.eval.metrics import mae, mean_error, ms_ssim, psnr, ssim
from phmdiff.eval.protocols import PROTOCOLS, evaluate_subject

__all__ = ["PROTOCOLS", "evaluate_subject", "mae", "mean_error", "ms_ssim", "psnr", "ssim"]
