"""DeepFool: iterated linearisation of the decision boundaries, batched over samples.

Moosavi-Dezfooli, S.-M., Fawzi, A. and Frossard, P. "DeepFool: a simple and accurate method to
fool deep neural networks", CVPR 2016.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from advrobust.attacks._minnorm import already_adversarial, flat_view
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core._validation import check_choice, check_float, check_int
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidThreatModelError

__all__ = ["DeepFool"]

_STEP_EPS = 1e-4  # the paper's small push past the linearised boundary


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016), untargeted, minimum l2 or linf norm.

    At the current point, every candidate class ``k`` (the ``candidates`` top-scoring classes at
    the clean point, the predicted one excluded) gives a linearised boundary
    ``f_k - f_p + <w_k, r> = 0`` with ``w_k = grad f_k - grad f_p``; the step goes to the nearest
    one, at distance ``|f_k - f_p| / ||w_k||_q`` (q the dual norm: l2 for l2, l1 for linf). The
    total step is scaled by ``1 + overshoot`` and clipped to the input box, until the label
    changes or ``steps`` iterations pass.

    Batched: each iteration is one forward of the still-unbroken samples and one backward per
    candidate class over the whole batch (``candidates`` backwards), never a loop over samples.

    The threat's ``eps`` is the ceiling: a result whose norm exceeds it is projected onto the
    threat set (it then usually stops being adversarial, and ``success`` says so). Samples whose
    clean point is already misclassified are returned unchanged (norm 0) with a warning
    (``info["already_adversarial"]``); samples not broken within ``steps`` are flagged in
    ``exhausted``. ``info["iterations"]`` counts the iterations each sample took.

    Args:
        norm: ``"l2"`` or ``"linf"``; must equal the threat's norm.
        overshoot: relative push beyond the boundary, >= 0.
        steps: maximum iterations.
        candidates: number of top classes considered (the predicted one included), >= 2.

    Shapes: ``x`` (N, ...), ``y`` (N,).
    """

    cli_name: ClassVar[str] = "deepfool"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.L2, Norm.LINF})
    targeted: ClassVar[bool] = False

    def __init__(self, *, norm: str = "l2", overshoot: float = 0.02, steps: int = 50,
                 candidates: int = 10) -> None:
        name = type(self).__name__
        self.norm = check_choice(norm, "norm", name, ["l2", "linf"])
        self.overshoot = check_float(overshoot, "overshoot", name, low=0.0)
        self.steps = check_int(steps, "steps", name, low=1)
        self.candidates = check_int(candidates, "candidates", name, low=2)

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        name = type(self).__name__
        if threat.norm.value != self.norm:
            raise InvalidThreatModelError(
                f"{name}(norm={self.norm!r}) needs a threat with the same norm. Got "
                f"{threat.norm.value!r} instead.")
        done = already_adversarial(clean_logits, y, target, name)
        k = min(self.candidates, clean_logits.shape[1])
        classes = clean_logits.topk(k, dim=1).indices  # column 0: the predicted class
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        active = ~done
        iterations = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            broken, step = self._iterate(oracle, x_adv[idx], classes[idx])
            iterations[idx] += 1
            still = idx[~broken]
            active[idx[broken]] = False
            if still.numel():
                r_tot[still] += step[~broken]
                x_adv[still] = threat.clip_box(x[still] + (1 + self.overshoot) * r_tot[still])
        if bool(active.any()):  # the last step's outcome is not checked inside the loop
            idx = active.nonzero().flatten()
            active[idx[oracle(x_adv[idx]).argmax(1) != classes[idx, 0]]] = False
        broken = ~active & ~done
        x_adv = torch.where(self._outside(threat, x, x_adv), threat.project(x, x_adv), x_adv)
        return AttackOutput(x_adv=x_adv, exhausted=active,
                            info={"already_adversarial": done, "iterations": iterations,
                                  "minimum_norm": True,
                                  "broken_before_projection": broken})

    @staticmethod
    def _outside(threat: LpBall, x: Tensor, x_adv: Tensor) -> Tensor:
        inside = threat.contains(x, x_adv, atol=0.0)
        return (~inside).reshape((-1,) + (1,) * (x.dim() - 1))

    def _iterate(self, oracle: Oracle, xi: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
        """One DeepFool step at ``xi`` (n, ...): (n,) already broken, (n, ...) the step."""
        k = classes.shape[1]
        xr = xi.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = oracle.model(xr)
            picked = logits.gather(1, classes)  # (n, k)
            grads = [torch.autograd.grad(picked[:, j].sum(), xr, retain_graph=j < k - 1)[0]
                     for j in range(k)]
        oracle.forwards += 1
        oracle.backwards += k
        picked = picked.detach()
        broken = logits.detach().argmax(1) != classes[:, 0]
        g = torch.stack([flat_view(gr) for gr in grads], dim=1)  # (n, k, D)
        w = g[:, 1:] - g[:, :1]
        f = picked[:, 1:] - picked[:, :1]  # negative while the label holds
        if self.norm == "l2":
            wnorm = w.norm(dim=2)
        else:
            wnorm = w.abs().sum(dim=2)
        dist = (f.abs() + _STEP_EPS) / wnorm.clamp_min(1e-12)
        best = dist.argmin(dim=1)
        rows = torch.arange(xi.shape[0], device=xi.device)
        wl, dl = w[rows, best], dist[rows, best]
        if self.norm == "l2":
            step = dl.unsqueeze(1) * wl / wl.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            step = dl.unsqueeze(1) * wl.sign()
        return broken, step.reshape(xi.shape)
