"""SIGINT and SIGTERM during training: finish the step, save a resumable checkpoint, exit 130 or 143.

The handler only records the signal; the loop checks it between steps, where the weights, optimizer, EMA
and data position agree, so the checkpoint resumes exactly like any other. A second signal is not caught:
it stops the process at once, as the user asked twice.
"""

from __future__ import annotations

import signal
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Catch SIGINT/SIGTERM (main thread only) and remember the first one in `signum`."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        self.restore()  # a second signal acts as usual

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed(self, accelerator) -> bool:
        """Whether any process was signalled; every rank stops at the same step."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        import torch

        flag = torch.tensor([0.0 if self.signum is None else float(self.signum)], device=accelerator.device)
        flag = accelerator.reduce(flag, "max")
        if self.signum is None and float(flag) > 0:
            self.signum = int(float(flag))
        return float(flag) > 0

    def interrupted(self, step: int, where) -> TrainingInterrupted:
        name = signal.Signals(self.signum or signal.SIGINT).name
        return TrainingInterrupted(
            f"interrupted by {name} at step {step}; saved a resumable checkpoint in {where} "
            "(continue with --resume auto).", EXIT_CODES.get(self.signum, 130))
