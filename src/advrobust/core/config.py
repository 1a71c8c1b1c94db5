"""Configured objects: keyword-only constructor parameters stored verbatim.

``repr``, ``get_params`` (for config files, checkpoints and the CLI) all come from the signature.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["Configurable"]


class Configurable:
    """Mixin giving ``repr`` and ``get_params`` from the ``__init__`` signature.

    Subclasses store every constructor parameter under an attribute of the same name.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items()
                if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters as stored."""
        return {n: getattr(self, n) for n in self._param_names()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
