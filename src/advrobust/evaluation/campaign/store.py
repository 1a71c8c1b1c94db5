"""The campaign results store: one SQLite file (WAL), one transaction per finished task.

A unit is ``(model, sample, norm, eps)``. Its row holds the clean prediction, the lowest margin
an attack reached (and which attack), each certificate's lower bound, the verdict, the stage
that decided it, the witness (zlib-compressed float32, re-checkable), seconds per stage, and
``status`` (``done`` or ``error`` with the message). The primary key makes a duplicate row
impossible. The units of a task (``batch_size`` samples x the eps grid) finish together and are
written in one transaction with their samples' clean inputs, so a process killed at any point
leaves a task either whole or absent, and a resume never recomputes a written unit (with
``batch_size = 1`` that is one transaction per unit). The config (as JSON, with
its SHA-256) and the library version are recorded at creation; a store is only ever resumed by
the same config.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from advrobust.core._atomic import FileClaim
from advrobust.errors import AdvRobustError

__all__ = ["ResultStore", "StoreError", "UnitRecord", "pack", "unpack"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    sample INTEGER PRIMARY KEY, label INTEGER NOT NULL, shape TEXT NOT NULL, x BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    model TEXT NOT NULL, sample INTEGER NOT NULL, norm TEXT NOT NULL, eps_index INTEGER NOT NULL,
    eps REAL NOT NULL, label INTEGER NOT NULL, clean_pred INTEGER, clean_margin REAL,
    upper REAL, attack TEXT, lower REAL, lowers TEXT NOT NULL DEFAULT '{}',
    verdict TEXT NOT NULL, decided_by TEXT NOT NULL DEFAULT '', witness BLOB,
    seconds TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL, error TEXT,
    finished REAL NOT NULL,
    PRIMARY KEY (model, sample, norm, eps_index));
"""
SCHEMA_VERSION = "1"


class StoreError(AdvRobustError, ValueError):
    """A store that cannot be used: corrupt, read-only, or written by another config."""


def pack(array: np.ndarray) -> bytes:
    """float32 array -> compressed bytes."""
    return zlib.compress(np.ascontiguousarray(array, dtype=np.float32).tobytes(), 6)


