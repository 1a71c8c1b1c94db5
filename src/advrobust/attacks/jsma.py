"""The Jacobian-based saliency map attack (l0), with a memory-bounded exact pair search.

Papernot, N. et al. "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import already_adversarial, default_target, flat_view
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_float
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError

__all__ = ["JSMA", "pair_block_rows"]

#: Largest number of pair scores held at once (float32: 4 MiB per tensor). Larger blocks are
#: no faster on CPU (3.5 s vs 2.9 s per CIFAR-sized search of 20 images with 2**22).
_PAIR_CHUNK_ELEMENTS = 1 << 20


def pair_block_rows(n: int, d: int) -> int:
    """Rows ``p`` of the (D x D) pair scores formed at once for a batch of ``n`` samples.

    Each block holds ``n * rows * d <= max(2**20, n * d)`` scores (4 MiB in float32, whatever
    the input size); CIFAR-10 (D = 3,072) in batches of 20 takes 17-row blocks instead of the
    dense (20, 3072, 3072) tensor (720 MiB; 3.5 GiB for a batch of 100).
    """
    return max(1, _PAIR_CHUNK_ELEMENTS // max(1, n * d))


class JSMA(Attack):
    """Jacobian-based saliency map attack (Papernot et al., EuroS&P 2016), targeted, l0.

    Each iteration takes the forward derivatives of the logits, ``alpha = dZ_t/dx`` and
    ``beta = sum_{j != t} dZ_j/dx``, and picks the pair of features ``(p, q)`` of the search
    domain maximising ``|alpha_p + alpha_q| * |beta_p + beta_q|`` among pairs where the target's
    logit rises and the others fall (``alpha > 0, beta < 0`` for ``theta > 0``; the signs flip for
    ``theta < 0``). Both features move by ``theta`` (clipped to the allowed range) and leave the
    search domain, as in the paper's Algorithm 3. It stops on success, when no admissible pair is
    left, or when ``gamma * D`` features (D = features per sample) have been changed.

    Memory: the pair search is exact but chunked: the (D x D) pair scores are formed for a block
    of rows ``p`` at a time, at most ``max(2**20, N * D)`` scores per block over the batch (see
    :func:`pair_block_rows`), so CIFAR-sized inputs never hold a dense (N, D, D) tensor (3.5 GiB
    for 100 CIFAR-10 images): the search's memory is a few 4 MiB blocks whatever D is (measured
    by ``bench/attacks_catalogue_jsma.py``: +41 MiB peak RSS for a run on 20 CIFAR images).
    Features are the elements of ``x`` (a colour pixel counts as C features).

    Threat: features move within the threat's elementwise bounds (the input box intersected with
    ``[x - eps, x + eps]``): for linf the result is always in the set, ``eps`` capping the change
    of each feature; for l2 / l1 the final point is projected onto the set. Without ``target`` the
    attack aims at the most likely wrong class at the clean point (success is judged
    untargeted). Samples already classified as required are returned unchanged with a warning.

    Args:
        theta: change applied to each selected feature (input units; non-zero, sign = increase or
            decrease).
        gamma: maximum fraction of features changed, in (0, 1].

    Raises:
        InvalidParameterError: at the call, when ``gamma * D < 2`` (no pair can be changed).

    Shapes: ``x`` (N, ...), ``y`` / ``target`` (N,). ``info["changed"]`` (N,) counts features.
    """

    cli_name: ClassVar[str] = "jsma"
    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    targeted: ClassVar[bool] = True

    def __init__(self, *, theta: float = 1.0, gamma: float = 0.1) -> None:
        name = type(self).__name__
        self.theta = check_float(theta, "theta", name)
        if self.theta == 0:
            raise InvalidParameterError(
                f"The 'theta' parameter of {name} must be a non-zero finite float. Got 0.0 "
                "instead.")
        self.gamma = check_float(gamma, "gamma", name, low=0.0, high=1.0, low_open=True)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        name, d = type(self).__name__, x[0].numel()
        budget = int(self.gamma * d)
        if budget < 2:
            raise InvalidParameterError(
                f"{name}(gamma={self.gamma:g}) allows gamma * D = {self.gamma * d:g} changed "
                f"features for inputs of D = {d} features; JSMA changes features in pairs and "
                "needs at least 2. Raise 'gamma'.")
        done = already_adversarial(clean_logits, y, target, name)
        aim = target if target is not None else default_target(clean_logits, y)
        lower, upper = (flat_view(b) for b in threat.input_bounds(x))
        xa = flat_view(x).clone()
        domain = (xa < upper) if self.theta > 0 else (xa > lower)
        changed = torch.zeros_like(domain)
        active, stuck = ~done, torch.zeros_like(done)
        for _ in range(budget // 2):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            logits, alpha, beta = self._derivatives(oracle, xa[idx].reshape(-1, *x.shape[1:]),
                                                    aim[idx])
            reached = logits.argmax(1) == aim[idx] if target is not None else \
                logits.argmax(1) != y[idx]
            p, q, found = self._best_pairs(alpha, beta, domain[idx])
            move = idx[~reached & found]
            stuck[idx[~reached & ~found]] = True
            active[idx[reached | ~found]] = False
            sel_p, sel_q = p[~reached & found], q[~reached & found]
            for sel in (sel_p, sel_q):
                xa[move, sel] = (xa[move, sel] + self.theta).clamp(lower[move, sel],
                                                                    upper[move, sel])
                domain[move, sel] = False
                changed[move, sel] = True
        x_adv = xa.reshape(x.shape)
        if bool(active.any()):  # budget spent: did the last move succeed?
            idx = active.nonzero().flatten()
            pred = oracle(x_adv[idx]).argmax(1)
            active[idx[pred == aim[idx] if target is not None else pred != y[idx]]] = False
        if threat.norm is not Norm.LINF:
            x_adv = threat.project(x, x_adv)
        return AttackOutput(x_adv=x_adv, exhausted=active,
                            info={"already_adversarial": done, "aimed_at": aim,
                                  "changed": changed.sum(1), "no_pair_left": stuck})

    @staticmethod
    def _derivatives(oracle: Oracle, xi: Tensor, aim: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (n, K), alpha = dZ_t/dx and beta = sum_{j!=t} dZ_j/dx, both (n, D)."""
        xr = xi.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = oracle.model(xr)
            own = logits.gather(1, aim.unsqueeze(1)).sum()
            g_t = torch.autograd.grad(own, xr, retain_graph=True)[0]
            g_all = torch.autograd.grad(logits.sum(), xr)[0]
        oracle.forwards += 1
        oracle.backwards += 2
        return logits.detach(), flat_view(g_t), flat_view(g_all - g_t)

    def _best_pairs(self, alpha: Tensor, beta: Tensor,
                    domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The best admissible pair per row: p (n,), q (n,), and whether one exists (n,)."""
        n, d = alpha.shape
        sign = 1.0 if self.theta > 0 else -1.0
        a, b = alpha * sign, beta * sign
        block = pair_block_rows(n, d)
        best = torch.full((n,), -1.0, dtype=alpha.dtype, device=alpha.device)
        best_p = torch.zeros(n, dtype=torch.int64, device=alpha.device)
        best_q = torch.zeros_like(best_p)
        cols = torch.arange(d, device=alpha.device)
        for start in range(0, d, block):
            rows = cols[start:start + block]
            # In place where possible: two float blocks and a few boolean ones at the peak.
            score = a[:, rows, None] + a[:, None, :]
            sb = b[:, rows, None] + b[:, None, :]
            ok = score > 0
            ok &= sb < 0
            ok &= domain[:, rows, None]
            ok &= domain[:, None, :]
            ok &= rows[:, None] != cols[None, :]
            score.mul_(sb.abs_()).masked_fill_(~ok, -1.0)
            del sb, ok
            value, flat = score.reshape(n, -1).max(dim=1)
            better = value > best
            best = torch.where(better, value, best)
            best_p = torch.where(better, rows[flat // d], best_p)
            best_q = torch.where(better, flat % d, best_q)
        return best_p, best_q, best > 0
