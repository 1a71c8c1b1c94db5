"""The op interface of the graph IR and the registry that maps torch call sites to ops.

Every op is one :class:`GraphOp` subclass holding every view of it:

- ``forward(*xs)`` — the layer itself on a batch ``(N, *in_shape)`` per data input;
- ``interval(*bounds)`` — elementwise output bounds from elementwise input bounds;
- ``magnitude(*bounds)`` — magnitudes of the terms summed per output (None when the op is exact in
  floating point); ``gamma(dtype) * magnitude`` is its rounding allowance (Higham 2002, ch. 3);
- ``backward(a, *bounds, slopes=None)`` — a sound linear relaxation: coefficients ``a``
  (N, K, *out_shape) become one coefficient tensor per data input and a constant (N, K) with
  ``<a, op(z)> >= sum_i <a_i, z_i> + const`` over the input boxes;
- ``refine_mask(lo, hi)`` — for nonlinear ops, the input neurons whose bounds the relaxation
  depends on (the bound passes tighten those first); None for linear ops;
- ``init_slopes`` — optional optimisable slopes (alpha-CROWN) of a nonlinear op's lower line;
- ``rounding_terms(dtype, *bounds)`` — ``(gamma, magnitude)`` of a backward step's allowance
  (``rounding`` applies it; drivers memoise it), ``mixes`` (interval bounds through one such op
  and no other are exact), ``output_rows`` (a dense layer's weight rows, to start a pass from);
- ``encode(program, ...)`` — its LP / MILP rows; ``milp_exact`` says whether the rows with
  ``integer=True`` are exact (linear ops, ReLU) or a relaxation (sigmoid, tanh, max pooling).

The chain IR (:class:`~advrobust.network.ir.Network`) carries the same ops
(``Network.graph``), so no algorithm asks an op's type.

Ops are registered with :func:`register` against the torch modules, functions and tensor methods
they implement; the graph builders (torch.fx, and ONNX through a torch translation) only ever
ask the registry, so adding an op is one new file plus one import line in ``graph/ops``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from advrobust.errors import UnsupportedLayerError

__all__ = ["SAFETY", "Call", "Data", "GraphOp", "NpBound", "abs_dot", "add_equalities",
           "gamma_of", "lookup", "register", "supported"]

#: Factor on top of the worst-case rounding estimates (the same as relax/_rounding.py).
SAFETY = 4.0

Bound = tuple[Tensor, Tensor]
NpBound = tuple[np.ndarray, np.ndarray]


def gamma_of(terms: int, dtype: torch.dtype) -> float:
    """Relative rounding allowance of a sum of ``terms`` products in ``dtype``."""
    return SAFETY * (torch.finfo(dtype).eps / 2) * (terms + 4)


def abs_dot(a: Tensor, m: Tensor) -> Tensor:
    """``<|a_k|, m>`` per row: a (N or 1, K, *shape), m (N or 1, *shape) -> (N, K)."""
    af = a.detach().abs().flatten(2)
    mf = m.detach().flatten(1).to(af)
    if af.shape[0] == 1 and mf.shape[0] != 1:
        return mf.matmul(af[0].transpose(0, 1))
    if mf.shape[0] == 1 and af.shape[0] != 1:
        return af.matmul(mf[0])
    return torch.bmm(af, mf.unsqueeze(2)).squeeze(2)


def add_equalities(program: Any, out: NpBound, terms: list[tuple[np.ndarray, np.ndarray]],
                   const: np.ndarray) -> np.ndarray:
    """New columns ``z`` (bounded by ``out``) with ``z = sum_i coef_i * x_i + const``
    elementwise, for ``terms`` of ``(coef (n,), cols (n,))``; return ``z``."""
    import scipy.sparse as sp

    z = program.add_vars(out[0], out[1])
    n = z.size
    blocks = [sp.identity(n, format="csr")] + [sp.diags(-coef) for coef, _ in terms]
    cols = np.concatenate([z] + [c for _, c in terms])
    program.add_rows(sp.hstack(blocks), cols, const, const)
    return z


class GraphOp:
    """A node's operation: shapes exclude the batch dimension.

    Args:
        in_shapes: one shape per data input.
        out_shape: the output shape.
        name: where it comes from (fx node and module path), for messages.
    """

    #: Products summed per output value (the rounding allowance grows with it).
    terms: int = 1
    #: True for ops whose relaxation is not exact (the bound passes refine their inputs).
    nonlinear: bool = False
    #: True if :meth:`encode` with ``integer=True`` is exact (a MILP of the op, not a
    #: relaxation): every linear op, and the piecewise-linear ops that encode their phases.
    milp_exact: bool = True
    #: True if branch-and-bound may split the op's input into its linear phases (ReLU).
    branchable: bool = False

    def __init__(self, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...],
                 name: str) -> None:
        self.in_shapes = [tuple(int(v) for v in s) for s in in_shapes]
        self.out_shape = tuple(int(v) for v in out_shape)
        self.name = name

    @property
    def out_size(self) -> int:
        """Number of output units."""
        return math.prod(self.out_shape)

    def forward(self, *xs: Tensor) -> Tensor:
        """The op on a batch (N, *in_shape) per input -> (N, *out_shape)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def interval(self, *bounds: Bound) -> Bound:
        """Elementwise output bounds (exact arithmetic view; see :meth:`sound_interval`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement interval()")

    def magnitude(self, *bounds: Bound) -> Tensor | None:
        """(N, *out_shape) magnitudes of the rounded terms, or None if the op is exact."""
        return None

    def gamma(self, dtype: torch.dtype) -> float:
        """Relative rounding allowance per unit of :meth:`magnitude`."""
        return gamma_of(self.terms, dtype)

    def sound_interval(self, *bounds: Bound) -> Bound:
        """:meth:`interval` widened by its rounding allowance."""
        lo, hi = self.interval(*bounds)
        mag = self.magnitude(*bounds)
        if mag is None:
            return lo, hi
        slack = self.gamma(lo.dtype) * mag.to(lo.dtype)
        return lo - slack, hi + slack

    def backward(self, a: Tensor, *bounds: Bound, slopes: Tensor | None = None
                 ) -> tuple[list[Tensor | None], Tensor]:
        """Coefficients per data input and the constant (N or 1, K) of a lower relaxation."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    @property
    def mixes(self) -> bool:
        """True if an output value depends on more than one input value (interval bounds of
        a box through one such op and no other are exact; through two they are not)."""
        return self.terms > 1

    def rounding_terms(self, dtype: torch.dtype, *bounds: Bound) -> tuple[float, Tensor] | None:
        """``(gamma, magnitude)`` of one :meth:`backward` step: its allowance for coefficients
        ``a`` is ``gamma * <|a|, magnitude>`` (magnitude (N, *out_shape)); None if exact.

        Drivers that back-substitute many row blocks through the same bounds cache this."""
        mag = self.magnitude(*bounds)
        return None if mag is None else (self.rounding_gamma(dtype), mag)

    def rounding_gamma(self, dtype: torch.dtype) -> float:
        """The ``gamma`` of :meth:`rounding_terms` (a caller may hold the magnitude already)."""
        # a backward step also sums its constant's dot product over the op's outputs
        return gamma_of(max(self.terms, self.out_size), dtype)

    def rounding(self, a: Tensor, *bounds: Bound) -> Tensor | None:
        """(N, K) allowance of one :meth:`backward` step with coefficients ``a``."""
        parts = self.rounding_terms(a.dtype, *bounds)
        return None if parts is None else parts[0] * abs_dot(a, parts[1])

    def output_rows(self, part: Tensor, like: Tensor) -> tuple[Tensor, Tensor] | None:
        """The op's outputs ``part`` (k,) (flat indices) as affine functions of its input:
        coefficients (k, *in_shape) and constants (k,) in ``like``'s dtype, or None when the
        op is not a single-input linear map that has them at hand (drivers then start from
        unit rows on the output)."""
        return None

    def refine_mask(self, lo: Tensor, hi: Tensor) -> Tensor | None:
        """Bool (N, *in_shape): input neurons whose bounds shape the relaxation (None: none)."""
        return None

    def init_slopes(self, lo: Tensor, hi: Tensor, rows: int) -> Tensor | None:
        """Initial optimisable slopes (N, rows, *in_shape), or None if the op has none."""
        return None

    def clamp_slopes(self, slopes: Tensor, lo: Tensor, hi: Tensor) -> None:
        """Project optimised slopes back onto their valid range (in place)."""

    def encode(self, program: Any, cols: list[np.ndarray], ins: list[NpBound], out: NpBound,
               integer: bool) -> np.ndarray:
        """Add the op (exactly, or its linear relaxation) for one sample to an LP / MILP
        ``program``; return the output columns (out_size,).

        Args:
            program: a :class:`~advrobust.solvers.program.Program`.
            cols: the columns of each data input (flattened, row-major).
            ins: float64 bounds ``(lo, hi)`` of each input, flattened.
            out: float64 bounds of the output (column bounds of new variables).
            integer: MILP (exact piecewise-linear encodings) or LP.

        Raises:
            UnsupportedLayerError: the op has no encoding (it names the op and its node).
        """
        raise UnsupportedLayerError(
            f"{self.name}: {type(self).__name__} has no LP / MILP encoding.")

    def chain_op(self) -> Any:
        """The equivalent op of the chain IR (:mod:`advrobust.network.ops`), or None."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {self.in_shapes} -> {self.out_shape})"


@dataclass(frozen=True)
class Data:
    """A data (input-dependent) argument of a call: the graph node and its shape."""

    node: int
    shape: tuple[int, ...]


@dataclass
class Call:
    """One call site to convert: what the builder knows about it.

    Attributes:
        target: the module class, function or method name that was called.
        module: the called module (``call_module``), else None.
        args, kwargs: arguments; data tensors are :class:`Data`, everything else is a value.
        out_shape: the output shape without the batch dimension.
        name: the call site's name, e.g. ``"fx node 'add_1' (module 'layer1.0')"``.
        supported: what the caller's error messages list as supported (default: every
            registered op; the chain converter :func:`~advrobust.network.from_module` lists
            its own).
    """

    target: Any
    module: nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out_shape: tuple[int, ...]
    name: str
    data: list[Data] = field(default_factory=list)
    supported: Sequence[str] | None = None

    def __post_init__(self) -> None:
        found: list[Data] = []
        for v in list(self.args) + list(self.kwargs.values()):
            items = v if isinstance(v, (list, tuple)) else [v]
            found += [d for d in items if isinstance(d, Data)]
        self.data = found

    def fail(self, why: str) -> UnsupportedLayerError:
        """The error for an unsupported use of a supported op."""
        listed = supported() if self.supported is None else self.supported
        return UnsupportedLayerError(f"{self.name}: {why}. Supported: {', '.join(listed)}.")

    def arg(self, index: int, key: str, default: Any = None) -> Any:
        """Positional ``index`` or keyword ``key``."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(key, default)


