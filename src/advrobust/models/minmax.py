"""The MinMax (GroupSort-2) activation: a gradient-norm-preserving, 1-Lipschitz nonlinearity.

Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation" (ICML 2019); the activation
of GloRo nets (Leino, Wang & Fredrikson, "Globally-robust neural networks", ICML 2021). The
features are split in two halves ``a`` and ``b`` (the feature dimension of (N, F) inputs, the
channel dimension of (N, C, H, W) inputs) and each pair is sorted:

    MinMax(a, b) = (max(a, b), min(a, b)) = (b + relu(a - b), b - relu(b - a))

Locally the map is a permutation, so it is 1-Lipschitz in every lp norm and its Jacobian is
orthogonal wherever it exists (ReLU halves the gradient norm on average; MinMax keeps it).

So that every verifier of the library reads it, :class:`MinMax` *is* an ``nn.Sequential`` of
standard layers with fixed weights: ``P`` (features -> 2 * features, rows ``a - b``, ``b``,
``-b``, ``b - a`` per pair), ``ReLU``, ``Q`` (2 * features -> features) with
``max = relu(a - b) + relu(b) - relu(-b)`` and ``min = relu(b) - relu(-b) - relu(b - a)``
(exactly the pair op above). Its own ``forward`` computes the same values directly (4x cheaper
than the two fixed matrices) and runs the layers when torch.fx traces it. The Lipschitz bounds
(:mod:`advrobust.relax._opnorm`) read its ``lipschitz_block`` hook and count an unmodified block
1 instead of the product ``||Q|| ||P||``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_int
from advrobust.errors import InvalidInputError, InvalidParameterError

__all__ = ["MinMax"]


def _pair_matrices(features: int) -> tuple[Tensor, Tensor]:
    """The fixed ``P`` (2F, F) and ``Q`` (F, 2F) of the block (see the module docstring)."""
    h = features // 2
    eye = torch.eye(h)
    zero = torch.zeros(h, h)
    # P rows: a - b, b, -b, b - a (each h rows); columns: a, b
    p = torch.cat([torch.cat([eye, -eye], 1), torch.cat([zero, eye], 1),
                   torch.cat([zero, -eye], 1), torch.cat([-eye, eye], 1)], 0)
    # Q rows: max = d_ab + b+ - b-, min = b+ - b- - d_ba
    q = torch.cat([torch.cat([eye, eye, -eye, zero], 1),
                   torch.cat([zero, eye, -eye, -eye], 1)], 0)
    return p, q


class MinMax(nn.Sequential):
    """Sort each pair ``(x[:, i], x[:, i + F/2])`` into ``(max, min)``; shape-preserving.

    Args:
        features: the number of features (channels for ``spatial=True``); even, >= 2.
        spatial: inputs are (N, C, H, W) feature maps (the pairs are channel pairs, the fixed
            maps 1x1 convolutions) instead of (N, F) vectors.

    Shape:
        (N, F) -> (N, F), or (N, C, H, W) -> (N, C, H, W) with ``spatial=True``.

    Raises:
        InvalidParameterError: ``features`` not an even int >= 2.

    Examples::

        >>> act = MinMax(4)
        >>> act(torch.tensor([[1.0, -2.0, 3.0, 0.5]]))
        tensor([[ 3.0000,  0.5000,  1.0000, -2.0000]])
    """

    def __init__(self, features: int, *, spatial: bool = False) -> None:
        features = check_int(features, "features", "MinMax", low=2)
        if features % 2:
            raise InvalidParameterError(
                f"The 'features' parameter of MinMax must be an even int >= 2 (the features "
                f"are sorted in pairs). Got {features} instead.")
        p, q = _pair_matrices(features)
        if spatial:
            first: nn.Module = nn.Conv2d(features, 2 * features, 1, bias=False)
            last: nn.Module = nn.Conv2d(2 * features, features, 1, bias=False)
            p, q = p[:, :, None, None], q[:, :, None, None]
        else:
            first, last = nn.Linear(features, 2 * features, bias=False), \
                nn.Linear(2 * features, features, bias=False)
        super().__init__(first, nn.ReLU(), last)
        self.features = features
        self.spatial = spatial
        with torch.no_grad():
            for layer, value in ((first, p), (last, q)):
                weight = layer.weight
                assert isinstance(weight, Tensor)
                weight.copy_(value)
                weight.requires_grad_(False)

    def is_exact(self) -> bool:
        """True while the fixed maps still hold the canonical weights (nobody changed them), so
        the block computes the pair sort and is 1-Lipschitz."""
        p, q = _pair_matrices(self.features)
        if self.spatial:
            p, q = p[:, :, None, None], q[:, :, None, None]
        weights = (self[0].weight, self[2].weight)
        return all(isinstance(w, Tensor) and w.shape == want.shape
                   and bool((w.detach().cpu() == want.to(w.dtype)).all())
                   for w, want in zip(weights, (p, q), strict=True))

    def lipschitz_block(self) -> tuple[nn.Module, nn.Module] | None:
        """The hook the Lipschitz bounds read (:func:`advrobust.relax._opnorm.minmax_blocks`):
        the first and last layers (``P``, ``Q``) while the block is the exact pair sort, which
        is 1-Lipschitz in every lp norm; None once its weights were changed."""
        return (self[0], self[2]) if self.is_exact() else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
            return super().forward(x)  # the fixed layers: registered ops of the graph IR
        if x.dim() != (4 if self.spatial else 2) or x.shape[1] != self.features:
            want = "(N, C, H, W)" if self.spatial else "(N, F)"
            raise InvalidInputError(
                f"MinMax({self.features}{', spatial=True' if self.spatial else ''}) takes "
                f"inputs of shape {want} with {self.features} features in dimension 1. Got "
                f"{tuple(x.shape)} instead.")
        a, b = x.chunk(2, dim=1)
        return torch.cat([b + torch.relu(a - b), b - torch.relu(b - a)], dim=1)

    def extra_repr(self) -> str:
        return f"features={self.features}, spatial={self.spatial}"
