"""ONNX DAGs: import vs the original module and vs onnxruntime; the fx route and the ONNX route
give the same bounds; unsupported nodes are named."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.relax.dag_nets import ConvDag, RandomDag
from torch import nn

from advrobust.core import LpBall
from advrobust.errors import UnsupportedLayerError
from advrobust.models import build_model
from advrobust.network import load_onnx_graph
from advrobust.relax import CROWN, IBP

onnx = pytest.importorskip("onnx")

@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Small tensor ops run far slower with 2 threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros((1,) + shape),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


CASES = [("dag", lambda: RandomDag(5, blocks=3), (5,)), ("conv", lambda: ConvDag(2), (1, 6, 6)),
         ("resnet8", lambda: build_model("resnet8", (3, 8, 8), num_classes=4, seed=0),
          (3, 8, 8))]


@pytest.mark.parametrize("label,make,shape", CASES, ids=[c[0] for c in CASES])
def test_import_matches_module_and_onnxruntime(label: str, make: object, shape: tuple[int, ...],
                                               tmp_path: Path) -> None:
    model = make().eval()  # type: ignore[operator]
    path = _export(model, shape, tmp_path / f"{label}.onnx")
    loaded = load_onnx_graph(path)
    x = torch.rand((7,) + shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.double()(x.double())
        torch.testing.assert_close(loaded(x.double()), ref, rtol=0, atol=1e-9)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {"x": x.numpy()})[0]).double()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("label,make,shape", CASES, ids=[c[0] for c in CASES])
def test_fx_route_and_onnx_route_give_the_same_bounds(label: str, make: object,
                                                      shape: tuple[int, ...],
                                                      tmp_path: Path) -> None:
    model = make().eval()  # type: ignore[operator]
    loaded = load_onnx_graph(_export(model, shape, tmp_path / f"{label}.onnx"))
    model = model.double()
    x = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = model(x).argmax(1)
    threat = LpBall("linf", 0.02, lo=0.0, hi=1.0)
    for bounder in (IBP(), CROWN()):
        a = bounder(model, x, y, threat).lower
        b = bounder(loaded, x, y, threat).lower
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_an_unsupported_node_is_named(tmp_path: Path) -> None:
    h = onnx.helper
    node = h.make_node("Softplus", ["x"], ["y"], name="the_softplus")
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                  [1, 3])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "softplus.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedLayerError, match="the_softplus.*Softplus.*Supported"):
        load_onnx_graph(path)


def test_an_unnamed_node_is_identified(tmp_path: Path) -> None:
    """An empty node name (legal ONNX): the error gives position, op type and outputs."""
    h = onnx.helper
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("MaxPool", ["r"], ["p", "idx"], kernel_shape=[2, 2])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                               [1, 1, 4, 4])],
                         [h.make_tensor_value_info("p", onnx.TensorProto.FLOAT, [1, 1, 2, 2])])
    path = tmp_path / "pool.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedLayerError) as err:
        load_onnx_graph(path)
    assert "ONNX node graph.node[1] (MaxPool, unnamed, outputs ['p', 'idx']): ceil_mode and " \
        "the Indices output are not supported" in str(err.value)
