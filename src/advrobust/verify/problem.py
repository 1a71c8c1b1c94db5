"""The verification problem: a network, an input set, a specification and the bounds found so far.

A :class:`Problem` is what every stage of a verification run works on (IBP, CROWN, the LP, the
attack, BaB, the MILP): the caller's classifier and its float64 twin (built once; the bound
passes and the witness gate both read it), the clean inputs ``x`` (N, ...) with the input set
(an :class:`~advrobust.core.threat.LpBall` around each, its box a field; a VNNLIB property's box
is read as such a ball, or as the unit cube of a map onto it, and kept beside it as
:attr:`Problem.box` for the exact witness check),
the specification (rows ``C f + d`` that must stay positive; a VNNLIB unsafe set is one row
per disjunct, over a max-of-constraints head where a disjunct is a conjunction) and a cache of
per-layer bounds with their provenance (:class:`BoundRecord`: which method, which stage, dtype,
seconds). A later stage starts from
the bounds an earlier one computed: the CROWN stage of the cascade computes the intermediate
bounds once and BaB and the MILP start from them instead of recomputing them. A BaB domain is
this problem plus a split set (:mod:`advrobust.exact._beta`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from advrobust.core.checks import check_batch
from advrobust.core.modes import eval_mode
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError

if TYPE_CHECKING:
    from advrobust.network.graph import Graph
    from advrobust.network.ir import Network
    from advrobust.network.vnnlib import VnnProperty
    from advrobust.relax.ibp import LayerBounds

__all__ = ["BoundRecord", "Problem"]


@dataclass(frozen=True)
class BoundRecord:
    """Where cached layer bounds came from.

    Attributes:
        method: the bound pass (``"crown"``: back-substitution for every ReLU input,
            intersected with interval bounds, with rounding allowances).
        stage: the cascade stage that asked for them.
        dtype: the dtype they were computed in (float64).
        seconds: wall time of the pass (all its samples together).
        samples: the sample indices of the pass.
    """

    method: str
    stage: str
    dtype: torch.dtype
    seconds: float
    samples: tuple[int, ...]


def _check_spec(spec: Spec | None, y: Tensor, clean: Tensor, who: str) -> Spec:
    if spec is None:
        return Spec.margins(y, clean.shape[1])
    if not isinstance(spec, Spec):
        raise InvalidInputError(f"'spec' must be a Spec or None. Got {type(spec).__name__}.")
    spec.check(clean.shape[0], clean.shape[1])
    dtype = torch.promote_types(spec.C.dtype, clean.dtype)  # never round a float64 spec down
    return Spec(spec.C.to(clean.device, dtype), spec.d.to(clean.device, dtype))


class Problem:
    """One verification problem (see the module docstring); build it with :meth:`of`.

    Attributes:
        model: the caller's classifier (never moved, re-moded or modified).
        x: (N, ...) clean inputs, detached.
        y: (N,) labels.
        threat: the input set around each input.
        spec: N spec matrices ``C`` (N, K, classes) and offsets ``d`` (N, K).
        clean: (N, classes) the model's outputs at ``x``.
        box: optional exact input box ``(lower, upper)`` (float64, flat) of a VNNLIB property
            (``threat`` around ``x`` encloses it, or encloses its preimage under the model's
            :class:`~advrobust.verify._vnnlib.BoxInput` map).
        prop: the VNNLIB property the problem was built from (:meth:`from_property`), or None.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, spec: Spec,
                 clean: Tensor, *, box: tuple[Tensor, Tensor] | None = None) -> None:
        from advrobust.relax.witness import WitnessGate

        self.model, self.x, self.y, self.threat = model, x.detach(), y, threat
        self.spec, self.clean, self.box = spec, clean, box
        self.prop: VnnProperty | None = None
        self.gate = WitnessGate(model)  # the one float64 copy: witnesses and bound passes
        self._ir: dict[str, Network | Graph] = {}  # shared with the siblings of :meth:`along`
        self._layers: dict[int, LayerBounds] = {}
        self._provenance: dict[int, list[BoundRecord]] = {}

    @classmethod
    def of(cls, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
           spec: Spec | None = None, *, box: tuple[Tensor, Tensor] | None = None,
           who: str = "Problem") -> Problem:
        """Validate the inputs and build the problem.

        Args:
            model: classifier returning logits.
            x: (N, ...) clean inputs inside the threat's box.
            y: (N,) int64 labels (the default spec's margins ``e_y - e_t``).
            threat: the input set.
            spec: rows ``C f + d`` that must stay positive (default: the margins).
            box: the exact box of a VNNLIB property (see :attr:`box`).
            who: the entry point, named in errors.

        Raises:
            InvalidInputError: malformed x, y or spec.
        """
        with eval_mode(model, who=who):
            clean = check_batch(model, x, y, threat, who=who)
        return cls(model, x, y, threat, _check_spec(spec, y, clean, who), clean, box=box)

    @classmethod
    def from_property(cls, model: nn.Module, prop: VnnProperty,
                      input_shape: Sequence[int] | None = None, *,
                      who: str = "Problem") -> Problem:
        """The problem of a VNNLIB property: its box read as a clipped linf ball (VNN-COMP
        robustness boxes are exactly that; any other box is the unit cube under a
        :class:`~advrobust.verify._vnnlib.BoxInput` map onto it, so :attr:`model` and
        :attr:`x` are that map's) and kept as :attr:`box`; one spec row per disjunct of the
        unsafe set (where a disjunct is a conjunction of constraints, :attr:`model` is the
        caller's model under a :class:`~advrobust.verify._vnnlib.DisjunctMargins` head, one
        output per disjunct); the label the property names (else the model's prediction at the
        centre).

        Args:
            model: the network (e.g. from :func:`advrobust.network.onnx.load_onnx`).
            prop: the property (:func:`advrobust.network.vnnlib.load_vnnlib`).
            input_shape: per-sample shape the model takes (default ``(D,)``).
            who: the entry point, named in errors.

        Raises:
            InvalidInputError: ``input_shape`` does not hold the property's input variables.
            VnnlibError: the input set is a union of boxes (one problem per box).
        """
        from advrobust.network.vnnlib import VnnlibError
        from advrobust.verify._vnnlib import (
            UNIT_CUBE,
            BoxInput,
            DisjunctMargins,
            check_shape,
            needs_head,
            property_ball,
            property_spec,
        )

        if prop.cases:
            raise VnnlibError("the property's input set is a union of boxes: pose one problem "
                              "per box (VnnProperty.split(); verify_property does)")
        shape = tuple(int(s) for s in input_shape) if input_shape is not None \
            else (prop.num_inputs,)
        check_shape(prop, shape)
        spec = property_spec(prop)
        try:
            x0, ball = property_ball(prop)
        except VnnlibError:  # any other box: the model on the unit cube mapped onto it
            model = BoxInput(model, prop.lower, prop.upper, shape)
            x0, ball = torch.zeros(1, *shape, dtype=model.centre.dtype), UNIT_CUBE
        if needs_head(prop):  # a disjunct is a conjunction: one max-of-rows output per disjunct
            model = DisjunctMargins(model, prop)
        x = x0.reshape(1, *shape)
        label = prop.robustness_label()
        if label is None:
            with eval_mode(model, who=who), torch.no_grad():
                label = int(model(x).argmax(1)[0])
        problem = cls.of(model, x, torch.tensor([label]), ball, spec,
                         box=(prop.lower, prop.upper), who=who)
        problem.prop = prop
        return problem

    def confirm_unsafe(self, witness: Tensor, *,
                       reference: Callable[[Tensor], Tensor] | None = None
                       ) -> tuple[Tensor, Tensor] | None:
        """For a problem built from a property: the witness (one sample's point) clamped to the
        exact box, and the model's outputs there, if it lies in the box with zero tolerance and
        the outputs are unsafe in float64 (the gate's twin), in the model's own precision and,
        when given, through ``reference`` (an independent evaluation of the network, e.g.
        onnxruntime on its ONNX file); else None."""
        from advrobust.verify._vnnlib import confirm_unsafe

        if self.prop is None:
            raise ValueError("confirm_unsafe needs a problem built by Problem.from_property")
        with eval_mode(self.model, who="Problem"):
            return confirm_unsafe(self.model, self.gate.model, self.prop, witness,
                                  self.input_shape, reference=reference)

    # ------------------------------------------------------------------ the network
    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def network(self) -> Network | Graph:
        """The float64 IR every bound pass of this problem runs on."""
        if "network" not in self._ir:  # the gate's IR: bounders called with the gate share it
            self._ir["network"] = self.gate.ir(self.input_shape, "verify", True)
        return self._ir["network"]

    @property
    def is_chain(self) -> bool:
        """True if the network is a chain of ops (graphs: see :attr:`branchable`)."""
        from advrobust.network.ir import Network

        return isinstance(self.network, Network)

    @property
    def branchable(self) -> bool:
        """True if branch and bound can split every nonlinear node of the network (a chain,
        or a graph whose only nonlinear nodes are ReLUs)."""
        from advrobust.errors import UnsupportedLayerError
        from advrobust.relax.alpha_crown import check_branchable

        try:
            check_branchable(self.network)
        except UnsupportedLayerError:
            return False
        return True

    def along(self, radii: Sequence[float]) -> list[Problem]:
        """The same samples and spec on the balls of the same norm and box with radii ``radii``
        (ascending: each set contains the one before), sharing this problem's float64 twin and
        IRs; each has its own bound cache (bounds depend on the set).

        Raises:
            InvalidInputError: ``radii`` empty or not ascending (or a VNNLIB problem).
        """
        import copy
        import dataclasses

        radii = [float(r) for r in radii]
        if not radii or any(b < a for a, b in zip(radii, radii[1:], strict=False)):
            raise InvalidInputError(f"Problem.along: 'radii' must be a non-empty ascending list "
                                    f"of eps values. Got {radii!r}.")
        if self.box is not None:
            raise InvalidInputError("Problem.along: a VNNLIB property's box has no radius grid.")
        out = []
        for r in radii:
            other = copy.copy(self)
            other.threat = dataclasses.replace(self.threat, eps=r)
            other._layers, other._provenance = {}, {}
            out.append(other)
        return out

    def spec_of(self, idx: Tensor, rows: Tensor | None = None) -> Spec:
        """The spec of samples ``idx`` (of rows ``rows`` of one sample)."""
        if rows is None:
            return Spec(self.spec.C[idx], self.spec.d[idx])
        return Spec(self.spec.C[idx][:, rows], self.spec.d[idx][:, rows])

    # ------------------------------------------------------------------ cached bounds
    def layer_bounds(self, idx: Sequence[int] | Tensor) -> LayerBounds | None:
        """Cached float64 bounds of every op's input (of every node's output on a graph) for
        samples ``idx`` (stacked, batch first), or None if some sample has none."""
        ids = [int(i) for i in idx]
        if not ids or any(i not in self._layers for i in ids):
            return None
        per = [self._layers[i] for i in ids]
        return [(torch.cat([p[k][0] for p in per]), torch.cat([p[k][1] for p in per]))
                for k in range(len(per[0]))]

    def provenance(self, i: int) -> tuple[BoundRecord, ...]:
        """Where the cached bounds of sample ``i`` came from (oldest first)."""
        return tuple(self._provenance.get(i, ()))

    def store_layer_bounds(self, idx: Sequence[int] | Tensor, bounds: LayerBounds,
                           record: BoundRecord) -> None:
        """Cache bounds (rows in the order of ``idx``), intersected with what is cached.

        Both are sound enclosures, so their intersection is one too; a sample whose
        intersection is empty (some bound was wrong) loses its cache, with a warning, and
        later stages compute their own.
        """
        for row, i in enumerate(int(j) for j in idx):
            mine = [(lo[row:row + 1].detach(), hi[row:row + 1].detach()) for lo, hi in bounds]
            old = self._layers.get(i)
            if old is not None:
                mine = [(torch.maximum(a, c), torch.minimum(b, e))
                        for (a, b), (c, e) in zip(old, mine, strict=True)]
                if any(bool((lo > hi).any()) for lo, hi in mine):
                    warnings.warn(f"verify: the cached layer bounds of sample {i} contradict "
                                  f"those of {record.method} ({record.stage}); the cache is "
                                  "dropped for it.", RuntimeWarning, stacklevel=2)
                    self._layers.pop(i)
                    continue
            self._layers[i] = mine
            self._provenance.setdefault(i, []).append(record)

    def forget(self, idx: Sequence[int] | Tensor) -> None:
        """Drop the cached bounds of samples ``idx`` (their provenance stays): what no later
        stage will read need not hold memory."""
        for i in idx:
            self._layers.pop(int(i), None)

    def ensure_layer_bounds(self, idx: Tensor, stage: str) -> LayerBounds | None:
        """The CROWN layer bounds of samples ``idx`` (per node on a graph), computed (once, in
        one batch) for those not cached."""
        from advrobust.network.ir import Network
        from advrobust.relax.crown import crown_layer_bounds
        from advrobust.relax.dag import graph_crown_bounds

        network = self.network
        missing = [int(i) for i in idx if int(i) not in self._layers]
        if missing:
            t0 = time.perf_counter()
            rows = torch.tensor(missing, device=self.x.device)
            x64 = self.x[rows].to(torch.float64)
            with torch.no_grad():
                bounds = crown_layer_bounds(network, x64, self.threat, rounding=True) \
                    if isinstance(network, Network) else \
                    graph_crown_bounds(network, x64, self.threat, rounding=True)
            record = BoundRecord("crown", stage, torch.float64, time.perf_counter() - t0,
                                 tuple(missing))
            self.store_layer_bounds(missing, bounds, record)
        return self.layer_bounds(idx)
