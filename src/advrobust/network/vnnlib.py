"""Read VNNLIB properties (the VNN-COMP format) into an input box and an unsafe output set.

Supported subset: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``; input asserts that
bound one variable (``(<= X_3 0.5)``, ``(>= X_3 0.1)``, possibly inside ``and``), or an ``or`` of
such conjunctions (the input set is then a union of boxes); output asserts built from linear
comparisons (``<= >= < > =``) of linear terms over ``Y`` with ``and`` / ``or``. Several asserts
are conjoined. The unsafe set is kept as a disjunction of polytopes
``{y : A y <= b}``; strict comparisons are read as non-strict (a larger unsafe set, so "unsat"
stays sound). A property is "sat" when some input of the box reaches the unsafe set.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import MissingFileError
from advrobust.network._smtlib import Expr, VnnlibError, linear, parse_sexprs, show, variable

__all__ = ["OutputPolytope", "VnnProperty", "VnnlibError", "format_counterexample", "load_vnnlib",
           "parse_vnnlib"]

#: Most disjuncts the product of several output asserts may expand to.
MAX_DISJUNCTS = 10_000


@dataclass(frozen=True)
class OutputPolytope:
    """``{y : A y <= b}`` with ``A`` (m, num_outputs) and ``b`` (m,), float64."""

    A: Tensor
    b: Tensor

    def contains(self, y: Tensor, atol: float = 0.0) -> Tensor:
        """Bool (N,): rows of ``y`` (N, num_outputs) inside the polytope (up to ``atol``)."""
        return ((y.double() @ self.A.T - self.b) <= atol).all(dim=1)


@dataclass(frozen=True)
class VnnProperty:
    """A VNNLIB property: an input box (or a union of boxes) and a disjunction of unsafe
    output polytopes.

    Attributes:
        lower: (D,) float64 lower ends of the input box (of the smallest box holding the
            union, when there are ``cases``).
        upper: (D,) float64 upper ends.
        unsafe: the disjuncts; the output is unsafe when it lies in any of them.
        num_outputs: number of declared ``Y`` variables.
        cases: the boxes ``(lower, upper)`` of an input set that is their union (an input
            ``or``); empty for a single box. :meth:`split` gives one property per box.
    """

    lower: Tensor
    upper: Tensor
    unsafe: tuple[OutputPolytope, ...]
    num_outputs: int
    cases: tuple[tuple[Tensor, Tensor], ...] = ()

    def split(self) -> list[VnnProperty]:
        """One single-box property per box of the input set (``[self]`` for a single box):
        the property holds iff it holds on each."""
        if not self.cases:
            return [self]
        return [VnnProperty(lo, hi, self.unsafe, self.num_outputs) for lo, hi in self.cases]

    @property
    def num_inputs(self) -> int:
        """D, the number of declared ``X`` variables."""
        return int(self.lower.numel())

    def is_unsafe(self, y: Tensor, atol: float = 0.0) -> Tensor:
        """Bool (N,): whether each output row (N, num_outputs) lies in the unsafe set."""
        hits = [p.contains(y, atol) for p in self.unsafe]
        return torch.stack(hits).any(dim=0)

    def contains(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Bool (N,): whether each input (N, ...) with D values lies in the box (in one of
        the boxes, when there are ``cases``)."""
        flat = x.reshape(x.shape[0], -1).double()
        boxes = self.cases or ((self.lower, self.upper),)
        inside = [((flat >= lo - atol) & (flat <= hi + atol)).all(dim=1) for lo, hi in boxes]
        return torch.stack(inside).any(dim=0)

    def to_spec(self, n: int = 1) -> Spec:
        """The property as a :class:`Spec` (safe iff every row ``C y + d > 0``).

        Possible when every disjunct is a single constraint ``a y <= b``: the row is
        ``a y - b``. The robustness form ``OR_j Y_j >= Y_label`` gives rows ``Y_label - Y_j``.

        Raises:
            VnnlibError: a disjunct has several constraints (not expressible as a Spec).
        """
        if any(p.A.shape[0] != 1 for p in self.unsafe):
            raise VnnlibError(
                "this property's unsafe set has a disjunct with several constraints; only "
                "disjunctions of single linear constraints convert to a Spec")
        # float64, as parsed: a threshold rounded to float32 moves by up to 3e-8 of its size,
        # enough to turn a property whose outputs come that close to it into a wrong "unsat"
        c = torch.cat([p.A for p in self.unsafe]).double()
        d = -torch.cat([p.b for p in self.unsafe]).double()
        return Spec.from_matrix(c, d, n=n)

    def robustness_label(self) -> int | None:
        """The label if the property is ``OR_{j != label} Y_j >= Y_label``, else None."""
        rows = [p.A[0] for p in self.unsafe if p.A.shape[0] == 1 and float(p.b[0]) == 0.0]
        if len(rows) != len(self.unsafe) or len(rows) != self.num_outputs - 1:
            return None
        labels = {int(r.argmax()) for r in rows if sorted(r.tolist()) ==
                  [-1.0] + [0.0] * (self.num_outputs - 2) + [1.0]}
        others = {int(r.argmin()) for r in rows}
        if len(labels) != 1 or len(others) != len(rows) or labels & others:
            return None
        return labels.pop()

    def as_linf_ball(self, lo: float = 0.0, hi: float = 1.0, atol: float = 1e-6,
                     slack: float = 1e-7) -> tuple[Tensor, LpBall]:
        """A centre (1, D) and an linf :class:`LpBall` whose clipped box contains this box.

        VNN-COMP robustness boxes are ``clip(x0 +- eps, lo, hi)``; this recovers ``x0`` and
        ``eps`` (widened by ``slack`` against float rounding, so proofs over the ball are proofs
        over the box). Counterexamples must still be checked with :meth:`contains`.

        Raises:
            VnnlibError: the box is not such a clipped ball (within ``atol``).
        """
        low, up = self.lower, self.upper
        if bool((low < lo - atol).any()) or bool((up > hi + atol).any()):
            raise VnnlibError(f"the input box leaves [{lo:g}, {hi:g}]")
        half = (up - low) / 2
        eps = float(half.max())
        narrow = half < eps - atol
        x0 = (low + up) / 2
        x0 = torch.where(narrow & (low <= lo + atol), up - eps, x0)
        x0 = torch.where(narrow & (up >= hi - atol), low + eps, x0).clamp(lo, hi)
        ball_low, ball_up = (x0 - eps).clamp(lo, hi), (x0 + eps).clamp(lo, hi)
        if bool(((ball_low - low).abs() > atol).any() | ((ball_up - up).abs() > atol).any()):
            raise VnnlibError(f"the input box is not an linf ball clipped to [{lo:g}, {hi:g}]")
        centre = x0.float()
        return centre.unsqueeze(0), LpBall(Norm.LINF, enclosing_radius(centre, low, up, eps, slack),
                                           lo, hi)


