"""``advrobust verify --radius``: per-sample certified radii, matching the library's."""

from __future__ import annotations

import argparse
import json
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
