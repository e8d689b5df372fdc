"""Sample from a trained run: `python generate.py --model-path RUN --output-dir OUT [--seeds 0-63] [--label M]`.

The original code's usage, kept; it runs `phmdiff generate` (PNG files, a PNG grid and a NIfTI stack).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from phmdiff.cli import _one_line
    from phmdiff.devices import DEVICES
    from phmdiff.generate import generate, parse_seeds
    from phmdiff.sample import SAMPLERS

    parser = argparse.ArgumentParser(prog="generate.py", description="sample slices from a trained PHMDiff run")
    parser.add_argument("--model-path", required=True, help="run folder, checkpoint folder, or a checkpoint's "
                        "model.safetensors (as the original usage writes it) or ema.safetensors")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seeds", default="0-63")
    parser.add_argument("--num-steps", "--steps", dest="steps", type=int, default=None)
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=None)
    parser.add_argument("--cfg-scale", "--guidance", dest="guidance", type=float, default=None)
    parser.add_argument("--label", default=None, metavar="MODALITY", help="modality to generate (default the run's "
                        "target)")
    parser.add_argument("--condition", choices=("none", "val", "test", "train"), default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--no-nearest", action="store_true", help="grid without the nearest training slices")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        meta = generate(args.model_path, args.output_dir, parse_seeds(args.seeds), args.steps, args.sampler,
                        args.guidance, args.condition, args.batch_size, args.device, args.overwrite, args.label,
                        not args.no_nearest)
    except KeyboardInterrupt:
        print("generate.py: interrupted.", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"generate.py: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"{args.output_dir}: {len(meta['seeds'])} samples written.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
