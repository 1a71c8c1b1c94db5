"""A cascade of attacks keeping the per-sample worst case (AutoAttack style).

Croce & Hein (ICML 2020) evaluate robustness with a fixed ensemble of diverse, parameter-free
attacks run one after the other, each only on the samples the previous ones failed to break.
:class:`Ensemble` is that cascade for any attacks; :func:`strongest` builds the standard set
(APGD-CE, APGD-T with the targeted DLR loss, Square) without FAB.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from advrobust.attacks.apgd import APGD, APGDTargeted
from advrobust.attacks.base import Attack, AttackOutput, Oracle
from advrobust.attacks.fab import FABTargeted
from advrobust.attacks.square import Square
from advrobust.core._validation import check_bool, check_int
from advrobust.core.spec import margin
from advrobust.core.threat import LpBall, Norm
from advrobust.errors import InvalidParameterError, InvalidThreatModelError

__all__ = ["Ensemble", "Strongest", "attack_label", "strongest"]


def attack_label(attack: Attack) -> str:
    """Short name of an attack for reports: its ``cli_name`` (``apgd-ce`` / ``apgd-dlr`` for
    APGD), else its lower-cased class name."""
    name = str(getattr(attack, "cli_name", None) or type(attack).__name__.lower())
    if isinstance(attack, APGD):
        name = f"{name}-{attack.loss}"
    return name


class Ensemble(Attack):
    """Run attacks as a cascade and keep, per sample, the adversarial point of lowest margin.

    With ``cascade=True`` each attack runs only on the samples not yet misclassified (as
    AutoAttack does), which is cheaper; with ``cascade=False`` every attack runs on every sample,
    so the returned margin is at most each member's margin on every sample.

    Args:
        attacks: the member attacks, in the order they run (a non-empty sequence).
        cascade: skip samples already broken by an earlier member.

    Returns (in ``AttackResult.info``):
        ``broken_by``: list of N entries, the name of the first attack that misclassified the
        sample, ``"clean"`` when the clean input already is, or None when it stays robust;
        ``timings``: seconds per member; ``member_queries``: queries per member;
        ``black_box_members``: names of members that used no gradients.

    Raises:
        InvalidParameterError: empty ``attacks`` or an element that is not an :class:`Attack`.
        InvalidThreatModelError: a member does not support the threat's norm.
    """

    #: On the command line as ``--attack ensemble --members NAME,NAME,...``.
    cli_name: ClassVar[str | None] = "ensemble"
    targeted: ClassVar[bool] = False

    def __init__(self, attacks: Sequence[Attack], *, cascade: bool = True) -> None:
        if isinstance(attacks, Attack) or not isinstance(attacks, Sequence) or not attacks:
            raise InvalidParameterError(
                "The 'attacks' parameter of Ensemble must be a non-empty sequence of Attack "
                f"objects. Got {attacks!r} instead.")
        for a in attacks:
            if not isinstance(a, Attack):
                raise InvalidParameterError(
                    "The 'attacks' parameter of Ensemble must hold Attack objects. Got "
                    f"{type(a).__name__} instead.")
        self.attacks = tuple(attacks)
        self.cascade = check_bool(cascade, "cascade", "Ensemble")

    @property
    def names(self) -> list[str]:
        """Unique member names (``apgd-ce``, ``apgd-t``, ``square``; repeats get ``#2``...)."""
        seen: dict[str, int] = {}
        out = []
        for a in self.attacks:
            base = attack_label(a)
            seen[base] = seen.get(base, 0) + 1
            out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        return out

    def _run(self, oracle: Oracle, x: Tensor, y: Tensor, threat: LpBall, target: Tensor | None,
             generator: torch.Generator | None, clean_logits: Tensor) -> AttackOutput:
        for a, name in zip(self.attacks, self.names, strict=True):
            if threat.norm not in a.norms:
                raise InvalidThreatModelError(
                    f"Ensemble member {name} does not support the {threat.norm.value} norm.")
        best, best_margin = x.clone(), margin(clean_logits, y)
        broken_by: list[str | None] = ["clean" if m < 0 else None for m in best_margin.tolist()]
        timings: dict[str, float] = {}
        queries: dict[str, int] = {}
        black_box: list[str] = []
        for attack, name in zip(self.attacks, self.names, strict=True):
            todo = best_margin >= 0
            if not self.cascade:
                todo = torch.ones_like(todo)
            idx = todo.nonzero().flatten()
            timings[name], queries[name] = 0.0, 0
            if idx.numel() == 0:
                continue
            start = time.perf_counter()
            res = attack(oracle.model, x[idx], y[idx], threat, generator=generator)
            timings[name] = time.perf_counter() - start
            queries[name] = res.queries
            oracle.forwards += res.queries
            if res.info.get("black_box"):
                black_box.append(name)
            self._merge(idx, res.x_adv, res.margin, name, best, best_margin, broken_by)
        info: dict[str, Any] = {"broken_by": broken_by, "timings": timings,
                                "member_queries": queries, "black_box_members": black_box}
        return AttackOutput(best, exhausted=best_margin >= 0, info=info)

    @staticmethod
    def _merge(idx: Tensor, x_adv: Tensor, m: Tensor, name: str, best: Tensor,
               best_margin: Tensor, broken_by: list[str | None]) -> None:
        """Keep a member's points where their margin is lower; record first breakers."""
        better = m < best_margin[idx]
        for i in idx[(m < 0) & (best_margin[idx] >= 0)].tolist():
            broken_by[i] = name
        best[idx[better]] = x_adv[better]
        best_margin[idx] = torch.minimum(best_margin[idx], m)


class Strongest(Ensemble):
    """The :func:`strongest` cascade as a configured attack (``advrobust attack --attack
    strongest``): APGD-CE, APGD-T (targeted DLR), Square, each on the samples still unbroken.

    Args:
        steps: APGD iterations per run (100 in AutoAttack).
        n_target_classes: target classes tried by APGD-T (9).
        queries: Square's query budget per sample (5000).
        fab: also run FAB-T (:class:`~advrobust.attacks.FABTargeted`, ``steps`` iterations,
            ``n_target_classes`` targets) after APGD-T, as AutoAttack's standard version does.
            Off by default: it runs on every sample APGD-T left and rarely breaks one of them
            (see bench/RESULTS.md for its measured cost).
    """

    cli_name: ClassVar[str | None] = "strongest"
    norms: ClassVar[frozenset[Norm]] = frozenset({Norm.LINF, Norm.L2})

    def __init__(self, *, steps: int = 100, n_target_classes: int = 9,
                 queries: int = 5000, fab: bool = False) -> None:
        check_bool(fab, "fab", "Strongest")
        fab_member = [FABTargeted(steps=steps, n_target_classes=n_target_classes)] if fab else []
        super().__init__([APGD(loss="ce", steps=steps),
                          APGDTargeted(steps=steps, n_target_classes=n_target_classes),
                          *fab_member, Square(queries=queries)])
        self.steps = steps
        self.n_target_classes = n_target_classes
        self.queries = queries
        self.fab = fab


def strongest(threat: LpBall, *, steps: int = 100, n_target_classes: int = 9,
              queries: int = 5000, fab: bool = False) -> Ensemble:
    """The AutoAttack "standard" cascade minus FAB: APGD-CE, APGD-T (targeted DLR), Square.

    Args:
        threat: the threat the ensemble will face (linf or l2).
        steps: APGD iterations per run (100 in AutoAttack).
        n_target_classes: target classes tried by APGD-T (9 in AutoAttack).
        queries: Square's query budget per sample (5000 in AutoAttack).
        fab: add FAB-T after APGD-T (the full AutoAttack standard cascade; see
            :class:`Strongest`).

    Raises:
        InvalidThreatModelError: an l1 threat (APGD and Square here support linf and l2).
    """
    if threat.norm not in (Norm.LINF, Norm.L2):
        raise InvalidThreatModelError(
            f"strongest supports linf and l2 threats. Got {threat.norm.value!r} instead.")
    check_int(steps, "steps", "strongest", low=1)
    return Strongest(steps=steps, n_target_classes=n_target_classes, queries=queries, fab=fab)
