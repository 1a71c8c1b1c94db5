"""CROWN: linear bounds by back-substitution (the Wong–Kolter dual bound in one backward pass).

Zhang et al. 2018, "Efficient neural network robustness certification with general activation
functions"; Wong & Kolter 2018, "Provable defenses against adversarial examples via the convex
outer adversarial polytope". Intermediate (pre-activation) bounds are computed layer by layer by
the same backward pass (only for neurons interval bounds leave unstable, intersected with them);
after a convolution the rows are carried back as receptive-field patches
(:mod:`advrobust.relax._patch_crown`, Xu et al. 2020) in chunks sized to a memory budget;
each unstable ReLU is relaxed by the triangle with the adaptive lower slope (1 if ``u > -l``,
else 0) or optimised slopes (alpha-CROWN, Xu et al. 2021). Everything is differentiable tensor
code over the live parameters: ``crown_lower`` serves CROWN-IBP certified training as well.

The back-substitution is the graph pass (:func:`advrobust.relax.dag.graph_backward`) over the
chain's registered graph ops (:attr:`~advrobust.network.ir.Network.graph`): every step asks its
op, never the op's type. What this module adds for chains is the intermediate-bound driver:
patches after convolutions, the weight rows of a dense layer as the starting rows, chunking to a
memory budget. A DAG takes :mod:`advrobust.relax.dag`'s driver.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_bool, check_choice, check_float, check_int
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall
from advrobust.errors import MemoryLimitError
from advrobust.network.graph import Graph
from advrobust.network.ir import Network
from advrobust.relax._patch_crown import patch_elements as _patch_elements
from advrobust.relax._patch_crown import patch_pass
from advrobust.relax._rounding import (
    abs_dot,
    add_offset,
    input_gamma,
)
from advrobust.relax.base import PRECISIONS, Bounder, Bounds, as_ir
from advrobust.relax.dag import (
    Allowance,
    graph_backward,
    graph_crown_bounds,
    interval_is_exact,
    refine_dense,
)
from advrobust.relax.ibp import LayerBounds, interval_layer_bounds

__all__ = ["CROWN", "backsubstitute", "crown_layer_bounds", "crown_lower"]

#: Bytes of working memory one chunk of intermediate-bound rows may take (estimated) when the
#: caller states no ``memory_limit``; rows are chunked to fit.
MEMORY_BUDGET = 1 << 26
_WORKSET_DENSE = 4  # coefficient-sized tensors alive at once in a dense step
_WORKSET_PATCH = 8  # window-sized tensors alive at once in a patch step (windows, products)


def backsubstitute(network: Network, a: Tensor, stop: int, bounds: LayerBounds,
                   alphas: Mapping[int, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Carry coefficients ``a`` on the input of op ``stop`` back to the network input.

    Args:
        network: the IR.
        a: (N or 1, K, *shape) coefficients on the input of ``network.ops[stop]`` (the output
            when ``stop == len(network.ops)``).
        stop: the op the coefficients sit in front of.
        bounds: pre-activation bounds of every ReLU before ``stop``.
        alphas: optional lower slopes per ReLU index, broadcastable to (N, K, *shape).

    Returns:
        ``(a_in, const)`` with ``<a, z_stop> >= <a_in, x> + const`` for every input ``x`` of the
        box ``bounds[0]``; ``a_in`` (N or 1, K, *input_shape), ``const`` (N or 1, K).
    """
    a, const, _ = _backward(network, a, stop, bounds, alphas, rounding=False)
    return a, const


