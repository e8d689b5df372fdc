"""The sampling options of every command that samples (`phmdiff translate`, `phmdiff generate`, the root
generate.py), defined once: the sampler, its steps at the coarsest and at the finer pyramid levels, the noise
level finer levels restart from, EDM's churn, the guidance scale and the arithmetic. Each one left out keeps
the run's own `eval` setting (`inference.SamplingSettings.resolve`). The command line parses each number once
(`phmdiff.argtypes`); `SamplingChoices` checks the same values when they come from Python (`phmdiff.api`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields

from phmdiff.argtypes import COUNT, finite_float
from phmdiff.sample import SAMPLERS
from phmdiff.samplers import check_respacing


def _respacing(text: str) -> str:
    """An argparse type: a spacing (`samplers.check_respacing`), or "" for none."""
    if text == "":
        return text
    try:
        return check_respacing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SamplingChoices:
    """The command line's sampling choices; None keeps the run's `eval` setting. Checked when made."""

    sampler: str | None = None
    steps: int | None = None
    fine_steps: int | None = None
    sigma_start: float | None = None
    churn: float | None = None
    guidance: float | None = None
    respacing: str | None = None

    def __post_init__(self) -> None:
        if self.respacing is not None and self.respacing != "":
            check_respacing(self.respacing)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler is {self.sampler!r}; expected one of {', '.join(SAMPLERS)}.")
        for flag, value in (("--steps", self.steps), ("--fine-steps", self.fine_steps)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag} is {value}; expected a positive number of sampling steps.")
        checks = (("--sigma-start", self.sigma_start, lambda v: v > 0, "a noise level above 0"),
                  ("--churn", self.churn, lambda v: v >= 0, "a number >= 0 (0: deterministic sampling)"),
                  ("--guidance", self.guidance, lambda v: True, "a finite scale (1: no guidance)"))
        for flag, value, ok, expected in checks:
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and ok(value)):
                raise ValueError(f"{flag} is {value}; expected {expected}.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SamplingChoices:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def settings(self, trained):
        """The run's `cfg.eval` sampling settings with these choices on top (`inference.SamplingSettings`)."""
        return trained.settings(self.sampler, self.steps, self.guidance, self.churn, fine_steps=self.fine_steps,
                                sigma_start=self.sigma_start, respacing=self.respacing)


def add_sampling_arguments(parser: argparse.ArgumentParser, original_names: bool = False) -> None:
    """Add --sampler, --steps, --fine-steps, --sigma-start, --churn, --guidance and --precision to `parser`;
    `original_names` also accepts the original code's --num-steps and --cfg-scale."""
    group = parser.add_argument_group("sampling (default: the run's eval settings)")
    group.add_argument("--sampler", choices=tuple(SAMPLERS), default=None,
                       help="sampler; default the run's eval.sampler")
    group.add_argument("--steps", *(["--num-steps"] if original_names else []), dest="steps", type=COUNT, default=None,
                       help="sampling steps at the coarsest pyramid level (also caps the finer levels' steps); "
                       "default the run's eval.num_steps")
    group.add_argument("--fine-steps", type=COUNT, default=None,
                       help="sampling steps at each finer pyramid level; default the run's eval.fine_num_steps")
    group.add_argument("--sigma-start", type=finite_float(0, 1000, lo_open=True), default=None,
                       help="noise level a finer level restarts from (the upsampled coarser result, partly "
                       "noised); default the run's eval.sigma_start")
    group.add_argument("--churn", type=finite_float(0, 1000), default=None,
                       help="EDM's S_churn for heun / euler: noise added back before each step (0: deterministic); "
                       "default the run's eval.churn")
    group.add_argument("--guidance", *(["--cfg-scale"] if original_names else []), dest="guidance",
                       type=finite_float(0, 100), default=None,
                       help="classifier-free guidance scale W (1: none); default the run's eval.guidance")
    group.add_argument("--respacing", type=_respacing, default=None,
                       help="a ddpm run: sample through its own DDPM loop over these steps (ddimN: DDIM with N "
                       "steps; N or N1,N2,...: ancestral), e.g. ddim25; '' turns the run's eval.respacing off; "
                       "default the run's eval.respacing")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="the denoiser's arithmetic: fp32, or bf16 autocast")
