"""``advrobust vnncomp``: result files that parse back, benchmark CSVs, bad input, start-up."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from advrobust.cli import vnncomp
from advrobust.errors import (
    DataFormatError,
    InvalidInputError,
    InvalidParameterError,
    MissingFileError,
)
from advrobust.evaluation.verify import verify_dataset
from advrobust.evaluation.vnncomp import read_result
from advrobust.network.vnnlib import load_vnnlib

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _net(seed: int, d: int = 6, h: int = 10, k: int = 3) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k)]
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen) * 0.3)
    return nn.Sequential(*layers).eval()


def _save_onnx(model: nn.Sequential, path: Path, d: int) -> None:
    nodes, inits, h = [], [], "x"
    for i, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            w, b, out = f"w{i}", f"b{i}", f"l{i}"
            inits += [numpy_helper.from_array(layer.weight.detach().numpy(), w),
                      numpy_helper.from_array(layer.bias.detach().numpy(), b)]
            nodes.append(helper.make_node("Gemm", [h, w, b], [out], transB=1))
        else:
            out = f"r{i}"
            nodes.append(helper.make_node("Relu", [h], [out]))
        h = out
    nodes.append(helper.make_node("Identity", [h], ["y"]))
    k = model[-1].out_features
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, d])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, k])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _property(x0: torch.Tensor, eps: float, label: int, k: int, unsafe: str | None = None
              ) -> str:
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(k)]
    for i, v in enumerate(x0.tolist()):
        lines += [f"(assert (<= X_{i} {min(v + eps, 1.0)!r}))",
                  f"(assert (>= X_{i} {max(v - eps, 0.0)!r}))"]
    lines.append(unsafe or "(assert (or " + " ".join(
        f"(and (>= Y_{j} Y_{label}))" for j in range(k) if j != label) + "))")
    return "\n".join(lines)


def _instance(tmp_path: Path, seed: int, eps: float = 0.15, d: int = 6, **kw: str
              ) -> tuple[Path, Path, nn.Sequential, int]:
    model = _net(seed, d=d)
    x0 = torch.rand(d, generator=torch.Generator().manual_seed(100 + seed))
    label = int(model(x0.unsqueeze(0)).argmax(1)[0])
    net, prop = tmp_path / f"net{seed}.onnx", tmp_path / f"prop{seed}.vnnlib"
    _save_onnx(model, net, d)
    prop.write_text(_property(x0, eps, label, 3, **kw))
    return net, prop, model, label


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="advrobust")
    vnncomp.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["vnncomp", *argv])
    return int(args.func(args))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_result_file_parses_back_and_agrees_with_the_milp(tmp_path: Path, seed: int,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    net, prop_path, model, label = _instance(tmp_path, seed)
    out = tmp_path / "result.txt"
    assert _run([str(net), str(prop_path), "--timeout", "20", "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    result, x, y = read_result(out)
    assert result == payload["result"] and len(payload["rows"]) == 2
    prop = load_vnnlib(prop_path)
    exact = verify_dataset(model, ((prop.lower + prop.upper) / 2).float().unsqueeze(0),
                           torch.tensor([label]), _ball(prop), method="milp", progress=False)
    assert result == {"verified": "unsat", "falsified": "sat"}[exact.verdict[0].value]
    if result == "sat":
        assert x is not None and y is not None
        assert bool(prop.contains(x.unsqueeze(0), atol=0.0))
        with torch.no_grad():
            out_y = model(x.float().unsqueeze(0)).double()
        assert torch.allclose(out_y[0], y, atol=1e-5)  # Y is the model's output at X
        assert bool(prop.is_unsafe(y.unsqueeze(0)))
    else:
        assert x is None and y is None and out.read_text() == "unsat\n"


def _ball(prop: object) -> object:
    from advrobust.evaluation.verify import _property_ball

    return _property_ball(prop)[1]  # type: ignore[arg-type]


def test_instances_csv_summary_and_results(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lines, answers = [], ["network,property,timeout,truth"]
    for seed in (0, 1, 2):
        net, prop, *_ = _instance(tmp_path, seed)
        lines.append(f"{net.name},{prop.name},15")
        answers.append(f"{net.name},{prop.name},15,unknown")
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "known_answers.csv").write_text("\n".join(answers) + "\n")
    out = tmp_path / "results.csv"
    code = _run(["--instances", str(tmp_path / "instances.csv"), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(out.open()))
    assert code == 0 and summary["instances"] == 3 == len(rows) and summary["wrong"] == 0
    assert sum(summary[w] for w in ("sat", "unsat", "unknown", "timeout")) == 3
    assert {r["result"] for r in rows} <= {"sat", "unsat"}  # tiny nets: all decided
    assert all(float(r["seconds"]) <= 15 for r in rows)
    # a wrong known answer is flagged and makes the exit status 1
    flipped = ["network,property,timeout,truth"] + [
        f"{Path(r['onnx']).name},{Path(r['vnnlib']).name},15,"
        f"{'sat' if r['result'] == 'unsat' else 'unsat'}" for r in rows]
    (tmp_path / "known_answers.csv").write_text("\n".join(flipped) + "\n")
    assert _run(["--instances", str(tmp_path / "instances.csv"), "--out", str(out)]) == 1
    assert all(r["wrong"] == "1" for r in csv.DictReader(out.open()))


def test_instances_run_isolated_agree_with_one_process(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    lines = []
    for seed in (3, 4):
        net, prop, *_ = _instance(tmp_path, seed)
        lines.append(f"{net.name},{prop.name},15")
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    got = {}
    for how in ([], ["--one-process"]):
        out = tmp_path / f"results{len(how)}.csv"
        assert _run(["--instances", str(tmp_path / "instances.csv"), "--out", str(out),
                     *how]) == 0
        got[len(how)] = [(r["result"], r["error"]) for r in csv.DictReader(out.open())]
    capsys.readouterr()
    assert got[0] == got[1] and {r for r, _ in got[0]} <= {"sat", "unsat"}


def _crash(instance: Any, *_: object) -> dict[str, object]:
    name = Path(str(instance.vnnlib)).name
    if name == "prop0.vnnlib":
        os._exit(7)  # native code dying mid-instance
    if name == "prop1.vnnlib":
        time.sleep(120)  # a stage stuck past every deadline
    raise ValueError("a bug in the library")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, process groups")
def test_a_crash_or_an_overrun_is_a_row_and_the_benchmark_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import multiprocessing

    from advrobust.evaluation import vnncomp as evaluation

    lines = []
    for seed in (0, 1, 2):
        net, prop, *_ = _instance(tmp_path, seed)
        lines.append(f"{net.name},{prop.name},2")
    (tmp_path / "instances.csv").write_text("\n".join(lines) + "\n")
    # forked children run the patched body (a process server would import the real one)
    monkeypatch.setattr(evaluation, "decide_row", _crash)
    monkeypatch.setattr(vnncomp, "_context", lambda _: multiprocessing.get_context("fork"))
    monkeypatch.setattr(vnncomp, "KILL_GRACE", 0.5)
    out = tmp_path / "results.csv"
    began = time.perf_counter()
    assert _run(["--instances", str(tmp_path / "instances.csv"), "--out", str(out),
                 "--json"]) == 0
    assert time.perf_counter() - began < 60  # the stuck one was killed, not waited for
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(out.open()))
    assert [r["result"] for r in rows] == ["unknown", "timeout", "unknown"]
    assert "exit code 7" in rows[0]["error"]
    assert "killed" in rows[1]["error"] and float(rows[1]["seconds"]) >= 2.5
    assert rows[2]["error"] == "ValueError: a bug in the library"
    assert summary["errors"] == 3 and summary["instances"] == 3


def test_missing_files_are_all_reported_before_any_run(tmp_path: Path) -> None:
    net, prop, *_ = _instance(tmp_path, 0)
    (tmp_path / "instances.csv").write_text(
        f"{net.name},{prop.name},10\nnope.onnx,{prop.name},10\n{net.name},gone.vnnlib,10\n")
    out = tmp_path / "results.csv"
    with pytest.raises(MissingFileError, match="2 missing files") as info:
        _run(["--instances", str(tmp_path / "instances.csv"), "--out", str(out)])
    assert "nope.onnx" in str(info.value) and "gone.vnnlib" in str(info.value)
    assert not out.exists()
    (tmp_path / "bad.csv").write_text(f"{net.name},{prop.name},-3\n")
    with pytest.raises(DataFormatError, match="line 1.*> 0"):
        _run(["--instances", str(tmp_path / "bad.csv"), "--out", str(out)])


def test_bad_input_gets_clear_errors(tmp_path: Path) -> None:
    net, prop, *_ = _instance(tmp_path, 0)
    out = tmp_path / "r.txt"
    for timeout in ("0", "-1", "nan"):
        with pytest.raises(InvalidParameterError, match="'--timeout'.*> 0"):
            _run([str(net), str(prop), "--timeout", timeout, "--out", str(out)])
    with pytest.raises(InvalidParameterError, match="--timeout is required"):
        _run([str(net), str(prop), "--out", str(out)])
    with pytest.raises(InvalidParameterError, match="--one-process applies to --instances"):
        _run([str(net), str(prop), "--timeout", "5", "--out", str(out), "--one-process"])
    with pytest.raises(MissingFileError, match="a.onnx, .*b.vnnlib"):
        _run([str(tmp_path / "a.onnx"), str(tmp_path / "b.vnnlib"), "--timeout", "5", "--out",
              str(out)])
    # a property over 5 inputs for a network taking 6
    wide, *_ = _instance(tmp_path, 7, d=5)
    with pytest.raises(InvalidInputError, match=r"shape \(6,\).*declares 5 input"):
        _run([str(net), str(tmp_path / "prop7.vnnlib"), "--timeout", "5", "--out", str(out)])
    assert not out.exists()


def test_a_conjunction_of_output_constraints_is_decided(tmp_path: Path) -> None:
    # "the label's output is minimal" (ACAS Xu's form: unsat here, the label being maximal
    # around the centre) and "... is maximal" (sat at the centre)
    net, prop_path, model, label = _instance(tmp_path, 3)
    twin = copy.deepcopy(model).double()
    x0 = torch.rand(6, generator=torch.Generator().manual_seed(103))
    out = tmp_path / "r.txt"
    for op, want in (("<=", "unsat"), (">=", "sat")):
        unsafe = "(assert (and " + " ".join(
            f"({op} Y_{label} Y_{j})" for j in range(3) if j != label) + "))"
        prop_path.write_text(_property(x0, 0.02, label, 3, unsafe=unsafe))
        assert _run([str(net), str(prop_path), "--timeout", "20", "--out", str(out)]) == 0
        result, x, y = read_result(out)
        assert result == want
        if result == "sat":
            prop = load_vnnlib(prop_path)
            assert x is not None and bool(prop.contains(x.reshape(1, -1), atol=0.0)[0])
            with torch.no_grad():
                assert bool(prop.is_unsafe(twin(x.double().reshape(1, -1)))[0])


def test_top_level_help_imports_no_heavy_module() -> None:
    code = ("import sys\nfrom advrobust.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "heavy = ('torch', 'scipy', 'sklearn', 'matplotlib', 'highspy', 'onnx')\n"
            "print('LOADED', sorted(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO / "src"), "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout
    for name, summary in (("vnncomp", "decide VNN-COMP instances"),
                          ("verify", "prove robustness")):
        assert name in proc.stdout and summary in proc.stdout


def test_read_result_refuses_what_is_not_a_result_file(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    for text, match in (("maybe\n", "starts with one of"),
                        ("sat\n((X_0 0.5) (Y_1 2.0))\n", "Y values must be Y_0"),
                        ("sat\n((X_0 0.5) (Y_0 1.0)) ((X_0 1))\n", "one '\\(\\(X_0")):
        path.write_text(text)
        with pytest.raises(DataFormatError, match=match):
            read_result(path)
    path.write_text("timeout\n")
    assert read_result(path) == ("timeout", None, None)


@pytest.mark.parametrize(("threshold", "answer"), [(0.5, "unsat"), (0.55, "sat")])
def test_an_input_set_that_is_a_union_of_boxes(tmp_path: Path, threshold: float, answer: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """ACAS Xu property 6's form: an ``or`` of two input boxes. y = |x0| + 0.1 x1 is >= 1 on
    both boxes (x0 in [-3, -2] or [1, 2]) but 0 in the gap between them; with x0 in [0.5, 2]
    instead of [1, 2] it reaches 0.5 < 0.55."""
    from _tiny_nets import tent

    net, prop = tmp_path / "tent.onnx", tmp_path / "union.vnnlib"
    _save_onnx(tent(), net, 2)
    second = 1.0 if answer == "unsat" else 0.5
    prop.write_text(
        "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const Y_0 Real)\n"
        "(assert (>= X_1 0))(assert (<= X_1 1))\n"
        f"(assert (or (and (>= X_0 -3) (<= X_0 -2)) (and (>= X_0 {second}) (<= X_0 2))))\n"
        f"(assert (<= Y_0 {threshold}))")
    out = tmp_path / "result.txt"
    assert _run([str(net), str(prop), "--timeout", "20", "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    result, x, y = read_result(out)
    assert result == payload["result"] == answer
    assert payload["input_cases"] == (["unsat", "unsat"] if answer == "unsat"
                                      else ["unsat", "sat"])
    if answer == "sat":
        assert x is not None and second <= float(x[0]) <= 2.0 and float(y[0]) <= threshold


_SLOW_INSTANCE = """
import sys, numpy as np
import advrobust.evaluation.vnncomp as vnncomp
from advrobust.solvers.highs import HighsSolver
from advrobust.solvers.program import Program

