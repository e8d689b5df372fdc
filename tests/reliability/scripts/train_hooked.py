"""`phmdiff train ARGS` in a real process, with the loop's `step_hook` used to die or pause at a chosen step.

    python train_hooked.py [--kill-at S] [--pause-at S --control DIR] -- ARGS...

`--kill-at S`: SIGKILL this process when step S begins (after S steps and their checkpoints, mid-step S+1:
the loss is computed but no weight is updated). `--pause-at S`: when step S begins, create DIR/ready and wait
until DIR/go exists (60 s at most), so a test can act while the run holds its lock. Exits with the CLI's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--pause-at", type=int, default=None)
    parser.add_argument("--control", type=Path, default=None)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    train_args = argv[split + 1 :]

    from phmdiff.cli import main as cli_main
    from phmdiff.training import loop

    def hook(step, terms):
        if opts.kill_at is not None and step == opts.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if opts.pause_at is not None and step == opts.pause_at:
            (opts.control / "ready").write_text(f"{os.getpid()}\n")
            deadline = time.monotonic() + 60
            while not (opts.control / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return terms

    original = loop.train

    def train(cfg, resume="auto", progress=True, step_hook=None, **kwargs):
        return original(cfg, resume=resume, progress=progress, step_hook=hook, **kwargs)

    loop.train = train
    return cli_main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main())
