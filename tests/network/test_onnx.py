"""ONNX import: tiny graphs built with onnx.helper against numpy / the ONNX reference evaluator,
and the real VNN-COMP mnist_fc networks against their published MNIST accuracy."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advrobust.errors import DataFormatError, UnsupportedLayerError
from advrobust.network import load_onnx_graph
from advrobust.network.onnx import import_onnx, load_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

MNIST_FC_ACCURACY = {2: 0.9808, 4: 0.9764, 6: 0.9689}  # from shared/data/README.md


def _save(tmp_path: Path, nodes: list, inits: dict[str, np.ndarray], in_shape: list[int],
          out_shape: list[int], name: str = "net.onnx", opset: int = 13) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(str(path)).run(None, {"x": x.astype(np.float32)})[0]


def _ours(path: Path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_onnx(path)(torch.from_numpy(x.astype(np.float32))).numpy()


@settings(max_examples=15, deadline=None)
@given(trans_b=st.booleans(), alpha=st.floats(-2, 2), beta=st.floats(-2, 2),
       seed=st.integers(0, 2**16))
def test_gemm_chain_matches_numpy(tmp_path_factory: pytest.TempPathFactory, trans_b: bool,
                                  alpha: float, beta: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(5, 6)), rng.normal(size=5)
    w2, b2 = rng.normal(size=(3, 5)), rng.normal(size=3)
    b_in = w1 if trans_b else w1.T
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W1", "B1"], ["h"], transB=int(trans_b),
                              alpha=alpha, beta=beta),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], transB=1)]
    path = _save(tmp_path_factory.mktemp("g"), nodes,
                 {"W1": b_in, "B1": b1, "W2": w2, "B2": b2}, [1, 6, 1], [1, 3])
    x = rng.uniform(size=(4, 6, 1))
    hidden = np.maximum(alpha * x.reshape(4, 6) @ w1.T + beta * b1, 0)
    expected = hidden @ w2.T + b2
    np.testing.assert_allclose(_ours(path, x), expected, rtol=1e-4, atol=1e-4)


def test_matmul_add_becomes_one_linear(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(8, 4)), rng.normal(size=4)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["y"])]
    path = _save(tmp_path, nodes, {"W": w, "B": b}, [1, 8], [1, 4])
    model = load_onnx(path)
    assert [type(m) for m in model] == [nn.Linear]
    x = rng.uniform(size=(3, 8))
    np.testing.assert_allclose(_ours(path, x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_input_normalisation_is_folded_into_the_first_linear(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(3, 12)), rng.normal(size=3)
    mean, std = np.array([[[0.1307]]]), np.array([[[0.3081]]])
    nodes = [helper.make_node("Sub", ["x", "M"], ["s"]), helper.make_node("Div", ["s", "S"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    path = _save(tmp_path, nodes, {"M": mean, "S": std, "W": w, "B": b}, [1, 1, 3, 4], [1, 3])
    model = load_onnx(path)
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    x = rng.uniform(size=(5, 1, 3, 4))
    expected = ((x - 0.1307) / 0.3081).reshape(5, 12) @ w.T + b
    np.testing.assert_allclose(_ours(path, x), expected, rtol=1e-4, atol=1e-4)


def test_conv_net_with_normalisation_and_batchnorm_matches_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    c = 3
    inits = {"M": rng.uniform(size=(1, 2, 1, 1)), "S": rng.uniform(0.5, 1, size=(1, 2, 1, 1)),
             "K": rng.normal(size=(c, 2, 3, 3)), "KB": rng.normal(size=c),
             "G": rng.uniform(0.5, 2, size=c), "BB": rng.normal(size=c),
             "MU": rng.normal(size=c), "VAR": rng.uniform(0.5, 2, size=c),
             "SHAPE": np.array([1, -1]), "W": rng.normal(size=(c * 3 * 3, 4)),
             "B": rng.normal(size=4)}
    nodes = [helper.make_node("Sub", ["x", "M"], ["s"]), helper.make_node("Div", ["s", "S"], ["d"]),
             helper.make_node("Conv", ["d", "K", "KB"], ["c"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "G", "BB", "MU", "VAR"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("Reshape", ["r", "SHAPE"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["m"]),
             helper.make_node("Add", ["m", "B"], ["y"])]
    inits["SHAPE"] = inits["SHAPE"].astype(np.int64)
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(v if k == "SHAPE" else v.astype(np.float32), k)
         for k, v in inits.items()])
    path = tmp_path / "conv.onnx"
    # opset >= 14: the reference evaluator runs opset-9..13 BatchNormalization with momentum
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    net = import_onnx(path)
    assert net.input_shape == (2, 5, 5) and net.output_shape == (4,)
    kinds = [type(m) for m in net.model]
    assert kinds == [nn.Conv2d, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]  # BN folded back
    for _ in range(3):  # the reference evaluator takes one sample at a time here
        x = rng.uniform(size=(1, 2, 5, 5))
        np.testing.assert_allclose(_ours(path, x), _reference(path, x), rtol=1e-4, atol=1e-4)


def test_unsupported_op_names_the_node(tmp_path: Path) -> None:
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Softplus", ["f"], ["y"], name="squash")]
    path = _save(tmp_path, nodes, {}, [1, 4], [1, 4])
    with pytest.raises(UnsupportedLayerError,
                       match=r"ONNX node 'squash' \(Softplus, graph.node\[1\], output 'y'\)"):
        load_onnx(path)


def test_unnamed_nodes_are_named_by_position_op_and_outputs(tmp_path: Path) -> None:
    """``node.name == ""`` is legal ONNX (exporters often leave it so): the parser's errors
    still say which node, never ``ONNX node ''``."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Relu", ["f"], ["r"]),
             helper.make_node("Softplus", ["r"], ["y"])]
    assert all(n.name == "" for n in nodes)
    path = _save(tmp_path, nodes, {}, [1, 4], [1, 4])
    with pytest.raises(UnsupportedLayerError) as err:
        load_onnx(path)
    assert "ONNX node graph.node[2] (Softplus, unnamed, output 'y'): this op is not " \
        "supported" in str(err.value)
    assert "''" not in str(err.value)
    # a node the parser refuses by its attributes is named the same way
    flat = [helper.make_node("Flatten", ["x"], ["y"], axis=2)]
    with pytest.raises(UnsupportedLayerError, match=re.escape(
            "ONNX node graph.node[0] (Flatten, unnamed, output 'y'): only axis=1")):
        load_onnx(_save(tmp_path, flat, {}, [1, 2, 2], [1, 2, 2], name="axis2.onnx"))


