"""BaB near its open-list limit: it splits the domains closest to a proof first (their children
close and free the list) instead of giving up, and stays sound."""

from __future__ import annotations

import pytest
import torch
from tests.exact.conftest import make_mlp

import advrobust.exact.bab as bab_inputs
from advrobust.core import LpBall, Verdict
from advrobust.exact import MILP, BaB
from advrobust.exact import bab as bab_module


@pytest.fixture(autouse=True)
def _relu_splits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small networks have few inputs; the tests study the ReLU splits."""
    monkeypatch.setattr(bab_inputs, "INPUT_SPLIT", 0)


def test_a_small_open_list_limit_drains_and_stays_sound(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    model = make_mlp(3, (10, 16, 16, 4))
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.08)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    picks: list[tuple[bool, torch.Tensor, torch.Tensor]] = []
    pick = bab_module._RowSearch._pick

    def spy(self, open_, count, drain=False):  # type: ignore[no-untyped-def]
        chosen, rest = pick(self, open_, count, drain)
        picks.append((drain, open_.lower[chosen], open_.lower[rest]))
        return chosen, rest

    monkeypatch.setattr(bab_module._RowSearch, "_pick", spy)
    # BaBSR's splits (no filtered smart branching) leave enough domains open to reach the limit
    small = BaB(time_limit=20, batch_size=2, max_domains=10, early_stop=False,
                branching="babsr")(model, x, y, threat)
    drained = [(c, r) for d, c, r in picks if d]
    assert drained, "the limit was never approached: the test needs a harder problem"
    for chosen, rest in drained:  # the highest bounds go first
        assert rest.numel() == 0 or float(chosen.min()) >= float(rest.max())
    # sound whatever the limit did: never above the exact minimum, verdicts agree with it
    assert bool((small.lower <= exact.lower + 1e-5).all())
    for i in range(4):
        if small.verdict[i] is Verdict.VERIFIED:
            assert float(exact.lower[i].min()) > 0
        if small.verdict[i] is Verdict.FALSIFIED:
            assert float(exact.lower[i].min()) < 0


def test_a_network_that_cannot_be_copied_keeps_the_float64_search(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from advrobust.exact import _twin
    from advrobust.exact._beta import BetaBounder

    model = make_mlp(3, (10, 16, 16, 4))
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.06)
    with_twin = BaB(time_limit=20)(model, x, y, threat)
    made: list[object] = []
    init = BetaBounder.__init__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        made.append(self.fast)

    def broken(cls, *args):  # type: ignore[no-untyped-def]
        raise TypeError("cannot pickle this module")  # as copy.deepcopy says of some modules

    monkeypatch.setattr(BetaBounder, "__init__", spy)
    monkeypatch.setattr(_twin.Float32Twin, "_make", classmethod(broken))
    monkeypatch.setattr(_twin, "_COPIES", _twin.weakref.WeakKeyDictionary())
    without = BaB(time_limit=20)(model, x, y, threat)
    assert made and all(f is None for f in made)  # no twin, no crash
    assert without.verdict == with_twin.verdict


def test_the_float32_copy_is_made_once_per_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from advrobust.exact import _twin

    made: list[object] = []
    make = _twin.Float32Twin._make.__func__  # type: ignore[attr-defined]

    def counted(cls, network, root):  # type: ignore[no-untyped-def]
        made.append(network)
        return make(cls, network, root)

    monkeypatch.setattr(_twin.Float32Twin, "_make", classmethod(counted))
    model = make_mlp(3, (10, 16, 16, 4))
    x = torch.rand(4, 10, generator=torch.Generator().manual_seed(3))
    out = BaB(time_limit=20, early_stop=False)(model, x, model(x).argmax(1), LpBall("linf", 0.08))
    assert len(out.verdict) == 4
    # the four samples' searches share one copy (and so do the cut networks of refinement)
    assert made and len({id(n) for n in made}) == len(made)
