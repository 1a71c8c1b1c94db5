"""The bounder contract: a base class owns validation, eval mode, witnesses and verdicts.

Subclasses implement :meth:`Bounder._bound`, which receives the network IR, the clean inputs, the
threat and a validated spec, and returns sound lower bounds (and optionally candidate points of
the set, e.g. a solver's primal points). The IR, the inputs and the spec it receives are float64
(built from a float64 copy of the model: the caller's model is never converted), so that
rounding stays far below any margin that matters; the bound passes add their own rounding
allowances on top (:mod:`advrobust.relax._rounding`). :meth:`Bounder.bound` then passes the
clean point and every candidate through the witness gate (:mod:`advrobust.relax.witness`:
projection onto the exact set, float64 re-evaluation, zero tolerance), keeps the best per row as
the upper bound, and makes the verdicts with :func:`~advrobust.core.result.decide_verdicts`
only (which turns an internal inconsistency into UNKNOWN with a warning).
"""

from __future__ import annotations

import abc
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from advrobust.core.checks import check_batch
from advrobust.core.config import Configurable
from advrobust.core.modes import eval_mode
from advrobust.core.result import BoundResult, decide_verdicts
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError, InvalidParameterError, UnsupportedLayerError
from advrobust.network.graph import Graph, build_graph
from advrobust.network.ir import Network, from_module
from advrobust.relax._rounding import add_offset
from advrobust.relax.witness import WitnessGate

if TYPE_CHECKING:
    from advrobust.relax.ibp import LayerBounds

__all__ = ["Bounder", "Bounds", "as_ir", "as_network", "default_spec", "verifiable_ir"]


@dataclass
class Bounds:
    """What :meth:`Bounder._bound` returns.

    Attributes:
        lower: (N, K) sound lower bounds of each spec row's minimum over the set.
        candidates: (N, M, *input_shape) points of the set to re-evaluate, or None.
        stats: method-specific facts (timings, solver statuses).
    """

    lower: Tensor
    candidates: Tensor | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def as_network(model: Network | nn.Module, input_shape: Sequence[int]) -> Network:
    """``model`` itself if it is a :class:`Network`, else :func:`from_module` of it."""
    if isinstance(model, Network):
        return model
    return from_module(model, tuple(input_shape))


def as_ir(model: Network | Graph | nn.Module, input_shape: Sequence[int]) -> Network | Graph:
    """``model`` itself if it is an IR, else the chain :class:`Network` of a Sequential or the
    :class:`Graph` of any module torch.fx traces into registered ops (chain-shaped graphs
    become chains). Used by the differentiable entry points (certified training)."""
    if isinstance(model, (Network, Graph)):
        return model
    return verifiable_ir(model, tuple(input_shape), "bound propagation", graph_ok=True)


def default_spec(y: Tensor, num_classes: int) -> Spec:
    """The margin rows ``e_y - e_t`` for every ``t != y``."""
    return Spec.margins(y, num_classes)


def _check_spec(spec: Spec | None, y: Tensor, clean: Tensor) -> Spec:
    if spec is None:
        spec = default_spec(y, clean.shape[1])
    if not isinstance(spec, Spec):
        raise InvalidInputError(f"'spec' must be a Spec or None. Got {type(spec).__name__}.")
    spec.check(clean.shape[0], clean.shape[1])
    dtype = torch.promote_types(spec.C.dtype, clean.dtype)  # never round a float64 spec down
    return Spec(spec.C.to(clean.device, dtype), spec.d.to(clean.device, dtype))


#: The dtype of every verifier's bound computation (unless a bounder is asked for another).
BOUND_DTYPE = torch.float64

#: The bound passes' dtypes by name (``precision=``): float64 by default; float32, with its own
#: rounding allowances, is as sound, about twice as fast on GEMM-bound passes, and looser.
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


_PLAIN = (nn.Sequential, nn.Flatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.BatchNorm1d,
          nn.BatchNorm2d, nn.AvgPool2d, nn.Identity, nn.Dropout)


