"""VNNLIB reading: small strings with known meaning, and the real mnist_fc properties."""

from __future__ import annotations

import csv
import gzip
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.core.threat import Norm
from advrobust.network.vnnlib import VnnlibError, load_vnnlib, parse_vnnlib


def _declare(d: int, k: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(d)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(k))


def _robustness(x0: np.ndarray, eps: float, label: int, k: int) -> str:
    lines = [f"; robustness of label {label}", _declare(len(x0), k)]
    for i, v in enumerate(x0):
        lines.append(f"(assert (<= X_{i} {float(min(v + eps, 1.0))!r}))")
        lines.append(f"(assert (>= X_{i} {float(max(v - eps, 0.0))!r}))")
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k) if j != label)
    lines.append(f"(assert (or {others}))")
    return "\n".join(lines)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), k=st.integers(2, 5), data=st.data())
def test_robustness_property_round_trip(d: int, k: int, data: st.DataObject) -> None:
    x0 = np.array(data.draw(st.lists(st.floats(0, 1), min_size=d, max_size=d)))
    eps = data.draw(st.floats(0.001, 0.3))
    label = data.draw(st.integers(0, k - 1))
    prop = parse_vnnlib(_robustness(x0, eps, label, k))
    assert prop.num_inputs == d and prop.num_outputs == k
    np.testing.assert_allclose(prop.lower.numpy(), np.clip(x0 - eps, 0, 1))
    np.testing.assert_allclose(prop.upper.numpy(), np.clip(x0 + eps, 0, 1))
    assert prop.robustness_label() == label
    # The Spec's rows are Y_label - Y_j: safe exactly when the label wins strictly.
    y = torch.randn(50, k)
    spec = prop.to_spec(n=50)
    safe = spec.apply(y).amin(dim=1) > 0
    assert torch.equal(safe, y.argmax(1) == label)
    assert torch.equal(prop.is_unsafe(y), ~safe)
    # The recovered clipped ball is the box (a box clipped on every side may come back with a
    # smaller eps around another centre: the same set).
    x_c, ball = prop.as_linf_ball()
    assert ball.norm is Norm.LINF and ball.eps <= eps + 1e-6
    low, up = ball.input_bounds(x_c.double())
    assert bool((low[0] <= prop.lower).all()) and bool((up[0] >= prop.upper).all())
    assert bool((low[0] >= prop.lower - 1e-6).all()) and bool((up[0] <= prop.upper + 1e-6).all())


def test_general_linear_output_constraints() -> None:
    text = _declare(2, 3) + """
    (assert (<= X_0 1)) (assert (>= X_0 -1)) (assert (and (<= X_1 2) (>= X_1 0)))
    ; unsafe: (Y_0 - 2 Y_1 <= 0.5 and Y_2 > 1) or Y_0 = 3, then also Y_1 >= -10
    (assert (or (and (<= (- Y_0 (* 2 Y_1)) 0.5) (> Y_2 1)) (= Y_0 3)))
    (assert (>= Y_1 (- 10)))
    """
    prop = parse_vnnlib(text)
    assert prop.lower.tolist() == [-1.0, 0.0] and prop.upper.tolist() == [1.0, 2.0]
    assert len(prop.unsafe) == 2 and prop.robustness_label() is None
    y = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 0.5], [3.0, 5.0, 0.0], [3.0, -11.0, 5.0]])
    assert prop.is_unsafe(y).tolist() == [True, False, True, False]
    with pytest.raises(VnnlibError, match="several constraints"):
        prop.to_spec()


def test_single_constraint_becomes_a_one_row_spec() -> None:
    prop = parse_vnnlib(_declare(1, 2) + "(assert (<= X_0 1)) (assert (>= X_0 0))\n"
                        "(assert (<= Y_1 (+ Y_0 -2)))")
    spec = prop.to_spec()
    y = torch.tensor([[5.0, 2.0], [5.0, 4.0]])
    assert spec.apply(y)[:, 0].tolist() == [-1.0, 1.0]  # Y_1 - Y_0 + 2: negative when unsafe
    assert prop.is_unsafe(y).tolist() == [True, False]


@pytest.mark.parametrize(("text", "match"), [
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))"
     "(assert (>= Y_0 0))", "infinite range"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 2))"
     "(assert (>= Y_0 0))", "empty range"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (and (<= X_0 1) (>= X_0 2)) "
     "(and (<= X_0 4) (>= X_0 5))))(assert (>= Y_0 0))", "input set is empty"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))",
     "no output"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (<= X_0 1) (>= X_0 2)))"
     "(assert (>= Y_0 0))", "infinite range"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (and (<= X_0 1) (>= X_0 0)) "
     "(>= Y_0 2)))", "not mixed with outputs"),
    ("(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)"
     "(assert (or (<= (+ X_0 X_1) 1) (>= X_0 2)))", "not a bound on one input"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (* Y_0 Y_0) 1))",
     "not linear"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= (+ X_0 Y_0) 1))",
     "only inputs X or only outputs Y"),
    ("(declare-const X_0 Int)", "unsupported declaration"),
    ("(declare-const X_0 Real)(declare-const X_2 Real)", "X_0..X_"),
    ("(assert (<= X_0 1)", "unbalanced"),
    ("(define-fun f () Real 1)", "unsupported command"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= Z_0 1))", "unknown symbol"),
    ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 1))(assert (>= X_0 0))"
     "(assert (>= X_9 0))(assert (>= Y_0 0))", "X_9 is used but only X_0..X_0 are declared"),
])
def test_unsupported_or_malformed_text_raises(text: str, match: str) -> None:
    with pytest.raises(VnnlibError, match=match):
        parse_vnnlib(text)


