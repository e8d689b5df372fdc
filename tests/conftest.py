"""Suite-wide settings: one intra-op thread, the test tiers and the shared tiny run.

The tests use tiny tensors, where torch's thread pool costs more than it saves
and, on a busy 2-core machine, made single tests up to 40x slower. The variable
is set before torch is imported so subprocesses (CLI runs, torchrun ranks)
inherit it too.

Tiers (`make test-fast` runs the first, `make test` all three), assigned here so a new test lands in its tier
without a marker:
- unit: no mark; no training, seconds in all.
- integration: trains or reads a trained run: uses the `tiny_run` fixture, or its own or one of its fixtures'
  code trains (`TRAINS`: a training entry point, the `train` / `demo` commands, an optimizer, a benchmark's
  quick run, processes started to train or be killed), or it is marked `slow`.
- reliability: everything under tests/reliability/ (crashes, signals, fuzzing, DDP).
"""

import inspect
import os
import re
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


import pytest  # noqa: E402

from phmdiff.diffusion.edm import EDMPrecond  # noqa: E402
from phmdiff.masked_dit import build_masked_dit  # noqa: E402


def tiny_pyramid_denoiser(seed: int = 0, levels: int = 2) -> EDMPrecond:
    """A 2-level, 1-source, 2-channel MaskedDiT with random weights (no adaLN-Zero identity), in EDMPrecond."""
    net = build_masked_dit("PHMDiff-T/2", input_size=8, latent_channels=2, num_sources=1, num_levels=levels,
                           num_targets=2, hidden_size=32, depth=2, num_heads=2, decoder_depth=1,
                           decoder_hidden_size=32, decoder_num_heads=2)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return EDMPrecond(net)


RELIABILITY = Path(__file__).parent / "reliability"
# What trains, in a test's or a fixture's own code: a training entry point (`.train(` is nn.Module's mode switch),
# the `train` / `demo` commands, an optimizer, a benchmark's quick run, or a process that trains or is killed.
TRAINS = re.compile(r"(?<![\w.])(run_pipeline|train|train_autoencoder|trained_run|run_demo|segcheck)\("
                    r"|\w\(\s*\[?\s*[\"'](train|train-ae|demo)[\"']\s*,"  # a command line: main(["train", ...
                    r"|torch\.optim\.\w+\(|[\"']--quick[\"']|gpu_check\.sh|Popen\(|mp\.spawn\(|torchrun")


def _trains(func, seen: dict) -> bool:
    if func not in seen:
        try:
            seen[func] = bool(TRAINS.search(inspect.getsource(func)))
        except (OSError, TypeError):
            seen[func] = False
    return seen[func]


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: trains or reads a trained run (set by tests/conftest.py)")
    config.addinivalue_line("markers", "reliability: tests/reliability/ (set by tests/conftest.py)")


def pytest_collection_modifyitems(config, items):
    """Mark each test `reliability`, `integration` or neither (the unit tier): see the module docstring."""
    seen: dict = {}
    for item in items:
        if RELIABILITY in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        funcs = [getattr(item, "function", None)] + [d.func for fds in defs.values() for d in fds]
        if ("tiny_run" in getattr(item, "fixturenames", ()) or item.get_closest_marker("slow")
                or any(f is not None and _trains(f, seen) for f in funcs)):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def tiny_denoiser() -> EDMPrecond:
    return tiny_pyramid_denoiser()


TINY = Path(__file__).parent / "training" / "tiny.yaml"
# Pixel space (identity autoencoder) keeps the shared run fast; test_entry_points covers the learned autoencoder.
PIXEL = ["data.resolution=16", "model.in_size=16", "model.in_channels=1", "model.autoencoder.preset=identity"]


def tiny_config(root: Path, *overrides: str, run: str = "run"):
    """The tiny pixel-space config on the phantom under `root`, with the run in `root / run`."""
    from phmdiff.config import load_config

    return load_config(TINY, [*PIXEL, f"data.root={root / 'ph'}", f"data.prepared={root / 'prep'}",
                              f"data.cache={root / 'lat'}", f"log.run_dir={root / run}", *overrides])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run (EDM, 4 steps) made once per session: root / {ph, prep, lat, run}. Read it, never
    write into it (copy what a test changes)."""
    from phmdiff.data.phantom import write_phantom
    from phmdiff.training import run_pipeline

    root = tmp_path_factory.mktemp("tiny_run")
    write_phantom(root / "ph", "brain", n_subjects=4, shape=(16, 16, 16), seed=1)
    run_pipeline(tiny_config(root), progress=False, log=lambda m: None)
    return root
