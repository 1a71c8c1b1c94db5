"""A VNNLIB property as a verification problem: its box as a clipped linf ball (or any box as the
unit cube under :class:`BoxInput`), its unsafe set as spec rows (over :class:`DisjunctMargins`
where a disjunct is a conjunction), and the exact check a counterexample passes before "sat" is
reported."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError
from advrobust.network.vnnlib import VnnProperty

logger = logging.getLogger(__name__)

__all__ = ["UNIT_CUBE", "BoxInput", "DisjunctMargins", "check_shape", "confirm_unsafe",
           "inside_box", "needs_head", "property_ball", "property_spec"]


def property_ball(prop: VnnProperty) -> tuple[Tensor, LpBall]:
    """A centre and a clipped linf ball containing the box (the box itself, up to the float32
    rounding of its centre, when it is a clipped ball).

    Raises:
        VnnlibError: the box is not a clipped linf ball (see :class:`BoxInput`).
    """
    lo, hi = float(prop.lower.min()), float(prop.upper.max())
    return prop.as_linf_ball(lo, hi if hi > lo else lo + 1.0)


#: The input set of a :class:`BoxInput` model: the unit cube around 0.
UNIT_CUBE = LpBall(Norm.LINF, 1.0, -1.0, 1.0)


def _round_up(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` (float64) in ``dtype``, rounded up where rounding moved it down."""
    r = t.to(dtype)
    return torch.where(r.double() < t, torch.nextafter(r, torch.full_like(r, torch.inf)), r)


class BoxInput(nn.Module):
    """The model on the unit cube: ``z in [-1, 1]^D -> model(centre + radius * z)``, so a box
    of any shape (widths that differ per input, as in ACAS Xu) is verified as itself rather
    than through an enclosing cube. ``centre`` and ``radius`` are in the model's dtype, the
    radius rounded up so that ``{centre + radius z}`` (real arithmetic: what the verifiers
    bound) holds the box, a relative hair (float32's 6e-8) larger; a counterexample is mapped
    back (:meth:`to_input`), clamped to the exact box and checked on the model itself.

    Attributes:
        inner: the model.
    """

    centre: Tensor
    radius: Tensor

    def __init__(self, model: nn.Module, lower: Tensor, upper: Tensor,
                 shape: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = model
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                     torch.get_default_dtype())
        low, up = lower.double().reshape(-1), upper.double().reshape(-1)
        centre = ((low + up) / 2).to(dtype)
        reach = torch.maximum(up - centre.double(), centre.double() - low).clamp_min(0.0)
        radius = _round_up(reach * (1 + 2.0 ** -50), dtype)  # the float64 differences' rounding
        self.register_buffer("centre", centre.reshape(shape))
        self.register_buffer("radius", radius.reshape(shape))
        self.train(model.training)

    def forward(self, z: Tensor) -> Tensor:
        return self.inner(z * self.radius + self.centre)

    def to_input(self, z: Tensor) -> Tensor:
        """The model's input (float64, flat) at a point ``z`` of the cube."""
        return (z.double().reshape(-1) * self.radius.double().reshape(-1)
                + self.centre.double().reshape(-1))


def property_spec(prop: VnnProperty) -> Spec:
    """The property's rows, one per disjunct: ``a y - b`` for a single constraint ``a y <= b``
    (the property as is), or output ``k`` of :class:`DisjunctMargins` where some disjunct is a
    conjunction (the network the verifiers then see is that head over the model)."""
    if not needs_head(prop):
        return prop.to_spec(1)
    k = len(prop.unsafe)
    return Spec.from_matrix(torch.eye(k, dtype=torch.float64), n=1)


def needs_head(prop: VnnProperty) -> bool:
    """True if some disjunct of the unsafe set is not a single linear constraint."""
    return any(poly.A.shape[0] != 1 for poly in prop.unsafe)


class _MaxLevel(nn.Module):
    """One level of a max tree: ``relu(D t) + V t`` (``max(u, v) = v + relu(u - v)``; an entry
    without a partner is carried by a zero row of ``D``)."""

    def __init__(self, diff: Tensor, keep: Tensor) -> None:
        super().__init__()
        self.diff = _fixed_linear(diff)
        self.keep = _fixed_linear(keep)

    def forward(self, t: Tensor) -> Tensor:
        return torch.relu(self.diff(t)) + self.keep(t)