def slow(*args, **kwargs):  # an instance whose MILP runs for the whole timeout
    rng = np.random.default_rng(1)
    prog = Program()
    cols = prog.add_vars(np.zeros(120), np.full(120, 3.0), integer=True)
    prog.add_rows(rng.uniform(0, 1, (80, 120)), cols, -np.inf, rng.uniform(5, 20, 80))
    solver = HighsSolver(prog, time_limit=60.0)
    print("solving", file=sys.stderr, flush=True)
    solver.minimize(-rng.uniform(0, 1, 120))

vnncomp.run_instance = slow
from advrobust.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_an_instance_exits_at_once_without_an_abort(tmp_path: Path) -> None:
    """The instance runs in a worker thread (the backstop for the timeout); Ctrl-C in the
    waiting main thread used to end the interpreter under a running HiGHS solve: SIGABRT
    ("terminate called without an active exception"), every time."""
    import os
    import signal
    import time

    net, prop, _, _ = _instance(tmp_path, 0)
    out = tmp_path / "result.txt"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_INSTANCE, "vnncomp", str(net), str(prop), "--timeout", "60",
         "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "solving" not in proc.stderr.readline():
        pass
    time.sleep(0.5)  # the solve is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "terminate called" not in err
    assert err.strip().endswith("advrobust vnncomp: interrupted (Ctrl-C); no result file written")
    assert not out.exists()
