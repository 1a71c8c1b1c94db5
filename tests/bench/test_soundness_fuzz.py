"""The soundness fuzz (``bench/soundness_fuzz.py``, run by hand over thousands of seeds) stays
runnable: a few seeds of each family, every check passing and the answers not all UNKNOWN."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "soundness_fuzz.py"


@pytest.fixture(scope="module")
def fuzz():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("soundness_fuzz", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _failed(found: Counter[str]) -> list[str]:
    return [k for k in found if not any(w in k for w in ("answer", "consistency", "refused"))]


@pytest.mark.parametrize("family", ["chain", "dag", "norms", "conv"])
def test_every_method_passes_the_checks_on_a_few_networks(fuzz, family: str,  # type: ignore[no-untyped-def]
                                                          one_thread: None) -> None:
    total: Counter[str] = Counter()
    for seed in (0, 1):  # seed 0 draws weights up to 1e8, seed 1 up to 10
        found = fuzz.check_ball(family, seed, 1.0)
        assert not _failed(found), (family, seed, found)
        total += found
    assert total["answer: verified"] + total["answer: falsified"] > 0, total


def test_vnnlib_onnx_and_conjunction_routes_pass_the_checks(fuzz, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                one_thread: None) -> None:
    pytest.importorskip("onnx")
    total: Counter[str] = Counter()
    for seed in (0, 1):
        for found in (fuzz.check_vnnlib(seed, 1.0), fuzz.check_onnx(seed, 1.0, tmp_path),
                      fuzz.check_conj(seed, 1.0, tmp_path)):
            assert not _failed(found), (seed, found)
            total += found
    assert total["answer: sat"] + total["answer: unsat"] > 0, total
