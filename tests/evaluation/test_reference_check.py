"""A counterexample is reported only if an independent evaluation agrees: ``verify_property``'s
``reference`` and onnxruntime on the ONNX file (``OnnxNetwork.runtime``, what VNN-COMP checks
counterexamples with), wired into ``run_instance`` and ``advrobust verify --onnx``."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from advrobust.evaluation.verify import verify_property
from advrobust.evaluation.vnncomp import Instance, run_instance
from advrobust.network import onnx as onnx_import
from advrobust.network.vnnlib import load_vnnlib

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

D, K = 5, 3


def _files(tmp_path: Path, unsafe: str, batch: int | str = 1) -> tuple[Path, Path]:
    """A small ReLU net as ONNX and a property on the box [0.2, 0.6]^D."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(8, D)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    w2, b2 = rng.normal(size=(K, 8)).astype(np.float32), rng.normal(size=K).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, K])],
        [numpy_helper.from_array(v, k) for k, v in
         {"W1": w1, "B1": b1, "W2": w2, "B2": b2}.items()])
    net = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(net))
    lines = [f"(declare-const X_{i} Real)" for i in range(D)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(K)]
    lines += [f"(assert (<= X_{i} 0.6))\n(assert (>= X_{i} 0.2))" for i in range(D)]
    prop = tmp_path / "prop.vnnlib"
    prop.write_text("\n".join(lines + [unsafe]))
    return net, prop


ALWAYS_UNSAFE = "(assert (<= Y_0 1000000.0))"  # outputs of this net are far below: every point


def _far_safe(x: Tensor) -> Tensor:
    """A 'reference' that disagrees: Y_0 far above the unsafe threshold."""
    return torch.full((x.shape[0], K), 1e7, dtype=torch.float64)


def test_a_counterexample_the_reference_rejects_is_not_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net_path, prop_path = _files(tmp_path, ALWAYS_UNSAFE)
    net = onnx_import.import_onnx(net_path)
    prop = load_vnnlib(prop_path)
    model = net.model

    def run(reference: object) -> str:
        return verify_property(model, prop, input_shape=net.input_shape, time_limit=20,
                               reference=reference).status  # type: ignore[arg-type]

    assert run(None) == "sat"
    assert run(lambda x: model(x.float()).double()) == "sat"  # the model agrees with itself
    with caplog.at_level(logging.WARNING):
        assert run(_far_safe) == "unknown"
    assert "not in the reference evaluation" in caplog.text

    def broken(x: Tensor) -> Tensor:
        raise RuntimeError("no session")

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert run(broken) == "sat"  # a failing optional runtime is left out, with a warning
    assert "reference evaluation of the counterexample failed (RuntimeError: no session)" \
        in caplog.text


@pytest.mark.parametrize("batch", [1, "n"])
def test_onnx_runtime_computes_what_the_imported_model_computes(tmp_path: Path,
                                                                batch: int | str) -> None:
    pytest.importorskip("onnxruntime")
    net_path, _ = _files(tmp_path, ALWAYS_UNSAFE, batch=batch)
    net = onnx_import.import_onnx(net_path)
    runtime = net.runtime()
    assert runtime is not None
    x = torch.rand(6, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = net.model(x).double()
    theirs = runtime(x)
    assert theirs.dtype == torch.float64 and theirs.shape == (6, K)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_run_instance_checks_a_sat_answer_through_onnxruntime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    net_path, prop_path = _files(tmp_path, ALWAYS_UNSAFE)
    instance = Instance(net_path, prop_path, 30.0)
    assert run_instance(instance).result == "sat"
    calls: list[int] = []
    real = onnx_import._Runtime.__call__

    def spy(self: object, x: Tensor) -> Tensor:
        calls.append(1)
        return real(self, x)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_import._Runtime, "__call__", spy)
    assert run_instance(instance).result == "sat" and calls  # onnxruntime was asked
    monkeypatch.setattr(onnx_import._Runtime, "__call__", lambda self, x: _far_safe(x))
    assert run_instance(instance).result == "unknown"  # and its "safe" is heeded


def test_no_onnxruntime_means_no_reference(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    net_path, _ = _files(tmp_path, ALWAYS_UNSAFE)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert onnx_import.import_onnx(net_path).runtime() is None
    assert onnx_import.onnx_runtime(net_path) is None


def test_an_imported_network_knows_its_file(tmp_path: Path) -> None:
    net_path, _ = _files(tmp_path, ALWAYS_UNSAFE)
    net = onnx_import.import_onnx(net_path)
    assert net.path == str(net_path) and isinstance(net.model, nn.Sequential)


def test_the_cli_checks_a_sat_answer_through_onnxruntime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from advrobust.cli import main

    net_path, prop_path = _files(tmp_path, ALWAYS_UNSAFE)
    argv = ["verify", "--onnx", str(net_path), "--vnnlib", str(prop_path), "--time-limit", "20",
            "--no-progress", "--json"]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["result"] == "sat"
    monkeypatch.setattr(onnx_import._Runtime, "__call__", lambda self, x: _far_safe(x))
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["result"] == "unknown"
