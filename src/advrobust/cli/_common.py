"""Argument helpers shared by the CLI commands: data, model, seeds, output."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from advrobust.core._validation import check_int
from advrobust.errors import InvalidInputError

__all__ = [
    "add_data_args",
    "add_json_arg",
    "add_model_arg",
    "emit",
    "format_table",
    "load_data",
    "load_model",
    "check_model_data",
]


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


def load_data(args: argparse.Namespace) -> Any:
    """The dataset named by ``add_data_args`` options (first ``--n`` samples)."""
    from advrobust.data import load_dataset

    if args.n is not None:
        check_int(args.n, "--n", "advrobust " + str(getattr(args, "command", "")), low=1)
    data = load_dataset(args.data, split=args.split, root=args.data_dir)
    if args.n is not None and args.n > len(data):
        raise InvalidInputError(
            f"--n must be at most the {len(data)} samples of the {args.data} {args.split} split. "
            f"Got {args.n} instead.")
    return data if args.n is None else data.take(args.n)


def add_model_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model CKPT``: a checkpoint written by ``advrobust train``."""
    parser.add_argument("--model", type=Path, required=required, metavar="CKPT",
                        help="checkpoint file written by 'advrobust train'")


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


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    """``--json``: print one JSON object instead of a table."""
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
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
