"""``advrobust info``: what a checkpoint holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from advrobust.cli._common import add_json_arg, emit

__all__ = ["register", "run"]

EXAMPLE = """examples:
  advrobust info cnn_mnist.pt
  advrobust info cnn_mnist.pt --json
"""


def register(sub: Any) -> None:
    """Add the ``info`` command."""
    p = sub.add_parser(
        "info", help="show a checkpoint's architecture, size and metadata",
        description="Load a checkpoint safely (weights only, no pickled code) and print its "
                    "architecture, constructor arguments, parameter count and metadata.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, metavar="CKPT",
                   help="checkpoint file written by 'advrobust train'")
    add_json_arg(p)
    p.set_defaults(func=run)


def _rows(payload: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [(k, payload[k]) for k in
                                   ("checkpoint", "arch", "parameters")]
    rows += [(k, v) for k, v in payload["arch_kwargs"].items()]
    for key, value in payload["metadata"].items():
        if key == "history" and isinstance(value, dict):
            errors = value.get("test_error") or []
            value = f"{len(errors)} epochs, test error per epoch {_short(errors)}"
        rows.append((key, value))
    return rows


def _short(values: list[Any]) -> str:
    shown = ["-" if v is None else f"{v:.4f}" for v in values]
    return "[" + ", ".join(shown if len(shown) <= 6 else shown[:3] + ["..."] + shown[-2:]) + "]"


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint's contents as a table (or JSON)."""
    from advrobust.models import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    payload = {"checkpoint": str(args.checkpoint), "arch": ckpt.arch,
               "parameters": ckpt.num_parameters, "arch_kwargs": ckpt.arch_kwargs,
               "metadata": ckpt.metadata}
    emit(args, payload, _rows(payload), title=f"advrobust checkpoint ({ckpt.arch})")
    return 0
