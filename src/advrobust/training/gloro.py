"""Lipschitz-margin training: globally-robust networks (GloRo).

Leino, Wang & Fredrikson, "Globally-robust neural networks" (ICML 2021). The logits are
augmented with a bottom class ``f_bot(x) = max_{j != y} f_j(x) + eps * K_{yj}``, where ``K_{yj}``
bounds the l2 Lipschitz constant of ``f_y - f_j``: the norm of the difference of the last
layer's rows (folded through the affine ops after the last ReLU) times the spectral norms of the
layers before it. Cross-entropy on the augmented logits pushes every margin above ``eps * K``,
which is exactly what :class:`~advrobust.relax.GlobalLipschitz` certifies afterwards. With
``beta`` the loss is GloRo's TRADES form instead: cross-entropy on the clean logits plus ``beta``
times the KL divergence from the clean softmax (bottom class 0) to the augmented softmax, which
trades clean accuracy for certified margin more gently than cross-entropy on the augmented
logits; ``beta`` ramps up with the eps schedule.

Build the network with :class:`~advrobust.models.minmax.MinMax` activations (``minmax-mlp``,
``minmax-2c2f``): a MinMax block counts 1 in the product of norms, and unlike ReLU it keeps the
gradient norm, so the product bound can be nearly tight (Anil et al. 2019).

The spectral norms come from power iteration with the vectors kept across steps (one iteration
per step, as in spectral normalisation, Miyato et al. 2018), differentiable through
``||W v||`` with ``v`` fixed. Training uses these estimates; certification recomputes certified
upper bounds (:mod:`advrobust.relax._opnorm`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advrobust.core._validation import check_float, check_int
from advrobust.core.spec import Spec
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError, InvalidThreatModelError
from advrobust.network.ir import Network
from advrobust.network.ops import Op
from advrobust.relax._opnorm import network_split, network_units
from advrobust.relax.base import verifiable_ir
from advrobust.training.objective import Objective
from advrobust.training.ramps import EpsSchedule

__all__ = ["GloRo", "gloro_logits"]


def gloro_logits(logits: Tensor, y: Tensor, consts: Tensor, eps: float) -> Tensor:
    """Logits (N, C + 1) with the bottom class ``max_{j != y} f_j + eps * K_{yj}`` appended.

    Args:
        logits: (N, C).
        y: (N,) labels.
        consts: (N, C - 1) Lipschitz constants of the margin rows ``e_y - e_j`` of
            :meth:`Spec.margins` (other classes in increasing order).
        eps: the l2 radius.
    """
    spec = Spec.margins(y, logits.shape[1])
    margins = spec.apply(logits)  # f_y - f_j
    f_y = logits.gather(1, y.unsqueeze(1))
    bottom = f_y + (eps * consts - margins).amax(1, keepdim=True)
    return torch.cat([logits, bottom], dim=1)


class GloRo(Objective):
    """GloRo training: cross-entropy with the Lipschitz-margin bottom class (l2 only).

    Args:
        threat: the l2 ball to certify (its eps is the end of the ramp).
        schedule: eps ramp (default: ``EpsSchedule()``, 0 up to eps over the first half).
        iterations: power iterations per step (the vectors persist across steps).
        beta: None for cross-entropy on the augmented logits; a weight >= 0 for the TRADES
            form (clean cross-entropy + beta * KL(clean softmax || augmented softmax)), beta
            ramped like eps.
        seed: seed of the initial power-iteration vectors.

    Raises:
        InvalidThreatModelError: a threat that is not l2.
        InvalidParameterError: ``iterations`` < 1, ``beta`` negative or not finite.
    """

    def __init__(self, *, threat: LpBall, schedule: EpsSchedule | None = None,
                 iterations: int = 1, beta: float | None = None,
                 seed: int | None = None) -> None:
        self.threat = threat
        self.schedule = schedule if schedule is not None else EpsSchedule()
        self.iterations = check_int(iterations, "iterations", "GloRo", low=1)
        self.beta = None if beta is None else check_float(beta, "beta", "GloRo", low=0.0)
        self.seed = seed
        if not isinstance(threat, LpBall):
            raise InvalidParameterError(
                f"The 'threat' parameter of GloRo must be an LpBall. Got "
                f"{type(threat).__name__} instead.")
        if threat.norm is not Norm.L2:
            raise InvalidThreatModelError(
                f"GloRo supports the norm 'l2' only (its Lipschitz bound is spectral). Got "
                f"{threat.norm.value!r} instead.")
        self._eps = self.schedule.resolve(threat.eps, "GloRo")
        self._network: tuple[int, tuple[int, ...], Network] | None = None
        self._vectors: dict[int, Tensor] = {}

    def prepare(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        """Build the IR now, so an unsupported layer fails before the first batch."""
        self._ir(model, tuple(int(s) for s in input_shape))

    def _ir(self, model: nn.Module, shape: tuple[int, ...]) -> Network:
        cached = self._network
        if cached is None or cached[0] != id(model) or cached[1] != shape:
            # a Sequential, or any module fx traces into a chain of registered ops
            network = verifiable_ir(model, shape, "GloRo", graph_ok=False)
            assert isinstance(network, Network)
            self._network = cached = (id(model), shape, network)
            self._vectors = {}
        return cached[2]

    def _sigma(self, index: int, op: Op) -> Tensor | None:
        """Differentiable power-iteration estimate of ``||op||_2`` (the op's
        :meth:`~advrobust.network.ops.Op.l2_estimate`; None: the op counts 1)."""

        def init(shape: tuple[int, ...]) -> Tensor:
            gen = torch.Generator().manual_seed(self.seed if self.seed is not None
                                                else int(torch.randint(0, 2**62, (1,))))
            return torch.randn((1,) + shape, generator=gen)

        sigma, v = op.l2_estimate(self._vectors.get(index), init, self.iterations)
        if v is not None:
            self._vectors[index] = v
        return sigma

    def lipschitz(self, network: Network, c: Tensor) -> Tensor:
        """Estimated l2 Lipschitz constants (N, K) of the rows ``c`` (N, K, num_outputs);
        ReLUs and MinMax blocks count 1."""
        start = network_split(network)
        a = c
        for op in reversed(network.graph_ops[start:]):  # linear: fold into the rows
            (back,), _ = op.backward(a)
            assert back is not None
            a = back
        consts = a.flatten(2).norm(dim=-1)
        for i, unit in network_units(network, start):
            sigma = None if unit is None else self._sigma(i, unit)
            if sigma is not None:
                consts = consts * sigma
        return consts

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        logits = model(x)
        eps = self._eps(progress)
        network = self._ir(model, tuple(x.shape[1:]))
        spec = Spec.margins(y, logits.shape[1])
        consts = self.lipschitz(network, spec.C.to(logits))
        augmented = gloro_logits(logits, y, consts, eps)
        if self.beta is None:
            return F.cross_entropy(augmented, y)
        final = self._eps(1.0)
        weight = self.beta * (eps / final if final > 0 else 1.0)
        clean = F.softmax(logits, dim=1)
        target = torch.cat([clean, clean.new_zeros(len(clean), 1)], dim=1)
        robust = F.kl_div(F.log_softmax(augmented, dim=1), target, reduction="batchmean")
        return F.cross_entropy(logits, y) + weight * robust
