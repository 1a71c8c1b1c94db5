"""Checks every attack must pass; call ``check_attack`` from each attack's test module.

    from attacks.common import check_attack

    def test_my_attack_contract(tiny_mlp):
        x, y = batch_for(tiny_mlp)
        check_attack(MyAttack(steps=5), tiny_mlp, x, y, LpBall("linf", 0.1))
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from advrobust import AttackResult, LpBall
from advrobust.attacks import Attack
from advrobust.core.spec import margin

__all__ = ["ModelSnapshot", "batch_for", "check_attack", "check_untouched_on_error"]


def batch_for(model: nn.Module, n: int = 12, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0,
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """A random batch in [0, 1] labelled with the model's own predictions (all correct)."""
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return x, y


class ModelSnapshot:
    """Mode of every submodule, parameters, their ``requires_grad`` and ``.grad``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = [m.training for m in model.modules()]
        self.params = [p.detach().clone() for p in model.parameters()]
        self.flags = [p.requires_grad for p in model.parameters()]
        self.grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        self.buffers = [b.clone() for b in model.buffers()]

    def assert_unchanged(self) -> None:
        """Fail naming what the attack changed."""
        model = self.model
        assert [m.training for m in model.modules()] == self.modes, "module modes changed"
        assert [p.requires_grad for p in model.parameters()] == self.flags, \
            "requires_grad changed"
        for p, before in zip(model.parameters(), self.params, strict=True):
            assert torch.equal(p.detach(), before), "parameters changed"
        for p, before in zip(model.parameters(), self.grads, strict=True):
            if before is None:
                assert p.grad is None, "a parameter's .grad was written"
            else:
                assert p.grad is not None and torch.equal(p.grad, before), ".grad changed"
        for b, before in zip(model.buffers(), self.buffers, strict=True):
            assert torch.equal(b, before), "buffers changed"


class _Exploding(nn.Module):
    """Wraps a model and raises on its ``after``-th forward call (mid-attack)."""

    def __init__(self, model: nn.Module, after: int) -> None:
        super().__init__()
        self.inner = model
        self.after = after
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return self.inner(x)


def _reevaluate(model: nn.Module, result: AttackResult, y: Tensor,
                target: Tensor | None) -> None:
    with torch.no_grad():
        logits = model(result.x_adv)
    pred = logits.argmax(dim=1)
    expected = pred == target if target is not None else pred != y
    assert torch.equal(result.success.cpu(), expected.cpu()), "success disagrees with the model"
    torch.testing.assert_close(result.margin, margin(logits, y), rtol=1e-5, atol=1e-5)


def check_untouched_on_error(attack: Attack, model: nn.Module, x: Tensor, y: Tensor,
                             threat: LpBall, target: Tensor | None = None) -> None:
    """The model's state is restored when the attack raises mid-run (its 2nd forward fails)."""
    was_training = model.training
    wrapped = _Exploding(model, after=1).train()
    saved = [p.grad for p in wrapped.parameters()]
    for p in wrapped.parameters():
        p.grad = torch.full_like(p, 0.5)
    snap = ModelSnapshot(wrapped)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(RuntimeError, match="boom"):
                attack(wrapped, x, y, threat, target=target,
                       generator=torch.Generator().manual_seed(0))
        snap.assert_unchanged()
    finally:
        for p, g in zip(wrapped.parameters(), saved, strict=True):
            p.grad = g
        model.train(was_training)


def check_attack(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, threat: LpBall,
                 target: Tensor | None = None, seed: int = 0) -> AttackResult:
    """Run ``attack`` and assert the contract every attack owes its caller.

    Checks: the result lies inside the threat set; ``success`` and ``margin`` agree with a
    batched re-evaluation of the model; ``norm`` is the threat norm of the perturbation; a
    seeded generator makes the run deterministic; the model's modes, parameters,
    ``requires_grad`` flags, ``.grad`` and buffers are untouched, also when the model was in
    training mode (one warning, mode restored) and when the attack raises mid-run. The model
    is left in eval mode.

    Returns:
        The result of the (eval-mode) run, for attack-specific checks.
    """
    def run(m: nn.Module, s: int = seed) -> AttackResult:
        return attack(m, x, y, threat, target=target, generator=torch.Generator().manual_seed(s))

    model.eval()
    snap = ModelSnapshot(model)
    result = run(model)
    snap.assert_unchanged()
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert bool(threat.contains(x, result.x_adv).all()), "x_adv outside the threat set"
    _reevaluate(model, result, y, target)
    torch.testing.assert_close(result.norm, threat.norm_of(result.x_adv - x))
    assert result.queries >= 1
    if target is not None:
        assert result.target is not None and torch.equal(result.target, target)
    again = run(model)
    assert torch.equal(again.x_adv, result.x_adv), "not deterministic under a seeded generator"

    model.train()
    snap_train = ModelSnapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(model)
    mode_warnings = [w for w in caught if "training mode" in str(w.message)]
    assert len(mode_warnings) == 1, "a training-mode model must be reported exactly once"
    snap_train.assert_unchanged()
    model.eval()
    check_untouched_on_error(attack, model, x, y, threat, target)
    return result

