"""Shared backward pass of elementwise nonlinear ops relaxed by two lines per neuron.

An op gives, for pre-activation bounds ``lo <= z <= hi``, a lower line ``kl z + bl`` and an
upper line ``ku z + bu`` valid on the box; the backward pass takes the lower line where a
coefficient is positive and the upper one where it is negative (Zhang et al. 2018, CROWN).
Its rounding allowance covers the line's computed slope / intercept (function values and
products rounded: ``|k| max(|lo|, |hi|) + |b| + max(|lo|, |hi|)`` per neuron).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from advrobust.network.graph.base import Bound, GraphOp, NpBound

__all__ = ["Lines", "LineRelaxedOp"]

Lines = tuple[Tensor, Tensor, Tensor, Tensor]

#: Ulps of error allowed per line evaluation (function values, slopes, intercepts, products).
_LINE_TERMS = 28


class LineRelaxedOp(GraphOp):
    """An elementwise op with a two-line relaxation; subclasses give :meth:`lines`."""

    nonlinear = True
    milp_exact = False  # the lines are a relaxation under ``integer`` too

    def __init__(self, shape: tuple[int, ...], name: str) -> None:
        super().__init__([shape], shape, name)

    def lines(self, lo: Tensor, hi: Tensor, slopes: Tensor | None = None) -> Lines:
        """``(kl, bl, ku, bu)`` broadcast like ``lo``: ``kl z + bl <= op(z) <= ku z + bu``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement lines()")

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        lo, hi = bounds[0]
        kl, bl, ku, bu = self.lines(lo.unsqueeze(1), hi.unsqueeze(1), slopes)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        out = pos * kl + neg * ku
        const = (pos * bl + neg * bu).flatten(2).sum(-1)
        return [out], const

    def rounding_terms(self, dtype: torch.dtype, *bounds: Bound) -> tuple[float, Tensor] | None:
        lo, hi = bounds[0]
        s = torch.maximum(lo.abs(), hi.abs())
        kl, bl, ku, bu = self.lines(lo, hi, None)
        mag = torch.maximum(kl.abs() * s + bl.abs(), ku.abs() * s + bu.abs()) + s
        gamma = self.rounding_gamma(dtype)
        # the smallest normal per coefficient: a nonzero allowance even where mag is 0
        return gamma, mag + torch.finfo(dtype).tiny / gamma

    def rounding_gamma(self, dtype: torch.dtype) -> float:
        return self.gamma_lines(dtype)

    def gamma_lines(self, dtype: torch.dtype) -> float:
        """Relative allowance of one line evaluation."""
        from advrobust.network.graph.base import gamma_of

        return gamma_of(_LINE_TERMS, dtype)

    def refine_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        return hi > lo

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        """The two lines as LP rows, their intercepts widened by the rounding allowance (a
        relaxation also under ``integer``: only ReLU has an exact MILP encoding)."""
        import scipy.sparse as sp

        lo, hi = (torch.from_numpy(v) for v in ins[0])
        kl, bl, ku, bu = (t.numpy() for t in self.lines(lo, hi, None))
        s = torch.maximum(lo.abs(), hi.abs())
        slack = (self.gamma_lines(torch.float64) * (
            torch.maximum(torch.from_numpy(np.abs(kl)) * s + torch.from_numpy(np.abs(bl)),
                          torch.from_numpy(np.abs(ku)) * s + torch.from_numpy(np.abs(bu))) + s)
                 + torch.finfo(torch.float64).tiny).numpy()
        z = program.add_vars(out[0], out[1])
        eye = sp.identity(z.size, format="csr")
        both = np.concatenate([z, cols[0]])
        program.add_rows(sp.hstack([eye, sp.diags(-kl)]), both, bl - slack, np.inf)
        program.add_rows(sp.hstack([eye, sp.diags(-ku)]), both, -np.inf, bu + slack)
        return z