def _backward(network: Network, a: Tensor, stop: int, bounds: LayerBounds,
              alphas: Mapping[int, Tensor] | None, rounding: bool,
              allowances: dict[int, Allowance] | None = None
              ) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`backsubstitute`, plus the rounding allowance of the pass when ``rounding``: the
    graph pass (:func:`~advrobust.relax.dag.graph_backward`) over the chain's graph ops (node
    ``j + 1`` carries op ``j``, so ReLU ``j``'s slopes are node ``j + 1``'s).

    The allowance (N, K) bounds what floating point can lose in every step, ``gamma`` of the
    step times ``<|a|, magnitude of the step's terms>`` (see :mod:`advrobust.relax._rounding`).
    ``allowances`` memoises the ops' ``(gamma, magnitude)`` across calls on the same ``bounds``.
    """
    slopes = None if alphas is None else {j + 1: v for j, v in alphas.items()}
    a, const, err = graph_backward(network.graph, stop, a, bounds, slopes=slopes,
                                   rounding=rounding, allowances=allowances)
    if err is not None:
        err = err.detach()
    return a, const, err


def _concretize(threat: LpBall, x0: Tensor, a: Tensor, const: Tensor,
                err: Tensor | None = None) -> Tensor:
    """``min <a, x> + const`` over the set, minus the allowance ``err`` and that of this sum."""
    value = threat.concretize_lower(a.flatten(2), x0) + const
    if err is None:
        return value
    lo, hi = threat.input_bounds(x0)
    size = a[0, 0].numel()
    mag = torch.maximum(lo.abs(), hi.abs()) + threat.eps
    err = err + input_gamma(size, value.dtype) * (abs_dot(a, mag) + const.detach().abs())
    return value - err


def _interval_is_exact(network: Network, threat: LpBall, index: int) -> bool:
    """True if interval bounds of op ``index``'s input are already the exact range: a box
    (linf) through at most one op that mixes coordinates and no nonlinear op (the graph
    driver's test on node ``index``, which carries that input)."""
    return interval_is_exact(network.graph, index, threat)


def _chunk(per_row_bytes: int, rows: int, memory_limit: int | None, where: str) -> int:
    """Rows per chunk so that a chunk's estimated working set fits the budget."""
    budget = MEMORY_BUDGET if memory_limit is None else memory_limit
    if memory_limit is not None and per_row_bytes > memory_limit:
        raise MemoryLimitError(
            f"CROWN bounds of {where} need about {per_row_bytes / 2**20:.1f} MiB for a single "
            f"neuron (estimated working set), above memory_limit={memory_limit} bytes "
            f"({memory_limit / 2**20:.1f} MiB); raise the limit or use interval bounds.")
    return max(1, min(rows, budget // max(per_row_bytes, 1)))


def _patch_pass(network: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds, index: int,
                channels: Tensor, positions: Tensor, rounding: bool, mags: dict[int, Tensor],
                cache: dict[tuple[int, str], Tensor],
                allowances: dict[int, Allowance] | None = None) -> Tensor:
    """:func:`~advrobust.relax._patch_crown.patch_pass` with the dense back-substitution."""

    def dense(a: Tensor, stop: int, const: Tensor, err: Tensor) -> Tensor:
        a, c, e = _backward(network, a, stop, bounds, None, rounding, allowances)
        return _concretize(threat, x0, a, const + c, err + e if e is not None else None)

    return patch_pass(network, x0, threat, bounds, index, channels, positions, rounding, mags,
                      cache, dense)


def _refine(network: Network, x0: Tensor, threat: LpBall, bounds: LayerBounds,
            index: int, rounding: bool = False, mags: dict[int, Tensor] | None = None,
            memory_limit: int | None = None,
            allowances: dict[int, Allowance] | None = None) -> tuple[Tensor, Tensor]:
    """CROWN bounds of the input of op ``index``, intersected with its interval bounds
    (widened by the rounding allowance when ``rounding``), on the neurons whose bounds the
    relaxation of op ``index`` depends on (its ``refine_mask``: a ReLU's unstable ones).

    After a convolution the rows are carried back as patches; rows are chunked so that a
    chunk's estimated working set fits ``memory_limit`` bytes (default :data:`MEMORY_BUDGET`);
    :class:`~advrobust.errors.MemoryLimitError` if a single neuron does not fit a stated limit.
    """
    lo, hi = bounds[index]
    mask = network.graph_ops[index].refine_mask(lo, hi)
    if mask is None or _interval_is_exact(network, threat, index):
        return lo, hi
    n = x0.shape[0]
    mags = {} if mags is None else mags
    allowances = {} if allowances is None else allowances
    lo_f, hi_f = lo.flatten(1), hi.flatten(1)
    idx = mask.flatten(1).any(0).nonzero().flatten()
    if idx.numel() == 0:
        return lo, hi
    itemsize = lo.element_size()
    per_query = _patch_elements(network, index, n)
    where = f"op {index} ({network.ops[index].name})"
    lo_f, hi_f = lo_f.clone(), hi_f.clone()
    if per_query is not None:
        cache: dict[tuple[int, str], Tensor] = {}
        unstable = mask.any(0).flatten(1)  # (C, H * W)
        per_row = 2 * per_query * itemsize * _WORKSET_PATCH
        ch_chunk = _chunk(per_row, unstable.shape[0], memory_limit, where)
        width = int(unstable.any(1).sum())
        pos_chunk = _chunk(per_row * width, unstable.shape[1], None, where) \
            if ch_chunk >= width else 1
        for positions in unstable.any(0).nonzero().flatten().split(pos_chunk):
            want = unstable[:, positions]
            for channels in want.any(1).nonzero().flatten().split(ch_chunk):
                val = _patch_pass(network, x0, threat, bounds, index, channels, positions,
                                  rounding, mags, cache, allowances)
                keep = want[channels]
                flat = (channels.unsqueeze(1) * unstable.shape[1] + positions)[keep]
                lo_f[:, flat] = torch.maximum(lo_f[:, flat], val[:, 0][:, keep])
                hi_f[:, flat] = torch.minimum(hi_f[:, flat], -val[:, 1][:, keep])
        return lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)
    widest = max([x0[0].numel()] + [op.out_size for op in network.ops[:index]])
    chunk = _chunk(2 * n * widest * itemsize * _WORKSET_DENSE, idx.numel(), memory_limit, where)
    return refine_dense(network.graph, x0, threat, bounds, index, mask, chunk, rounding=rounding,
                        allowances=allowances)


def crown_layer_bounds(network: Network, x0: Tensor, threat: LpBall, *,
                       intermediate: str = "crown", rounding: bool = False,
                       memory_limit: int | None = None) -> LayerBounds:
    """Bounds of every op's input (and of the output), computed layer by layer.

    Args:
        network: the IR.
        x0: (N, *input_shape) centres of the threat set.
        threat: the set.
        intermediate: ``"crown"`` (back-substitution for every ReLU input, intersected with
            interval bounds) or ``"ibp"`` (interval bounds only, as in CROWN-IBP).
        rounding: widen every bound by its rounding allowance (what the verifiers do; off
            for certified training).
        memory_limit: bytes the working set of one chunk of back-substituted rows may take
            (estimated); None for :data:`MEMORY_BUDGET` without refusal.

    Returns:
        ``len(network.ops) + 1`` pairs ``(lo, hi)`` of (N, *shape) tensors.

    Raises:
        MemoryLimitError: a single neuron's rows need more than a stated ``memory_limit``.
    """
    if intermediate == "ibp":
        return interval_layer_bounds(network, *threat.input_bounds(x0), rounding=rounding)
    if intermediate != "crown":
        raise ValueError(f"'intermediate' must be 'crown' or 'ibp'. Got {intermediate!r}.")
    bounds = [threat.input_bounds(x0)]
    mags: dict[int, Tensor] = {}
    allowances: dict[int, Allowance] = {}
    for i, op in enumerate(network.graph_ops):
        if op.nonlinear:
            bounds[i] = _refine(network, x0, threat, bounds, i, rounding, mags, memory_limit,
                                allowances)
        bounds.append(op.sound_interval(bounds[i]) if rounding else op.interval(bounds[i]))
    return bounds


def crown_lower(network: Network | Graph | nn.Module, x0: Tensor, threat: LpBall, c: Tensor,
                d: Tensor | None = None, *, intermediate: str = "crown",
                bounds: LayerBounds | None = None,
                alphas: Mapping[int, Tensor] | None = None, rounding: bool = False) -> Tensor:
    """Differentiable CROWN lower bounds of ``C f(x) + d`` over the threat set around ``x0``.

    For certified training call it on the training model with ``intermediate="ibp"``
    (CROWN-IBP, Zhang et al. 2020) or ``"crown"``; gradients flow to the weights.

    Args:
        network: a :class:`Network`, a :class:`Graph`, or a module (a supported
            ``nn.Sequential``, or any module torch.fx traces into registered ops: residual
            networks, concatenations, sigmoid / tanh ...).
        x0: (N, *input_shape) centres.
        threat: the set (linf box, or l2 / l1 ball through the dual norm, clipped to the box).
        c: (N, K, num_outputs) spec rows.
        d: optional (N, K) offsets.
        intermediate: how pre-activation bounds are found (``"crown"`` or ``"ibp"``).
        bounds: precomputed layer (node) bounds (overrides ``intermediate``).
        alphas: optional lower slopes per ReLU index (alpha-CROWN; per node index on a graph).
        rounding: subtract the rounding allowance of the pass (and compute the layer bounds
            with it): sound in floating point; what the verifiers do.

    Returns:
        (N, K) lower bounds.
    """
    net = as_ir(network, x0.shape[1:])
    if c.shape[1] == 0:  # no rows: nothing to bound
        return x0.new_zeros((x0.shape[0], 0))
    if isinstance(net, Graph):  # the IR's shape, not an op type: DAGs take the graph pass
        from advrobust.relax.dag import graph_crown_lower

        return graph_crown_lower(net, x0, threat, c, d, bounds=bounds, slopes=alphas,
                                 intermediate=intermediate, rounding=rounding)
    if bounds is None:
        bounds = crown_layer_bounds(net, x0, threat, intermediate=intermediate,
                                    rounding=rounding)
    a, const, err = _backward(net, c.to(x0.dtype), len(net.ops), bounds, alphas, rounding)
    lower = _concretize(threat, x0, a, const, err)
    if d is None:
        return lower
    return add_offset(lower, d) if rounding else lower + d.to(lower.dtype)


def root_bounds(network: Network | Graph, x0: Tensor, threat: LpBall, spec: Spec, *,
                layer_bounds: LayerBounds | None = None) -> tuple[LayerBounds, Tensor]:
    """The root every LP / MILP encoding starts from: sound layer (node) bounds and the spec's
    CROWN lower bound over them, both with rounding allowances.

    Args:
        network: a chain :class:`Network` or a :class:`Graph`.
        x0: (N, *input_shape) centres (float64).
        threat: the set.
        spec: N spec rows.
        layer_bounds: bounds an earlier stage already computed (reused as they are).

    Returns:
        The layer bounds and the (N, K) CROWN lower bounds.
    """
    with torch.no_grad():
        bounds = layer_bounds
        if bounds is None:
            bounds = (graph_crown_bounds(network, x0, threat, rounding=True)
                      if isinstance(network, Graph) else
                      crown_layer_bounds(network, x0, threat, rounding=True))
        crown = crown_lower(network, x0, threat, spec.C, spec.d, bounds=bounds, rounding=True)
    return bounds, crown


def _optimize_alphas(network: Network, x0: Tensor, threat: LpBall, spec: Spec,
                     bounds: LayerBounds, steps: int, lr: float) -> Tensor:
    """alpha-CROWN on the last layer: Adam on the lower slopes; best bound per row is kept."""
    c = spec.C.to(x0.dtype)
    alphas: dict[int, Tensor] = {}
    ops = network.graph_ops
    for j in network.relu_indices:
        init = ops[j].init_slopes(*bounds[j], c.shape[1])
        if init is not None:
            alphas[j] = init.requires_grad_(True)
    best = crown_lower(network, x0, threat, c, spec.d, bounds=bounds, rounding=True).detach()
    opt = torch.optim.Adam(list(alphas.values()), lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            lower = crown_lower(network, x0, threat, c, spec.d, bounds=bounds, alphas=alphas,
                                    rounding=True)
            opt.zero_grad()
            (-lower.sum()).backward()
        opt.step()
        with torch.no_grad():
            for j, v in alphas.items():
                ops[j].clamp_slopes(v, *bounds[j])
        best = torch.maximum(best, lower.detach())
    with torch.no_grad():
        last = crown_lower(network, x0, threat, c, spec.d, bounds=bounds, alphas=alphas,
                              rounding=True)
    return torch.maximum(best, last)


class CROWN(Bounder):
    """Linear bound propagation (CROWN / the Wong–Kolter dual in one backward pass).

    Args:
        alpha: optimise the lower slopes of unstable ReLUs for the final bound (alpha-CROWN;
            intermediate bounds stay those of CROWN).
        steps: Adam steps of the alpha optimisation.
        lr: its learning rate.
        precision: dtype of the passes, ``"float64"`` (default) or ``"float32"`` (its own
            rounding allowances keep it sound; about twice as fast where the passes are
            GEMM-bound, and looser: bench/RESULTS.md, issue 10; a model whose parameters
            float32 does not represent is refused).
    """

    reuses_layer_bounds = True

    def __init__(self, *, alpha: bool = False, steps: int = 20, lr: float = 0.1,
                 precision: str = "float64") -> None:
        self.alpha = check_bool(alpha, "alpha", "CROWN")
        self.steps = check_int(steps, "steps", "CROWN", low=1)
        self.lr = check_float(lr, "lr", "CROWN", low=0.0, low_open=True)
        self.precision = check_choice(precision, "precision", "CROWN", tuple(PRECISIONS))

    def _bound(self, network: Network, x: Tensor, threat: LpBall, spec: Spec, *,
               layer_bounds: LayerBounds | None = None) -> Bounds:
        with torch.no_grad():
            bounds = layer_bounds if layer_bounds is not None else \
                crown_layer_bounds(network, x, threat, rounding=True)
            if not self.alpha:
                return Bounds(crown_lower(network, x, threat, spec.C, spec.d, bounds=bounds,
                                          rounding=True))
        return Bounds(_optimize_alphas(network, x, threat, spec, bounds, self.steps, self.lr))

    def _bound_graph(self, graph: Graph, x: Tensor, threat: LpBall, spec: Spec, *,
                     layer_bounds: LayerBounds | None = None) -> Bounds:
        from advrobust.relax.dag import graph_crown_bounds, graph_crown_lower, optimize_slopes

        with torch.no_grad():
            bounds = layer_bounds if layer_bounds is not None else \
                graph_crown_bounds(graph, x, threat, rounding=True)
            if not self.alpha:
                return Bounds(graph_crown_lower(graph, x, threat, spec.C, spec.d,
                                                bounds=bounds, rounding=True))
        return Bounds(optimize_slopes(graph, x, threat, spec, bounds, self.steps, self.lr))
