"""Devices, processes and mixed precision: a thin layer over Hugging Face Accelerate.

One process per device. Under `torchrun` or `accelerate launch` the process group is set up by
Accelerate (NCCL on CUDA, gloo on CPU). Only rank 0 writes files; every process ends through
`cleanup()` so no rank exits while another still waits in a collective.
"""

from __future__ import annotations

import contextlib
import os
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from phmdiff.devices import choose_device

AMP_TO_ACCELERATE = {"bf16": "bf16", "fp16": "fp16", "no": "no"}


def launched_distributed() -> bool:
    """True when started by torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: a GPU that supports it, or a CPU with AVX512-BF16 or AMX. Without
    them CPU bf16 is emulated: a training step of the demo's model cost 19.3 CPU s in bf16 against 1.2 in fp32 on
    an AVX2-only CPU, where AVX512-BF16 made bf16 the faster (0.76 vs 1.01)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return cpu_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: no way to tell, so no bf16
        return False


def cpu_has_bf16(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists a native bf16 instruction set (AVX512-BF16 or AMX-BF16)."""
    flags = set(cpuinfo.split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> str:
    """The mixed precision Accelerate should use: fp16 needs a GPU; bf16 runs on CPU autocast too; `auto` is bf16
    where the device computes it natively (`native_bf16`), else full precision."""
    if amp == "auto":
        return "bf16" if native_bf16(device) else "no"
    if amp not in AMP_TO_ACCELERATE:
        raise ValueError(f"train.amp is {amp!r}; expected auto, bf16, fp16 or no.")
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("train.amp=fp16 needs a GPU; on the CPU use train.amp=bf16 or train.amp=no.")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use train.amp=fp16 or train.amp=no.")
    return AMP_TO_ACCELERATE[amp]


def setup_accelerator(amp: str = "no", grad_accum: int = 1, device: str = "auto", log_with=None, project_dir=None):
    """An `accelerate.Accelerator` for this process: precision, gradient accumulation, DDP (gloo on CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    chosen = choose_device(device)
    cpu = chosen.type == "cpu"
    if cpu and launched_distributed() and not dist.is_initialized():
        # Accelerate picks gloo for multi-process CPU runs; a generous timeout covers slow validation on rank 0.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    # Some parameters get no gradient in some steps (the mask token when mask_ratio is 0, e.g. in the unmasked
    # fine-tune; the coarse-level inputs at the coarsest level), which DDP refuses unless told to look for them.
    kwargs = [InitProcessGroupKwargs(timeout=timedelta(minutes=30)),
              DistributedDataParallelKwargs(find_unused_parameters=True)]
    if not launched_distributed():
        # Accelerate keeps one precision per process; a second training in the same process (a benchmark's
        # variants, a notebook) may ask for another one, which it refuses unless its shared state is reset.
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision=resolve_amp(amp, chosen),
        gradient_accumulation_steps=grad_accum,
        kwargs_handlers=kwargs,
        log_with=log_with,
        project_dir=project_dir,
    )


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int, rank_offset: int = 0) -> None:
    """Seed Python, NumPy and torch; each rank gets its own stream so data augmentation differs."""
    seed = seed + rank_offset
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels: needed for bit-identical resume; slower on GPUs."""
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def cleanup() -> None:
    """Clean exit: wait for every rank, then tear the process group down (avoids hangs and NCCL warnings)."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