def _plain_sequential(model: nn.Module) -> bool:
    """True if the IR reproduces ``model`` by construction: only torch's own layer classes
    (no subclass may override a forward) and no forward hooks anywhere."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    return all(type(m) in _PLAIN and not m._forward_hooks and not m._forward_pre_hooks
               for m in model.modules())


def verifiable_ir(model: nn.Module, input_shape: Sequence[int], who: str,
                  graph_ok: bool) -> Network | Graph:
    """The IR a bounder works on: the chain :class:`Network` of a (nested) Sequential or of a
    chain-shaped graph, else the :class:`Graph` of any module torch.fx traces (when the bounder
    handles graphs; otherwise an UnsupportedLayerError names the node it cannot handle)."""
    shape = tuple(input_shape)
    try:
        return from_module(model, shape)
    except UnsupportedLayerError:
        graph = build_graph(model, shape)
    if len(graph.output_shape) != 1:
        raise InvalidInputError(
            f"The network must end in flat outputs (classes,); its output shape is "
            f"{graph.output_shape}.")
    chain = graph.to_chain()
    if isinstance(chain, Network):
        return chain
    if not graph_ok:
        graph.require_chain(who)
    return graph


def _check_ir(network: Network | Graph, model: nn.Module, x: Tensor, clean: Tensor) -> None:
    """Refuse a model whose forward is not the composition of its layers."""
    if isinstance(network, Network) and _plain_sequential(model):
        return  # nothing to check, and a forward pass saved
    out = network.forward(x)
    tol = 1e-4 * (1 + clean.abs().amax())
    if out.shape != clean.shape or bool(((out - clean.to(out)).abs() > tol).any()):
        raise UnsupportedLayerError(
            f"{type(model).__name__}: the verifier's IR of the model does not reproduce its "
            "outputs (a custom forward of a Sequential, a hook?); the verifier handles plain "
            "nn.Sequential models and modules torch.fx traces into registered ops.")


def _check_gate(gate: WitnessGate, x: Tensor, clean: Tensor, who: str) -> None:
    """Refuse a caller's gate that is not this model's: bounds and witness values would
    belong to another network (one float64 forward of the clean batch)."""
    with torch.no_grad():
        out = gate.model(x.to(BOUND_DTYPE))
    tol = 1e-4 * (1 + clean.abs().amax())
    if out.shape != clean.shape or bool(((out - clean.to(out)).abs() > tol).any()):
        raise InvalidParameterError(
            f"{who}: 'gate' is not a WitnessGate of this model (its outputs at x differ from "
            "the model's); pass the gate built from this model, or none.")


class Bounder(Configurable, abc.ABC):
    """Base class of every verifier: ``bounder(model, x, y, threat, spec=None) -> BoundResult``."""

    #: The dtype of the bound passes (a key of :data:`PRECISIONS`); bounders that offer a
    #: choice take it as ``precision=``.
    precision: str = "float64"

    #: True for bounders whose ``_bound`` takes ``layer_bounds`` (precomputed bounds of every
    #: op's input, e.g. the CROWN pass an earlier stage of the cascade already made).
    reuses_layer_bounds: ClassVar[bool] = False

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
                 spec: Spec | None = None, *,
                 layer_bounds: LayerBounds | None = None,
                 gate: WitnessGate | None = None) -> BoundResult:
        """Same as :meth:`bound`."""
        return self.bound(model, x, y, threat, spec, layer_bounds=layer_bounds, gate=gate)

    def bound(self, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
              spec: Spec | None = None, *,
              layer_bounds: LayerBounds | None = None,
              gate: WitnessGate | None = None) -> BoundResult:
        """Bound every spec row of every sample over the threat set.

        Args:
            model: a classifier returning logits: a (nested) ``nn.Sequential`` of supported
                layers, or, for bounders that handle graphs (IBP, CROWN), any module torch.fx
                traces into registered ops (residual adds, concatenations, sigmoid, tanh,
                max pooling, ...; see :mod:`advrobust.network.graph`). Never moved, re-moded
                or modified.
            x: clean inputs (N, ...) inside the threat's box.
            y: labels (N,) int64 (used for the default margin spec).
            threat: the set ``S(x)``.
            spec: rows ``C f + d`` to bound (default: margins ``e_y - e_t``, t != y).
            layer_bounds: sound bounds ``(lo, hi)`` (N, *shape) of every op's input and of the
                output of the chain network (of every node's output on a graph), computed with
                rounding allowances in float64 (what :func:`~advrobust.relax.crown.
                crown_layer_bounds` / :func:`~advrobust.relax.dag.graph_crown_bounds` return), for
                bounders with :attr:`reuses_layer_bounds`: they start from these instead of
                recomputing them (:class:`advrobust.verify.Problem` caches them).
            gate: the witness gate of ``model`` (:class:`~advrobust.relax.witness.WitnessGate`,
                e.g. a :class:`~advrobust.verify.Problem`'s): its float64 copy of the model (and
                the IR built from it, once) is what the bound passes run on and what candidates
                are re-evaluated through, instead of a new copy per call. Default: a new gate.

        Returns:
            :class:`BoundResult` with lower bounds, upper bounds from concrete points of the set
            re-evaluated through ``model``, verdicts and stats (``"witness_values"``: the
            float64 spec values (N, K) at ``witness``, from the gate).

        Raises:
            InvalidInputError: malformed x, y, or spec rows of the wrong width.
            UnsupportedLayerError: a layer the verifier cannot represent.
            InvalidParameterError: ``layer_bounds`` for a bounder or network that cannot use
                them.
        """
        name = type(self).__name__
        start = time.perf_counter()
        with eval_mode(model, who=name):
            clean = check_batch(model, x, y, threat, who=name)
            spec = _check_spec(spec, y, clean)
            graph_ok = type(self)._bound_graph is not Bounder._bound_graph
            x = x.detach()
            if gate is None:
                gate = WitnessGate(model)
            elif not isinstance(gate, WitnessGate):
                raise InvalidParameterError(
                    f"{name}: 'gate' must be a WitnessGate of the model or None; got "
                    f"{type(gate).__name__}.")
            elif not gate.built_from(model):
                _check_gate(gate, x, clean, name)
            dtype = PRECISIONS[self.precision]
            # the one IR of the call: the gate's (built once per gate, input shape and dtype)
            network = gate.ir(tuple(x.shape[1:]), name, graph_ok, dtype)
            with torch.no_grad():
                # checked against the float64 copy where it is this model's: the model's own
                # float32 outputs can differ from it by more than its outputs' size (a VNNLIB
                # head subtracting thresholds from outputs ~1e9)
                x64 = x.to(BOUND_DTYPE)
                _check_ir(network, model, x.to(dtype),
                          gate.model(x64) if gate.built_from(model) else clean)
            spec64 = Spec(spec.C.to(BOUND_DTYPE), spec.d.to(BOUND_DTYPE))
            if layer_bounds is not None and not self.reuses_layer_bounds:
                raise InvalidParameterError(
                    f"{name} takes no 'layer_bounds' for this network (only CROWN, BaB and the "
                    "MILP start from precomputed bounds); got them.")
            if dtype != BOUND_DTYPE:
                return self._bound_lower_precision(network, model, x, threat, spec64, gate,
                                                   layer_bounds, dtype, start)
            if isinstance(network, Graph):
                layers = None if layer_bounds is None else \
                    self._check_layer_bounds(layer_bounds, network, x)
                if layers is not None and self._holds_clean(layers, network, x, name):
                    out = self._bound_graph(network, x.to(BOUND_DTYPE), threat, spec64,
                                            layer_bounds=layers)  # type: ignore[call-arg]
                else:
                    out = self._bound_graph(network, x.to(BOUND_DTYPE), threat, spec64)
            elif layer_bounds is not None and self._holds_clean(
                    layers := self._check_layer_bounds(layer_bounds, network, x), network, x,
                    name):
                out = self._bound(network, x.to(BOUND_DTYPE), threat,  # type: ignore[call-arg]
                                  spec64, layer_bounds=layers)
            else:
                out = self._bound(network, x.to(BOUND_DTYPE), threat, spec64)
            lower = out.lower.detach().to(BOUND_DTYPE).nan_to_num(nan=-torch.inf)
            upper, witness, values = self._evaluate(gate, x, threat, spec64, out.candidates)
        verdict = decide_verdicts(lower, values, upper=upper, who=name)
        stats = dict(out.stats)
        stats["witness_values"] = values
        stats["seconds"] = time.perf_counter() - start
        return BoundResult(lower=lower, upper=upper, verdict=verdict, witness=witness,
                           method=name, stats=stats)

    def _bound_lower_precision(self, network: Network | Graph, model: nn.Module, x: Tensor,
                               threat: LpBall, spec64: Spec, gate: WitnessGate,
                               layer_bounds: LayerBounds | None, dtype: torch.dtype,
                               start: float) -> BoundResult:
        """:meth:`bound` with the pass in ``dtype`` (float32): its rounding allowances are that
        dtype's, the spec's offsets are added afterwards in float64, and candidates go through
        the float64 gate as always."""
        name = type(self).__name__
        if layer_bounds is not None:
            raise InvalidParameterError(
                f"{name}(precision={self.precision!r}) computes its own bounds; 'layer_bounds' "
                "(float64 bounds of an earlier pass) apply to precision='float64' only.")
        c = spec64.C.to(dtype)
        if not bool((c.to(BOUND_DTYPE) == spec64.C).all()):
            raise InvalidParameterError(
                f"{name}(precision={self.precision!r}): the spec's coefficients C are not all "
                f"{self.precision} numbers (the pass would bound another spec); use "
                "precision='float64'.")
        spec = Spec(c, torch.zeros_like(spec64.d, dtype=dtype))
        if isinstance(network, Graph):
            out = self._bound_graph(network, x.to(dtype), threat, spec)
        else:
            out = self._bound(network, x.to(dtype), threat, spec)
        lower = add_offset(out.lower.detach().to(BOUND_DTYPE).nan_to_num(nan=-torch.inf),
                           spec64.d)
        upper, witness, values = self._evaluate(gate, x, threat, spec64, out.candidates)
        verdict = decide_verdicts(lower, values, upper=upper, who=name)
        stats = dict(out.stats)
        stats["witness_values"] = values
        stats["precision"] = self.precision
        stats["seconds"] = time.perf_counter() - start
        return BoundResult(lower=lower, upper=upper, verdict=verdict, witness=witness,
                           method=name, stats=stats)

    @staticmethod
    def _check_layer_bounds(bounds: LayerBounds, network: Network | Graph, x: Tensor
                            ) -> LayerBounds:
        """``bounds`` in the bound dtype, or an error naming what does not fit the network."""
        if isinstance(network, Graph):
            shapes = [tuple(node.shape) for node in network.nodes]
            what = "the output of every node"
        else:
            shapes = [network.input_shape] + [tuple(op.out_shape) for op in network.ops]
            what = "the input of every op and the output"
        if len(bounds) != len(shapes):
            raise InvalidInputError(
                f"'layer_bounds' must hold {len(shapes)} (lo, hi) pairs ({what}); got "
                f"{len(bounds)}.")
        out = []
        for k, ((lo, hi), shape) in enumerate(zip(bounds, shapes, strict=True)):
            want = (x.shape[0],) + tuple(shape)
            if tuple(lo.shape) != want or tuple(hi.shape) != want:
                raise InvalidInputError(
                    f"'layer_bounds'[{k}] must be two tensors of shape {want}; got "
                    f"{tuple(lo.shape)} and {tuple(hi.shape)}.")
            out.append((lo.to(x.device, BOUND_DTYPE), hi.to(x.device, BOUND_DTYPE)))
        return out

    @staticmethod
    def _holds_clean(bounds: LayerBounds, network: Network | Graph, x: Tensor, name: str
                     ) -> bool:
        """True if the clean inputs' values at every op lie inside ``bounds`` (a bound that
        excludes a point of the set is wrong); else a warning, and the caller's bounds are not
        used."""
        with torch.no_grad():
            if isinstance(network, Graph):
                values = [x.to(BOUND_DTYPE)]
                for node in network.nodes[1:]:
                    assert node.op is not None
                    values.append(node.op.forward(*(values[j] for j in node.inputs)))
                outside = [k for k, (v, (lo, hi)) in enumerate(zip(values, bounds, strict=True))
                           if bool(((v < lo) | (v > hi)).any())]
                if outside:
                    warnings.warn(f"{name}: the given layer_bounds exclude the clean input at "
                                  f"node {outside[0]} (wrong bounds); they are ignored and "
                                  "recomputed.", RuntimeWarning, stacklevel=4)
                return not outside
            value = x.to(BOUND_DTYPE)
            for k, (lo, hi) in enumerate(bounds):
                if bool(((value < lo) | (value > hi)).any()):
                    warnings.warn(f"{name}: the given layer_bounds exclude the clean input at op "
                                  f"{k} (wrong bounds); they are ignored and recomputed.",
                                  RuntimeWarning, stacklevel=4)
                    return False
                if k < len(network.ops):
                    value = network.ops[k].forward(value)
        return True

    @staticmethod
    def _evaluate(gate: WitnessGate, x: Tensor, threat: LpBall, spec: Spec,
                  candidates: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Upper bounds per row, the best witness per sample and its spec values (float64).

        The clean point and every candidate go through the witness gate.
        """
        _, clean_values = gate(x, x, threat, spec)
        points = x.unsqueeze(1)
        values = clean_values.unsqueeze(1)  # (N, 1, K)
        if candidates is not None and candidates.shape[1] > 0:
            n, m = candidates.shape[:2]
            spec_rep = Spec(spec.C.repeat_interleave(m, 0), spec.d.repeat_interleave(m, 0))
            cand, cand_values = gate(x.repeat_interleave(m, 0),
                                     candidates.detach().flatten(0, 1), threat, spec_rep)
            points = torch.cat([points, cand.reshape((n, m) + tuple(x.shape[1:]))], dim=1)
            values = torch.cat([values, cand_values.reshape(n, m, -1)], dim=1)
        upper = values.amin(dim=1)
        best = values.amin(dim=2).argmin(dim=1)
        idx = torch.arange(x.shape[0], device=x.device)
        return upper, points[idx, best], values[idx, best]

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        """Like :meth:`_bound` on the graph IR (residual / concat / sigmoid ... networks).

        Bounders that override it accept any module :func:`build_graph` accepts; the others
        accept chains only (their error names the node they cannot handle).
        """
        raise NotImplementedError  # pragma: no cover - guarded by Bounder.bound

    @abc.abstractmethod
    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec) -> Bounds:
        """Sound lower bounds of ``C f + d`` over ``threat`` around ``x`` (the algorithm)."""
