"""``advrobust verify --radius``: per-sample certified radii, matching the library's."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from advrobust.cli import verify
from advrobust.data import load_dataset
from advrobust.models import build_model, save_checkpoint
from advrobust.relax import CROWN, GlobalLipschitz, certified_radius


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="advrobust")
    verify.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    data = load_dataset("digits", "train")
    kwargs = {"input_shape": (1, 8, 8), "num_classes": 10}
    model = build_model("small", **kwargs, seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # plain SGD by hand (torch.optim's first use imports torch._dynamo)
        idx = torch.randint(0, len(data), (128,), generator=gen)
        loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p.sub_(0.2 * g)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model, arch="small", arch_kwargs=kwargs)
    return path, model.eval()


@pytest.mark.parametrize("method, bounder", [("global-lipschitz", GlobalLipschitz()),
                                             ("crown", CROWN())])
def test_radius_cli_matches_library(checkpoint: tuple[Path, nn.Module], method: str,
                                    bounder: object, capsys: pytest.CaptureFixture[str]) -> None:
    path, model = checkpoint
    assert _run(["verify", "--model", str(path), "--data", "digits", "--split", "test",
                 "--n", "6", "--norm", "l2", "--radius", method, "--eps", "0.1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = load_dataset("digits", "test")
    x, y = data.x[:6], data.y[:6]
    lib = certified_radius(bounder, model, x, y, "l2").radius  # type: ignore[arg-type]
    correct = model(x).argmax(1) == y
    expected = torch.where(correct, lib, torch.zeros_like(lib))
    assert out["radii"] == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-9)
    assert out["certified_accuracy"] == pytest.approx(float((expected >= 0.1).double().mean()))
    assert out["method"] == method and out["n"] == 6


def test_radius_rejects_unknown_method(checkpoint: tuple[Path, nn.Module]) -> None:
    with pytest.raises(SystemExit):
        _run(["verify", "--model", str(checkpoint[0]), "--data", "digits", "--radius", "pgd"])


def test_exact_radius_time_limit_bounds_the_whole_call(
        checkpoint: tuple[Path, nn.Module], capsys: pytest.CaptureFixture[str]) -> None:
    """--time-limit is the budget of all the samples together (it was per sample: n times
    as long, silently); the samples it cuts keep a sound bracket and are listed."""
    path, model = checkpoint
    start = time.perf_counter()
    assert _run(["verify", "--model", str(path), "--data", "digits", "--split", "test",
                 "--n", "8", "--norm", "l2", "--radius", "exact", "--time-limit", "2",
                 "--json", "--no-progress"]) == 0
    took = time.perf_counter() - start
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert captured.err == ""  # --no-progress
    data = load_dataset("digits", "test")
    correct = (model(data.x[:8]).argmax(1) == data.y[:8]).tolist()
    assert sum(correct) >= 4  # per-sample limits would take >= 8 s
    assert took < 2 + 4
    assert out["seconds"] <= took and out["time_limit"] == 2
    # the whole-box l2 MILPs of this net do not close in a fraction of a second
    assert out["cut_by_time_limit"] and all(correct[i] for i in out["cut_by_time_limit"])
    for i in range(8):
        low, up = out["radii"][i], out["upper"][i]
        up = math.inf if up is None else up
        assert 0 <= low <= up
        if not correct[i]:
            assert low == 0 and up == 0
            assert (out["lower_by"][i], out["upper_by"][i]) == ("none", "clean")
        else:  # cut, yet as good as the cheap methods: a certified radius, an attack's point
            assert low > 0 and out["lower_by"][i] in ("crown", "lipschitz", "exact")
            assert math.isfinite(up) and out["upper_by"][i] in ("attack", "exact")


def test_radius_shows_progress_per_sample(checkpoint: tuple[Path, nn.Module],
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ADVROBUST_PROGRESS_INTERVAL", "0")  # a status line on every sample
    argv = ["verify", "--model", str(checkpoint[0]), "--data", "digits", "--split", "test",
            "--n", "3", "--norm", "l2", "--time-limit", "1"]
    for method, desc in (("crown", "radius (CROWN)"), ("exact", "radius (exact)")):
        assert _run([*argv, "--radius", method]) == 0
        assert f"{desc}: 3/3 sample" in capsys.readouterr().err
        assert _run([*argv, "--radius", method, "--no-progress"]) == 0
        assert capsys.readouterr().err == ""


def test_radius_table_says_what_was_cut(checkpoint: tuple[Path, nn.Module],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["verify", "--model", str(checkpoint[0]), "--data", "digits", "--split",
                 "test", "--n", "3", "--norm", "l2", "--radius", "crown", "--time-limit",
                 "1e-9", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "cut by time limit" in table and "of 3 samples" in table
