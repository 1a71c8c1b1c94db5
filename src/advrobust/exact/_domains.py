"""The state of a batch of branch-and-bound domains (:mod:`advrobust.exact._beta`): splits,
warm-start slopes and multipliers, bounds, branching scores; and the ReLU relaxations a batch
shares over its optimisation steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from advrobust.core.result import VERIFY_TOLERANCE
from advrobust.relax._rounding import relu_gamma, relu_magnitude

__all__ = ["Domains", "OpenList", "OptState"]

#: A domain is closed once its bound exceeds this (twice the verdict tolerance, so the proved
#: lower bound always clears the tolerance itself).
_CLOSE = 2 * VERIFY_TOLERANCE

#: Storage dtype of slopes and multipliers (any value is sound: float32 halves the memory).
_STORE = torch.float32


@dataclass
class _Relu:
    """What a batch's ReLU relaxations share over every optimisation step (they depend on the
    domains' bounds only, not on the slopes): masks, upper line, rounding magnitudes, all
    (B, 1, *shape) so that they broadcast against coefficients (B, K, *shape)."""

    unstable: Tensor
    active: Tensor
    up: Tensor
    up_b: Tensor  # (B, n, 1): one intercept per neuron, for one matmul per pass
    mag: Tensor  # (B, *shape): relu_magnitude
    beta_mag: Tensor  # (B, *shape): max(|lo|, |hi|), the split terms' magnitude
    gamma: float

    @classmethod
    def of(cls, lo: Tensor, hi: Tensor) -> _Relu:
        unstable = (lo < 0) & (hi > 0)
        active = (lo >= 0).to(lo.dtype)
        lo_c, hi_c = lo.clamp(max=0), hi.clamp(min=0)
        denom = torch.where(unstable, hi_c - lo_c, torch.ones_like(hi_c))
        up = torch.where(unstable, hi_c / denom, active)
        up_b = torch.where(unstable, -up * lo_c, torch.zeros_like(lo))
        return cls(unstable.unsqueeze(1), active.unsqueeze(1), up.unsqueeze(1),
                   up_b.flatten(1).unsqueeze(2), relu_magnitude(lo, hi),
                   torch.maximum(lo.abs(), hi.abs()), relu_gamma(lo.dtype, lo[0].numel()))

    def backward(self, a: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """``ReLUOp.backward`` with the shared parts precomputed: ``(a', const)``."""
        low = torch.where(self.unstable, alpha.clamp(0, 1), self.active)
        neg = a.clamp(max=0)
        out = torch.addcmul(a * low, neg, self.up - low)
        return out, torch.matmul(neg.flatten(2), self.up_b).squeeze(-1)


@dataclass
class OptState:
    """Per-domain Adam state (Kingma & Ba 2015) of the slopes and multipliers, so that a
    child continues its parent's optimisation instead of restarting it: first and second
    moments per parameter, the domain's step count ``t`` (B,) for the slopes' bias
    correction, and per multiplier its own count (a new split's multiplier starts fresh
    moments while the domain's other parameters keep theirs)."""

    m_alpha: dict[int, Tensor]
    v_alpha: dict[int, Tensor]
    m_beta: dict[int, Tensor]
    v_beta: dict[int, Tensor]
    t_beta: dict[int, Tensor]
    t: Tensor

    @classmethod
    def zeros(cls, like: dict[int, Tensor]) -> OptState:
        def fresh() -> dict[int, Tensor]:
            return {j: torch.zeros(v.shape, dtype=_STORE) for j, v in like.items()}
        b = next(iter(like.values())).shape[0]
        return cls(fresh(), fresh(), fresh(), fresh(), fresh(), torch.zeros(b, dtype=_STORE))

    def _parts(self) -> list[dict[int, Tensor]]:
        return [self.m_alpha, self.v_alpha, self.m_beta, self.v_beta, self.t_beta]

    def map(self, fn: Callable[[Tensor], Tensor]) -> OptState:
        m_a, v_a, m_b, v_b, t_b = ({j: fn(v) for j, v in d.items()} for d in self._parts())
        return OptState(m_a, v_a, m_b, v_b, t_b, fn(self.t))

    def cat(self, other: OptState) -> OptState:
        m_a, v_a, m_b, v_b, t_b = ({j: torch.cat([v, o[j]]) for j, v in d.items()}
                                   for d, o in zip(self._parts(), other._parts(), strict=True))
        return OptState(m_a, v_a, m_b, v_b, t_b, torch.cat([self.t, other.t]))

    def step(self, params: dict[int, Tensor], grads: dict[int, Tensor | None], lr: float,
             kind: str, *, decay: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
             eps: float = 1e-8) -> None:
        """One ascent step per domain on ``params`` (``kind``: ``"alpha"``, bias-corrected
        by the domain's count ``t``, or ``"beta"``, by each multiplier's ``t_beta``); the
        caller advances the counts first; the rate is ``lr * decay ** (t - 1)``, by the
        domain's count."""
        b1, b2 = betas
        if decay != 1.0:
            lr_t: float | Tensor = lr * decay ** (self.t - 1).clamp_min(0).unsqueeze(1)
        else:
            lr_t = lr
        m_all, v_all = (self.m_alpha, self.v_alpha) if kind == "alpha" else \
            (self.m_beta, self.v_beta)
        for j, p in params.items():
            g = grads[j]
            if g is None:
                continue
            m, v = m_all[j], v_all[j]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if kind == "alpha":
                t = self.t.unsqueeze(1)
            else:
                t = self.t_beta[j]
            # b ** t as exp(t log b): a tensor power of a scalar base is ~6x slower on CPU
            m_hat = m / (1 - torch.exp(t * math.log(b1))).clamp_min(1 - b1)
            v_hat = v / (1 - torch.exp(t * math.log(b2))).clamp_min(1 - b2)
            p.add_(lr_t * m_hat / (v_hat.sqrt() + eps))


@dataclass
class Domains:
    """A batch of B domains of one sample.

    Attributes:
        split: per ReLU key (node index - 1; a chain's op index), (B, n) int8: +1 active
            split, -1 inactive split, 0 free.
        alpha: per ReLU key, (B, n) lower slopes (warm start of the children).
        beta: per ReLU key, (B, n) multipliers >= 0 of the split constraints.
        lower: (B,) sound lower bounds (float64).
        score: (B, total neurons) branching scores (0: not splittable).
        row: (B,) spec row of each domain.
        coef: (B, total neurons) coefficients of the best pass on every ReLU's output (they
            start a new split's multiplier where that reproduces the parent's bound).
        state: the domains' Adam state (None: each batch starts a fresh one).
    """

    split: dict[int, Tensor]
    alpha: dict[int, Tensor]
    beta: dict[int, Tensor]
    lower: Tensor
    score: Tensor
    row: Tensor
    coef: Tensor
    state: OptState | None = None

    def take(self, idx: Tensor, state: bool = True) -> Domains:
        """The domains ``idx`` (without their Adam state unless ``state``)."""
        return Domains({i: v[idx] for i, v in self.split.items()},
                       {i: v[idx] for i, v in self.alpha.items()},
                       {i: v[idx] for i, v in self.beta.items()},
                       self.lower[idx], self.score[idx], self.row[idx], self.coef[idx],
                       None if self.state is None or not state
                       else self.state.map(lambda v: v[idx]))

    def cat(self, other: Domains) -> Domains:
        def join(a: dict[int, Tensor], b: dict[int, Tensor]) -> dict[int, Tensor]:
            return {i: torch.cat([v, b[i]]) for i, v in a.items()}
        return Domains(join(self.split, other.split), join(self.alpha, other.alpha),
                       join(self.beta, other.beta), torch.cat([self.lower, other.lower]),
                       torch.cat([self.score, other.score]), torch.cat([self.row, other.row]),
                       torch.cat([self.coef, other.coef]),
                       None if self.state is None or other.state is None
                       else self.state.cat(other.state))

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def tensors(self) -> list[Tensor]:
        """Every per-domain tensor (first dimension B), in a fixed order (see :meth:`rebuilt`)."""
        out = [*self.split.values(), *self.alpha.values(), *self.beta.values(), self.lower,
               self.score, self.row, self.coef]
        if self.state is not None:
            out += [v for part in self.state._parts() for v in part.values()] + [self.state.t]
        return out

    def rebuilt(self, tensors: list[Tensor]) -> Domains:
        """Domains of the same layout as this one over ``tensors`` (ordered as :meth:`tensors`)."""
        it = iter(tensors)

        def same(d: dict[int, Tensor]) -> dict[int, Tensor]:
            return {j: next(it) for j in d}
        split, alpha, beta = same(self.split), same(self.alpha), same(self.beta)
        lower, score, row, coef = next(it), next(it), next(it), next(it)
        state = None
        if self.state is not None:
            m_a, v_a, m_b, v_b, t_b = (same(d) for d in self.state._parts())
            state = OptState(m_a, v_a, m_b, v_b, t_b, next(it))
        return Domains(split, alpha, beta, lower, score, row, coef, state)

    def bytes_per_domain(self) -> int:
        """Memory one domain holds (for sizing the open list)."""
        tensors = 2 if self.state is None else 7  # slopes, multipliers (+ moments, counts)
        per = sum(v[0].numel() * (v.element_size() + tensors * _STORE.itemsize)
                  for v in self.split.values())
        return per + 2 * self.score.shape[1] * self.score.element_size() + 16


class OpenList:
    """The open domains of one search, in storage that grows by doubling: splitting, adding
    children and dropping closed domains write only the domains concerned (a list rebuilt with
    :meth:`Domains.take` and :meth:`Domains.cat` copies every open domain at every batch, a
    quarter of a long search's time). The open domains are the first ``len`` of the storage;
    a dropped domain's slot takes one from the end (their order is not kept). ``most``: the
    storage doubles up to this many domains only (the memory the search may use)."""

    def __init__(self, dom: Domains, most: int | None = None) -> None:
        self._buf, self._n = dom, len(dom)
        self._most = most  # the storage never grows past this many domains unless it must

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> Domains:
        """The open domains (views of the storage: valid until the next change)."""
        return self._buf.rebuilt([t[:self._n] for t in self._buf.tensors()])

    def take(self, idx: Tensor) -> Domains:
        """Copies of the open domains ``idx``."""
        return self.view.take(idx)

    def drop(self, idx: Tensor) -> None:
        """Remove the open domains ``idx`` (distinct positions below ``len``)."""
        k = int(idx.numel())
        if k == 0:
            return
        n = self._n - k
        gone = torch.zeros(self._n, dtype=torch.bool)
        gone[idx] = True
        assert int(gone.sum()) == k, "OpenList.drop: repeated positions"
        holes = gone[:n].nonzero().flatten()
        movers = (~gone[n:]).nonzero().flatten() + n
        assert holes.numel() == movers.numel()
        if holes.numel():
            for t in self._buf.tensors():
                t[holes] = t[movers]
        self._n = n

    def add(self, dom: Domains) -> None:
        """Append the domains ``dom`` (of this list's layout)."""
        k = len(dom)
        if k == 0:
            return
        tensors = self._buf.tensors()
        if self._n + k > tensors[0].shape[0]:
            cap = max(2 * tensors[0].shape[0], self._n + k)
            if self._most is not None:
                cap = max(min(cap, self._most), self._n + k)
            grown = []
            for t in tensors:
                g = t.new_empty((cap,) + tuple(t.shape[1:]))
                g[:self._n] = t[:self._n]
                grown.append(g)
            self._buf, tensors = self._buf.rebuilt(grown), grown
        for t, new in zip(tensors, dom.tensors(), strict=True):
            t[self._n:self._n + k] = new
        self._n += k
