"""Issue 10's report, reproduced: a valid ONNX model whose second layer has weights ~1e7-1e8,
with a counterexample inside the VNNLIB box (confirmed by the ONNX reference evaluator), used to
be called "unsat" by every method. Now no method may answer "unsat"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust.evaluation.verify import verify_property
from advrobust.network.onnx import import_onnx
from advrobust.network.vnnlib import parse_vnnlib

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

VNNLIB = """
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (>= X_0 0.0))
(assert (<= X_0 1.0))
(assert (>= X_1 0.0))
(assert (<= X_1 1.0))
(assert (>= Y_1 Y_0))
"""


def _needle_onnx(tmp_path: Path, k: float, c: float) -> Path:
    """``y = W3 relu(W2 relu(x) + 1) + b3``: ``y_1 - y_0 = c relu(1 - k relu(x_0)) - 1.5``."""
    inits = {"w1": np.eye(2), "b1": np.zeros(2), "w2": np.array([[-k, 0.0]]),
             "b2": np.array([1.0]), "w3": np.array([[0.0], [c]]), "b3": np.array([1.0, -0.5])}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], transB=1),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "needle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = tmp_path / "needle.onnx"
    onnx.save(model, str(path))
    return path


def _unsafe(path: Path, x: np.ndarray) -> bool:
    y = ReferenceEvaluator(str(path)).run(None, {"x": x.reshape(1, 2).astype(np.float32)})[0]
    return bool(y[0, 1] >= y[0, 0])


@pytest.mark.parametrize("method", ["auto", "ibp", "crown", "lp", "milp", "bab"])
def test_no_method_answers_unsat_on_the_needle(tmp_path: Path, method: str) -> None:
    path = _needle_onnx(tmp_path, 5e7, 1e8)
    assert _unsafe(path, np.array([0.0, 0.5]))  # the counterexample the issue reports
    assert not _unsafe(path, np.array([0.5, 0.5]))  # the centre is safe
    net = import_onnx(path)
    prop = parse_vnnlib(VNNLIB)
    result = verify_property(net.model, prop, input_shape=net.input_shape, method=method,
                             time_limit=4, generator=torch.Generator().manual_seed(0))
    assert result.status != "unsat"
    if result.status == "sat":
        assert result.counterexample is not None
        point = result.counterexample.numpy()
        assert bool(((point >= 0) & (point <= 1)).all())
        assert _unsafe(path, point)
