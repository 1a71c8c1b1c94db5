"""alpha-CROWN and BaB under a memory limit: what does not fit is done more cheaply (soundly),
what cannot be done at all is said with the estimate — never an out-of-memory kill."""

from __future__ import annotations

import warnings

import pytest
import torch
from tests.relax.dag_nets import RandomDag
from torch import nn

import advrobust.exact.bab as bab_inputs
from advrobust.core import LpBall, Spec
from advrobust.core.memory import default_memory_limit, parse_size
from advrobust.errors import InvalidParameterError, MemoryLimitError
from advrobust.exact import BaB
from advrobust.network import build_graph
from advrobust.relax._alpha_budget import sloped_nodes, workset_bytes
from advrobust.relax.alpha_crown import alpha_crown
from advrobust.relax.dag import graph_crown_bounds


@pytest.fixture(autouse=True)
def _relu_splits_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """These small networks have few inputs; the tests study the ReLU splits."""
    monkeypatch.setattr(bab_inputs, "INPUT_SPLIT", 0)

EPS = 0.1


def _setup(seed: int = 3):
    model = RandomDag(seed, blocks=3, width=8, acts=(nn.ReLU,)).double().eval()
    graph = build_graph(model, (5,))
    x = torch.rand(1, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = Spec.margins(model(x).argmax(1), 3)
    ball = LpBall("linf", EPS, lo=0.0, hi=1.0)
    with torch.no_grad():
        bounds = graph_crown_bounds(graph, x, ball, rounding=True)
    return model, graph, x, ball, Spec(spec.C.double(), spec.d.double()), bounds


def _final_bytes(graph, bounds, rows: int) -> int:
    return workset_bytes(graph, bounds, sloped_nodes(graph, bounds),
                         set(range(len(graph.nodes))), rows)


def test_intermediate_nodes_that_do_not_fit_keep_their_bounds() -> None:
    """A limit that holds the final rows only: no intermediate node is optimised (a warning
    says so), which is exactly alpha-CROWN without intermediate optimisation."""
    _, graph, x, ball, spec, bounds = _setup()
    limit = _final_bytes(graph, bounds, spec.C.shape[1]) + 1
    with pytest.warns(UserWarning, match="not optimised"):
        tight = alpha_crown(graph, x, ball, spec.C, spec.d, steps=3, bounds=bounds,
                            memory_limit=limit)
    plain = alpha_crown(graph, x, ball, spec.C, spec.d, steps=3, bounds=bounds,
                        intermediate=False)
    assert torch.equal(tight.lower, plain.lower)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default limit is far above this toy's needs
        full = alpha_crown(graph, x, ball, spec.C, spec.d, steps=3, bounds=bounds)
    assert full.inter_alphas  # intermediate nodes were optimised under the default limit


def test_final_rows_that_do_not_fit_are_refused_with_the_estimate() -> None:
    _, graph, x, ball, spec, bounds = _setup()
    with pytest.raises(MemoryLimitError, match=r"needs about .* MiB .* memory limit"):
        alpha_crown(graph, x, ball, spec.C, spec.d, steps=3, bounds=bounds, memory_limit=64)


def test_bab_under_a_tiny_limit_keeps_crown_bounds_and_stays_sound() -> None:
    model, _, x, _, _, _ = _setup()
    y, wide = model(x).argmax(1), LpBall("linf", 0.5, lo=0.0, hi=1.0)  # CROWN leaves rows open
    with pytest.warns(UserWarning, match="keeps its CROWN bounds"):
        res = BaB(time_limit=5, memory_limit=64).bound(model, x, y, wide)
    u = torch.rand(500, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = model((x + 0.5 * (2 * u - 1)).clamp(0, 1))
    others = [k for k in range(out.shape[1]) if k != int(y)]
    margins = out[:, int(y)].unsqueeze(1) - out[:, others]
    assert bool((res.lower[0] <= margins.amin(0) + 1e-9).all())


@pytest.mark.parametrize("text, value", [("512M", 512 << 20), ("8G", 8 << 30),
                                         ("1.5g", 3 << 29), ("2GiB", 2 << 30),
                                         ("1000", 1000), (4096, 4096)])
def test_sizes_parse(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["0", "-1G", "abc", "8X", "", 0])
def test_bad_sizes_are_named(text: str | int) -> None:
    with pytest.raises(InvalidParameterError, match="memory limit"):
        parse_size(text)


def test_default_limit_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVROBUST_MEMORY_LIMIT", "3G")
    assert default_memory_limit() == 3 << 30
    monkeypatch.delenv("ADVROBUST_MEMORY_LIMIT")
    assert default_memory_limit() >= 1 << 26
