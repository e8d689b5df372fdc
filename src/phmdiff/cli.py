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

from safetensors import SafetensorError  # a full disk or corrupt file inside safetensors raises this

# command -> (module, one-line help), in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantom": ("phmdiff.data.phantom", "write a synthetic brain or pelvis dataset as NIfTI"),
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
    """The argument parser of one subcommand and the module that runs it."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"phmdiff {command}", description=help_)
    module.add_arguments(parser)
    if not any("--threads" in action.option_strings for action in parser._actions):
        parser.add_argument("--threads", type=int, default=0,
                            help="torch CPU threads (default 0: every available core, or OMP_NUM_THREADS when set)")
    return parser, module


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: file or folder not found."
    if isinstance(exc, PermissionError) and exc.filename:
        return f"{exc.filename}: permission denied."
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}."
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from phmdiff import __version__

        print(f"phmdiff {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"phmdiff: error: unknown command '{command}'; run 'phmdiff --help' for the list.", file=sys.stderr)
        return 2
    parser, module = build_parser(command)
    args = parser.parse_args(rest)
    try:
        from phmdiff.threads import set_threads

        set_threads(getattr(args, "threads", 0))  # every command uses the available cores unless told otherwise
        return int(module.run(args) or 0)
    except KeyboardInterrupt as exc:  # a training run says where it saved; its exit code names the signal
        print(f"phmdiff {command}: {exc or 'interrupted.'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except (ValueError, OSError, RuntimeError, SafetensorError) as exc:  # user-facing failures: one sentence
        print(f"phmdiff {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
