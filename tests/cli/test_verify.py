"""``advrobust verify`` end to end on a tiny digits model: checkpoint, ONNX and VNNLIB inputs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from advrobust.cli import verify
from advrobust.core.spec import margin
from advrobust.core.threat import LpBall
from advrobust.data import load_dataset
from advrobust.errors import InvalidParameterError
from advrobust.evaluation.verify import verify_dataset
from advrobust.models import build_model, save_checkpoint
from advrobust.network.vnnlib import VnnlibError, parse_vnnlib

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine extra threads only oversubscribe it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


KEYS = {"verified", "falsified", "unknown", "certified_accuracy", "mean_lower_bound", "seconds"}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="advrobust")
    verify.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A ``small`` network after a few SGD steps on digits, saved as a checkpoint."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tmp_path_factory)
    finally:
        torch.set_num_threads(before)


def _train(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    data = load_dataset("digits", "train")
    kwargs = {"input_shape": (1, 8, 8), "num_classes": 10}
    model = build_model("small", **kwargs, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(data), (128,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model, arch="small", arch_kwargs=kwargs)
    return path, model.eval()


def _to_onnx(model: nn.Module, path: Path) -> Path:
    """The Flatten / Linear / ReLU model as an mnist_fc-style ONNX graph (input [1, 64, 1])."""
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
    inits, h = [], "h0"
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        w, b = f"w{i}", f"b{i}"
        inits += [numpy_helper.from_array(layer.weight.detach().numpy(), w),
                  numpy_helper.from_array(layer.bias.detach().numpy(), b)]
        out = "y" if i == len(linears) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [h, w, b], [out], transB=1))
        if out != "y":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            h = f"r{i}"
    graph = helper.make_graph(
        nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_verify_checkpoint_json_matches_the_library(
        digits_model: tuple[Path, nn.Module], capsys: pytest.CaptureFixture[str]) -> None:
    path, model = digits_model
    assert _run(["verify", "--model", str(path), "--data", "digits", "--eps", "0.02",
                 "--method", "crown", "--n", "30", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= set(out) and out["n"] == 30
    assert out["verified"] + out["falsified"] + out["unknown"] == 30
    data = load_dataset("digits", "test").take(30)
    report = verify_dataset(model, data.x, data.y, LpBall("linf", 0.02), method="crown",
                            progress=False)
    assert (out["verified"], out["falsified"]) == (report.verified, report.falsified)
    assert out["certified_accuracy"] == pytest.approx(report.certified_accuracy)


def test_verify_precision_float32_is_the_library_s(
        digits_model: tuple[Path, nn.Module], capsys: pytest.CaptureFixture[str]) -> None:
    path, model = digits_model
    argv = ["verify", "--model", str(path), "--data", "digits", "--eps", "0.02", "--n", "30",
            "--no-progress", "--json", "--precision", "float32"]
    assert _run([*argv, "--method", "crown"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = load_dataset("digits", "test").take(30)
    report = verify_dataset(model, data.x, data.y, LpBall("linf", 0.02), method="crown",
                            progress=False, precision="float32")
    assert (out["verified"], out["falsified"]) == (report.verified, report.falsified)
    assert out["mean_lower_bound"] == pytest.approx(float(report.margin_lower.mean()))
    with pytest.raises(InvalidParameterError, match="--precision float32 applies to"):
        _run([*argv, "--method", "auto"])


def test_verify_auto_table_and_onnx_agree(digits_model: tuple[Path, nn.Module], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, model = digits_model
    common = ["--data", "digits", "--eps", "0.03", "--method", "auto", "--n", "12",
              "--time-limit", "20", "--no-progress"]
    assert _run(["verify", "--model", str(path), *common]) == 0
    table = capsys.readouterr().out
    assert "certified accuracy" in table and "falsified" in table
    net = _to_onnx(model, tmp_path / "digits.onnx")
    assert _run(["verify", "--model", str(path), *common, "--json"]) == 0
    from_ckpt = json.loads(capsys.readouterr().out)
    assert _run(["verify", "--onnx", str(net), *common, "--json"]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert from_ckpt["unknown"] == 0 == from_onnx["unknown"]  # the cascade closes tiny nets
    for key in ("verified", "falsified"):
        assert from_onnx[key] == from_ckpt[key]


def test_verify_bab_and_milp_decide_the_same(digits_model: tuple[Path, nn.Module],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = digits_model
    out = {}
    for method in ("bab", "milp"):
        assert _run(["verify", "--model", str(path), "--data", "digits", "--eps", "0.03",
                     "--method", method, "--n", "12", "--time-limit", "20", "--no-progress",
                     "--json"]) == 0
        out[method] = json.loads(capsys.readouterr().out)
        assert KEYS <= set(out[method]) and out[method]["method"] == method
    assert out["bab"]["unknown"] == 0 == out["milp"]["unknown"]
    for key in ("verified", "falsified"):
        assert out["bab"][key] == out["milp"][key]


def _property(x0: np.ndarray, eps: float, label: int) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0)!r}))",
                  f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10)
                                           if j != label) + "))")
    return "\n".join(lines)


@pytest.mark.parametrize("eps", [0.005, 0.3])
def test_verify_vnnlib(digits_model: tuple[Path, nn.Module], tmp_path: Path, eps: float,
                       capsys: pytest.CaptureFixture[str]) -> None:
    _, model = digits_model
    net = _to_onnx(model, tmp_path / "digits.onnx")
    data = load_dataset("digits", "test").take(20)
    with torch.no_grad():
        i = int(margin(model(data.x), data.y).argmax())  # the most confidently right image
    prop = tmp_path / "p.vnnlib"
    prop.write_text(_property(data.x[i].numpy().reshape(-1), eps, int(data.y[i])))
    cex = tmp_path / "cex.txt"
    assert _run(["verify", "--onnx", str(net), "--vnnlib", str(prop), "--counterexample",
                 str(cex), "--time-limit", "20", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = "unsat" if eps < 0.1 else "sat"  # a tiny box is robust, half the range is not
    assert out["result"] == expected
    if expected == "sat":
        lines = cex.read_text().splitlines()
        assert lines[0] == "sat"
        values = [float(t.strip("() ").split()[1]) for t in lines[1:]]
        x, y = torch.tensor(values[:64]), torch.tensor(values[64:])
        parsed = parse_vnnlib(prop.read_text())
        assert bool(parsed.contains(x.unsqueeze(0))) and bool(parsed.is_unsafe(y.unsqueeze(0)))
        with torch.no_grad():
            assert torch.allclose(model(x.reshape(1, 1, 8, 8))[0], y, atol=1e-4)
    else:
        assert cex.read_text() == "unsat\n" and out["lower_bound"] > 0


def test_verify_errors(digits_model: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = digits_model
    with pytest.raises(InvalidParameterError, match="--eps"):  # exit status 2 through main
        _run(["verify", "--model", str(path), "--data", "digits", "--n", "3"])
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(declare-const X_0 Real)(assert (<= X_0")
    net = tmp_path / "d.onnx"
    with pytest.raises(VnnlibError, match="unbalanced"):
        _run(["verify", "--model", str(path), "--vnnlib", str(bad)])
    from advrobust.cli import main

    assert main(["verify", "--model", str(path), "--vnnlib", str(bad)]) == 2  # clean message
    with pytest.raises(SystemExit):
        _run(["verify", "--model", str(path), "--onnx", str(net), "--eps", "0.1"])