_ELEMENTWISE = ("Add", "Sub", "RSub", "Mul", "Div", "Neg")


def _elementwise_node(kind: str, data: str, const: str, out: str) -> object:
    if kind == "Neg":
        return helper.make_node("Neg", [data], [out])
    if kind == "RSub":
        return helper.make_node("Sub", [const, data], [out])
    return helper.make_node(kind, [data, const], [out])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), pre=st.lists(st.sampled_from(_ELEMENTWISE), max_size=3),
       post=st.lists(st.sampled_from(_ELEMENTWISE), max_size=2), conv_bias=st.booleans(),
       batchnorm=st.booleans(), reshape=st.booleans(), gemm=st.booleans())
def test_any_chain_of_standard_nodes_is_one_sequential_that_matches_the_reference(
        tmp_path_factory: pytest.TempPathFactory, seed: int, pre: list[str], post: list[str],
        conv_bias: bool, batchnorm: bool, reshape: bool, gemm: bool) -> None:
    """The one parser and its chain form: every chain of standard nodes (elementwise constants
    before and after the affine layers, in either operand order) becomes a Sequential of
    standard layers that computes what the ONNX reference evaluator and the parser's own graph
    module compute."""
    rng = np.random.default_rng(seed)
    inits: dict[str, np.ndarray] = {"K": rng.normal(size=(3, 2, 3, 3)),
                                    "W": rng.normal(size=(3 * 4 * 4, 5)), "B": rng.normal(size=5),
                                    "SHAPE": np.array([1, -1])}
    nodes, cur = [], "x"
    for i, kind in enumerate(pre):  # per-channel constants on the image (normalisation-like)
        inits[f"P{i}"] = rng.uniform(0.5, 2, size=(1, 2, 1, 1)) * rng.choice([-1, 1])
        nodes.append(_elementwise_node(kind, cur, f"P{i}", f"p{i}"))
        cur = f"p{i}"
    conv_in = [cur, "K"] + (["KB"] if conv_bias else [])
    inits["KB"] = rng.normal(size=3)
    nodes.append(helper.make_node("Conv", conv_in, ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    cur = "c"
    if batchnorm:
        inits.update(G=rng.uniform(0.5, 2, size=3), BB=rng.normal(size=3),
                     MU=rng.normal(size=3), VAR=rng.uniform(0.5, 2, size=3))
        nodes.append(helper.make_node("BatchNormalization", ["c", "G", "BB", "MU", "VAR"],
                                      ["n"]))
        cur = "n"
    nodes.append(helper.make_node("Relu", [cur], ["r"]))
    nodes.append(helper.make_node("Reshape", ["r", "SHAPE"], ["f"]) if reshape
                 else helper.make_node("Flatten", ["r"], ["f"]))
    cur = "f"
    for i, kind in enumerate(post):  # per-position constants on the flat vector
        inits[f"Q{i}"] = rng.uniform(0.5, 2, size=48) * rng.choice([-1, 1], size=48)
        nodes.append(_elementwise_node(kind, cur, f"Q{i}", f"q{i}"))
        cur = f"q{i}"
    if gemm:
        nodes.append(helper.make_node("Gemm", [cur, "W", "B"], ["y"], alpha=0.5))
    else:
        nodes += [helper.make_node("MatMul", [cur, "W"], ["m"]),
                  helper.make_node("Add", ["m", "B"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v if k == "SHAPE" else v.astype(np.float32), k)
         for k, v in inits.items()])
    path = tmp_path_factory.mktemp("chain") / "chain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(path))
    net = import_onnx(path)
    assert isinstance(net.model, nn.Sequential)
    assert {type(m) for m in net.model} <= {nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear}
    graph_module = load_onnx_graph(path)
    for _ in range(2):
        x = rng.uniform(size=(1, 2, 4, 4))
        ref = _reference(path, x)
        np.testing.assert_allclose(_ours(path, x), ref, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            ours64 = graph_module(torch.from_numpy(x.astype(np.float32)).double()).numpy()
        np.testing.assert_allclose(ours64, ref, rtol=1e-4, atol=1e-4)


def test_a_step_on_the_data_twice_is_no_chain(tmp_path: Path) -> None:
    """``x * x`` has one data input twice: not an affine step, so the graph module keeps it."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["y"])]
    model = load_onnx(_save(tmp_path, nodes, {}, [1, 3], [1, 3]))
    assert not isinstance(model, nn.Sequential)
    x = torch.randn(4, 3)
    torch.testing.assert_close(model(x), x * x)


def test_a_reshape_that_moves_the_batch_axis_is_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Reshape", ["x", "SHAPE"], ["y"], name="fold")]
    path = tmp_path / "fold.onnx"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        [numpy_helper.from_array(np.array([6], dtype=np.int64), "SHAPE")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(UnsupportedLayerError, match=re.escape(
            "ONNX node 'fold' (Reshape, graph.node[0], output 'y'): a reshape of (1, 6) to (6,) "
            "must keep the batch dimension first")):
        load_onnx(path)


def test_a_gemm_bias_of_the_wrong_size_is_named(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1, name="fc")]
    path = _save(tmp_path, nodes, {"W": np.ones((3, 4)), "C": np.ones(2)}, [1, 4], [1, 3])
    with pytest.raises(UnsupportedLayerError, match=r"'fc'.*bias C of shape \(2,\) must "
                       r"broadcast to \(3,\)"):
        load_onnx(path)


def test_sigmoid_and_branching_graphs_go_to_the_graph_importer(tmp_path: Path) -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="squash"),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Add", ["s", "r"], ["y"], name="skip")]
    path = _save(tmp_path, nodes, {}, [1, 4], [1, 4])
    model = load_onnx(path)
    assert not isinstance(model, nn.Sequential)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), torch.sigmoid(x) + torch.relu(x))


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00 not a protobuf \xff" * 10)
    with pytest.raises(DataFormatError, match="not a valid ONNX model"):
        load_onnx(junk)


def _mnist_test(root: Path) -> tuple[torch.Tensor, np.ndarray]:
    with gzip.open(root / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(images.astype(np.float32) / 255.0), labels


@pytest.mark.parametrize("depth", [2, 4, 6])
def test_mnist_fc_networks_reach_their_published_accuracy(shared_data: Path, depth: int) -> None:
    path = shared_data / "vnncomp" / "mnist_fc" / "onnx" / f"mnist-net_256x{depth}.onnx"
    net = import_onnx(path)
    assert net.input_shape == (784, 1) and net.output_shape == (10,)
    x, labels = _mnist_test(shared_data / "mnist")
    with torch.no_grad():
        acc = float((net.model(x).argmax(1).numpy() == labels).mean())
        ours = net.model(x[:3].reshape(3, 784, 1)).numpy()
    assert abs(acc - MNIST_FC_ACCURACY[depth]) < 5e-4
    evaluator = ReferenceEvaluator(str(path))
    for i in range(3):
        ref = evaluator.run(None, {"0": x[i].numpy().reshape(1, 784, 1)})[0]
        np.testing.assert_allclose(ours[i:i + 1], ref, rtol=1e-5, atol=1e-5)