def _fixed_linear(weight: Tensor, bias: Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(False)
    return layer


class DisjunctMargins(nn.Module):
    """The model followed by one output per disjunct ``{y : A y <= b}`` of a VNNLIB unsafe set:
    ``max_i (A y - b)_i``, positive exactly when ``y`` is outside that polytope. The property
    holds iff every output stays positive over the box, so a disjunction of conjunctions is a
    spec of single rows over this network.

    The head is a float64 ``Linear`` (the constraints exactly as parsed; the model's outputs are
    cast to float64 first, which is exact) and a tree of ``max(u, v) = v + relu(u - v)`` levels:
    ReLUs and residual adds that every bound, the MILP and branch and bound handle (a split of
    a head ReLU is the case split "which constraint of the conjunction is violated"). A
    disjunct with no constraint (every output unsafe) is the row ``-1``.

    Attributes:
        inner: the model.
    """

    def __init__(self, model: nn.Module, prop: VnnProperty) -> None:
        super().__init__()
        self.inner = model
        rows: list[Tensor] = []
        offsets: list[Tensor] = []
        sizes = []
        for poly in prop.unsafe:
            a, b = poly.A.double(), poly.b.double()
            if a.shape[0] == 0:  # "and" of nothing: 0 y <= 1 holds everywhere
                a, b = torch.zeros(1, prop.num_outputs, dtype=torch.float64), torch.ones(1)
            rows.append(a)
            offsets.append(b.double())
            sizes.append(int(a.shape[0]))
        self.rows = _fixed_linear(torch.cat(rows), -torch.cat(offsets))
        levels = []
        while max(sizes) > 1:
            diff, keep, new_sizes = _level(sizes)
            levels.append(_MaxLevel(diff, keep))
            sizes = new_sizes
        self.levels = nn.ModuleList(levels)
        self.train(model.training)  # the head has no mode of its own: follow the model's

    def forward(self, x: Tensor) -> Tensor:
        t = self.rows(self.inner(x).double())
        for level in self.levels:
            t = level(t)
        return t


def _level(sizes: list[int]) -> tuple[Tensor, Tensor, list[int]]:
    """The ``D``, ``V`` matrices halving every group of ``sizes`` (consecutive entries)."""
    width, height = sum(sizes), sum((m + 1) // 2 for m in sizes)
    diff = torch.zeros(height, width, dtype=torch.float64)
    keep = torch.zeros(height, width, dtype=torch.float64)
    row = col = 0
    for m in sizes:
        for j in range(0, m, 2):
            if j + 1 < m:  # max(t_j, t_j+1) = t_j+1 + relu(t_j - t_j+1)
                diff[row, col + j], diff[row, col + j + 1] = 1.0, -1.0
                keep[row, col + j + 1] = 1.0
            else:
                keep[row, col + j] = 1.0
            row += 1
        col += m
    return diff, keep, [(m + 1) // 2 for m in sizes]


def check_shape(prop: VnnProperty, shape: tuple[int, ...]) -> None:
    """Raise unless ``shape`` holds the property's input variables."""
    size = math.prod(shape)
    if size != prop.num_inputs:
        raise InvalidInputError(
            f"The network takes inputs of shape {shape} ({size} values) but the VNNLIB "
            f"property declares {prop.num_inputs} input variables X_0..X_{prop.num_inputs - 1}. "
            "Pair the property with the network it was written for.")


def inside_box(x: Tensor, prop: VnnProperty) -> Tensor:
    """``x`` clamped to the property's box, as float32 values that lie in it exactly.

    The box ends are float64; a float32 rounding of a clamped value can fall a fraction of an
    ulp outside, so such coordinates move one float32 step inwards.
    """
    point = torch.minimum(torch.maximum(x.double(), prop.lower), prop.upper).float()
    up = torch.full_like(point, torch.inf)
    point = torch.where(point.double() < prop.lower, torch.nextafter(point, up), point)
    point = torch.where(point.double() > prop.upper, torch.nextafter(point, -up), point)
    return point + 0.0  # no -0.0 in a result file


def confirm_unsafe(model: nn.Module, twin: nn.Module, prop: VnnProperty, witness: Tensor,
                   shape: tuple[int, ...],
                   reference: Callable[[Tensor], Tensor] | None = None
                   ) -> tuple[Tensor, Tensor] | None:
    """The witness clamped to the exact box and its outputs, if it lies in the box with zero
    tolerance and its outputs are unsafe in float64 (``twin``, the witness gate's model), in
    the model's own precision (what a checker runs) and, when given, through ``reference``
    (e.g. onnxruntime on the ONNX file: VNN-COMP's checker); else None.

    ``model`` may be the property's wrapper (:class:`DisjunctMargins` over :class:`BoxInput`,
    ``twin`` its float64 copy): the witness is then a point of the wrapper's input, mapped back
    to the model's, and the model itself is checked. A ``reference`` that fails to run is
    reported (a warning) and left out, as when none is given.
    """
    if isinstance(model, DisjunctMargins):
        model, twin = model.inner, twin.get_submodule("inner")
    if isinstance(model, BoxInput):
        witness = model.to_input(witness)
        model, twin = model.inner, twin.get_submodule("inner")
    point = inside_box(witness.reshape(-1), prop)
    with torch.no_grad():
        out = model(point.reshape(1, *shape))
        out64 = twin(point.double().reshape(1, *shape))
    if not (bool(prop.contains(point.unsqueeze(0), atol=0.0)) and bool(prop.is_unsafe(out64))
            and bool(prop.is_unsafe(out))):
        return None
    if reference is not None:
        try:
            theirs = reference(point.reshape(1, *shape)).double().reshape(1, -1)
        except Exception as exc:  # an optional runtime's own failure is not the verdict's
            logger.warning("the reference evaluation of the counterexample failed (%s: %s); "
                           "it is checked by advrobust's own evaluations only",
                           type(exc).__name__, exc)
            return point, out[0]
        if theirs.shape[1] != out.reshape(1, -1).shape[1] or not bool(prop.is_unsafe(theirs)):
            logger.warning("the counterexample's outputs are unsafe in advrobust's evaluations "
                           "but not in the reference evaluation (%s there); not reported",
                           theirs[0].tolist()[:10])
            return None
    return point, out[0]
