"""The threat model: an lp ball around each input, intersected with the valid input box.

``S(x0) = {x : ||x - x0||_p <= eps, lo <= x <= hi}``. One :class:`LpBall` object serves attacks
(``project``, ``ascent_direction``, ``sample``) and verifiers (``input_bounds``,
``concretize_lower``), so a lower and an upper bound can never refer to different sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from advrobust.core._validation import check_choice, check_float
from advrobust.errors import InvalidInputError, InvalidThreatModelError

__all__ = ["LpBall", "Norm", "lp_norm"]


class Norm(str, Enum):
    """The lp norms a threat model can use."""

    LINF = "linf"
    L2 = "l2"
    L1 = "l1"

    @property
    def p(self) -> float:
        """The exponent p of the norm."""
        return {Norm.LINF: math.inf, Norm.L2: 2.0, Norm.L1: 1.0}[self]

    @property
    def dual(self) -> Norm:
        """The dual norm (1/p + 1/q = 1): linf <-> l1, l2 <-> l2."""
        return {Norm.LINF: Norm.L1, Norm.L2: Norm.L2, Norm.L1: Norm.LINF}[self]

    @classmethod
    def parse(cls, value: str | Norm, owner: str = "LpBall") -> Norm:
        """Accept ``Norm`` members and their names ('linf', 'l2', 'l1', 'inf', '2', '1')."""
        if isinstance(value, Norm):
            return value
        aliases = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2",
                   "l1": "l1", "1": "l1"}
        key = str(value).strip().lower()
        check_choice(key, "norm", owner, list(aliases), error=InvalidThreatModelError)
        return cls(aliases[key])


def lp_norm(delta: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of ``delta`` shaped (N, ...); returns (N,)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm is Norm.LINF:
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    if norm is Norm.L2:
        return flat.norm(p=2, dim=1)
    return flat.abs().sum(dim=1)


def _bview(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample (N,) tensor to broadcast against ``like`` (N, ...)."""
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


def _rows_dot(a: Tensor, v: Tensor) -> Tensor:
    """``<a[n, k], v[n]>`` for a (N or 1, K, D) and v (N or 1, D) -> (N, K), without
    (N, K, D)."""
    if a.shape[0] == 1 and v.shape[0] != 1:
        return v.matmul(a[0].transpose(0, 1))
    if v.shape[0] == 1 and a.shape[0] != 1:
        return a.matmul(v[0])
    return torch.bmm(a, v.unsqueeze(2)).squeeze(2)


def _project_l1_ball(delta: Tensor, eps: float) -> Tensor:
    """Euclidean projection of each row onto the l1 ball of radius eps (Duchi et al. 2008)."""
    flat = delta.reshape(delta.shape[0], -1)
    abs_flat = flat.abs()
    inside = abs_flat.sum(dim=1) <= eps
    if bool(inside.all()) or flat.shape[1] == 0:
        return delta
    if eps == 0:
        return torch.zeros_like(delta)
    mu, _ = abs_flat.sort(dim=1, descending=True)
    cumsum = mu.cumsum(dim=1)
    idx = torch.arange(1, flat.shape[1] + 1, device=delta.device, dtype=delta.dtype)
    cond = mu - (cumsum - eps) / idx > 0
    # cond holds on a prefix; rho is its last index.
    rho = (cond.to(torch.int64) * torch.arange(flat.shape[1], device=delta.device)).amax(
        dim=1, keepdim=True)
    theta = (cumsum.gather(1, rho) - eps) / (rho + 1).to(delta.dtype)
    projected = torch.sign(flat) * (abs_flat - theta).clamp_min(0)
    # theta carries the rounding of the cumulative sum of the entries it cuts (~ulp of their
    # total, which for far-away points is >> ulp(eps)), so the result can exceed eps by a few
    # of those ulps: a radial shrink of such rows (a relative change of that order) makes
    # the ball constraint hold in floating point too.
    total = projected.abs().sum(dim=1, keepdim=True)
    shrink = eps / total.clamp_min(eps) * (1 - 4 * torch.finfo(delta.dtype).eps)
    projected = torch.where(total > eps, projected * shrink, projected)
    out = torch.where(inside.unsqueeze(1), flat, projected)
    return out.reshape(delta.shape)


