"""One run per run folder: an advisory lock that dies with its process.

The lock is `RUN/.lock`, held with `fcntl.flock` (released by the kernel when the holder dies, even by
SIGKILL) and holding the owner's pid and host for the error message. Where `flock` is unavailable the
pid is checked instead, so a stale lock from a dead process is taken over in both cases.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from phmdiff.fsutil import pid_alive

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def _read_owner(path: Path) -> tuple[int | None, str]:
    try:
        pid_text, _, host = path.read_text().strip().partition(" ")
        return int(pid_text), host
    except (OSError, ValueError):
        return None, ""


class RunLock:
    """Exclusive lock on a run folder; `acquire()` refuses with a sentence if another live process holds it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None
        self.took_over_from: int | None = None  # pid of a dead previous owner, if any

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous_pid, previous_host = _read_owner(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid, host = _read_owner(self.path)
                raise ValueError(
                    f"{self.run_dir}: run folder is in use by process {pid} on {host or 'this machine'} "
                    f"(lock {self.path}); stop that run or choose another run folder."
                ) from None
        elif (
            previous_pid is not None
            and previous_pid != os.getpid()
            and previous_host == socket.gethostname()
            and pid_alive(previous_pid)
        ):
            os.close(fd)
            raise ValueError(
                f"{self.run_dir}: run folder is in use by process {previous_pid} (lock {self.path}); "
                "stop that run or choose another run folder."
            )
        if previous_pid is not None and previous_pid != os.getpid():
            self.took_over_from = previous_pid  # the old owner is gone: its lock was stale
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
