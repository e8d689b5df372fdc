"""The `phmdiff plan DATA` command: print what prepare will do to a dataset and write it as JSON
(`phmdiff.fingerprint` computes it). The settings are prepare's flags, or a run config's (`--config`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phmdiff.data.prepare import add_settings_arguments, resolve_subjects, settings_from_args
from phmdiff.fingerprint import dataset_plan, format_plan, write_plan
from phmdiff.options import add_overwrite, add_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="input folder (BraTS 2021/2023, BIDS, SynthRAD, generic, PNG folders)")
    parser.add_argument("--config", default=None,
                        help="take the settings from a run config (data.resolution, data.min_foreground, "
                        "modalities), as main.py prepares, instead of the flags below")
    add_settings_arguments(parser)
    parser.add_argument("--json", default="plan.json", help="where the plan is written as JSON")
    add_overwrite(parser, "replace a --json file that is not a plan")
    add_progress(parser, "nothing until the plan is printed")


def run(args: argparse.Namespace) -> int:
    if args.config:
        from phmdiff.config import load_config  # torch-free until a config is named
        from phmdiff.training import prepare_settings

        cfg = load_config(args.config, [])
        settings = prepare_settings(cfg)
        modalities = settings.volume.modalities
    else:
        settings, modalities = settings_from_args(args), args.modalities
    root = Path(args.root)
    layout, subjects, modalities = resolve_subjects(root, settings, modalities)
    plan = dataset_plan(root, layout, subjects, modalities, settings.volume, progress=not args.no_progress)
    print(format_plan(plan))
    write_plan(plan, Path(args.json), args.overwrite)
    print(f"{args.json}: plan written.", file=sys.stderr)
    return 0
