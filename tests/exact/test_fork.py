"""Worker processes for branch and bound (exact/_fork.py, ``BaB(workers=...)``): results come
back in order from other processes, a copy that fails, dies or runs late gives "no result" and
is reaped, and a search shared by two processes stays sound and agrees with the exact MILP."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
from tests.exact.conftest import assert_agrees_with_milp, make_mlp

import advrobust.exact.bab as bab_inputs
from advrobust.core import LpBall, Verdict
from advrobust.errors import InvalidParameterError
from advrobust.exact import MILP, BaB, _fork, _search
from advrobust.exact import bab as bab_module
from advrobust.exact import refine as refine_module
from advrobust.exact._fork import can_fork, deal, fork_map
from advrobust.network.ir import Network, from_module
from advrobust.relax.alpha_crown import AlphaResult, alpha_crown
from advrobust.relax.crown import crown_layer_bounds


@pytest.fixture(autouse=True)
def _relu_splits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small networks have few inputs; the tests study the ReLU splits."""
    monkeypatch.setattr(bab_inputs, "INPUT_SPLIT", 0)

needs_fork = pytest.mark.skipif(not can_fork(), reason="worker processes need Linux fork")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids of the copies the test forks (see :func:`_all_reaped`)."""
    pids: list[int] = []
    real = _fork._spawn

    def spawn(fn, part):  # type: ignore[no-untyped-def]
        pid, fd = real(fn, part)
        pids.append(pid)
        return pid, fd

    monkeypatch.setattr(_fork, "_spawn", spawn)
    return pids


def _all_reaped(pids: list[int]) -> bool:
    """Every copy in ``pids`` was forked and reaped (none runs, none is a zombie)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return bool(pids)


@needs_fork
def test_parts_run_in_other_processes_and_come_back_in_order(spawned: list[int]) -> None:
    me = os.getpid()

    def work(k: int) -> tuple[int, int, int]:
        return k, k * k, os.getpid()

    out = fork_map(work, [0, 1, 2, 3], until=time.perf_counter() + 30)
    assert [o[:2] for o in out] == [(0, 0), (1, 1), (2, 4), (3, 9)]
    assert out[0][2] == me and len({o[2] for o in out[1:]} | {me}) == 4
    assert _all_reaped(spawned)


@needs_fork
def test_a_copy_that_fails_dies_or_runs_late_gives_none_and_is_reaped(spawned: list[int]) -> None:
    def work(k: int) -> int:
        if k == 1:
            raise ValueError("boom")
        if k == 2:
            os._exit(3)
        if k == 3:
            time.sleep(60)
        return k + 10

    threads = torch.get_num_threads()
    start = time.perf_counter()
    out = fork_map(work, [0, 1, 2, 3, 4], until=time.perf_counter() + 3.0)  # slack for a busy CI
    assert out == [10, None, None, None, 14]
    assert time.perf_counter() - start < 30  # the sleeper was killed, not waited for
    assert torch.get_num_threads() == threads
    assert _all_reaped(spawned)


@needs_fork
def test_this_processes_own_failure_propagates_after_the_copies_are_reaped(
        spawned: list[int]) -> None:
    def work(k: int) -> int:
        if k == 0:
            raise KeyError("mine")
        time.sleep(60)
        return k

    start = time.perf_counter()
    with pytest.raises(KeyError, match="mine"):
        fork_map(work, [0, 1], until=time.perf_counter() + 30)
    assert time.perf_counter() - start < 30
    assert _all_reaped(spawned)


@needs_fork
def test_a_part_that_cannot_be_forked_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_process)
    out = fork_map(lambda k: k * 2, [1, 2, 3], until=time.perf_counter() + 5)
    assert out == [2, None, None]


def test_without_fork_every_part_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fork, "can_fork", lambda: False)
    out = fork_map(lambda k: (k, os.getpid()), [0, 1, 2], until=time.perf_counter())
    assert out == [(k, os.getpid()) for k in range(3)]


