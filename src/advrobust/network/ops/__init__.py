"""The chain IR's ops: one class per layer type holding every view of it.

Every op maps a batch ``(N, *in_shape)`` to ``(N, *out_shape)`` and offers four views:

- ``forward(x)`` — the layer itself;
- ``interval(lo, hi)`` — interval propagation (exact for an affine map: centre / radius);
- ``backward(a)`` and ``bias_term(a)`` — back-substitution of linear coefficients
  ``a`` (N, K, *out_shape) through the map: ``<a, W z + b> = <backward(a), z> + bias_term(a)``;
- ``linear_map()`` — the dense matrix and bias, which LP / MILP encodings turn into rows.

Each op also carries its own numerical facts, so that no algorithm asks an op's type: the
products its rounded values sum (``terms``) and their magnitudes (``magnitude``) for the rounding
allowances (:mod:`advrobust.relax._rounding`), whether it is ``exact`` in floating point, a
certified bound on its operator norm (``operator_norm``, for the Lipschitz bounds) and the
backward step of a Jacobian interval (``jacobian_backward``, for local Lipschitz bounds), how it
acts on receptive-field windows (``patchable``, ``patch_window``, ``window_backward``,
``channel_bias``, ``patch_relaxation``, ``bounded_slopes``: CROWN's patch pass,
:mod:`advrobust.relax._patch_crown`), a differentiable estimate of its l2 norm (``l2_estimate``,
for GloRo training) and whether a following batch-norm folds into it (``fold_batchnorm``).
Every bound pass and encoding reaches an op through its registered graph op (``to_graph_op``,
:mod:`advrobust.network.graph.ops.chain`).

One file per op family: ``base`` (:class:`Op`, the interface and its defaults), ``affine``
(:class:`AffineOp`, :class:`FlattenOp`), ``dense`` (:class:`LinearOp`, batch-norm folding),
``conv`` (:class:`ConvOp`, :class:`AvgPoolOp`), ``channel`` (:class:`ChannelAffineOp`); the ReLU
is :mod:`advrobust.network.relu`.

Ops are stateless: bounds are passed in and returned. They hold references to the live modules
(never detached copies), and batch-norm layers are folded at call time, so every bound pass is
differentiable w.r.t. the network's parameters.
"""

from advrobust.network.ops.affine import AffineOp, FlattenOp
from advrobust.network.ops.base import Op, Window
from advrobust.network.ops.channel import ChannelAffineOp
from advrobust.network.ops.conv import AvgPoolOp, ConvOp
from advrobust.network.ops.conv import _ConvLike as _ConvLike  # (tests)
from advrobust.network.ops.dense import LinearOp, bn_scale_shift

__all__ = [
    "AffineOp",
    "AvgPoolOp",
    "ChannelAffineOp",
    "ConvOp",
    "FlattenOp",
    "LinearOp",
    "Op",
    "Window",
    "bn_scale_shift",
]
