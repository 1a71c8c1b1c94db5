"""Rounding allowances that make floating-point bound passes sound.

A bound pass computes, in floating point, quantities whose exact values are valid bounds. The
computed values can differ from the exact ones by rounding: a sum of ``n`` products carries an
error of at most ``gamma_n * sum |terms|`` with ``gamma_n = n u / (1 - n u)`` and ``u`` the unit
roundoff of the dtype (Higham 2002, "Accuracy and stability of numerical algorithms", ch. 3).
With weights of 1e7 the float32 interval of ``1 - 5e7 x`` on ``x in [0, 1e-7]`` has upper end
``0`` instead of ``1``: a neuron that can be active is called dead, and every method built on
that bound says "verified" about a broken network.

The passes here therefore widen every intermediate interval by such an allowance, computed from
the *magnitudes* of the terms (``|W| max(|l|, |u|) + |b|``, never the possibly cancelled result),
before it decides a ReLU's stability or becomes a solver bound, and subtract the accumulated
allowance of a back-substitution from the final lower bound. Each op's allowance is local: its
input bounds are already valid (widened), so errors never compound through the layers. The
allowance is four times the worst-case estimate; on float64 it is ~1e-12 relative.
"""

from __future__ import annotations

import torch
from torch import Tensor

from advrobust.network.ops import Op

__all__ = ["SAFETY", "abs_dot", "add_offset", "input_gamma", "magnitude", "op_gamma",
           "relu_gamma", "relu_magnitude", "sound_interval", "unit_roundoff"]

#: Factor applied on top of the worst-case rounding estimates.
SAFETY = 4.0


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def op_gamma(op: Op, dtype: torch.dtype) -> float:
    """Relative allowance of one op's output (0 for a reshape): from the products its rounded
    values sum (``op.terms``, see :attr:`~advrobust.network.ops.Op.terms`)."""
    terms = op.terms
    if terms == 0:
        return 0.0
    return SAFETY * unit_roundoff(dtype) * (terms + 4)


def relu_gamma(dtype: torch.dtype, size: int) -> float:
    """Relative allowance of one ReLU relaxation step over ``size`` neurons (slopes, products,
    and the intercepts' dot product, a sum of ``size`` terms)."""
    return SAFETY * unit_roundoff(dtype) * (size + 8)


def relu_magnitude(lo: Tensor, hi: Tensor) -> Tensor:
    """Magnitude of a ReLU step's rounded terms: ``max(|lo|, |hi|)`` on unstable neurons, 0 on
    stable ones (their slopes are exactly 0 or 1 and their intercepts 0: no rounding)."""
    unstable = (lo < 0) & (hi > 0)
    return torch.where(unstable, torch.maximum(lo.abs(), hi.abs()), torch.zeros_like(lo))


def magnitude(op: Op, lo: Tensor, hi: Tensor) -> Tensor:
    """Magnitude of the terms of ``op``'s outputs over the input box ``[lo, hi]``
    (``op.magnitude``: ``|W| s + |b|`` for an affine op, ``s = max(|lo|, |hi|)`` else)."""
    return op.magnitude(lo, hi)


def sound_interval(op: Op, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``op.interval(lo, hi)`` widened by its rounding allowance."""
    new_lo, new_hi = op.interval(lo, hi)
    if op.exact:  # exact in floating point (ReLU, a reshape)
        return new_lo, new_hi
    slack = op_gamma(op, new_lo.dtype) * magnitude(op, lo, hi)
    return new_lo - slack, new_hi + slack


def abs_dot(a: Tensor, m: Tensor) -> Tensor:
    """``<|a_k|, m>`` per row: a (N or 1, K, *shape), m (N or 1, *shape) -> (N, K)."""
    af = a.detach().abs().flatten(2)
    mf = m.detach().flatten(1).to(af)
    if af.shape[0] == 1 and mf.shape[0] != 1:
        return mf.matmul(af[0].transpose(0, 1))
    if mf.shape[0] == 1 and af.shape[0] != 1:
        return af.matmul(mf[0])
    return torch.bmm(af, mf.unsqueeze(2)).squeeze(2)


def input_gamma(size: int, dtype: torch.dtype) -> float:
    """Relative allowance of concretising ``<a, x>`` over an input box of ``size`` values."""
    return SAFETY * unit_roundoff(dtype) * (size + 4)


def add_offset(lower: Tensor, d: Tensor | None) -> Tensor:
    """``lower + d`` rounded down (an allowance of ``4u (|lower| + |d|)``)."""
    if d is None:
        return lower
    d = d.to(lower.dtype)
    total = lower + d
    return total - SAFETY * unit_roundoff(lower.dtype) * (lower.abs() + d.abs())
