"""Train PHMDiff for a config: `python main.py --config configs/BraTS240.yaml [key=value ...]`.

Runs the whole chain (prepare -> train-ae -> encode -> train); each stage reuses its output when it is up to
date and training resumes from the newest valid checkpoint, so rerunning the same command continues a run.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from phmdiff.cli import _one_line
    from phmdiff.config import add_config_arguments, config_from_args
    from phmdiff.training import STAGES, run_pipeline

    parser = argparse.ArgumentParser(prog="main.py", description="run the PHMDiff training chain for a config")
    add_config_arguments(parser)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg is None:
            return 0
        stages = [s for s in args.stages.split(",") if s]
        run_pipeline(cfg, stages=stages, progress=not args.no_progress,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("main.py: interrupted.", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"main.py: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
