"""A small reader for the SMT-LIB subset used by VNNLIB files (used by ``network.vnnlib``).

It turns the text into nested lists of atoms, and linear terms over ``X_i`` / ``Y_j`` into
coefficient maps. Everything outside the subset raises :class:`VnnlibError` with the offending
expression.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

from advrobust.errors import DataFormatError

__all__ = ["Expr", "Linear", "VnnlibError", "linear", "parse_sexprs", "variable"]

Expr = str | list["Expr"]
#: A linear term: coefficients by variable name, and the constant.
Linear = tuple[dict[str, float], float]

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


class VnnlibError(DataFormatError):
    """A VNNLIB file is malformed or uses a construct outside the supported subset."""


def _tokens(text: str) -> Iterator[str]:
    for line in text.splitlines():
        yield from _TOKEN.findall(line.split(";", 1)[0])


def parse_sexprs(text: str) -> list[Expr]:
    """The top-level s-expressions of ``text`` (comments after ``;`` dropped)."""
    stack: list[list[Expr]] = [[]]
    for tok in _tokens(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise VnnlibError("unbalanced ')' in VNNLIB text")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibError("unbalanced '(' in VNNLIB text: the file ends inside an expression")
    return stack[0]


def show(expr: Expr, limit: int = 80) -> str:
    """Expression as SMT-LIB text, shortened for error messages."""
    text = expr if isinstance(expr, str) else "(" + " ".join(show(e, 10**9) for e in expr) + ")"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def variable(name: str) -> tuple[str, int] | None:
    """``("X", 3)`` for ``X_3``; None for anything else."""
    m = _VAR.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _number(tok: str) -> float | None:
    try:
        return float(Fraction(tok))
    except (ValueError, ZeroDivisionError):
        return None


def _scaled(term: Linear, k: float) -> Linear:
    return {v: c * k for v, c in term[0].items()}, term[1] * k


def _sum(terms: list[Linear]) -> Linear:
    coef: dict[str, float] = {}
    const = 0.0
    for c, k in terms:
        const += k
        for v, a in c.items():
            coef[v] = coef.get(v, 0.0) + a
    return coef, const


def linear(expr: Expr) -> Linear:
    """The linear term ``expr`` denotes (numbers, variables, +, -, * and / by constants)."""
    if isinstance(expr, str):
        num = _number(expr)
        if num is not None:
            return {}, num
        if variable(expr) is None:
            raise VnnlibError(f"unknown symbol {expr!r} (variables are X_i and Y_j)")
        return {expr: 1.0}, 0.0
    if not expr or not isinstance(expr[0], str):
        raise VnnlibError(f"malformed term {show(expr)}")
    op, args = expr[0], [linear(a) for a in expr[1:]]
    if op == "+" and args:
        return _sum(args)
    if op == "-" and len(args) == 1:
        return _scaled(args[0], -1.0)
    if op == "-" and len(args) > 1:
        return _sum([args[0]] + [_scaled(a, -1.0) for a in args[1:]])
    if op == "*" and len(args) == 2:
        consts = [a for a in args if not a[0]]
        if consts:
            other = args[1] if consts[0] is args[0] else args[0]
            return _scaled(other, consts[0][1])
    if op == "/" and len(args) == 2 and not args[1][0] and args[1][1] != 0:
        return _scaled(args[0], 1.0 / args[1][1])
    raise VnnlibError(f"term {show(expr)} is not linear or uses an unsupported operator "
                      "(supported: + - * / with constants)")
