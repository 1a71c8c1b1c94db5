"""The attack contract: a base class owns validation, modes, feasibility and re-evaluation.

Subclasses implement :meth:`Attack._run`, which receives an :class:`Oracle` (the model behind a
query counter) and returns adversarial inputs. ``Attack.__call__`` then checks they lie in the
threat set and recomputes margins and success with one batched forward of the real model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from advrobust.core.checks import check_batch, check_generator
from advrobust.core.config import Configurable
from advrobust.core.modes import eval_mode
from advrobust.core.result import AttackResult
from advrobust.core.spec import margin as margin_fn
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidInputError, InvalidThreatModelError

__all__ = ["Attack", "AttackOutput", "Oracle"]

LossFn = Callable[[Tensor], Tensor]


class Oracle:
    """The model behind a counter of forward and backward passes.

    Input gradients are taken with ``torch.autograd.grad`` on a detached copy of the input, so
    nothing accumulates in the parameters' ``.grad``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forwards = 0
        self.backwards = 0

    @property
    def queries(self) -> int:
        """Forward plus backward passes so far."""
        return self.forwards + self.backwards

    def __call__(self, x: Tensor) -> Tensor:
        """Logits without gradient tracking."""
        self.forwards += 1
        with torch.no_grad():
            return self.model(x)

    def value_and_grad(self, x: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
        """Logits (N, K), per-sample loss (N,) and its gradient w.r.t. ``x``, all detached.

        ``loss_fn`` maps logits to a per-sample loss; the gradient of its sum is returned, which
        is the per-sample gradient since samples do not interact in eval mode.
        """
        self.forwards += 1
        self.backwards += 1
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(xr)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xr)
        return logits.detach(), loss.detach(), grad


@dataclass
class AttackOutput:
    """What :meth:`Attack._run` returns: adversarial inputs and optional extras."""

    x_adv: Tensor
    exhausted: Tensor | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


class Attack(Configurable, abc.ABC):
    """Base class of every attack: ``attack(model, x, y, threat, target=None, generator=None)``.

    Subclasses set ``norms`` (the threat norms they support), ``targeted`` (whether they
    accept a target) and ``cli_name`` (their command-line name), validate hyper-parameters in
    ``__init__`` (keyword-only, stored verbatim) and implement ``_run``.
    """

    norms: ClassVar[frozenset[Norm]] = frozenset(Norm)
    targeted: ClassVar[bool] = True
    #: The name ``advrobust attack --attack NAME`` knows the class by (None: not on the CLI).
    cli_name: ClassVar[str | None] = None

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
                 target: Tensor | None = None,
                 generator: torch.Generator | None = None) -> AttackResult:
        """Attack a batch.

        Args:
            model: classifier returning logits (N, classes); never moved or modified.
            x: clean inputs (N, ...) inside the threat's box.
            y: true labels (N,) int64.
            threat: the threat set.
            target: optional target classes (N,) for a targeted attack.
            generator: random source, for reproducible random starts.

        Returns:
            AttackResult with margins and success recomputed through ``model``.

        Raises:
            InvalidInputError: malformed x, y, target or threat; tensors on different devices.
            InvalidThreatModelError: a norm this attack does not support.
        """
        name = type(self).__name__
        if not isinstance(threat, LpBall):
            raise InvalidInputError(
                f"'threat' must be an LpBall. Got {type(threat).__name__} instead.")
        if threat.norm not in self.norms:
            allowed = ", ".join(sorted(n.value for n in self.norms))
            raise InvalidThreatModelError(
                f"{name} supports the norms {{{allowed}}}. Got {threat.norm.value!r} instead.")
        if target is not None and not self.targeted:
            raise InvalidThreatModelError(f"{name} is untargeted; it does not accept 'target'.")
        check_generator(generator, name)
        with eval_mode(model, who=name):
            clean = check_batch(model, x, y, threat, target, who=name)
            oracle = Oracle(model)
            out = self._run(oracle, x.detach(), y, threat, target, generator, clean)
            x_adv = out.x_adv.detach()
            inside = threat.contains(x, x_adv)
            if not bool(inside.all()):
                raise AssertionError(f"{name} returned points outside the threat set")
            with torch.no_grad():
                logits = model(x_adv)
        m = margin_fn(logits, y)
        pred = logits.argmax(dim=1)
        success = (pred == target) if target is not None else (pred != y)
        return AttackResult(x_adv=x_adv, success=success, margin=m,
                            norm=threat.norm_of(x_adv - x), queries=oracle.queries + 1,
                            target=target, exhausted=out.exhausted, info=dict(out.info))

    @abc.abstractmethod
    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        """Return adversarial inputs inside ``threat`` around ``x`` (the algorithm)."""
