"""Transfer attacks: craft on a source (surrogate) model, evaluate on the target.

Adversarial examples often transfer between models trained for the same task (Szegedy et al.
2014; Papernot et al. 2016), which makes a black-box attack out of any white-box one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidParameterError

__all__ = ["Transfer", "transfer_rate"]


def transfer_rate(source_success: Tensor, target_success: Tensor) -> float | None:
    """Fraction of the source-successful adversarials that also fool the target.

    ``|{i : source succeeded and target fooled}| / |{i : source succeeded}|``, the course's
    definition of adversarial transfer; None when the source succeeded on no sample.
    """
    hits = int(source_success.sum())
    if hits == 0:
        return None
    return float((source_success & target_success).sum()) / hits


class Transfer(Attack):
    """Run ``attack`` on ``source_model`` and hand its points to the attacked (target) model.

    The returned result's ``success`` and ``margin`` are those of the target model (the model the
    attack is called with), recomputed by the base class. ``info`` adds:
    ``transfer_rate`` (see :func:`transfer_rate`: among samples where the source attack
    succeeded on the source model, the fraction where the target model is also fooled, i.e.
    misclassifies the point, or predicts ``target`` for a targeted run; None if the source
    attack succeeded nowhere), ``source_success`` (N,) bool, ``source_margin`` (N,) and
    ``source_queries``; ``transfer_rate_target_correct`` is the same rate restricted to the
    samples the target classifies correctly at the clean point (so that inputs the target gets
    wrong anyway do not count as transferred), with ``target_clean_correct`` (N,) bool. On
    identical source and target models the transfer rate is 1 whenever the source attack
    succeeds somewhere, and the target's success equals the source's.

    Args:
        source_model: surrogate classifier (same input shape and classes as the target); it is
            never moved or modified.
        attack: any white- or black-box :class:`Attack` to run on the source.

    Shapes: x (N, ...), y (N,), target (N,) or None.
    """

    #: On the command line as ``--attack transfer --source-model CKPT --source-attack NAME``.
    cli_name: ClassVar[str | None] = "transfer"
    targeted: ClassVar[bool] = True

    def __init__(self, source_model: nn.Module, attack: Attack) -> None:
        if not isinstance(source_model, nn.Module):
            raise InvalidParameterError(
                "The 'source_model' parameter of Transfer must be a torch.nn.Module. Got "
                f"{type(source_model).__name__} instead.")
        if not isinstance(attack, Attack):
            raise InvalidParameterError(
                "The 'attack' parameter of Transfer must be an Attack. Got "
                f"{type(attack).__name__} instead.")
        self.source_model = source_model
        self.attack = attack

    def __repr__(self) -> str:
        return f"Transfer(source_model={type(self.source_model).__name__}, attack={self.attack!r})"

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        src = self.attack(self.source_model, x, y, threat, target=target, generator=generator)
        pred = oracle(src.x_adv).argmax(dim=1)
        fooled = (pred == target) if target is not None else (pred != y)
        correct = clean_logits.argmax(dim=1) == y
        info = {"transfer_rate": transfer_rate(src.success, fooled),
                "transfer_rate_target_correct": transfer_rate(src.success & correct, fooled),
                "source_success": src.success, "target_clean_correct": correct,
                "source_margin": src.margin, "source_queries": src.queries}
        # The source attack's budget ran out and the point does not fool the target either.
        exhausted = None if src.exhausted is None else src.exhausted & ~fooled
        return AttackOutput(src.x_adv, exhausted=exhausted, info=info)
