"""JSMA: contract, the l0 budget, the chunked pair search against a dense one, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust import InvalidParameterError, LpBall
from advrobust.attacks import JSMA
from advrobust.attacks import jsma as jsma_module
from attacks._catalogue import digits_batch, digits_model, one_thread
from attacks.common import batch_for, check_attack


@pytest.fixture(autouse=True)
def _single_thread() -> object:
    with one_thread():
        yield


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.5), ("l2", 1.0), ("l1", 2.0)])
def test_contract(norm: str, eps: float, tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=6)
    check_attack(JSMA(theta=1.0, gamma=0.5), tiny_mlp, x, y, LpBall(norm, eps))
    check_attack(JSMA(theta=-0.5, gamma=0.5), tiny_mlp, x, y, LpBall(norm, eps),
                 target=(y + 1) % 3)


@settings(max_examples=8, deadline=None)
@given(gamma=st.floats(0.04, 0.3), theta=st.sampled_from([1.0, 0.3, -1.0]))
def test_changes_at_most_gamma_d_features(gamma: float, theta: float) -> None:
    x, y = digits_batch(12)
    result = JSMA(theta=theta, gamma=gamma)(digits_model(), x, y, LpBall("linf", 1.0),
                                            target=(y + 5) % 10)
    changed = ((result.x_adv - x).abs().flatten(1) > 0).sum(1)
    assert bool((changed <= int(gamma * 64)).all())
    assert bool((changed <= result.info["changed"]).all())
    assert bool((result.exhausted <= ~result.success).all())


def test_targeted_success_on_a_trained_model() -> None:
    x, y = digits_batch(12)
    target = (y + 1) % 10
    result = JSMA(gamma=0.3)(digits_model(), x, y, LpBall("linf", 1.0), target=target)
    assert result.success_rate >= 0.75


def test_linf_eps_caps_each_feature_change() -> None:
    x, y = digits_batch(12)
    result = JSMA(gamma=0.3)(digits_model(), x, y, LpBall("linf", 0.2))
    assert float((result.x_adv - x).abs().max()) <= 0.2 + 1e-6


def test_chunked_pair_search_equals_the_dense_search(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 5, 37
    alpha, beta = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    domain = torch.rand(n, d, generator=gen) < 0.8
    a2 = alpha[:, :, None] + alpha[:, None, :]
    b2 = beta[:, :, None] + beta[:, None, :]
    ok = (a2 > 0) & (b2 < 0) & domain[:, :, None] & domain[:, None, :] & ~torch.eye(d).bool()
    dense = torch.where(ok, a2 * b2.abs(), torch.tensor(-1.0)).flatten(1).max(1).values
    monkeypatch.setattr(jsma_module, "_PAIR_CHUNK_ELEMENTS", 3 * n * d)  # blocks of 3 rows
    p, q, found = JSMA()._best_pairs(alpha, beta, domain)
    assert bool(found.all()) and bool((p != q).all())
    rows = torch.arange(n)
    torch.testing.assert_close(a2[rows, p, q] * b2[rows, p, q].abs(), dense)


def test_impossible_pixel_budget_raises(tiny_mlp: nn.Module) -> None:
    x, y = batch_for(tiny_mlp, n=2)  # 16 features
    with pytest.raises(InvalidParameterError, match="gamma \\* D = 1.6.*at least 2"):
        JSMA(gamma=0.1)(tiny_mlp, x, y, LpBall("linf", 1.0))
    for kwargs, message in [({"theta": 0.0}, "'theta' parameter of JSMA"),
                            ({"gamma": 0.0}, "'gamma'"), ({"gamma": 1.5}, "'gamma'")]:
        with pytest.raises(InvalidParameterError, match=message):
            JSMA(**kwargs)


@pytest.mark.parametrize(("n", "d"), [(1, 3072), (100, 3072), (8, 150528), (4096, 3072)])
def test_pair_blocks_are_bounded_at_any_input_size(n: int, d: int) -> None:
    rows = jsma_module.pair_block_rows(n, d)
    assert 1 <= rows <= d
    assert n * rows * d <= max(jsma_module._PAIR_CHUNK_ELEMENTS, n * d)
    assert n * min(2 * rows, d) * d > jsma_module._PAIR_CHUNK_ELEMENTS or rows >= d  # not tiny


def test_cifar_sized_inputs_search_pairs_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    y = model(x).argmax(1)
    seen: list[int] = []
    best_pairs = JSMA._best_pairs

    def spy(self: JSMA, alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor) -> tuple:
        seen.append(alpha.shape[0] * jsma_module.pair_block_rows(*alpha.shape) * alpha.shape[1])
        return best_pairs(self, alpha, beta, domain)

    monkeypatch.setattr(JSMA, "_best_pairs", spy)
    with one_thread():
        res = JSMA(theta=1.0, gamma=6 / 3072)(model, x, y, LpBall("linf", 1.0),
                                                target=(y + 1) % 10)
    assert seen and max(seen) <= jsma_module._PAIR_CHUNK_ELEMENTS < 2 * 3072 * 3072
    assert bool((res.info["changed"] <= 6).all())
    assert bool(((res.x_adv != x).flatten(1).sum(1) <= 6).all())
