"""Write checkpoints in a loop until killed: the victim of the crash-during-checkpoint-write test.

    python ckpt_churn.py RUN_DIR

Resumes from the newest valid checkpoint of RUN_DIR (or step 0) and saves step s+1, s+2, ... where every tensor
holds the step number, so a reader can tell a checkpoint whose parts come from different steps. Prints
"saved S" after each save returns.
"""

from __future__ import annotations

import sys

import torch

from phmdiff.training.checkpoint import capture_rng_state, find_latest, load_checkpoint, save_checkpoint

NUMEL = 1 << 19  # 2 MiB of float32 per tensor: writes take long enough to be interrupted


def expected(step: int) -> dict:
    return {
        "model": {"w": torch.full((NUMEL,), float(step)), "b": torch.arange(7.0) + step},
        "ema": {"w": torch.full((NUMEL,), step + 0.5), "b": torch.arange(7.0) - step},
        "optimizer": {"state": {0: {"exp_avg": torch.full((NUMEL,), -float(step))}}, "param_groups": [{"lr": 0.1}]},
        "config": f"train:\n  step: {step}\n",
    }


def main(run_dir: str) -> None:
    latest = find_latest(run_dir)
    step = load_checkpoint(latest).step if latest else 0
    while True:
        step += 1
        e = expected(step)
        save_checkpoint(run_dir, step, e["model"], {"optimizer": e["optimizer"], "rng": capture_rng_state()},
                        e["config"], ema_state=e["ema"], meta={"note": "churn"}, best=step % 3 == 0, keep=3)
        print(f"saved {step}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
