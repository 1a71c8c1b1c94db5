"""A VNNLIB property as a verification problem: its box as a clipped linf ball, its unsafe set as
spec rows, and the exact check a counterexample passes before "sat" is reported."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError
from advrobust.network.vnnlib import VnnlibError, VnnProperty, enclosing_radius

__all__ = ["check_shape", "confirm_unsafe", "inside_box", "property_ball", "property_spec"]


def property_ball(prop: VnnProperty) -> tuple[Tensor, LpBall]:
    """A centre and a clipped linf ball containing the box (the box itself when it is one)."""
    lo, hi = float(prop.lower.min()), float(prop.upper.max())
    try:
        return prop.as_linf_ball(lo, hi if hi > lo else lo + 1.0)
    except VnnlibError:  # a general box: prove over the enclosing ball, check witnesses exactly
        centre = ((prop.lower + prop.upper) / 2).float()
        eps = enclosing_radius(centre, prop.lower, prop.upper, slack=1e-7)
        return centre.unsqueeze(0), LpBall(Norm.LINF, eps, -torch.inf, torch.inf)


def property_spec(prop: VnnProperty) -> Spec:
    """The property's rows (one per disjunct), or an error naming the unsupported disjunct."""
    for k, poly in enumerate(prop.unsafe):
        if poly.A.shape[0] != 1:
            raise VnnlibError(
                f"unsupported output constraint: disjunct {k} of the unsafe set is a conjunction "
                f"of {poly.A.shape[0]} linear constraints; the verifiers take a disjunction of "
                "single linear constraints over Y (one '(<= ...)' / '(>= ...)' per 'and' of the "
                "'or'), such as the robustness form (or (and (>= Y_j Y_label)) ...)")
    return prop.to_spec(1)


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
    return torch.where(point.double() > prop.upper, torch.nextafter(point, -up), point)


def confirm_unsafe(model: nn.Module, twin: nn.Module, prop: VnnProperty, witness: Tensor,
                   shape: tuple[int, ...]) -> tuple[Tensor, Tensor] | None:
    """The witness clamped to the exact box and its outputs, if it lies in the box with zero
    tolerance and its outputs are unsafe both in float64 (``twin``, the witness gate's model)
    and in the model's own precision (what a checker runs); else None."""
    point = inside_box(witness.reshape(-1), prop)
    with torch.no_grad():
        out = model(point.reshape(1, *shape))
        out64 = twin(point.double().reshape(1, *shape))
    if bool(prop.contains(point.unsqueeze(0), atol=0.0)) and bool(prop.is_unsafe(out64)) \
            and bool(prop.is_unsafe(out)):
        return point, out[0]
    return None