def test_non_ball_box_is_refused_by_as_linf_ball() -> None:
    prop = parse_vnnlib(_declare(2, 2) + "(assert (<= X_0 0.6)) (assert (>= X_0 0.4))"
                        "(assert (<= X_1 0.55)) (assert (>= X_1 0.5)) (assert (>= Y_1 Y_0))")
    with pytest.raises(VnnlibError, match="not an linf ball"):
        prop.as_linf_ball()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_vnnlib(tmp_path / "nope.vnnlib")


def test_mnist_fc_properties_match_their_index(shared_data: Path) -> None:
    root = shared_data / "vnncomp" / "mnist_fc"
    with gzip.open(shared_data / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784) / 255.0
    rows = list(csv.DictReader(open(root / "properties_mnist_index.csv")))
    for row in rows[::7]:  # a spread of the 60 properties keeps this fast
        prop = load_vnnlib(root / row["property"])
        assert prop.num_inputs == 784 and prop.num_outputs == 10
        assert prop.robustness_label() == int(row["label"])
        image = torch.from_numpy(images[int(row["mnist_test_index"])])
        x0, ball = prop.as_linf_ball()
        assert abs(ball.eps - float(row["eps"])) < 1e-6
        assert (x0[0].double() - image).abs().max() < 1e-6
        assert bool(prop.contains(image.unsqueeze(0)))


def test_missing_files_are_advrobust_errors(tmp_path: Path) -> None:
    from advrobust import AdvRobustError
    from advrobust.attacks import load_dictionary, load_universal
    from advrobust.network.onnx import load_onnx
    from advrobust.network.vnnlib import load_vnnlib

    pytest.importorskip("onnx")
    for load in (load_vnnlib, load_onnx, load_dictionary, load_universal):
        with pytest.raises(AdvRobustError, match="nope"):
            load(tmp_path / "nope.file")
        with pytest.raises(FileNotFoundError):  # still the built-in for callers catching it
            load(tmp_path / "nope.file")


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 5), data=st.data())
def test_the_ball_the_verifiers_get_holds_the_whole_box(d: int, data: st.DataObject) -> None:
    """Boxes far from 0 (pixels in [0, 255], unnormalised sensor values): the float32 centre
    is off by up to 3e-8 of its size, and the radius must cover that (else a sliver of the
    box is never searched and "unsat" could be wrong); the same for the map of a box that is
    no cube."""
    from advrobust.verify._vnnlib import BoxInput, property_ball

    scale = data.draw(st.sampled_from([1.0, 255.0, 1e4, 1e6]))
    lo = np.array(data.draw(st.lists(st.floats(0, 0.9), min_size=d, max_size=d))) * scale
    width = data.draw(st.floats(1e-9, 0.05)) * scale
    widths = [width] * d if data.draw(st.booleans()) else \
        list(np.array(data.draw(st.lists(st.floats(0.1, 1), min_size=d, max_size=d))) * width)
    hi = lo + np.array(widths)
    lines = [_declare(d, 2)]
    for i in range(d):
        lines.append(f"(assert (>= X_{i} {float(lo[i])!r}))")
        lines.append(f"(assert (<= X_{i} {float(hi[i])!r}))")
    lines.append("(assert (>= Y_1 Y_0))")
    prop = parse_vnnlib("\n".join(lines))
    try:
        centre, ball = property_ball(prop)
    except VnnlibError:  # no cube: the unit cube under a map whose image (exact) holds the box
        box = BoxInput(nn.Identity(), prop.lower, prop.upper, (d,))
        assert box.centre.dtype == torch.float32
        for c, r, a, b in zip(box.centre.tolist(), box.radius.tolist(), prop.lower.tolist(),
                              prop.upper.tolist(), strict=True):
            assert Fraction(c) - Fraction(r) <= Fraction(a) and Fraction(c) + Fraction(r) >= \
                Fraction(b)
        return
    assert centre.dtype == torch.float32
    c = centre.double()[0]
    # the ball's ends as the verifiers compute them (float64), clipped to its box
    low = torch.clamp(c - ball.eps, min=ball.lo)
    up = torch.clamp(c + ball.eps, max=ball.hi)
    assert bool((low <= prop.lower).all()) and bool((up >= prop.upper).all())


def test_thresholds_stay_float64_in_the_spec() -> None:
    # Y_0 <= 2^39 + 30000: float32 rounds the threshold to 2^39, below every output of the
    # box below (min 2^39 + 20000): a float32 spec would prove the property, which is false
    from advrobust.evaluation.verify import verify_property

    text = (_declare(1, 1) + "(assert (>= X_0 0.5))\n(assert (<= X_0 0.6))\n"
            f"(assert (<= Y_0 {2.0 ** 39 + 30000!r}))")
    prop = parse_vnnlib(text)
    spec = prop.to_spec(1)
    assert spec.d.dtype == torch.float64 and float(spec.d[0, 0]) == -(2.0 ** 39 + 30000)
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0 ** 40)
        model.bias.fill_(20000.0)
    result = verify_property(model.eval(), prop, time_limit=10,
                             generator=torch.Generator().manual_seed(0))
    assert result.status == "sat"  # x = 0.5: y = 2^39 + 20000 <= the threshold
    assert result.counterexample is not None and float(result.counterexample[0]) == 0.5
