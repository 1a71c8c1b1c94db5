"""Sanity checks reported with every attack evaluation (after AutoAttack, Croce & Hein 2020).

An attack that fails is only evidence of robustness if it had a fair chance. These checks flag
the usual reasons it did not (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false
sense of security"; Carlini et al. 2019, "On evaluating adversarial robustness"):

- ``probabilities``: the model outputs probabilities, whose saturated softmax hides gradients;
- ``gradient-masking``: the input gradient of the margin is zero or NaN on some samples;
- ``black-box-beats-white-box``: a black-box attack (e.g. Square) broke samples the white-box
  attacks could not, a typical sign of masked or obfuscated gradients;
- ``randomized``: two forward passes of the same input in eval mode differ, so attacks need
  Expectation over Transformation and single evaluations are noisy;
- ``minimum-norm-misses``: a minimum-norm attack (C&W, DeepFool, L-BFGS, FAB) failed on samples
  that a gradient attack breaks within the same eps, so its search did not converge (too few
  steps, too small a learning rate or constant) and its robust accuracy is an overestimate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core.checks import looks_like_probabilities
from advrobust.core.modes import eval_mode
from advrobust.core.result import AttackResult
from advrobust.core.spec import margin
from advrobust.core.threat import LpBall
from advrobust.errors import InvalidInputError

__all__ = ["SanityWarning", "black_box_warning", "minimum_norm_check", "sanity_checks"]


@dataclass(frozen=True)
class SanityWarning:
    """One finding of :func:`sanity_checks`.

    Attributes:
        code: stable identifier (``probabilities``, ``gradient-masking``,
            ``black-box-beats-white-box``, ``randomized``, ``minimum-norm-misses``).
        message: what was observed, with counts.
        advice: what to do about it.
        fraction: fraction of the samples concerned, when it applies.
    """

    code: str
    message: str
    advice: str
    fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for ``--json`` output)."""
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.code}] {self.message} {self.advice}"


def sanity_checks(model: nn.Module, x: Tensor, y: Tensor,
                  results: Mapping[str, AttackResult] | None = None, *,
                  black_box: Collection[str] | None = None,
                  max_samples: int = 512, threat: LpBall | None = None,
                  minimum_norm: Collection[str] | None = None,
                  generator: torch.Generator | None = None) -> list[SanityWarning]:
    """Run the checks on (the first ``max_samples`` of) a batch; empty list when all pass.

    Args:
        model: the classifier evaluated (put in eval mode here, restored afterwards).
        x: inputs (N, ...) the attacks were run on.
        y: labels (N,).
        results: attack results on the same x, by attack name. Ensemble results are understood
            through their ``info["broken_by"]`` and ``info["black_box_members"]``.
        black_box: names in ``results`` of black-box attacks; by default those whose result has
            ``info["black_box"]`` set (Square does).
        max_samples: cap on the samples used for the model checks (gradients are batched).
        threat: the threat set the attacks ran in. With it, the samples a minimum-norm attack
            failed on are attacked by PGD (100 steps) within the same set, unless another
            white-box result in ``results`` already covers them.
        minimum_norm: names in ``results`` of minimum-norm attacks; by default those whose
            result has ``info["minimum_norm"]`` set (C&W, DeepFool, L-BFGS, FAB-T do).
        generator: random source of that PGD's random start (default: seed 0).

    Returns:
        The warnings, in the order above.

    Raises:
        InvalidInputError: a result's batch size differs from ``x``'s.
    """
    xs, ys = x[:max_samples].detach(), y[:max_samples]
    found: list[SanityWarning] = []
    with eval_mode(model, who="sanity_checks"):
        with torch.no_grad():
            first, second = model(xs), model(xs)
        if looks_like_probabilities(first):
            found.append(_probabilities())
        grad = _margin_gradient(model, xs, ys)
        masked = ~torch.isfinite(grad).all(dim=1) | (grad.abs().amax(dim=1) == 0)
        if bool(masked.any()):
            found.append(_masking(masked))
    found.extend(_black_box_check(x.shape[0], results or {}, black_box))
    if not torch.equal(first, second):
        found.append(_randomized(first, second))
    found.extend(minimum_norm_check(model, x, y, results or {}, threat, minimum_norm, black_box,
                                    generator, max_samples))
    return found


