"""Suite-wide settings: one intra-op thread.

The tests use tiny tensors, where torch's thread pool costs more than it saves
and, on a busy 2-core machine, made single tests up to 40x slower. The variable
is set before torch is imported so subprocesses (CLI runs, torchrun ranks)
inherit it too.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