def test_workers_must_be_a_positive_int() -> None:
    assert [p.tolist() for p in deal(5, 2)] == [[0, 2, 4], [1, 3]]
    assert [p.tolist() for p in deal(2, 4)] == [[0], [1]]
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(InvalidParameterError, match="workers"):
            BaB(workers=bad)  # type: ignore[arg-type]
    assert BaB(workers=3).workers == 3


@needs_fork
def test_two_workers_share_the_search_and_agree_with_the_milp(
        monkeypatch: pytest.MonkeyPatch, spawned: list[int]) -> None:
    model = make_mlp(5, (8, 16, 16, 16, 6))  # samples with 2-3 rows open after CROWN
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    shared: dict[str, list[int]] = {"rows": [], "neurons": []}

    def spy(what: str):  # type: ignore[no-untyped-def]
        def fork(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
            shared[what].append(len(parts))
            return fork_map(fn, parts, until=until, **kw)
        return fork

    monkeypatch.setattr(_search, "fork_map", spy("rows"))
    monkeypatch.setattr(refine_module, "fork_map", spy("neurons"))
    # no probing search: the open rows go through the refinement (its neurons' rows are split)
    monkeypatch.setattr(bab_module, "_PROBE", 0.0)
    monkeypatch.setattr(bab_module, "_PROBE_LAST", 0.0)
    out = BaB(time_limit=6, refine=0.7, early_stop=False, workers=2)(model, x, y, threat)
    # the refinement's neuron rows were dealt to two processes (the property's domains too,
    # where the refined roots leave any open: test_two_processes_share_a_property_s_domains)
    assert set(shared["neurons"]) == {2} and set(shared["rows"]) <= {2}, shared
    assert out.stats["refinements"], "no sample was refined: the test needs open rows"
    assert_agrees_with_milp(out, exact)
    assert _all_reaped(spawned)


@needs_fork
def test_two_processes_share_a_property_s_domains(
        monkeypatch: pytest.MonkeyPatch, spawned: list[int]) -> None:
    model = make_mlp(5, (8, 20, 20, 10))  # samples 0 and 3: 4-5 rows open after CROWN
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    deals: list[int] = []

    def spy(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
        deals.append(len(parts))
        return fork_map(fn, parts, until=until, **kw)

    monkeypatch.setattr(_search, "fork_map", spy)
    out = BaB(time_limit=10, refine=0.0, early_stop=False, workers=2)(model, x, y, threat)
    assert deals and set(deals) == {2}
    assert_agrees_with_milp(out, exact)
    assert all(v is not Verdict.UNKNOWN for v in out.verdict)
    assert _all_reaped(spawned)


def test_rows_of_a_lost_worker_prove_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_mlp(5, (8, 20, 20, 10))  # samples 0 and 3: 4-5 rows open after CROWN
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    monkeypatch.setattr(bab_module, "can_fork", lambda: True)

    def lose_all_but_the_first(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
        return [fn(parts[0])] + [None] * (len(parts) - 1)

    monkeypatch.setattr(_search, "fork_map", lose_all_but_the_first)
    out = BaB(time_limit=2, refine=0.0, early_stop=False, workers=2)(model, x, y, threat)
    lost = 0
    for s, log in enumerate(out.stats["samples"]):
        for row in log:
            if row["status"] == "worker_lost":
                lost += 1
                # nothing from the lost search: the row keeps its CROWN bound, open
                assert row["lower"] == -float("inf")
                assert float(out.lower[s, row["row"]]) == float(out.stats["crown"][s, row["row"]])
                assert out.verdict[s] is not Verdict.VERIFIED
    assert lost, "no row was dealt to the lost worker: the test needs two open rows"


def test_a_dealt_search_deals_again_what_a_busy_process_hands_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose domains are all closed has the others' dealt again; the domains they
    hand back are searched to the end, so the answers are the exact MILP's. The parts run here
    one after the other: the first runs until its domains are closed, the second sees the
    handoff at once and hands all of its back (deterministic, whatever the machine)."""
    model = make_mlp(5, (8, 20, 20, 10))
    x = torch.rand(5, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.1)
    exact = MILP(early_stop=False, skip_verified=False)(model, x, y, threat)
    monkeypatch.setattr(bab_module, "can_fork", lambda: True)
    monkeypatch.setattr(_search, "_HANDOFF_SECONDS", 0.0)
    statuses: list[list[str]] = []

    def in_turn(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
        out = [fn(part) for part in parts]
        statuses.append([got[0] for got in out])
        return out

    monkeypatch.setattr(_search, "fork_map", in_turn)
    out = BaB(time_limit=20, refine=0.0, early_stop=False, workers=2)(model, x, y, threat)
    handed = [st for st in statuses if "handoff" in st]
    assert len(handed) >= 2, statuses  # dealt again, more than once
    assert all(st[0] == "" for st in handed)  # by the process that had closed its own
    assert_agrees_with_milp(out, exact)
    # every row was searched to its end: nothing left open, nothing lost
    rows = [row for log in out.stats["samples"] for row in log]
    assert rows and all(row["status"] in ("verified", "falsified", "at tolerance")
                        for row in rows), rows
    assert all(v is not Verdict.UNKNOWN for v in out.verdict)


def _margin_root(widths: tuple[int, ...], eps: float, steps: int
                 ) -> tuple[Network, torch.Tensor, LpBall, torch.Tensor, torch.Tensor, AlphaResult]:
    """A float64 MLP of ``widths`` (3 classes), one sample, its two margin rows and their
    alpha-CROWN root at linf radius ``eps``."""
    model = make_mlp(0, widths, torch.float64)
    network = from_module(model, (widths[0],))
    x0 = torch.rand(1, widths[0], generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    threat = LpBall("linf", eps)
    y = int(model(x0).argmax(1))
    c = torch.zeros(1, 2, 3, dtype=torch.float64)
    for r, t in enumerate(j for j in range(3) if j != y):
        c[0, r, y], c[0, r, t] = 1.0, -1.0
    d = torch.zeros(1, 2, dtype=torch.float64)
    root = alpha_crown(network, x0, threat, c, d, steps=steps,
                       bounds=crown_layer_bounds(network, x0, threat, rounding=True))
    return network, x0, threat, c, d, root


def test_a_refinement_whose_worker_is_lost_stays_sound(monkeypatch: pytest.MonkeyPatch) -> None:
    network, x0, threat, c, d, root = _margin_root((6, 24, 24, 24, 3), 0.15, 10)
    monkeypatch.setattr(refine_module, "can_fork", lambda: True)
    calls: list[int] = []

    def lose_all_but_the_first(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(parts))
        return [fn(parts[0])] + [None] * (len(parts) - 1)

    monkeypatch.setattr(refine_module, "fork_map", lose_all_but_the_first)
    refined = refine_module.refine_bounds(network, x0, threat, c, d, root, BaB(workers=2),
                                          deadline=time.perf_counter() + 3, alpha_steps=10)
    assert calls and refined.layers
    lo_in, hi_in = threat.input_bounds(x0)
    pts = lo_in + (hi_in - lo_in) * torch.rand(20000, 6, generator=torch.Generator()
                                                .manual_seed(1), dtype=torch.float64)
    z = pts
    for k, op in enumerate(network.ops):
        lo, hi = refined.alpha.bounds[k]
        assert bool((z >= lo - 1e-9).all()) and bool((z <= hi + 1e-9).all())
        z = op.forward(z)


@needs_fork
def test_a_shared_flag_set_in_a_copy_is_seen_here_and_in_the_others(spawned: list[int]) -> None:
    flag = _fork.SharedFlag()
    assert not flag.is_set()

    def work(k: int) -> bool:
        if k == 1:
            flag.set()
            return True
        stop = time.perf_counter() + 20
        while not flag.is_set() and time.perf_counter() < stop:
            time.sleep(0.01)
        return flag.is_set()

    assert fork_map(work, [0, 1, 2], until=time.perf_counter() + 30) == [True, True, True]
    assert flag.is_set() and _all_reaped(spawned)


def _row_search(flag: _fork.SharedFlag | None, eps: float
                ) -> tuple[_search.RowSearch, AlphaResult]:
    """A search over the margin rows of one sample of a small net at radius ``eps``."""
    network, x0, threat, c, d, root = _margin_root((6, 24, 24, 3), eps, 5)
    return _search.RowSearch(network, x0, threat, c[0], d[0], BaB(), root, flag), root


def test_a_search_stops_when_another_process_found_a_counterexample() -> None:
    flag = _fork.SharedFlag()
    flag.set()
    search, root = _row_search(flag, 0.3)  # one row proved at the root, one open (~ -0.09)
    opened = [k for k, v in enumerate(root.lower[0].tolist()) if v < 0]
    assert opened, "the test needs a row the root leaves open"
    lower, rows = search.run(time.perf_counter() + 30, stop_on_counterexample=True)
    for k in opened:  # stopped before any split, nothing proved beyond the root
        assert rows[k].status.startswith("stopped") and rows[k].domains == 1
        assert float(lower[k]) <= float(root.lower[0, k]) + 1e-9 and float(lower[k]) < 0
    # without early stop the flag is not its business: the search runs (and here decides)
    search, _ = _row_search(flag, 0.3)
    _, rows = search.run(time.perf_counter() + 30, stop_on_counterexample=False)
    assert all(not rows[k].status.startswith("stopped") and rows[k].domains > 1
               for k in opened)


def test_a_search_that_finds_a_counterexample_sets_the_shared_flag() -> None:
    flag = _fork.SharedFlag()
    search, _ = _row_search(flag, 0.5)  # a row falls below 0 at a corner of the box
    _, rows = search.run(time.perf_counter() + 30, stop_on_counterexample=True)
    assert any(r.best_value < 0 for r in rows) and flag.is_set()
    # a search that finds none leaves it alone
    flag = _fork.SharedFlag()
    search, _ = _row_search(flag, 1e-3)
    _, rows = search.run(time.perf_counter() + 30, stop_on_counterexample=True)
    assert all(r.best_value >= 0 for r in rows) and not flag.is_set()


def test_domains_a_process_holds_at_the_deadline_bound_their_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that stops at the deadline keeps its open domains (no transfer); their
    lowest bound per row still enters the row's bound. The parts run here one after the other,
    no handoff allowed, the second started past the deadline: it stops at once, holding its
    dealt domains."""
    network, x0, threat, c, d, root = _margin_root((6, 24, 24, 24, 3), 0.5, 5)
    assert bool((root.lower < 0).all()), "the test needs both rows open at the root"
    search = _search.RowSearch(network, x0, threat, c[0], d[0], BaB(), root, _fork.SharedFlag())
    monkeypatch.setattr(_search, "_HANDOFF_SECONDS", math.inf)
    deals: list[list[object]] = []

    def in_turn(fn, parts, *, until, **kw):  # type: ignore[no-untyped-def]
        out = [fn(parts[0])]
        time.sleep(max(0.0, until - _fork.GRACE - time.perf_counter()))  # the deadline passes
        out.append(fn(parts[1]))
        deals.append([parts[1].row.clone(), parts[1].lower.clone(), out[1][0]])
        return out

    monkeypatch.setattr(_search, "fork_map", in_turn)
    lower, rows, lost = _search.search_dealt(search, time.perf_counter() + 1.0, False, 2)
    assert len(deals) == 1 and not lost, deals
    held_rows, held_lower, status = deals[0]
    assert status == "time_limit"
    assert held_rows.numel(), "the second part held no domain"
    for r in held_rows.unique().tolist():
        assert float(lower[r]) <= float(held_lower[held_rows == r].min())
        assert rows[r].status == "time_limit"
