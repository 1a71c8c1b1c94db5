"""Command-line interface: the only place where strings become objects.

Each command lives in its own module of this package, which defines ``register(subparsers)``
adding its parser (with an example in its help) and setting ``func`` to the function that runs
it. ``func(args) -> int`` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from advrobust.errors import AdvRobustError

__all__ = ["build_parser", "main"]

#: Command modules, in the order ``advrobust --help`` lists them.
COMMANDS: tuple[str, ...] = ("demo", "train", "info", "attack", "verify", "evaluate", "detect",
                              "dictionary", "experiment", "campaign", "report")


def build_parser() -> argparse.ArgumentParser:
    """The ``advrobust`` parser with every command registered."""
    from advrobust import __version__

    parser = argparse.ArgumentParser(
        prog="advrobust",
        description="How robust is your PyTorch classifier? Attack it, verify it, harden it.",
        epilog="Run 'advrobust COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"advrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"advrobust.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advrobust`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    formatwarning = warnings.formatwarning
    # Library warnings read as one line each ("advrobust attack: warning: ..."), without the
    # file, line number and source line of the library code that raised them.
    warnings.formatwarning = (  # type: ignore[assignment]
        lambda message, category, *rest, **kw: f"advrobust {args.command}: warning: {message}\n")
    try:
        return int(args.func(args))
    except AdvRobustError as exc:
        print(f"advrobust {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # A missing or unreadable file named on the command line (ONNX, VNNLIB, dictionary,
        # perturbation, output folder): one line naming it, exit status 2, not a traceback.
        message = (f"{exc.strerror}: {exc.filename}" if exc.filename is not None and exc.strerror
                   else str(exc))
        print(f"advrobust {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (``advrobust info CKPT --json | head``): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        warnings.formatwarning = formatwarning