def _margin_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample input gradient of the margin, flattened (N, D); zeros where none flows."""
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xr)
        if not out.requires_grad:
            return torch.zeros(x.shape[0], x[0].numel(), dtype=x.dtype, device=x.device)
        (grad,) = torch.autograd.grad(margin(out, y).sum(), xr, allow_unused=True)
    if grad is None:
        return torch.zeros(x.shape[0], x[0].numel(), dtype=x.dtype, device=x.device)
    return grad.reshape(x.shape[0], -1)


def _probabilities() -> SanityWarning:
    return SanityWarning(
        "probabilities",
        "The model's outputs are non-negative and sum to 1 on every row: they look like "
        "probabilities, not logits.",
        "Remove the final softmax so attacks see logits; gradients through a saturated softmax "
        "vanish and make the model look more robust than it is.")


def _masking(masked: Tensor) -> SanityWarning:
    frac = float(masked.float().mean())
    return SanityWarning(
        "gradient-masking",
        f"The input gradient of the margin is zero or NaN on {int(masked.sum())} of "
        f"{masked.numel()} samples ({frac:.1%}).",
        "Gradient-based attacks cannot make progress there: the model may mask gradients "
        "(non-differentiable or quantising layers, detach, saturation). Check with black-box "
        "attacks (Square), BPDA for non-differentiable layers, or more restarts.", frac)


def _randomized(first: Tensor, second: Tensor) -> SanityWarning:
    diff = float((first - second).abs().max()) if first.shape == second.shape else float("nan")
    return SanityWarning(
        "randomized",
        f"Two forward passes of the same inputs in eval mode differ (max |difference| "
        f"{diff:.3g}): the model is randomised.",
        "Single-run attack results are unreliable on randomised defenses: attack the expected "
        "output (Expectation over Transformation, several samples per step) and evaluate the "
        "model several times.")


def _black_box_check(n: int, results: Mapping[str, AttackResult],
                     black_box: Collection[str] | None) -> list[SanityWarning]:
    """Samples broken by a black-box attack while every white-box attack failed on them."""
    bb_names = set(black_box) if black_box is not None else {
        k for k, r in results.items() if r.info.get("black_box")}
    bb = torch.zeros(n, dtype=torch.bool)
    wb = torch.zeros(n, dtype=torch.bool)
    any_white = False
    for name, res in results.items():
        if res.success.shape[0] != n:
            raise InvalidInputError(
                f"sanity_checks: result {name!r} covers {res.success.shape[0]} samples; x has {n}.")
        success = res.success.detach().cpu()
        if name in bb_names:
            bb |= success
            continue
        members = res.info.get("black_box_members")
        if members is not None and "broken_by" in res.info:
            members, names, broken_by = _ensemble_info(res.info)
            by_bb = torch.tensor([b in members for b in broken_by], dtype=torch.bool)
            bb |= by_bb & success
            wb |= success & ~by_bb
            any_white = any_white or bool(names - members)
        else:
            wb |= success
            any_white = True
    beaten = bb & ~wb
    if not any_white or not bool(beaten.any()):
        return []
    return [black_box_warning(int(beaten.sum()), n)]


def black_box_warning(beaten: int, n: int, what: str = "samples") -> SanityWarning:
    """The ``black-box-beats-white-box`` finding: a black-box attack broke ``beaten`` of ``n``
    ``what`` on which every white-box attack had failed."""
    return SanityWarning(
        "black-box-beats-white-box",
        f"A black-box attack broke {beaten} of {n} {what} on which every white-box attack "
        "failed.",
        "Gradient-based attacks are being misled (gradient masking or obfuscation): do not "
        "trust white-box-only evaluations of this model; use the strongest ensemble, BPDA or "
        "EOT, and report the black-box results.", beaten / max(n, 1))


def _ensemble_info(info: Mapping[str, Any]) -> tuple[set[str], set[str], list[Any]]:
    """Black-box member names, all member names and per-sample ``broken_by`` of an ensemble
    result, also when the result merges several batches (each entry then a per-batch list, as
    :func:`advrobust.evaluation.merge_results` leaves non-tensor ``info``)."""
    members, timings, broken_by = (info["black_box_members"], info.get("timings", {}),
                                   info["broken_by"])
    batched = isinstance(timings, list)
    if batched:
        members = {m for batch in members for m in batch}
        names = {k for batch in timings for k in batch}
        broken_by = [b for batch in broken_by for b in batch]
    else:
        members, names = set(members), set(timings)
    return members, names, list(broken_by)


def _flagged(info: Mapping[str, Any], key: str) -> bool:
    """``info[key]`` is set (also when merged over batches into a list)."""
    value = info.get(key)
    return any(bool(v) for v in value) if isinstance(value, list) else bool(value)


def minimum_norm_check(model: nn.Module, x: Tensor, y: Tensor,
                       results: Mapping[str, AttackResult], threat: LpBall | None = None,
                       minimum_norm: Collection[str] | None = None,
                       black_box: Collection[str] | None = None,
                       generator: torch.Generator | None = None,
                       max_samples: int = 512) -> list[SanityWarning]:
    """One ``minimum-norm-misses`` warning per minimum-norm result that failed on samples a
    gradient attack breaks in the same threat set (see :func:`sanity_checks`).

    The gradient attacks are the other white-box results given; with ``threat``, PGD (100
    steps, targeted like the result) also attacks up to ``max_samples`` of the samples still
    unbroken by them.
    """
    names = set(minimum_norm) if minimum_norm is not None else {
        k for k, r in results.items() if _flagged(r.info, "minimum_norm")}
    bb = set(black_box) if black_box is not None else {
        k for k, r in results.items() if _flagged(r.info, "black_box")}
    others = [r.success.detach().cpu() for k, r in results.items() if k not in names | bb]
    found = []
    for name in sorted(names):
        res = results[name]
        missed = ~res.success.detach().cpu()
        broken = torch.zeros_like(missed)
        for success in others:
            broken |= success
        if threat is not None:
            broken |= _pgd_breaks(model, x, y, res.target, threat, missed & ~broken, generator,
                                  max_samples)
        count = int((missed & broken).sum())
        if count:
            frac = count / missed.numel()
            found.append(SanityWarning(
                "minimum-norm-misses",
                f"{name}, a minimum-norm attack, failed on {count} of {missed.numel()} samples "
                "that a gradient attack (PGD) breaks within the same threat set.",
                "Its search did not converge, so its robust accuracy is an overestimate: give it "
                "more steps, a larger learning rate or initial constant (C&W: the paper's lr 0.01 "
                "with 100 steps cannot move saturated pixels through tanh space), and report the "
                "stronger attack.", frac))
    return found


def _pgd_breaks(model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, threat: LpBall,
                todo: Tensor, generator: torch.Generator | None, max_samples: int) -> Tensor:
    """(N,) bool on CPU: PGD-100 breaks the sample (only the first ``max_samples`` of ``todo``
    are attacked)."""
    from advrobust.attacks import PGD

    broken = torch.zeros_like(todo)
    idx = todo.nonzero().flatten()[:max_samples]
    if not idx.numel():
        return broken
    dev = idx.to(x.device)
    gen = generator if generator is not None else torch.Generator(x.device).manual_seed(0)
    tgt = target[dev] if target is not None else None
    res = PGD(steps=100)(model, x[dev], y[dev], threat, target=tgt, generator=gen)
    broken[idx] = res.success.detach().cpu()
    return broken
