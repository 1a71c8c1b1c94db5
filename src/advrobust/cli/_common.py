"""Argument helpers shared by the CLI commands: data, model, seeds, output."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from advrobust._interrupt import held_interrupt
from advrobust.errors import InvalidInputError

__all__ = [
    "OutputLock",
    "add_force_arg",
    "add_progress_args",
    "progress_enabled",
    "seed_arg",
    "check_output",
    "check_plot_path",
    "add_data_args",
    "add_json_arg",
    "add_model_arg",
    "emit",
    "forecast",
    "held_interrupt",
    "interrupted",
    "format_table",
    "load_data",
    "load_model",
    "check_model_data",
    "join_number_lists",
]

#: Options whose value is a comma-separated list of numbers. argparse reads a value such as
#: ``-1,0.5`` (a leading minus, yet not one plain negative number) as an option and says only
#: "expected one argument"; :func:`join_number_lists` hands it to the option instead, whose own
#: check then names the option and the bad number.
NUMBER_LIST_OPTIONS = ("--radii",)
_SIGNED_NUMBER = re.compile(r"-\s*(\d|\.\d|inf|nan)", re.IGNORECASE)


def join_number_lists(words: Sequence[str]) -> list[str]:
    """``--radii -1,0.5`` -> ``--radii=-1,0.5`` (the options of :data:`NUMBER_LIST_OPTIONS`
    followed by a word that starts with a minus sign and a number); other words unchanged."""
    out: list[str] = []
    for i, word in enumerate(words):
        if i and words[i - 1] in NUMBER_LIST_OPTIONS and "--" not in words[:i] \
                and _SIGNED_NUMBER.match(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def add_data_args(parser: argparse.ArgumentParser, default: str = "digits",
                  split: str = "test") -> None:
    """``--data NAME --data-dir DIR --split SPLIT --n N``."""
    parser.add_argument("--data", default=default,
                        help=f"dataset name: digits, mnist or cifar10 (default: {default})")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding the dataset files (default: $ADVROBUST_DATA/NAME)")
    parser.add_argument("--split", default=split, choices=("train", "test"),
                        help=f"which split to use (default: {split})")
    parser.add_argument("--n", type=int, default=None,
                        help="use only the first N samples of the split")


#: Splits larger than this, used whole because --n was not given, are announced up front.
ANNOUNCE_ABOVE = 1000


def load_data(args: argparse.Namespace, announce: bool = True) -> Any:
    """The dataset named by ``add_data_args`` options (first ``--n`` samples).

    Without ``--n`` on a split of more than :data:`ANNOUNCE_ABOVE` samples (and ``announce``),
    says on stderr how many samples the command is about to process.
    """
    from advrobust.core._validation import check_int
    from advrobust.data import load_dataset

    if args.n is not None:
        check_int(args.n, "--n", "advrobust " + str(getattr(args, "command", "")), low=1)
    data = load_dataset(args.data, split=args.split, root=args.data_dir)
    if args.n is not None and args.n > len(data):
        raise InvalidInputError(
            f"--n must be at most the {len(data)} samples of the {args.data} {args.split} split. "
            f"Got {args.n} instead.")
    args.whole_split = args.n is None and announce and len(data) > ANNOUNCE_ABOVE
    if args.whole_split:
        print(f"advrobust {getattr(args, 'command', '')}: using all {len(data)} samples of the "
              f"{args.data} {args.split} split (pass --n N to use the first N)",
              file=sys.stderr)
    return data if args.n is None else data.take(args.n)


def seed_arg(text: str) -> int:
    """argparse ``type=`` of every ``--seed``: an int in ``[0, 2**32 - 1]``."""
    from advrobust.core._validation import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an int in [0, {MAX_SEED}]. Got {text!r} instead.") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be an int in [0, {MAX_SEED}]. Got {value} instead.")
    return value


def forecast(args: argparse.Namespace, total: int) -> Any:
    """A :class:`~advrobust.core.progress.Forecast` that speaks when :func:`load_data`
    announced a whole large split (the estimate of the run's length after its first batch)."""
    from advrobust.core.progress import Forecast

    return Forecast(total, f"advrobust {getattr(args, 'command', '')}",
                    enabled=bool(getattr(args, "whole_split", False)))


def interrupted(args: argparse.Namespace, done: int, total: int, saved: Sequence[str]) -> int:
    """Ctrl-C after ``done`` of ``total`` samples: one line saying what was kept; returns 130."""
    kept = "; saved " + "; ".join(saved) if saved else "; nothing was saved"
    print(f"\nadvrobust {getattr(args, 'command', '')}: interrupted (Ctrl-C) after {done} of "
          f"{total} samples{kept}", file=sys.stderr)
    return 130


def add_model_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model CKPT``: a checkpoint written by ``advrobust train``."""
    parser.add_argument("--model", type=Path, required=required, metavar="CKPT",
                        help="checkpoint file written by 'advrobust train'")


def add_memory_arg(parser: argparse.ArgumentParser) -> None:
    """``--memory-limit SIZE``: the working memory the bound computations may take."""
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="working memory of the bound computations, e.g. 8G or 512M "
                             "(default: $ADVROBUST_MEMORY_LIMIT, else half the available "
                             "memory); what does not fit is done more cheaply or skipped with "
                             "a warning, never killed by the OS")


def apply_memory_arg(args: argparse.Namespace) -> None:
    """Validate ``--memory-limit`` and make it this process's default limit."""
    import os

    from advrobust.core.memory import ENV, parse_size

    if getattr(args, "memory_limit", None) is not None:
        os.environ[ENV] = str(parse_size(args.memory_limit, "--memory-limit"))


def load_model(path: Path) -> Any:
    """Load a checkpoint safely (``weights_only=True``); returns the loaded checkpoint."""
    from advrobust.models import load_checkpoint

    return load_checkpoint(path)


def check_model_data(checkpoint: Any, data: Any) -> None:
    """Refuse a dataset whose inputs do not have the checkpoint's input shape (clear error)."""
    shape = (getattr(checkpoint, "arch_kwargs", None) or {}).get("input_shape")
    have = tuple(int(s) for s in data.x.shape[1:])
    if shape is not None and tuple(int(s) for s in shape) != have:
        raise InvalidInputError(
            f"The model takes inputs of shape {tuple(shape)} but the "
            f"data set {getattr(data, 'name', '')!r} has inputs of shape {have}. Pick the data "
            "set the model was trained on (see 'advrobust info CKPT').")


def add_progress_args(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (progress is shown by default; ``--progress`` is kept for scripts)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="hide progress (shown by default: a bar on a terminal, a status "
                             "line every 10 s otherwise)")
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)


