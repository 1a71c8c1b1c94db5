"""Command-line interface: the only place where strings become objects.

Exit statuses: 0 success, 1 the reader of stdout went away, 2 a bad command line or input, or
an output file / store in use by another process (one ``advrobust COMMAND: error: ...`` line),
130 interrupted by Ctrl-C (``attack``, ``verify``, ``evaluate`` and ``detect`` first keep the
finished batches and say so in that one line).

Each command lives in its own module of this package, which defines ``register(subparsers)``
adding its parser (with an example in its help) and setting ``func`` to the function that runs
it. ``func(args) -> int`` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence

from advrobust.errors import AdvRobustError

__all__ = ["build_parser", "main"]

#: Command modules, in the order ``advrobust --help`` lists them.
COMMANDS: tuple[str, ...] = ("demo", "train", "info", "attack", "verify", "evaluate", "detect",
                              "dictionary", "experiment", "campaign", "report", "vnncomp",
                              "smooth")


def _summary(name: str) -> str:
    """The ``help=`` of command ``name``'s ``add_parser`` call, read from its source.

    Importing a command module pulls in torch (seconds); the top-level ``--help`` only needs
    the one-line summaries, so they are read with :mod:`ast` instead.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec(f"advrobust.cli.{name}")
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_parser" \
                and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value == name:
            for kw in node.keywords:
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
    doc = ast.get_docstring(tree) or ""
    return doc.splitlines()[0] if doc else ""


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first non-option word), if it is one."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``advrobust`` parser with every command registered.

    Args:
        only: import and register this command only; the others get a placeholder parser
            with their one-line help (start-up then costs one command's imports).
        lazy: register no command module at all, placeholders only (``advrobust --help``).
    """
    from advrobust import __version__

    parser = argparse.ArgumentParser(
        prog="advrobust",
        description="How robust is your PyTorch classifier? Attack it, verify it, harden it.",
        epilog="Run 'advrobust COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"advrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if lazy or (only is not None and name != only):
            sub.add_parser(name, help=_summary(name), add_help=False)
            continue
        module = importlib.import_module(f"advrobust.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``advrobust`` console script; returns the exit status."""
    status = _main(sys.argv[1:] if argv is None else list(argv))
    if argv is None and threading.current_thread() is threading.main_thread():
        # The command is over (its files written, its status known): a Ctrl-C during the
        # interpreter's shutdown (torch's atexit hooks) would only print an "Exception
        # ignored" traceback after a complete run, so it is ignored from here on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def _main(words: list[str]) -> int:
    from advrobust.cli._common import join_number_lists

    words = join_number_lists(words)  # "--radii -1,0.5" is a (bad) value, not an option
    command = _command_of(words)
    try:
        parser = build_parser(command, lazy=command is None)
        args = parser.parse_args(words)
    except KeyboardInterrupt:
        print("\nadvrobust: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from advrobust._malloc import keep_freed_memory

    keep_freed_memory()  # before any tensor: page faults were half the CPU of some commands
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
    except BrokenPipeError:
        # the reader went away (``advrobust info CKPT --json | head``): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # A missing or unreadable file named on the command line (ONNX, VNNLIB, dictionary,
        # perturbation, output folder), a full or read-only disk: one line naming the user's
        # path, exit status 2, not a traceback.
        message = (f"{exc.strerror}: {exc.filename}" if exc.filename is not None and exc.strerror
                   else str(exc))
        print(f"advrobust {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line, the conventional status 128 + SIGINT; commands that write
        # per-sample files have already flushed the finished batches and said so.
        print(f"\nadvrobust {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning
