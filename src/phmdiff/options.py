"""The options every entry point shares, defined once: `main.py`, the root `generate.py` and each `phmdiff`
command take their threads, device, overwrite, allow-config-change and progress flags from here, with the same
spelling, help text and default, and end the same way (one sentence and exit 2 for a user error, 130 on Ctrl-C,
quietly when the reader of a pipe goes away).

No torch import here: `phmdiff --help` and torch-free commands stay instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from phmdiff.argtypes import check_environment, whole

# The device choices every command offers (phmdiff.devices checks them); "auto": CUDA, then Apple MPS, then CPU.
DEVICES = ("auto", "cuda", "mps", "cpu")

# Exit code of a process whose output pipe closed (128 + SIGPIPE), as `yes | head` reports it.
EXIT_BROKEN_PIPE = 141


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there is none to show
    (a flag that is off, an option whose default is decided at run time)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default" in text.lower() or action.default in (None, False, [], "")
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


# Help of each shared option, for a command that defines one itself without help.
SHARED_HELP = {"--threads": "torch CPU threads (default 0: every available core, or OMP_NUM_THREADS when set)",
               "--device": "where the network runs: auto picks CUDA, then Apple MPS, then the CPU",
               "--overwrite": "replace existing outputs",
               "--no-progress": "no progress bar (a line per step of work instead)",
               "--allow-config-change": "resume even though settings that change what the run learns (direction, data, "
                                        "model, optimizer, schedule, EMA) differ from the checkpoint; the change is "
                                        "recorded in RUN/config_changes.jsonl"}


SAME_EVERYWHERE = ("--threads", "--device", "--allow-config-change")


def new_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=whole(0, 4096), default=0, help=SHARED_HELP["--threads"])


def add_device(parser: argparse.ArgumentParser, default: str | None = "auto", note: str = "") -> None:
    """--device; `note` adds what this entry point does with it (main.py: it sets train.device)."""
    parser.add_argument("--device", default=default, choices=DEVICES,
                        help=SHARED_HELP["--device"] + (f"; {note}" if note else ""))


def add_overwrite(parser: argparse.ArgumentParser, what: str = SHARED_HELP["--overwrite"]) -> None:
    parser.add_argument("--overwrite", action="store_true", help=what)


def add_progress(parser: argparse.ArgumentParser, instead: str = "a line per step of work instead") -> None:
    parser.add_argument("--no-progress", action="store_true", help=f"no progress bar ({instead})")


def add_allow_config_change(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-config-change", action="store_true", help=SHARED_HELP["--allow-config-change"])


def fill_shared_help(parser: argparse.ArgumentParser) -> None:
    """Shared options a command defined itself: threads, device and allow-config-change get the shared help
    text (they mean the same everywhere); overwrite and no-progress keep the command's own, or get the shared
    one when they have none."""
    for action in parser._actions:
        for option in action.option_strings:
            if option in SHARED_HELP and (not action.help or option in SAME_EVERYWHERE):
                action.help = SHARED_HELP[option]


def has_option(parser: argparse.ArgumentParser, option: str) -> bool:
    return any(option in action.option_strings for action in parser._actions)


def one_line(exc: BaseException) -> str:
    """A user-facing failure as one sentence."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: file or folder not found."
    if isinstance(exc, PermissionError) and exc.filename:
        return f"{exc.filename}: permission denied."
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}."
    return " ".join(str(exc).split()) or type(exc).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's input, not a bug: one sentence, exit 2."""
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)
    try:
        from safetensors import SafetensorError  # a full disk or corrupt file inside safetensors raises this

        errors += (SafetensorError,)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return errors


def _quiet_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null, so the interpreter's final flush does
    not print a second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_entry(name: str, body) -> int:
    """Run `body()` (returning an exit code) as the command `name`: a user error is one line on stderr and exit
    2, Ctrl-C exits 130 (or the code a stop signal carries), a closed pipe (`phmdiff ... | head`) ends quietly."""
    try:
        check_environment()  # PHMDIFF_MAX_VOXELS and the like: a sentence and exit 2 before any work
        code = int(body() or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt as exc:  # a training run says where it saved; its exit code names the signal
        print(f"{name}: {str(exc) or 'interrupted.'}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    except user_errors() as exc:
        print(f"{name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
