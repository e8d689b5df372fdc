"""Numbers checked where they enter: argparse types for every numeric option, and the environment variables.

A NaN guidance or an `inf` sigma used to travel into sampling and come out as an all-NaN volume with exit 0;
an `inf` voxel limit ended in a traceback. Every float option of every command is parsed by `finite_float`
and every integer option that sizes work by `whole`: a value that is not a finite number in its range is one
sentence from argparse and exit 2, before any work. No torch here: `--help` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os


def _range_text(lo: float, hi: float, lo_open: bool) -> str:
    if math.isinf(hi):
        return f"{'above' if lo_open else 'at least'} {lo:g}"
    return f"from {lo:g} {'(excluded) ' if lo_open else ''}to {hi:g}"


def finite_float(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False):
    """An argparse `type`: a finite float in [lo, hi] ((lo, hi] with `lo_open`), else a sentence."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; expected a number "
                                             f"{_range_text(lo, hi, lo_open)}.") from None
        if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected a finite number "
                                             f"{_range_text(lo, hi, lo_open)}.")
        return value

    parse.__name__ = "number"
    return parse


def whole(lo: int, hi: int):
    """An argparse `type`: a whole number in [lo, hi], else a sentence (`1e3` and `2.5` are not whole)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; expected one from {lo} to "
                                             f"{hi}.") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected a whole number from {lo} to "
                                             f"{hi}.")
        return value

    parse.__name__ = "whole number"
    return parse


SEED = whole(0, 2**63 - 1)
COUNT = whole(1, 1_000_000)  # steps, samples, subjects, batch sizes: a million is past any real use


def env_whole(name: str, default: int, lo: int, hi: int) -> int:
    """Environment variable `name` as a whole number in [lo, hi] (`1e8` accepted when whole), `default` when
    unset or empty, else a ValueError sentence."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or not lo <= value <= hi:
        raise ValueError(f"{name} is {text!r}; expected a whole number from {lo:,} to {hi:,}.")
    return int(value)


def check_environment() -> None:
    """Parse every environment variable phmdiff reads once, at the start of a command: a bad one is a sentence
    and exit 2 before any work."""
    from phmdiff.limits import max_voxels

    max_voxels()