@dataclass(frozen=True)
class LpBall:
    """``{x : ||x - x0||_p <= eps, lo <= x <= hi}`` around each clean input ``x0``.

    Args:
        norm: ``"linf"``, ``"l2"`` or ``"l1"`` (or a :class:`Norm`).
        eps: radius, finite and >= 0.
        lo: lower end of the valid input box (may be ``-inf``).
        hi: upper end of the valid input box (may be ``inf``); must exceed ``lo``.

    Raises:
        InvalidThreatModelError: unknown norm, eps < 0 / NaN / inf, or lo >= hi.
    """

    norm: Norm
    eps: float
    lo: float = 0.0
    hi: float = 1.0

    if TYPE_CHECKING:  # the generated __init__ also accepts norm names ("linf", "l2", "l1")
        def __init__(self, norm: Norm | str, eps: float, lo: float = 0.0,
                     hi: float = 1.0) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        eps = check_float(self.eps, "eps", "LpBall", low=0.0, error=InvalidThreatModelError)
        lo = check_float(self.lo, "lo", "LpBall", allow_inf=True, error=InvalidThreatModelError)
        hi = check_float(self.hi, "hi", "LpBall", allow_inf=True, error=InvalidThreatModelError)
        if not lo < hi or lo == math.inf or hi == -math.inf:
            raise InvalidThreatModelError(
                f"The input box of LpBall must satisfy lo < hi. Got lo={lo!r}, hi={hi!r} instead.")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def __str__(self) -> str:
        return f"{self.norm.value}(eps={self.eps:g}, box=[{self.lo:g}, {self.hi:g}])"

    def with_eps(self, eps: float) -> LpBall:
        """The same threat with another radius."""
        return LpBall(self.norm, eps, self.lo, self.hi)

    # ---------------------------------------------------------------- checks
    def check_input(self, x: Tensor, name: str = "x", atol: float = 1e-6) -> None:
        """Raise if ``x`` holds NaN / inf or lies outside ``[lo, hi]`` by more than ``atol``."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise InvalidInputError(
                f"'{name}' must be a floating-point torch.Tensor. Got {type(x).__name__}"
                f"{'' if not torch.is_tensor(x) else ' of dtype ' + str(x.dtype)} instead.")
        if x.dim() < 2 or x.shape[0] == 0:
            raise InvalidInputError(
                f"'{name}' must be a non-empty batch shaped (N, ...). Got shape "
                f"{tuple(x.shape)} instead.")
        if not bool(torch.isfinite(x).all()):
            raise InvalidInputError(f"'{name}' contains NaN or inf values.")
        lo_violation = float((self.lo - x).max()) if math.isfinite(self.lo) else -math.inf
        hi_violation = float((x - self.hi).max()) if math.isfinite(self.hi) else -math.inf
        worst = max(lo_violation, hi_violation)
        if worst > atol:
            raise InvalidInputError(
                f"'{name}' must lie in the threat's input box [{self.lo:g}, {self.hi:g}]; "
                f"it is outside by up to {worst:.3g}. Scale inputs to the box, or build the "
                f"LpBall with the box your data lives in (lo=-inf, hi=inf for none).")

    # ---------------------------------------------------------------- geometry
    def norm_of(self, delta: Tensor) -> Tensor:
        """Per-sample norm of a perturbation ``delta`` (N, ...) -> (N,)."""
        return lp_norm(delta, self.norm)

    def contains(self, x0: Tensor, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Bool (N,): whether each ``x`` lies in ``S(x0)`` up to ``atol``.

        The ball test also allows the rounding of ``x = x0 + delta`` in ``x``'s dtype (at most
        half an ulp per coordinate, i.e. ``finfo.eps * ||x||_p`` in total), which for l1 on
        large inputs exceeds ``atol``.
        """
        rounding = torch.finfo(x.dtype).eps * self.norm_of(x.nan_to_num(0.0, 0.0, 0.0))
        in_ball = self.norm_of(x - x0) <= self.eps + atol + rounding
        flat = x.reshape(x.shape[0], -1)
        in_box = ((flat >= self.lo - atol) & (flat <= self.hi + atol)).all(dim=1)
        return in_ball & in_box & torch.isfinite(flat).all(dim=1)

    def clip_box(self, x: Tensor) -> Tensor:
        """Clip to the input box (a no-op for an unbounded box)."""
        if math.isinf(self.lo) and math.isinf(self.hi):
            return x
        return x.clamp(min=None if math.isinf(self.lo) else self.lo,
                       max=None if math.isinf(self.hi) else self.hi)

    def project(self, x0: Tensor, x: Tensor) -> Tensor:
        """Map ``x`` into ``S(x0)``; ``x0`` must lie in the box.

        linf: the exact Euclidean projection (clip to the eps-box, then to the input box: both are
        boxes, so their intersection is a box). l2 / l1: Euclidean projection onto the ball (radial
        scaling for l2, the sorting algorithm of Duchi et al. 2008 for l1), then a clip to the input
        box. The clip moves every coordinate toward ``x0`` (``x0`` is in the box), so it never
        increases ``|delta_i|`` and the result stays in the ball: both constraints hold, though the
        point is not always the exact projection onto the intersection.
        """
        delta = x - x0
        if self.norm is Norm.LINF:
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm is Norm.L2:
            n = self.norm_of(delta)
            factor = torch.where(n > self.eps, self.eps / n.clamp_min(1e-30), torch.ones_like(n))
            delta = delta * _bview(factor, delta)
        else:
            delta = _project_l1_ball(delta, self.eps)
        return self.clip_box(x0 + delta)

    def ascent_direction(self, grad: Tensor, x: Tensor | None = None, l1_sparsity: float = 0.0
                         ) -> Tensor:
        """Normalised steepest-ascent direction of a linear function with gradient ``grad``.

        linf: ``sign(grad)``; l2: ``grad / ||grad||_2``; l1: the sparse step that moves only the
        largest-magnitude coordinates (the single largest when ``l1_sparsity`` is 0; the top
        ``l1_sparsity`` fraction otherwise, as in SLIDE, Tramer & Boneh 2019), scaled to unit l1
        norm. If ``x`` is given, l1 skips coordinates the input box blocks in the ascent direction.
        Rows with a zero gradient get a zero direction.
        """
        if self.norm is Norm.LINF:
            return grad.sign()
        flat = grad.reshape(grad.shape[0], -1)
        if self.norm is Norm.L2:
            n = flat.norm(dim=1, keepdim=True)
            return (flat / n.clamp_min(1e-30)).reshape(grad.shape)
        mag = flat.abs()
        if x is not None:
            xf = x.reshape(x.shape[0], -1)
            blocked = ((xf >= self.hi) & (flat > 0)) | ((xf <= self.lo) & (flat < 0))
            mag = mag.masked_fill(blocked, 0.0)
        k = max(1, int(round(l1_sparsity * flat.shape[1])))
        kth = mag.topk(k, dim=1).values[:, -1:]
        mask = (mag >= kth) & (mag > 0)
        direction = torch.sign(flat) * mask
        total = direction.abs().sum(dim=1, keepdim=True)
        return (direction / total.clamp_min(1.0)).reshape(grad.shape)

    def sample(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random point of ``S(x0)``: uniform in the ball, then clipped to the box."""
        n, d = x0.shape[0], x0[0].numel()
        kw = {"generator": generator, "device": x0.device, "dtype": x0.dtype}
        if self.norm is Norm.LINF:
            delta = (torch.rand(x0.shape, **kw) * 2 - 1) * self.eps  # type: ignore[arg-type]
        else:
            if self.norm is Norm.L2:
                direction = torch.randn((n, d), **kw)  # type: ignore[arg-type]
            else:  # Laplace coordinates normalised in l1 are uniform on the l1 sphere
                u = torch.rand((n, d), **kw).clamp_min(1e-12)  # type: ignore[arg-type]
                sign = torch.rand((n, d), **kw) < 0.5  # type: ignore[arg-type]
                direction = -torch.log(u) * torch.where(sign, -1.0, 1.0).to(x0.dtype)
            direction = direction / lp_norm(direction, self.norm).clamp_min(1e-30).unsqueeze(1)
            radius = torch.rand((n, 1), **kw) ** (1.0 / d) * self.eps  # type: ignore[arg-type]
            delta = (direction * radius).reshape(x0.shape)
        return self.clip_box(x0 + delta)

    # ---------------------------------------------------------------- for verifiers
    def input_bounds(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise box ``[l, u]`` containing ``S(x0)`` (exactly ``S(x0)`` for linf)."""
        lower = self.clip_box(x0 - self.eps)
        upper = self.clip_box(x0 + self.eps)
        return lower, upper

    def concretize_lower(self, a: Tensor, x0: Tensor) -> Tensor:
        """Sound lower bound of ``min_{x in S(x0)} <a_k, x>`` for every row k.

        Args:
            a: coefficients shaped (N, K, D) with D = x0[0].numel(), or (1, K, D) shared by
                the batch (computed with one matrix product then).
            x0: centres shaped (N, ...).

        Returns:
            (N, K). For linf this is exact over the clipped box. For l2 / l1 it is the larger of
            the ball's dual-norm bound ``<a, x0> - eps * ||a||_q`` and the box bound.
        """
        rows = x0.shape[0]
        if rows > 1 and x0.stride(0) == 0:  # one centre, expanded: bound it once
            x0 = x0[:1]
        n = x0.shape[0]
        lower, upper = self.input_bounds(x0)
        lf, uf = lower.reshape(n, -1), upper.reshape(n, -1)
        mid, rad = (uf + lf) / 2, (uf - lf) / 2
        box = _rows_dot(a, mid) - _rows_dot(a.abs(), rad)
        if self.norm is not Norm.LINF:
            q = self.norm.dual
            dual = a.abs().amax(-1) if q is Norm.LINF else a.norm(p=q.p, dim=-1)
            ball = _rows_dot(a, x0.reshape(n, -1)) - self.eps * dual
            box = torch.maximum(box, ball)
        return box.expand(rows, -1) if box.shape[0] == 1 < rows else box
