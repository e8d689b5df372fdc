"""Train PHMDiff for a config: `python main.py --config configs/BraTS240.yaml [key=value ...]`.

Runs the whole chain (prepare -> train-ae -> encode -> train); each stage reuses its output when it is up to
date and training resumes from the newest valid checkpoint, so rerunning the same command continues a run.
The options every entry point shares (threads, device, progress, allow-config-change) come from
`phmdiff.options`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from phmdiff.config import add_config_arguments, config_from_args
    from phmdiff.options import add_allow_config_change, add_device, add_progress, add_threads, new_parser, run_entry
    from phmdiff.threads import set_threads
    from phmdiff.training import STAGES, run_pipeline

    parser = new_parser("main.py", "run the PHMDiff training chain for a config")
    add_config_arguments(parser)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    add_device(parser, None, "sets train.device (default: the config's)")
    add_threads(parser)
    add_progress(parser, "a line every log.log_every steps instead")
    add_allow_config_change(parser)

    def body() -> int:
        args = parser.parse_args(argv)
        set_threads(args.threads)
        if args.device:
            args.overrides = [*args.overrides, f"train.device={args.device}"]
        cfg = config_from_args(args)
        if cfg is None:
            return 0
        stages = [s for s in args.stages.split(",") if s]
        run_pipeline(cfg, stages=stages, progress=not args.no_progress,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True),
                     allow_config_change=args.allow_config_change)
        return 0

    return run_entry("main.py", body)


if __name__ == "__main__":
    sys.exit(main())
