"""Where dataset files are looked for."""

from __future__ import annotations

import os
from pathlib import Path

from advrobust.errors import InvalidParameterError

__all__ = ["DATA_ENV", "candidate_dirs", "default_data_root"]

DATA_ENV = "ADVROBUST_DATA"


def default_data_root() -> Path:
    """The folder holding one sub-folder per dataset (``mnist/``, ``cifar10/``).

    Returns:
        ``$ADVROBUST_DATA`` when that environment variable is set and non-empty, else
        ``~/.advrobust/data``. The folder need not exist.
    """
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".advrobust" / "data"


def candidate_dirs(root: str | os.PathLike[str] | None, dataset: str,
                   extra: tuple[str, ...] = ()) -> list[Path]:
    """The folders searched for ``dataset``'s files, in order of preference.

    With ``root`` given: ``root`` itself, ``root/<dataset>``, then ``root/<e>`` for each ``e`` in
    ``extra``. Without: ``default_data_root()/<dataset>``.

    Raises:
        InvalidParameterError: If ``root`` is neither None nor a path.
    """
    if root is None:
        return [default_data_root() / dataset]
    if not isinstance(root, (str, os.PathLike)):
        raise InvalidParameterError(
            "The 'root' parameter of load_dataset must be a path (str or os.PathLike) or None. "
            f"Got {type(root).__name__} instead.")
    base = Path(root).expanduser()
    return [base, base / dataset, *(base / e for e in extra)]
