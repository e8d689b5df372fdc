"""Sample from a trained run: `python generate.py --model-path RUN --output-dir OUT [--seeds 0-63] [--label M]`.

The original code's usage, kept: the same options as `phmdiff generate` (PNG files, a labelled PNG grid and a
NIfTI stack), under the original names too, and the options every entry point shares (`phmdiff.options`).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from phmdiff import generate as gen
    from phmdiff.options import add_threads, new_parser, run_entry
    from phmdiff.threads import set_threads

    parser = new_parser("generate.py", "sample slices from a trained PHMDiff run")
    gen.add_arguments(parser)
    add_threads(parser)

    def body() -> int:
        args = parser.parse_args(argv)
        set_threads(args.threads)
        return gen.run(args)

    return run_entry("generate.py", body)


if __name__ == "__main__":
    sys.exit(main())
