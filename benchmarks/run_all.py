"""Run the four benchmarks (speed, quality, sampling, memory) in order, each in its own process, and write
their JSON to benchmarks/results/. `make bench` calls this; `--quick` runs the smoke-test sizes.

sampling.py comes after quality.py so that it reuses quality.py's trained PHMDiff run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("speed", "quality", "sampling", "memory")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute each on 2 cores)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    p.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results)")
    args, rest = p.parse_known_args(argv)
    failed = []
    for name in [s for s in SCRIPTS if s in args.only]:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else []),
               *(["--out-dir", args.out_dir] if args.out_dir else []), *rest]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        tic = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== {name}: exit {rc} after {time.perf_counter() - tic:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