def enclosing_radius(centre: Tensor, lower: Tensor, upper: Tensor, eps: float = 0.0,
                     slack: float = 1e-7) -> float:
    """An linf radius around ``centre`` (the float32 centre the verifiers get) whose ball holds
    the box ``[lower, upper]`` (float64): at least ``eps``, measured from the rounded centre
    (a float32 centre of a box far from 0 is off by up to 3e-8 of its size), plus ``slack``
    and one part in 1e12 against the rounding of the ball's ends."""
    c = centre.double().reshape(-1)
    reach = max(eps, float((c - lower.reshape(-1)).max()), float((upper.reshape(-1) - c).max()))
    return reach * (1 + 1e-12) + slack


# ---------------------------------------------------------------------- parsing
Atom = tuple[dict[str, float], float]  # sum coef * var <= const
Dnf = list[list[Atom]]


def _atoms(expr: Expr) -> list[Atom]:
    if not isinstance(expr, list) or len(expr) != 3 or expr[0] not in ("<=", ">=", "<", ">", "="):
        raise VnnlibError(f"unsupported constraint {show(expr)} (expected (<= a b), (>= a b), "
                          "(< a b), (> a b) or (= a b))")
    (ca, ka), (cb, kb) = linear(expr[1]), linear(expr[2])
    diff = dict(ca)
    for v, c in cb.items():
        diff[v] = diff.get(v, 0.0) - c
    le: Atom = (diff, kb - ka)  # a - b <= 0
    ge: Atom = ({v: -c for v, c in diff.items()}, ka - kb)
    return {"<=": [le], "<": [le], ">=": [ge], ">": [ge], "=": [le, ge]}[str(expr[0])]


