"""A float32 copy of a float64 network for the parts of branch and bound whose values only
choose: beta-CROWN's optimisation steps (slopes and split multipliers) and filtered smart
branching's one-pass ranking of split candidates. Every bound still comes from one float64
pass with rounding allowances (:mod:`advrobust.exact._beta`); float32 halves the cost of the
steps' matrix products and convolutions."""

from __future__ import annotations

import copy
import logging
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax.dag import graph_backward
from advrobust.relax.ibp import LayerBounds

__all__ = ["Float32Twin", "float32_chain", "float32_forward"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Float32Twin:
    """A float32 copy of a float64 network, for the optimisation steps and the branching
    heuristic's one-pass scores: their values only choose slopes, multipliers and split
    neurons, never a bound (every bound comes from a sound float64 pass), and float32 halves
    the cost of their matrix products and convolutions.

    Attributes:
        graph_ops: a chain's ops (empty for a graph).
        graph: a graph's copy (None for a chain).
        c: the spec rows in float32.
    """

    graph_ops: list
    graph: Graph | None
    c: Tensor

    @classmethod
    def of(cls, network: Network | Graph, c: Tensor, root: LayerBounds) -> Float32Twin | None:
        """The float32 twin of ``network`` (its module copied and cast once per network: the
        samples of one call share it), or None when it has no module, is not float64, or some
        op does not compute in float32 then."""
        if network.module is None or c.dtype != torch.float64:
            return None
        parts = _parts(network, root)
        return None if parts is None else cls(parts[0], parts[1], c.float())

    @classmethod
    def _make(cls, network: Network | Graph, root: LayerBounds
              ) -> tuple[list, Graph | None] | None:
        """(a chain's ops, None) or ([], a graph) of the float32 copy; None if it promotes."""
        twin = copy.deepcopy(network)
        twin.module.float()  # type: ignore[union-attr]
        with torch.no_grad():
            if isinstance(twin, Network):
                twin._graph = None  # rebuilt over the copied ops
                probe: Tensor | None = torch.zeros((1, 1) + tuple(network.output_shape))
                for op in reversed(twin.graph_ops):
                    if not op.nonlinear and probe is not None:
                        (probe,), _ = op.backward(probe)
                        if probe is None or probe.dtype != torch.float32:
                            return None
                return twin.graph_ops, None
            # a graph: one float32 pass over the root's bounds must stay float32 throughout
            # (an op holding a float64 constant of its own would promote it)
            low = [(lo.float(), hi.float()) for lo, hi in root]
            a = torch.zeros((1, 1) + tuple(twin.output_shape))
            a_in, const, _ = graph_backward(twin, twin.output, a, low)
            if a_in.dtype != torch.float32 or const.dtype != torch.float32:
                return None
            return [], twin


def float32_chain(network: Network) -> list | None:
    """The float32 copy's ops of a float64 chain (the twin's, made once per network), or None
    when it has none: for computations whose values only choose, e.g. the points of an attack
    that are re-evaluated in float64."""
    if network.module is None:
        return None
    parts = _parts(network, [])
    if parts is None:
        return None
    if network not in _FORWARD:  # every op's forward must stay float32 too
        try:
            with torch.no_grad():
                x = torch.zeros((1,) + tuple(network.input_shape))
                for op in parts[0]:
                    x = op.forward(x)
            _FORWARD[network] = x.dtype == torch.float32
        except Exception as exc:  # noqa: BLE001 - no float32 forward: float64 then
            logger.debug("no float32 forward (%s: %s)", type(exc).__name__, exc)
            _FORWARD[network] = False
    return parts[0] if _FORWARD[network] else None


def float32_forward(ops: list, x: Tensor) -> Tensor:
    """``x`` in float32 through a chain's float32 copy ``ops`` (:func:`float32_chain`)."""
    z = x.to(torch.float32)
    for op in ops:
        z = op.forward(z)
    return z


def _parts(network: Network | Graph, root: LayerBounds) -> tuple[list, Graph | None] | None:
    """The cached (chain ops, graph) of ``network``'s float32 copy, made on first use."""
    if network not in _COPIES:
        try:
            _COPIES[network] = Float32Twin._make(network, root)
        except Exception as exc:  # noqa: BLE001 - a copy that fails keeps float64
            logger.debug("no float32 twin (%s: %s); the search stays in float64",
                         type(exc).__name__, exc)
            _COPIES[network] = None
    return _COPIES[network]


#: The float32 copy of each float64 network (None: it has none), while the network lives.
_COPIES: weakref.WeakKeyDictionary[object, tuple[list, Graph | None] | None] = \
    weakref.WeakKeyDictionary()

#: Whether the float32 copy of a chain forwards in float32 (see :func:`float32_chain`).
_FORWARD: weakref.WeakKeyDictionary[object, bool] = weakref.WeakKeyDictionary()
