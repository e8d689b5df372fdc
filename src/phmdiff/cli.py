"""The `phmdiff` command: one subcommand per pipeline stage.

Each subcommand lives in its own module, which exposes `add_arguments(parser)`
and `run(args) -> int`. Modules are imported only when their command runs, so
`phmdiff --help` is instant and one stage's dependencies never slow another.
User errors (`ValueError`, missing files, permissions) become one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from phmdiff.options import add_threads, fill_shared_help, has_option, new_parser, one_line, run_entry

# command -> (module, one-line help), in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("phmdiff.data.phantom", "write a synthetic brain or pelvis dataset as NIfTI"),
    "plan": ("phmdiff.plan_command", "show what prepare will do: geometry, slice axis, crops, intensities (JSON too)"),
    "prepare": ("phmdiff.data.prepare", "turn NIfTI/PNG volumes into normalized training slices"),
    "train-ae": ("phmdiff.training.train_ae", "train the autoencoder on prepared slices"),
    "encode": ("phmdiff.data.latent_cache", "fill the latent cache with a trained autoencoder"),
    "train": ("phmdiff.training.loop", "train PHMDiff on the latent cache"),
    "translate": ("phmdiff.translate", "synthesize the missing modality of NIfTI volumes"),
    "generate": ("phmdiff.generate", "sample slices to PNG grids and NIfTI"),
    "evaluate": ("phmdiff.eval.evaluate", "compute metrics of predictions against references"),
    "report": ("phmdiff.eval.report", "write an HTML report for a run or an evaluation"),
    "segcheck": ("phmdiff.eval.segcheck", "tumour segmentation Dice with the real vs the synthesized target"),
    "demo": ("phmdiff.demo", "run the whole chain on the built-in phantom"),
}


class UserError(ValueError):
    """A problem with the user's input, reported as one sentence."""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: phmdiff COMMAND [options]   (phmdiff COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def build_parser(command: str) -> tuple[argparse.ArgumentParser, object]:
    """The argument parser of one subcommand (its own options, then the shared ones it lacks) and its module."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = new_parser(f"phmdiff {command}", help_)
    module.add_arguments(parser)
    if not has_option(parser, "--threads"):
        add_threads(parser)
    fill_shared_help(parser)
    return parser, module


_one_line = one_line  # the name other modules imported before phmdiff.options existed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        return run_entry("phmdiff", lambda: print(_usage()) or (0 if argv else 2))
    if argv[0] in ("-V", "--version"):
        from phmdiff import __version__

        return run_entry("phmdiff", lambda: print(f"phmdiff {__version__}"))
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"phmdiff: error: unknown command '{command}'; run 'phmdiff --help' for the list.", file=sys.stderr)
        return 2
    parser, module = build_parser(command)

    def body() -> int:
        from phmdiff.threads import set_threads

        try:
            args = parser.parse_args(rest)
        except SystemExit as exc:  # argparse said why on stderr; a caller of main() gets the code, not an exception
            return int(exc.code or 0) if isinstance(exc.code, int) or exc.code is None else 2
        set_threads(getattr(args, "threads", 0))  # every command uses the available cores unless told otherwise
        return int(module.run(args) or 0)

    return run_entry(f"phmdiff {command}", body)


if __name__ == "__main__":
    sys.exit(main())
