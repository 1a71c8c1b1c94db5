"""``--save FILE``: one row per sample (``.jsonl`` or ``.csv``) and witnesses in ``FILE.npz``.

Rows are written and flushed batch by batch, so a run stopped with Ctrl-C keeps every
finished batch; the witnesses (adversarial examples / counterexamples, with the row index of
their sample) are written beside the rows file, ``runs/pgd.jsonl`` -> ``runs/pgd.npz``, when the
writer closes (also on Ctrl-C). Without ``--force`` an existing file is refused, and the rows
file is created exclusively, so two runs cannot both write it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from advrobust.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["SampleWriter", "add_save_args", "keep_finished", "open_writer"]

SUFFIXES = (".jsonl", ".csv")


def add_save_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--save FILE`` (and ``--force``) for a command whose per-sample rows hold ``what``."""
    parser.add_argument("--save", type=Path, default=None, metavar="FILE",
                        help=f"write one row per sample ({what}) to FILE.jsonl or FILE.csv, "
                             "batch by batch, and the witnesses to FILE.npz beside it "
                             "(refused if FILE exists, unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite output files that already exist")


def _plain(value: Any) -> Any:
    import torch

    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value  # enums (Verdict)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class SampleWriter:
    """Streams per-sample rows to ``path`` and collects witnesses for ``path.with_suffix('.npz')``.

    Args:
        path: ``.jsonl`` or ``.csv`` file.
        columns: the row keys, in order (the CSV header).
        force: overwrite an existing file (else it is created exclusively).
    """

    def __init__(self, path: Path, columns: Sequence[str], force: bool = False) -> None:
        from advrobust.cli._common import check_output

        check_output(path, "--save", force=force, suffixes=SUFFIXES)
        self.path, self.columns = path, tuple(columns)
        self.witness_path = path.with_suffix(".npz")
        check_output(self.witness_path, "--save (witnesses)", force=force)
        self.rows = 0
        self._index: list[torch.Tensor] = []
        self._points: list[torch.Tensor] = []
        self._tags: list[str] = []
        try:
            self._file: IO[str] = open(path, "w" if force else "x", newline="",  # noqa: SIM115
                                       encoding="utf-8")
        except FileExistsError:
            raise InvalidParameterError(
                f"--save {str(path)!r} already exists (another run may be writing it); pass "
                "--force to overwrite it.") from None
        self._csv = None
        if path.suffix.lower() == ".csv":
            self._csv = csv.DictWriter(self._file, fieldnames=self.columns)
            self._csv.writeheader()

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (dicts with the writer's columns) and flush them to disk."""
        for row in rows:
            clean = {k: _plain(row.get(k)) for k in self.columns}
            if self._csv is not None:
                self._csv.writerow({k: "" if v is None else v for k, v in clean.items()})
            else:
                self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        self.rows += len(rows)

    def add_witnesses(self, index: torch.Tensor, points: torch.Tensor,
                      tag: str | None = None) -> None:
        """Keep ``points`` (K, ...) as the witnesses of the samples ``index`` (K,).

        ``tag`` (the method that found them, e.g. the attack of ``detect``) is saved as the
        ``method`` array of the ``.npz`` when any witness has one.
        """
        if index.numel():
            self._index.append(index.detach().cpu().long())
            self._points.append(points.detach().cpu())
            self._tags += [tag or ""] * int(index.numel())

    def close(self) -> str:
        """Close the rows file, write the witnesses; return a sentence saying what was saved."""
        import numpy as np
        import torch

        from advrobust.core._atomic import atomic_write

        self._file.close()
        index = torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long)
        points = torch.cat(self._points) if self._points else torch.zeros(0)
        arrays = {"index": index.numpy(), "x": points.numpy()}
        if any(self._tags):
            arrays["method"] = np.array(self._tags)
        atomic_write(self.witness_path,
                     lambda handle: np.savez_compressed(handle, **arrays))  # type: ignore[arg-type]
        return (f"{self.rows} per-sample rows in {self.path}, {index.numel()} witnesses in "
                f"{self.witness_path}")


def keep_finished(writer: SampleWriter | None) -> list[str]:
    """On Ctrl-C: close ``writer`` and return what it saved (a one-item list), or remove its
    still empty rows file (a rerun then needs no ``--force``) and return nothing."""
    if writer is None:
        return []
    if writer.rows == 0:
        writer._file.close()
        writer.path.unlink(missing_ok=True)
        return []
    return [writer.close()]


def open_writer(path: Path | None, columns: Sequence[str], force: bool) -> SampleWriter | None:
    """A :class:`SampleWriter` for ``--save`` (None without it)."""
    return None if path is None else SampleWriter(path, columns, force=force)
