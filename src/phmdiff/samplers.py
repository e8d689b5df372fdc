"""The samplers' facts, one entry each: what the config, the commands and the benchmarks may know of a sampler
without running it (network calls, stochasticity, the fewest steps that integrate the ODE).

Torch-free, so reading a config loads no network code; `sample.SAMPLERS` holds the functions under the same
names (a test keeps the two tables in step). A new sampler is one entry here, its function there, and its test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler's facts."""

    calls_per_step: int  # network evaluations per step
    stochastic: bool  # takes EDM's S_churn (noise added back before each step, Karras et al. 2022 Alg. 2)
    # Below this many steps from sigma_max the sampler cannot integrate the sampling ODE (Heun: one step from sigma
    # 80 to ~0 keeps about half the starting noise and the sample collapses toward the blurry conditional mean).
    min_steps: int = 1
    last_step_calls: int | None = None  # calls of the last step when it differs (Heun ends with an Euler step)
    doc: str = ""

    def network_calls(self, steps: int) -> int:
        """Network evaluations of a run of `steps` steps."""
        if steps <= 0:
            return 0
        last = self.calls_per_step if self.last_step_calls is None else self.last_step_calls
        return self.calls_per_step * (steps - 1) + last

    def steps_for_calls(self, calls: int) -> int:
        """The most steps whose network calls fit in `calls` (at least 1)."""
        steps = 1
        while self.network_calls(steps + 1) <= calls:
            steps += 1
        return steps


SAMPLER_SPECS = {
    "heun": SamplerSpec(2, True, min_steps=8, last_step_calls=1, doc="EDM Algorithm 2 (2nd order, Euler last step)"),
    "euler": SamplerSpec(1, True, doc="Euler on the probability-flow ODE (EDM Algorithm 2 without the correction)"),
    "dpmpp_2m": SamplerSpec(1, False, doc="DPM-Solver++(2M) (Lu et al. 2022), for few steps"),
    "ddim": SamplerSpec(1, False, doc="DDIM (Song et al. 2021), deterministic, first order"),
}
STOCHASTIC_SAMPLERS = tuple(name for name, spec in SAMPLER_SPECS.items() if spec.stochastic)


def sampler_spec(name: str) -> SamplerSpec:
    """The facts of sampler `name`, with a sentence when there is no such sampler."""
    if name not in SAMPLER_SPECS:
        raise ValueError(f"sampler {name!r} is unknown; expected one of {', '.join(SAMPLER_SPECS)}.")
    return SAMPLER_SPECS[name]


# A `ddpm` run may instead sample through its own Gaussian-diffusion loops (`diffusion/ddpm_sampling.py`) over the
# steps respace.space_timesteps keeps: "ddimN" (DDIM, N steps), "N" or "N1,N2,..." (ancestral).
RESPACING = re.compile(r"^(ddim[1-9]\d*|[1-9]\d*(,[1-9]\d*)*)$")


def check_respacing(respacing: str) -> str:
    """`respacing` if it names a spacing ("ddimN", "N" or "N1,N2,..."), else a sentence."""
    if not RESPACING.match(str(respacing)):
        raise ValueError(f"respacing {respacing!r} is not a spacing; expected ddimN (DDIM, N steps), N or N1,N2,... "
                         "(ancestral, N steps in total or per section), e.g. ddim25 or 250.")
    return str(respacing)
