"""CPU threads for every command: the cores this process may use, set before torch needs them.

No torch import here: a command that never loads torch (phantom, prepare, a refused input) stays small, and
torch reads OMP_NUM_THREADS when it loads.
"""

from __future__ import annotations

import math
import os
import sys


def available_cores() -> int:
    """CPU cores this process may use: its affinity set, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:  # cgroup v2 "max 100000" or "200000 100000": quota / period cores
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_threads(threads: int = 0) -> int:
    """Torch intra-op threads: `threads` > 0 as given; 0 uses every available core, unless OMP_NUM_THREADS says
    otherwise (then torch's own choice, which follows it). Returns the number in use. Before torch is loaded
    this only sets OMP_NUM_THREADS, which torch follows when it loads."""
    if threads < 0:
        raise ValueError(f"--threads is {threads}; expected 0 (every available core) or more.")
    if threads == 0 and not os.environ.get("OMP_NUM_THREADS"):
        threads = available_cores()
    if "torch" not in sys.modules:
        if threads > 0:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            return threads
        try:
            return max(1, int(os.environ["OMP_NUM_THREADS"]))
        except ValueError:
            return available_cores()
    import torch

    if threads > 0 and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()