def _dnf(expr: Expr) -> Dnf:
    if isinstance(expr, list) and expr and expr[0] in ("and", "or"):
        parts = [_dnf(e) for e in expr[1:]]
        if expr[0] == "or":
            return [conj for p in parts for conj in p]
        return _product(parts)
    return [_atoms(expr)]


def _product(parts: list[Dnf], what: str = "output constraints") -> Dnf:
    if math.prod(len(p) for p in parts) > MAX_DISJUNCTS:
        raise VnnlibError(f"the {what} expand to more than {MAX_DISJUNCTS} cases")
    return [[a for conj in combo for a in conj] for combo in itertools.product(*parts)]


def _kind(atom: Atom) -> str:
    kinds = {variable(v)[0] for v in atom[0]}  # type: ignore[index]
    if len(kinds) != 1:
        raise VnnlibError("a constraint must involve only inputs X or only outputs Y, "
                          f"with at least one variable; got variables {sorted(atom[0])}")
    return kinds.pop()


class _Reader:
    def __init__(self) -> None:
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.bounds: dict[int, list[float]] = {}
        self.outputs: list[Dnf] = []
        self.inputs: list[Dnf] = []  # input ``or``s: each a list of conjunctions of bounds

    def command(self, cmd: Expr) -> None:
        if not isinstance(cmd, list) or not cmd:
            raise VnnlibError(f"unexpected top-level item {show(cmd)}")
        if cmd[0] == "declare-const" and len(cmd) == 3 and isinstance(cmd[1], str):
            var = variable(cmd[1])
            if var is None or cmd[2] != "Real":
                raise VnnlibError(f"unsupported declaration {show(cmd)} (X_i / Y_j Real only)")
            self.declared[var[0]].add(var[1])
        elif cmd[0] == "assert" and len(cmd) == 2:
            self.assertion(cmd[1])
        else:
            raise VnnlibError(f"unsupported command {show(cmd)}")

    def assertion(self, expr: Expr) -> None:
        dnf = _dnf(expr)
        kinds = {_kind(a) for conj in dnf for a in conj}
        if kinds == {"Y"}:
            self.outputs.append(dnf)
        elif kinds == {"X"} and len(dnf) == 1:
            for coef, const in dnf[0]:
                self.bound(self.bounds, coef, const)
        elif kinds == {"X"}:
            for conj in dnf:  # checked here, so the error names this assert
                for coef, const in conj:
                    self.bound({}, coef, const)
            self.inputs.append(dnf)
        else:
            raise VnnlibError(f"unsupported assert {show(expr)}: input constraints must be "
                              "bounds on single inputs, or an 'or' of such conjunctions, "
                              "not mixed with outputs")

    @staticmethod
    def bound(bounds: dict[int, list[float]], coef: dict[str, float], const: float) -> None:
        if len(coef) != 1 or next(iter(coef.values())) == 0:
            raise VnnlibError(f"input constraint on {sorted(coef)} is not a bound on one input")
        name, a = next(iter(coef.items()))
        i = variable(name)[1]  # type: ignore[index]
        low, up = bounds.setdefault(i, [-math.inf, math.inf])
        if a > 0:
            bounds[i][1] = min(up, const / a)
        else:
            bounds[i][0] = max(low, const / a)

    def _boxes(self, d: int) -> list[Tensor]:
        """The input boxes, (D, 2) each: the plain bounds intersected with one conjunction of
        every input ``or`` (empty intersections dropped)."""
        boxes = []
        for combo in _product(self.inputs, "input constraints"):
            bounds = {i: list(b) for i, b in self.bounds.items()}
            for coef, const in combo:
                self.bound(bounds, coef, const)
            extra = sorted(i for i in bounds if i >= d)
            if extra:
                raise VnnlibError(f"X_{extra[0]} is used but only X_0..X_{d - 1} are declared")
            box = torch.tensor([bounds.get(i, [-math.inf, math.inf]) for i in range(d)],
                               dtype=torch.float64)
            unbounded = ~torch.isfinite(box).all(dim=1)
            if bool(unbounded.any()):
                raise VnnlibError(f"inputs {unbounded.nonzero().flatten()[:5].tolist()} have "
                                  "an infinite range (each needs a lower and an upper bound)")
            empty = box[:, 0] > box[:, 1]
            if not self.inputs and bool(empty.any()):
                raise VnnlibError(f"inputs {empty.nonzero().flatten()[:5].tolist()} have an "
                                  "empty range")
            if not bool(empty.any()):
                boxes.append(box)
        return boxes

    def result(self) -> VnnProperty:
        d, k = len(self.declared["X"]), len(self.declared["Y"])
        for kind, n in (("X", d), ("Y", k)):
            if n == 0 or self.declared[kind] != set(range(n)):
                raise VnnlibError(f"{kind} variables must be declared as {kind}_0..{kind}_{{n-1}}")
        boxes = self._boxes(d)
        if not boxes:
            raise VnnlibError("the input set is empty: every box of its 'or' has an input "
                              "with an empty range")
        if not self.outputs:
            raise VnnlibError("the property has no output constraint")
        unsafe = tuple(self._polytope(conj, k) for conj in _product(self.outputs))
        lower = torch.stack([b[:, 0] for b in boxes]).amin(0)
        upper = torch.stack([b[:, 1] for b in boxes]).amax(0)
        cases = tuple((b[:, 0].clone(), b[:, 1].clone()) for b in boxes) if len(boxes) > 1 \
            else ()  # a union of one box (the others empty) is that box
        return VnnProperty(lower, upper, unsafe, k, cases)

    def _polytope(self, conj: list[Atom], k: int) -> OutputPolytope:
        a = torch.zeros(len(conj), k, dtype=torch.float64)
        for r, (coef, _) in enumerate(conj):
            for v, c in coef.items():
                j = variable(v)[1]  # type: ignore[index]
                if j >= k:
                    raise VnnlibError(f"{v} is used but only Y_0..Y_{k - 1} are declared")
                a[r, j] += c
        return OutputPolytope(a, torch.tensor([c for _, c in conj], dtype=torch.float64))


