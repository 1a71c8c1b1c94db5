"""The one gate for counterexamples: project onto the exact set, re-evaluate in float64.

A candidate point (from an attack, a solver's primal solution, a box corner of a bound pass)
counts as a counterexample only if, after :meth:`LpBall.project` onto the exact threat set, it
lies in the set with zero tolerance (checked in float64) and a float64 copy of the real model
gives it a negative spec value (zero tolerance too). Anything else is discarded (value ``+inf``).
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall

__all__ = ["WitnessGate", "float64_copy", "inside_exact", "project_exact"]

#: Nudges toward the centre tried when rounding leaves a projected point just outside the set;
#: the k-th shrinks the perturbation by a relative 2^(k-23) (at most ~5e-4 in all).
_NUDGES = 12


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in eval mode, without gradients (the model is untouched)."""
    twin = copy.deepcopy(model)
    twin.double()
    twin.eval()
    twin.requires_grad_(False)
    return twin


def inside_exact(threat: LpBall, x0: Tensor, x: Tensor) -> Tensor:
    """Bool (N,): ``x`` in ``S(x0)`` with zero tolerance, computed in float64."""
    x0d, xd = x0.double(), x.double()
    flat = xd.reshape(xd.shape[0], -1)
    in_ball = threat.norm_of(xd - x0d) <= threat.eps
    in_box = ((flat >= threat.lo) & (flat <= threat.hi)).all(dim=1)
    return in_ball & in_box & torch.isfinite(flat).all(dim=1)


def project_exact(threat: LpBall, x0: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Project ``x`` (N, ...) onto ``S(x0)`` in ``x0``'s dtype; return it and the exact
    membership (N,) of the result.

    The projection is computed in floating point and can land a few ulps outside; such rows
    are pulled toward ``x0`` (the perturbation shrunk by a growing relative amount, then each
    coordinate moved one ulp with ``nextafter``, which never increases any ``|x_i - x0_i|``
    and stays in the box) until they are inside.
    """
    p = threat.project(x0, x.to(x0).nan_to_num(0.0, 0.0, 0.0))
    inside = inside_exact(threat, x0, p)
    for k in range(_NUDGES):
        if bool(inside.all()):
            break
        out = ~inside
        p = p.clone()
        c = x0[out]
        shrunk = threat.clip_box(c + (p[out] - c) * (1 - 2.0 ** (k - 23)))
        p[out] = torch.nextafter(shrunk, c)
        inside = inside_exact(threat, x0, p)
    return p, inside


class WitnessGate:
    """Re-evaluates candidate points through a float64 copy of the real model.

    Args:
        model: the caller's classifier (copied once; never modified).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = float64_copy(model)
        self._source = weakref.ref(model)
        self._irs: dict[tuple[tuple[int, ...], torch.dtype], Any] = {}

    def built_from(self, model: nn.Module) -> bool:
        """True if this gate's copy was made from ``model`` (the same object)."""
        return self._source() is model

    def ir(self, input_shape: tuple[int, ...], who: str = "verify", graph_ok: bool = True,
           dtype: torch.dtype = torch.float64) -> Any:
        """The IR of the copy (built once per input shape and dtype): the chain
        :class:`~advrobust.network.ir.Network` or the :class:`~advrobust.network.graph.Graph`
        every bound pass of a gated call runs on; float64 unless a bounder asks for float32
        (``precision="float32"``: a float32 copy, refused where it would be another network).

        Raises:
            UnsupportedLayerError: a graph for a caller that handles chains only
                (``graph_ok=False``; the error names the node).
            InvalidParameterError: float32 asked for a model whose parameters float32 does not
                represent.
        """
        from advrobust.network.graph import Graph
        from advrobust.relax.base import verifiable_ir

        shape = tuple(int(s) for s in input_shape)
        key = (shape, dtype)
        if key not in self._irs:
            model = self.model if dtype == torch.float64 else self._float32_copy(who)
            self._irs[key] = verifiable_ir(model, shape, who, True)
        network = self._irs[key]
        if isinstance(network, Graph) and not graph_ok:
            network.require_chain(who)
        return network

    def _float32_copy(self, who: str) -> nn.Module:
        """The model in float32, refused unless every parameter and buffer is a float32 number
        (else the copy would be another network than the one the gate evaluates)."""
        from advrobust.errors import InvalidParameterError

        for name, value in list(self.model.named_parameters()) + list(self.model.named_buffers()):
            if value.is_floating_point() and not bool((value.float().double() == value).all()):
                raise InvalidParameterError(
                    f"{who}: precision='float32' bounds a float32 copy of the network, but its "
                    f"{name!r} holds values float32 does not represent (a float64 model): the "
                    "copy would be another network. Use precision='float64' (the default).")
        twin = copy.deepcopy(self.model).float()
        twin.requires_grad_(False)
        return twin

    def __call__(self, x0: Tensor, points: Tensor, threat: LpBall, spec: Spec
                 ) -> tuple[Tensor, Tensor]:
        """Project and evaluate one candidate per sample.

        Args:
            x0: (B, ...) centres (the caller's dtype).
            points: (B, ...) candidates.
            threat: the set.
            spec: B rows of spec matrices ``C`` (B, K, O) and offsets ``d`` (B, K).

        Returns:
            The projected points (B, ...) in ``x0``'s dtype and their float64 spec values
            (B, K), ``+inf`` for a point that could not be placed inside the set.
        """
        p, inside = project_exact(threat, x0, points)
        with torch.no_grad():
            out = self.model(p.double())
        values = torch.einsum("bko,bo->bk", spec.C.double(), out) + spec.d.double()
        values = values.masked_fill(~inside.unsqueeze(1) | values.isnan(), float("inf"))
        return p, values
