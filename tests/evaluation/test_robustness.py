"""The side-by-side robustness report: clean >= PGD >= ensemble >= certified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from advrobust.core import LpBall
from advrobust.data import load_dataset
from advrobust.errors import InvalidParameterError
from advrobust.evaluation.robustness import robustness_report
from advrobust.models import build_model
from advrobust.training import fit


@pytest.fixture(scope="module")
def model() -> Iterator[nn.Module]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    net = build_model("small", (1, 8, 8), seed=0)
    fit(net, load_dataset("digits", split="train"), epochs=10, lr=0.05, momentum=0.9,
        batch_size=50, seed=0, progress=False)
    yield net.eval()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def test_data() -> object:
    return load_dataset("digits", split="test")


def test_bracket_is_ordered(model: nn.Module, test_data: object) -> None:
    report = robustness_report(model, test_data, LpBall("linf", 0.05), n=80, pgd_steps=10,
                               ensemble_steps=10, ensemble_queries=50)
    assert report["n"] == 80
    accs = [report[k] for k in ("clean_accuracy", "pgd_accuracy", "ensemble_accuracy",
                                "certified_accuracy")]
    assert all(a is not None for a in accs)
    assert accs == sorted(accs, reverse=True)
    assert accs[0] > 0.8 and accs[3] > 0.1
    assert not any("wrong" in w for w in report["warnings"])
    assert set(report["seconds"]) == {"pgd", "ensemble", "crown"}


def test_methods_can_be_skipped_and_unsupported_models_noted(test_data: object) -> None:
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.GELU(), nn.Linear(10, 10)).eval()
    with pytest.warns(UserWarning, match="certification skipped"):
        report = robustness_report(gelu, test_data, LpBall("linf", 0.05), n=10, pgd_steps=2,
                                   ensemble=False)
    assert report["ensemble_accuracy"] is None and report["certified_accuracy"] is None
    assert any("GELU" in note for note in report["notes"])


def test_bad_arguments(model: nn.Module, test_data: object) -> None:
    with pytest.raises(InvalidParameterError, match="'n' parameter"):
        robustness_report(model, test_data, LpBall("linf", 0.05), n=0)
    with pytest.raises(InvalidParameterError, match="'certify' parameter"):
        robustness_report(model, test_data, LpBall("linf", 0.05), certify="yes")  # type: ignore


def test_certification_cascade_is_at_least_as_tight_as_crown_and_counts_add_up(
        model: nn.Module, test_data: object) -> None:
    from advrobust.relax import CROWN, IBP

    threat = LpBall("linf", 0.03)
    x, y = test_data.x[:60], test_data.y[:60]  # type: ignore[attr-defined]
    report = robustness_report(model, (x, y), threat, ensemble=False, pgd_steps=10)
    crown = CROWN()(model, x, y, threat).verified
    ibp = IBP()(model, x, y, threat).verified
    certified = round(report["certified_accuracy"] * 60)
    assert certified >= int(crown.sum())  # never looser than full CROWN alone
    assert certified <= round(report["pgd_accuracy"] * 60)  # nor above an attack's bracket
    assert report["certified_by"]["ibp"] == int(ibp.sum())
    assert sum(report["certified_by"].values()) == certified
