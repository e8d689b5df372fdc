"""Device choice shared by training and inference: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import sys

import torch

from phmdiff.options import DEVICES  # noqa: F401  (the choices every command offers, defined with the options)


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _instead(origin: str) -> str:
    """How to choose another device, said where the choice was made: a flag or a config key."""
    return f"pass {origin} auto or cpu" if origin.startswith("--") else f"set {origin}=auto or cpu"


def choose_device(preference: str = "auto", origin: str = "train.device") -> torch.device:
    """CUDA, then Apple MPS, then CPU; an explicit choice that is not available is refused with a sentence that
    names where it was made (`origin`: the flag `--device` or the config key `train.device`)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{origin} is 'cuda' but no CUDA GPU is available; {_instead(origin)}.")
    if preference == "mps" and not mps_available():
        raise ValueError(f"{origin} is 'mps' but Apple MPS is not available; {_instead(origin)}.")
    if preference not in DEVICES:
        raise ValueError(f"device {preference!r} is unknown; expected one of {', '.join(DEVICES)}.")
    return torch.device(preference)


def run_device(preference: str, command: str, log=None, origin: str = "train.device") -> torch.device:
    """The device a command runs on, announced in one line; a requested GPU that is absent is a warning and the
    run goes on on the CPU (a config written for a GPU machine still runs on a laptop, slowly, and says so).
    `origin` names where the choice was made: the config key `train.device` or the flag `--device`."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    asker = f"{origin} asks" if origin.startswith("--") else "the config asks"
    if preference == "cuda" and not torch.cuda.is_available():
        log(f"phmdiff {command}: warning: {asker} for device 'cuda' but no CUDA GPU is available; "
            f"running on the CPU instead ({_instead(origin)} to silence this).")
        preference = "cpu"
    elif preference == "mps" and not mps_available():
        log(f"phmdiff {command}: warning: {asker} for device 'mps' but Apple MPS is not available; "
            f"running on the CPU instead ({_instead(origin)} to silence this).")
        preference = "cpu"
    device = choose_device(preference)
    log(f"phmdiff {command}: running on {describe_device(device)}")
    return device


def describe_device(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200, 139.8 GiB)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