def progress_enabled(args: argparse.Namespace) -> bool:
    """Whether ``add_progress_args`` options ask for progress."""
    return not getattr(args, "no_progress", False)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """``--json``: print one JSON object instead of a table."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    torch = sys.modules.get("torch")  # a tensor implies torch; the CLI starts without it
    if torch is not None and torch.is_tensor(value):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        # 7 significant digits (float32 precision): noise such as 0.8999999761581421 reads as
        # what it is (0.9), and small bounds keep their relative precision.
        return float(f"{value:.7g}") if math.isfinite(value) else None
    if isinstance(getattr(value, "value", None), str):
        return value.value  # enums
    if isinstance(value, Path):
        return str(value)
    return value


def format_table(rows: Sequence[tuple[str, Any]], title: str | None = None) -> str:
    """Two aligned columns; floats printed with 4 significant digits."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k.ljust(width)}  {fmt(v)}" for k, v in rows]
    return "\n".join(lines)


def emit(args: argparse.Namespace, payload: Mapping[str, Any],
         rows: Sequence[tuple[str, Any]] | None = None, title: str | None = None) -> None:
    """Print ``payload`` as JSON when ``--json`` was given, else ``rows`` (default: payload)."""
    if getattr(args, "json", False):
        json.dump(_jsonable(payload), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(format_table(list(rows) if rows is not None else list(payload.items()), title))


# --- output files: checked before the work starts -----------------------------------------

def add_force_arg(parser: argparse.ArgumentParser) -> None:
    """``--force``: overwrite output files that already exist."""
    parser.add_argument("--force", action="store_true",
                        help="overwrite output files that already exist (default: refuse)")


def check_output(path: Path | None, flag: str, *, force: bool = True,
                 suffixes: Sequence[str] | None = None) -> None:
    """Refuse, before any work, an output path that cannot or must not be written.

    Checks that ``path`` is not a directory, that its suffix is one of ``suffixes`` (if given),
    that its folder can be created and written to, and (unless ``force``) that it does not
    exist yet.

    Raises:
        InvalidParameterError: wrong suffix, existing file without ``force``.
        OSError (``PermissionError``, ``NotADirectoryError`` ...): naming ``path``.
    """
    from advrobust.errors import InvalidParameterError

    if path is None:
        return
    if path.is_dir():
        raise IsADirectoryError(21, f"{flag} names a directory, not a file", str(path))
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InvalidParameterError(
            f"{flag} must end in one of {', '.join(sorted(suffixes))}. Got {str(path)!r} instead.")
    if not force and path.exists():
        raise InvalidParameterError(
            f"{flag} {str(path)!r} already exists; pass --force to overwrite it.")
    _probe_folder(path, flag)


def _probe_folder(path: Path, flag: str) -> None:
    import tempfile

    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise NotADirectoryError(20, f"{flag}: a part of the folder of {path} is a file, not "
                                     "a directory", str(folder)) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise type(exc)(exc.errno, f"{flag}: cannot write into the folder of {path} "
                                   f"({reason})", str(folder)) from None


def check_plot_path(path: Path | None, flag: str, *, force: bool = True) -> None:
    """:func:`check_output` for a figure: the suffix must be a format matplotlib writes."""
    if path is None:
        return
    from matplotlib.figure import Figure

    formats = tuple(f".{k}" for k in Figure().canvas.get_supported_filetypes())
    check_output(path, flag, force=force, suffixes=formats)


class OutputLock:
    """Exclusive claim of an output path for the life of a command.

    A :class:`~advrobust.core._atomic.FileClaim` on ``path``: a second process that claims the
    same path while the first runs gets a clear error (naming the first one's PID) instead of
    both writing and both reporting success; kill -9 leaves no stale lock.
    """

    def __init__(self, path: Path, flag: str) -> None:
        from advrobust.core._atomic import FileClaim

        self.path, self.flag = path, flag
        self.claim = FileClaim(path, f"{flag} {str(path)!r}")
        self.lock = self.claim.lock

    def __enter__(self) -> OutputLock:
        _probe_folder(self.path, self.flag)  # creates the folder; errors name the user's path
        self.claim.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.claim.release()