Factory = Callable[[Call], GraphOp]

_MODULES: dict[type, Factory] = {}
_MODULE_NAMES: dict[str, Factory] = {}
_FUNCTIONS: dict[Any, Factory] = {}
_METHODS: dict[str, Factory] = {}
_LABELS: list[str] = []


def register(*, modules: Sequence[type] = (), module_names: Sequence[str] = (),
             functions: Sequence[Any] = (), methods: Sequence[str] = ()
             ) -> Callable[[Factory], Factory]:
    """Register ``factory(call) -> GraphOp`` for torch modules (by class, or by class name for
    user-side classes such as ``Normalize``), functions and tensor methods."""

    def deco(factory: Factory) -> Factory:
        for m in modules:
            _MODULES[m] = factory
            _LABELS.append(f"nn.{m.__name__}")
        for n in module_names:
            _MODULE_NAMES[n] = factory
            _LABELS.append(n)
        for f in functions:
            _FUNCTIONS[f] = factory
            _LABELS.append(_label(f))
        for meth in methods:
            _METHODS[meth] = factory
            _LABELS.append(f"Tensor.{meth}")
        return factory

    return deco


def _label(f: Any) -> str:
    import operator

    import torch.nn.functional as F

    name = getattr(f, "__name__", str(f))
    for prefix, owner in (("operator", operator), ("torch", torch), ("F", F)):
        if getattr(owner, name, None) is f:
            return f"{prefix}.{name}"
    return name


def module_factory(module: nn.Module) -> Factory | None:
    """The factory for a module's class: its own, else (registered by class) that of the
    nearest registered base class whose ``forward`` the class keeps (e.g. torch's parametrized
    modules, ``spectral_norm(nn.Linear(...))``); a subclass with a ``forward`` of its own is not
    matched (it is traced). Every route still checks the converted op against the module."""
    cls = type(module)
    found = _MODULES.get(cls) or _MODULE_NAMES.get(cls.__name__)
    if found is not None:
        return found
    for base in cls.__mro__[1:]:
        if base in _MODULES:
            return _MODULES[base] if cls.forward is getattr(base, "forward", None) else None
    return None


def lookup(kind: str, target: Any, module: nn.Module | None) -> Factory | None:
    """The factory for an fx call site of ``kind`` (call_module / call_function / call_method)."""
    if kind == "call_module":
        return None if module is None else module_factory(module)
    if kind == "call_function":
        try:
            return _FUNCTIONS.get(target)
        except TypeError:  # unhashable target
            return None
    return _METHODS.get(str(target))


def supported() -> list[str]:
    """Every registered module, function and method, sorted (for error messages)."""
    return sorted(set(_LABELS))
