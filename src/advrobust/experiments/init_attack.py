"""Adversarial examples at random initialisation: one gradient step flips the sign.

Bubeck, Cherapanamjeri, Gidel & Tachet des Combes, "A single gradient step finds adversarial
examples on random two-layers neural networks", NeurIPS 2021 (Theorems 1 and 2); Bartlett,
Bubeck & Cherapanamjeri, "Adversarial examples in multi-layer random ReLU networks", NeurIPS
2021. For ``f(x) = k^{-1/2} sum_j a_j psi(w_j . x)`` with ``w_j ~ N(0, I/d)``, ``a_j = +-1`` and
``x`` uniform on the sphere of radius ``sqrt(d)``, ``|f(x)| = O(1)`` while
``||grad f(x)|| = Omega(1)``, so the step ``x - eta * sign(f(x)) * grad f(x) / ||grad f(x)||``
with ``eta = O(1)`` (tiny next to ``||x|| = sqrt(d)``) flips the sign with high probability.

Each trial draws a fresh network and a fresh input; the same networks and inputs serve every
activation (paired comparison). The gradient is exact (closed form); the step norm actually
needed is found by a line search along the gradient direction: the first sign change on a grid
of ``grid`` points in ``(0, max_step]``, refined by bisection. Pre-activations along the line are
affine in the step, ``W (x - t u) = W x - t W u``, so the search costs one ``(k, grid)`` product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from advrobust.core._validation import check_float, check_int, check_seed
from advrobust.errors import InvalidParameterError
from advrobust.experiments._random_net import ACTIVATIONS, Theory, check_activation, theory

__all__ = ["InitAttackResult", "InitAttackRow", "init_attack", "parse_width"]

_OWNER = "init_attack"
_CHUNK_ELEMENTS = 1 << 22  # elements of the largest (trials, k, max(d, grid)) block
_BISECTION = 40

Activation = Callable[[Tensor], Tensor]


def parse_width(spec: int | str, d: int, name: str = "k", owner: str = _OWNER) -> int:
    """A count (hidden width ``k``, points ``m``) from an int or a multiple of ``d`` such as
    ``"4d"`` (or ``"0.5d"``).

    Raises:
        InvalidParameterError: not an int / ``"<number>d"``, or a width below 1.
    """
    value: float
    if isinstance(spec, str) and spec.strip().lower().endswith("d"):
        head = spec.strip().lower()[:-1] or "1"
        try:
            value = float(head) * d
        except ValueError:
            value = math.nan
    elif isinstance(spec, str):
        try:
            value = float(int(spec))
        except ValueError:
            value = math.nan
    elif isinstance(spec, int) and not isinstance(spec, bool):
        value = float(spec)
    else:
        value = math.nan
    if not math.isfinite(value) or round(value) < 1:
        raise InvalidParameterError(
            f"The '{name}' parameter of {owner} must be an int >= 1 or a multiple of d such as "
            f"'4d' giving a width >= 1. Got {spec!r} (d={d}) instead.")
    return int(round(value))


@dataclass(frozen=True, eq=False)
class InitAttackRow:
    """One (activation, d, k) cell.

    Attributes:
        activation, d, k, k_spec: the cell (``k_spec`` as asked, e.g. ``"4d"``).
        step: the step norm the flip rate refers to.
        flip_rate: share of trials where a single gradient step of l2 norm <= ``step`` flips
            the sign of ``f`` (line search along the gradient direction).
        linear_flip_rate: share where the linearised needed norm ``|f| / ||grad f||`` <= step.
        theory: the closed-form prediction (:class:`Theory`).
        f: (trials,) ``f(x)``.
        grad_norm: (trials,) ``||grad f(x)||``.
        linear_step: (trials,) ``|f(x)| / ||grad f(x)||``.
        needed_step: (trials,) norm of the shortest step along the gradient direction that
            flips the sign (inf where none within ``max_step``).
    """

    activation: str
    d: int
    k: int
    k_spec: str
    step: float
    flip_rate: float
    linear_flip_rate: float
    theory: Theory
    f: Tensor
    grad_norm: Tensor
    linear_step: Tensor
    needed_step: Tensor

    def summary(self) -> dict[str, float | int | str]:
        """Scalars of the row (for tables and JSON)."""
        finite = self.needed_step[torch.isfinite(self.needed_step)]
        return {
            "activation": self.activation, "d": self.d, "k": self.k, "k_spec": self.k_spec,
            "trials": int(self.f.numel()), "step": self.step,
            "flip_rate": self.flip_rate, "linear_flip_rate": self.linear_flip_rate,
            "predicted_linear_flip_rate": self.theory.linear_flip_rate(self.step),
            "f_abs_mean": float(self.f.abs().mean()),
            "predicted_f_abs_mean": self.theory.f_abs_mean,
            "grad_norm_mean": float(self.grad_norm.mean()),
            "predicted_grad_norm": math.sqrt(self.theory.grad_sq),
            "linear_step_median": float(self.linear_step.median()),
            "predicted_linear_step_median": self.theory.linear_step_median(),
            "needed_step_median": float(self.needed_step.median()),
            "needed_step_found": int(finite.numel()),
        }


@dataclass(frozen=True, eq=False)
class InitAttackResult:
    """Every cell of an :func:`init_attack` run, in the order activation, k, d."""

    rows: tuple[InitAttackRow, ...]
    seed: int
    step: float
    max_step: float
    params: dict[str, object] = field(default_factory=dict)

    def row(self, activation: str, d: int, k: int | str | None = None) -> InitAttackRow:
        """The row of one cell (the first matching one when ``k`` is None)."""
        for r in self.rows:
            if r.activation == activation and r.d == d and k in (None, r.k, r.k_spec):
                return r
        raise KeyError((activation, d, k))

    def summary(self) -> list[dict[str, float | int | str]]:
        return [r.summary() for r in self.rows]


def _network(d: int, k: int, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` draws of (W (n, k, d), a (n, k), x (n, d)), float64."""
    w = torch.randn(n, k, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    a = torch.randint(0, 2, (n, k), generator=gen).to(torch.float64) * 2 - 1
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x * (math.sqrt(d) / x.norm(dim=1, keepdim=True))
    return w, a, x


def _line_values(psi: Activation, a: Tensor, p: Tensor, q: Tensor, t: Tensor) -> Tensor:
    """``f`` at ``x - t u`` for steps ``t`` (n, T) given ``p = W x``, ``q = W u``: (n, T)."""
    pre = p.unsqueeze(2) - t.unsqueeze(1) * q.unsqueeze(2)
    return (a.unsqueeze(2) * psi(pre)).sum(1) / math.sqrt(a.shape[1])


def _needed_step(psi: Activation, a: Tensor, p: Tensor, q: Tensor, f0: Tensor, max_step: float,
                 grid: int) -> Tensor:
    """Shortest step along ``-u`` at which ``sign(f)`` changes (inf if none up to max_step)."""
    n = p.shape[0]
    ts = torch.linspace(max_step / grid, max_step, grid, dtype=p.dtype)
    flipped = f0.sign().unsqueeze(1) * _line_values(psi, a, p, q, ts.expand(n, grid)) <= 0
    any_flip = flipped.any(1)
    first = flipped.to(torch.int64).argmax(1)
    hi = ts[first]
    lo = torch.where(first > 0, ts[(first - 1).clamp_min(0)], torch.zeros_like(hi))
    for _ in range(_BISECTION):
        mid = (lo + hi) / 2
        same = f0.sign() * _line_values(psi, a, p, q, mid.unsqueeze(1)).squeeze(1) > 0
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return torch.where(any_flip, hi, torch.full_like(hi, math.inf))


def _cell(activations: Sequence[str], d: int, k: int, trials: int, max_step: float,
          grid: int, gen: torch.Generator) -> dict[str, tuple[Tensor, ...]]:
    """Per-trial (f, ||grad||, needed step) for each activation on the same networks."""
    chunk = max(1, _CHUNK_ELEMENTS // (k * max(d, grid)))
    out: dict[str, list[list[Tensor]]] = {name: [[], [], []] for name in activations}
    done = 0
    while done < trials:
        n = min(chunk, trials - done)
        w, a, x = _network(d, k, n, gen)
        p = torch.bmm(w, x.unsqueeze(2)).squeeze(2)
        for name in activations:
            psi, dpsi = ACTIVATIONS[name]
            f0 = (a * psi(p)).sum(1) / math.sqrt(k)
            grad = torch.bmm((a * dpsi(p)).unsqueeze(1), w).squeeze(1) / math.sqrt(k)
            gnorm = grad.norm(dim=1)
            u = f0.sign().unsqueeze(1) * grad / gnorm.clamp_min(1e-300).unsqueeze(1)
            q = torch.bmm(w, u.unsqueeze(2)).squeeze(2)
            needed = _needed_step(psi, a, p, q, f0, max_step, grid)
            for store, value in zip(out[name], (f0, gnorm, needed), strict=True):
                store.append(value)
        done += n
    return {name: tuple(torch.cat(v) for v in lists) for name, lists in out.items()}


def _check(d: Sequence[int] | int, k: Sequence[int | str] | int | str,
           activations: Sequence[str] | str) -> tuple[list[int], list[int | str], list[str]]:
    ds = [d] if isinstance(d, int) else list(d)
    ks = [k] if isinstance(k, (int, str)) else list(k)
    acts = [activations] if isinstance(activations, str) else list(activations)
    if not ds or not ks or not acts:
        raise InvalidParameterError(
            f"The 'd', 'k' and 'activations' parameters of {_OWNER} must be non-empty. Got "
            f"d={d!r}, k={k!r}, activations={activations!r} instead.")
    ds = [check_int(v, "d", _OWNER, low=1) for v in ds]
    for dv in ds:
        for kv in ks:
            parse_width(kv, dv)
    return ds, ks, [check_activation(a, _OWNER) for a in acts]


def init_attack(*, d: Sequence[int] | int = (100, 200, 500, 1000),
                k: Sequence[int | str] | int | str = "4d",
                activations: Sequence[str] | str = ("relu", "softplus"), trials: int = 200,
                step: float = 3.0, max_step: float | None = None, grid: int = 256,
                seed: int = 0) -> InitAttackResult:
    """Measure the one-step flip rate of random two-layer networks against d and k.

    Args:
        d: input dimensions, each >= 1.
        k: hidden widths: ints >= 1 or multiples of d such as ``"4d"`` (the theorem's
            overcomplete regime ``d << k``).
        activations: names among ``relu``, ``softplus``, ``gelu``.
        trials: networks (and inputs) drawn per cell, >= 1.
        step: the step norm the flip rate is measured at (> 0); ``||x|| = sqrt(d)``.
        max_step: how far the line search looks (default ``4 * step``).
        grid: line-search grid points before bisection, >= 2.
        seed: seed of the ``torch.Generator`` of each cell (no global seeding).

    Returns:
        :class:`InitAttackResult` with one :class:`InitAttackRow` per (activation, k, d).

    Raises:
        InvalidParameterError: d or k below 1, an unsupported activation (the supported ones
            are listed), trials < 1, step <= 0, max_step < step.

    Examples::

        res = init_attack(d=(100, 500), trials=50)
        res.row("relu", 500).flip_rate          # close to 1
    """
    ds, ks, acts = _check(d, k, activations)
    trials = check_int(trials, "trials", _OWNER, low=1)
    grid = check_int(grid, "grid", _OWNER, low=2)
    seed = check_seed(seed, "seed", _OWNER)
    step = check_float(step, "step", _OWNER, low=0.0, low_open=True)
    max_step = 4 * step if max_step is None else check_float(max_step, "max_step", _OWNER,
                                                            low=step)
    cells: dict[tuple[str, int, int | str], InitAttackRow] = {}
    for kv in ks:
        for dv in ds:
            width = parse_width(kv, dv)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + dv * 7_919 + width)
            per = _cell(acts, dv, width, trials, max_step, grid, gen)
            for name in acts:
                f0, gnorm, needed = per[name]
                linear = f0.abs() / gnorm
                cells[(name, dv, kv)] = InitAttackRow(
                    activation=name, d=dv, k=width, k_spec=str(kv), step=step,
                    flip_rate=float((needed <= step).double().mean()),
                    linear_flip_rate=float((linear <= step).double().mean()),
                    theory=theory(name, dv), f=f0, grad_norm=gnorm, linear_step=linear,
                    needed_step=needed)
    rows = tuple(cells[(name, dv, kv)] for name in acts for kv in ks for dv in ds)
    params: dict[str, object] = {"d": ds, "k": [str(v) for v in ks], "activations": acts,
                                 "trials": trials, "grid": grid}
    return InitAttackResult(rows=rows, seed=seed, step=step, max_step=max_step, params=params)
