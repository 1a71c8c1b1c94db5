"""Readable reasons for ``np.load(..., allow_pickle=False)`` failures."""

from __future__ import annotations

__all__ = ["npz_reason"]


def npz_reason(exc: BaseException) -> str:
    """Why numpy refused a file, without numpy's advice to load it unsafely.

    A file holding pickled Python objects is refused on purpose (unpickling can run code); the
    reason says so instead of repeating numpy's "you can load it unsafely using allow_pickle".
    """
    text = str(exc)
    if "pickle" in text.lower() or "Object arrays" in text:
        return ("it holds pickled Python objects, which advrobust never loads (unpickling can "
                "run code); write the file again with the advrobust command that makes it")
    return text
