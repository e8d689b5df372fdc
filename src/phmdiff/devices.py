"""Device choice shared by training and inference: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import torch

# The device choices every command offers; "auto" picks the first available of the others, in this order.
DEVICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(preference: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit choice that is not available is refused with a sentence."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use train.device=auto or cpu.")
    if preference == "mps" and not mps_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use train.device=auto or cpu.")
    if preference not in DEVICES:
        raise ValueError(f"device {preference!r} is unknown; expected one of {', '.join(DEVICES)}.")
    return torch.device(preference)