def parse_vnnlib(text: str) -> VnnProperty:
    """Parse VNNLIB text; see the module docstring for the supported subset.

    Raises:
        VnnlibError: malformed text or an unsupported construct (named in the message).
    """
    reader = _Reader()
    for cmd in parse_sexprs(text):
        reader.command(cmd)
    return reader.result()


def load_vnnlib(path: str | Path) -> VnnProperty:
    """Read a ``.vnnlib`` file; see :func:`parse_vnnlib`.

    Raises:
        MissingFileError: no such file (a FileNotFoundError).
        VnnlibError: malformed or unsupported content (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"VNNLIB file not found: {path}")
    try:
        return parse_vnnlib(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise VnnlibError(f"{path}: not a VNNLIB text file (byte {exc.start} is not UTF-8 "
                          "text); pass the .vnnlib property file.") from None
    except VnnlibError as exc:
        raise VnnlibError(f"{path}: {exc}") from None


def format_counterexample(x: Tensor, y: Tensor) -> str:
    """A counterexample in the VNN-COMP result format: ``((X_0 v) ... (Y_0 v) ...)``.

    Args:
        x: the input, any shape, read in row-major order as ``X_0 .. X_{D-1}``.
        y: the model's outputs at ``x``, read as ``Y_0 ..``.
    """
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x.reshape(-1).tolist())]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y.reshape(-1).tolist())]
    return "(" + "\n ".join(pairs) + ")"
