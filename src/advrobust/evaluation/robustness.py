"""Clean, attacked and certified accuracy side by side: the robustness bracket of a model.

clean >= PGD >= strongest ensemble >= true robust accuracy >= certified (CROWN). A model whose
PGD accuracy is far above the ensemble's masks its gradients; one whose certified accuracy is
far below the attacked one is robust but not provably so (or the relaxation is loose).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_bool, check_int, check_seed
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidThreatModelError, UnsupportedLayerError
from advrobust.evaluation.metrics import _tensors, clean_accuracy, evaluate_attack

__all__ = ["robustness_report"]

#: Gap (accuracy points) between PGD and the ensemble above which gradient masking is flagged.
MASKING_GAP = 0.02


def _robust(model: nn.Module, attack: Any, x: Tensor, y: Tensor, threat: LpBall,
            batch_size: int, generator: torch.Generator,
            progress: bool = False) -> tuple[Tensor, float]:
    """(N,) bool robust under ``attack`` (correct and not broken), and seconds."""
    run = evaluate_attack(model, attack, (x, y), threat, batch_size=batch_size,
                          generator=generator, progress=progress)
    return ~run.result.success, run.seconds


def _certified(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
               batch_size: int) -> tuple[Tensor, dict[str, int], float]:
    """(N,) bool VERIFIED, how many each bound decided, and seconds.

    The cascade driver's certify policy (:data:`advrobust.verify.cascade.CERTIFY`): sound
    bounds, cheapest first: IBP, then CROWN with interval intermediate bounds, then full CROWN
    only where both left a correctly classified sample undecided (full CROWN's intermediate
    passes dominate the cost on convolutional models).
    """
    from advrobust.core.modes import eval_mode
    from advrobust.core.result import Verdict
    from advrobust.verify import Policy, Problem, cascade

    start = time.perf_counter()
    with eval_mode(model, who="robustness_report"):
        problem = Problem.of(model, x, y, threat, who="robustness_report")
        problem.network  # noqa: B018  (an unsupported layer is noted even if no stage runs)
        bracket = cascade.run(problem, Policy(method=cascade.CERTIFY, batch_size=batch_size))
    verified = torch.tensor([v is Verdict.VERIFIED for v in bracket.verdicts()],
                            dtype=torch.bool)
    counts = {stage: sum(1 for v, by in zip(verified.tolist(), bracket.decided_by, strict=True)
                         if v and by == stage) for stage in ("ibp", "crown-ibp", "crown")}
    return verified, counts, time.perf_counter() - start


def _predictions(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    from advrobust.core.modes import eval_mode

    with eval_mode(model, who="robustness_report"), torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1)
                          for i in range(0, x.shape[0], batch_size)])


def _ensemble(threat: LpBall, steps: int, queries: int) -> Any:
    from advrobust.attacks import ensemble as ens

    return ens.strongest(threat, steps=steps, queries=queries)


def robustness_report(model: nn.Module, data: Any, threat: LpBall, *, certify: bool = True,
                      ensemble: bool = True, n: int | None = None, pgd_steps: int = 40,
                      pgd_restarts: int = 1, ensemble_steps: int = 100,
                      ensemble_queries: int = 5000, batch_size: int = 100,
                      seed: int = 0, progress: bool = False,
                      per_sample: bool = False) -> dict[str, Any]:
    """Clean, PGD, strongest-ensemble and CROWN-certified accuracy on the same samples.

    Args:
        model: classifier returning logits (never moved or modified).
        data: an advrobust ``Dataset`` or a pair ``(x, y)``.
        threat: the threat set of every method.
        certify: certify with a cascade of sound bounds: IBP, CROWN on interval intermediate
            bounds, then full CROWN where both failed on a correctly classified sample (skipped
            with a note if the model has layers the bounds cannot read).
        ensemble: run :func:`advrobust.attacks.strongest` (linf / l2 threats).
        n: evaluate the first ``n`` samples only.
        pgd_steps, pgd_restarts: the PGD configuration.
        ensemble_steps, ensemble_queries: APGD iterations and Square queries of the ensemble
            (AutoAttack's 100 and 5000 by default).
        batch_size: samples per call.
        seed: seed of the attacks' random starts.
        progress: show progress per stage (see :func:`advrobust.core.progress.progress_bar`).
        per_sample: also return ``per_sample``: (N,) bool tensors ``clean_correct``,
            ``pgd_robust``, ``ensemble_robust`` and ``certified`` (None where not run).

    Returns:
        Dict with ``n``, ``threat``, ``clean_accuracy``, ``pgd_accuracy``,
        ``ensemble_accuracy`` and ``certified_accuracy`` (None where not run), ``certified_by``
        (samples verified by ``ibp``, ``crown-ibp`` and ``crown``, when certified), ``seconds`` per
        method, ``notes`` (why a method was skipped) and ``warnings`` (gradient masking: PGD
        above the ensemble by more than :data:`MASKING_GAP`; an ordering violation).
    """
    check_bool(certify, "certify", "robustness_report")
    check_bool(ensemble, "ensemble", "robustness_report")
    check_int(pgd_steps, "pgd_steps", "robustness_report", low=1)
    check_seed(seed, "seed", "robustness_report")
    x, y = _tensors(data)
    if n is not None:
        check_int(n, "n", "robustness_report", low=1, high=int(x.shape[0]))
        x, y = x[:n], y[:n]
    from advrobust.attacks import PGD

    gen = torch.Generator(device=x.device).manual_seed(seed)
    report: dict[str, Any] = {"n": int(x.shape[0]), "threat": str(threat), "seconds": {},
                              "notes": [], "warnings": [],
                              "clean_accuracy": clean_accuracy(model, x, y)}
    pgd = PGD(steps=pgd_steps, restarts=pgd_restarts)
    pgd_ok, report["seconds"]["pgd"] = _robust(model, pgd, x, y, threat, batch_size, gen,
                                               progress)
    rows: dict[str, Any] = {"clean_correct": _predictions(model, x, batch_size) == y,
                            "pgd_robust": pgd_ok, "ensemble_robust": None, "certified": None}
    report["pgd_accuracy"] = float(pgd_ok.float().mean())
    report["ensemble_accuracy"] = None
    if ensemble:
        try:
            attack = _ensemble(threat, ensemble_steps, ensemble_queries)
        except InvalidThreatModelError as exc:  # e.g. no ensemble for l1
            report["notes"].append(f"ensemble skipped: {exc}")
        else:
            rows["ensemble_robust"] = _run_ensemble(report, model, x, y, threat, attack,
                                                    batch_size, gen, pgd_ok, progress)
    report["certified_accuracy"] = None
    if certify:
        rows["certified"] = _run_certify(report, model, x, y, threat, batch_size)
    _check_order(report)
    if per_sample:
        report["per_sample"] = rows
    return report


def _run_ensemble(report: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor,
                  threat: LpBall, attack: Any, batch_size: int, gen: torch.Generator,
                  pgd_ok: Tensor, progress: bool = False) -> Tensor:
    ok, report["seconds"]["ensemble"] = _robust(model, attack, x, y, threat, batch_size, gen,
                                                progress)
    # The ensemble's worst case over PGD too: a sample is robust only if both failed.
    report["ensemble_accuracy"] = float((ok & pgd_ok).float().mean())
    if report["pgd_accuracy"] - float(ok.float().mean()) > MASKING_GAP:
        report["warnings"].append(
            f"PGD accuracy {report['pgd_accuracy']:.3f} exceeds the ensemble's "
            f"{float(ok.float().mean()):.3f}: PGD is weak on this model (gradient masking?).")
    return ok & pgd_ok


def _run_certify(report: dict[str, Any], model: nn.Module, x: Tensor, y: Tensor,
                 threat: LpBall, batch_size: int) -> Tensor | None:
    try:
        verified, report["certified_by"], report["seconds"]["crown"] = _certified(
            model, x, y, threat, batch_size)
    except (ImportError, UnsupportedLayerError) as exc:
        report["notes"].append(f"certification skipped: {exc}")
        warnings.warn(f"robustness_report: certification skipped: {exc}", UserWarning,
                      stacklevel=3)
        return None
    report["certified_accuracy"] = float(verified.float().mean())
    return verified


def _check_order(report: dict[str, Any]) -> None:
    empirical = min(v for v in (report["pgd_accuracy"], report["ensemble_accuracy"])
                    if v is not None)
    cert = report["certified_accuracy"]
    if cert is not None and cert > empirical + 1e-9:
        report["warnings"].append(
            f"certified accuracy {cert:.3f} exceeds the attacked accuracy {empirical:.3f}: "
            "a bound or an attack is wrong; please report this.")