def unpack(blob: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack`."""
    return np.frombuffer(zlib.decompress(blob), dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class UnitRecord:
    """The finished bracket of one unit ``(model, sample, norm, eps)``."""

    model: str
    sample: int
    norm: str
    eps_index: int
    eps: float
    label: int
    verdict: str
    status: str = "done"
    clean_pred: int | None = None
    clean_margin: float | None = None
    upper: float | None = None
    attack: str | None = None
    lower: float | None = None
    lowers: Mapping[str, float] = field(default_factory=dict)
    decided_by: str = ""
    witness: bytes | None = None
    seconds: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> tuple[str, int, str, int]:
        """The unit's identity."""
        return (self.model, self.sample, self.norm, self.eps_index)


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _row(rec: UnitRecord) -> tuple[Any, ...]:
    return (rec.model, rec.sample, rec.norm, rec.eps_index, rec.eps, rec.label,
            rec.clean_pred, _finite(rec.clean_margin), _finite(rec.upper), rec.attack,
            _finite(rec.lower), json.dumps({k: _finite(v) for k, v in rec.lowers.items()}),
            rec.verdict, rec.decided_by, rec.witness, json.dumps(dict(rec.seconds)),
            rec.status, rec.error, time.time())


class ResultStore:
    """A campaign store on disk.

    Args:
        path: the SQLite file (created when absent unless ``readonly``).
        readonly: open an existing store for reading only (status, export, report).

    Raises:
        StoreError: a read-only file opened for writing, a corrupt file or one that is not a
            campaign store.
        FileInUseError: (writing) another process has the store open for writing: one
            writer at a time, so two ``campaign run`` never both work on it.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._claim: FileClaim | None = None
        if not readonly:  # one writer at a time: a second 'campaign run' is refused at once
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._claim = FileClaim(self.path, f"the store {str(self.path)!r}").__enter__()
            except (FileExistsError, NotADirectoryError, PermissionError) as exc:
                raise StoreError(f"cannot open the store {str(self.path)!r} for writing "
                                 f"({exc.strerror or exc}); give a writable --store path."
                                 ) from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            readonly = self.readonly
            if readonly:
                if not self.path.is_file():
                    raise StoreError(f"no campaign store at {str(self.path)!r}.")
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                if self.path.exists() and not os.access(self.path, os.W_OK):
                    raise StoreError(f"the store {str(self.path)!r} is read-only; give a "
                                     "writable --store path.")
                self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
                other = {r[0] for r in self.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")}
                if other and not other & {"meta", "units", "samples"}:
                    self.conn.close()
                    raise StoreError(
                        f"{str(self.path)!r} is an SQLite database of something else (tables: "
                        f"{', '.join(sorted(other))}); a campaign never writes into it. Give "
                        "a new --store path.")
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
            tables = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{str(self.path)!r} is not a readable campaign store ({exc}); "
                             "give a new --store path.") from None
        if not {"meta", "units", "samples"} <= tables:
            raise StoreError(f"{str(self.path)!r} is an SQLite file but not a campaign store.")

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite) and release the store."""
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
        if self._claim is not None:
            self._claim.release()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- metadata ---------------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        """All metadata (config, config_hash, version, created)."""
        return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def bind(self, config_json: Mapping[str, Any], config_hash: str, version: str) -> bool:
        """Tie a new store to a config, or check that an existing one has the same.

        Returns:
            True when the store already held this config (a resume).

        Raises:
            StoreError: the store was written by another config.
        """
        meta = self.meta()
        if "config_hash" in meta:
            if meta["config_hash"] != config_hash:
                raise StoreError(
                    f"the store {str(self.path)!r} was written by another campaign config "
                    f"(hash {meta['config_hash'][:12]}, this one {config_hash[:12]}); results "
                    "of different configs are never mixed. Give a new --store path.")
            return True
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("config", json.dumps(config_json, sort_keys=True)),
                ("config_hash", config_hash), ("version", version),
                ("schema", SCHEMA_VERSION), ("created", time.strftime("%Y-%m-%dT%H:%M:%S"))])
        return False

    def set_meta(self, key: str, value: str) -> None:
        """Record one metadata value (its own transaction)."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- units ------------------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, int, str, int]]:
        """Keys of every unit with a row (done or error)."""
        return {tuple(r) for r in self.conn.execute(  # type: ignore[misc]
            "SELECT model, sample, norm, eps_index FROM units")}

    def write_units(self, records: Sequence[UnitRecord],
                    inputs: Mapping[int, np.ndarray] | None = None) -> int:
        """Write the finished units of one task (and their samples' clean inputs) in one
        transaction: a process killed at any point leaves all of them or none.

        Returns:
            How many rows were new (a unit that already has a row is left as it is).
        """
        written = 0
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            for rec in records:
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO units VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    _row(rec))
                written += cur.rowcount
            for index, x in (inputs or {}).items():
                label = next((r.label for r in records if r.sample == index), -1)
                self.conn.execute("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?)",
                                  (index, label, json.dumps(list(x.shape)), pack(x)))
        return written

    def rows(self, where: str = "", params: tuple[Any, ...] = ()) -> Iterator[dict[str, Any]]:
        """Unit rows as dicts (``lowers`` and ``seconds`` decoded), in key order."""
        cur = self.conn.execute(f"SELECT * FROM units {where} "
                                "ORDER BY model, norm, eps_index, sample", params)
        names = [d[0] for d in cur.description]
        for values in cur:
            row = dict(zip(names, values, strict=True))
            row["lowers"], row["seconds"] = json.loads(row["lowers"]), json.loads(row["seconds"])
            yield row

    def sample(self, index: int) -> tuple[int, np.ndarray] | None:
        """(label, clean input) of a sample, if stored."""
        got = self.conn.execute("SELECT label, shape, x FROM samples WHERE sample = ?",
                                (index,)).fetchone()
        if got is None:
            return None
        return int(got[0]), unpack(got[2], tuple(json.loads(got[1])))

    def counts(self) -> dict[tuple[str, str, float], dict[str, int]]:
        """Per (model, norm, eps): how many units have each verdict (``error`` counted apart)."""
        out: dict[tuple[str, str, float], dict[str, int]] = {}
        for model, norm, eps, verdict, status, n in self.conn.execute(
                "SELECT model, norm, eps, verdict, status, COUNT(*) FROM units "
                "GROUP BY model, norm, eps, verdict, status"):
            key = verdict if status == "done" else "error"
            bucket = out.setdefault((model, norm, eps), {})
            bucket[key] = bucket.get(key, 0) + n
        return out

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``"ok"`` when sound)."""
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])
