"""``advrobust experiment``: tables, JSON, plots and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advrobust.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_init_attack_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "init.png"
    argv = ["experiment", "init-attack", "--d", "4,16", "--k", "2d", "--trials", "20",
            "--activations", "relu,gelu", "--step", "2", "--plot", str(plot), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(r["activation"], r["d"], r["k"]) for r in out["rows"]] == [
        ("relu", 4, 8), ("relu", 16, 32), ("gelu", 4, 8), ("gelu", 16, 32)]
    assert all(0 <= r["flip_rate"] <= 1 for r in out["rows"])
    assert plot.stat().st_size > 1000 and out["plot"] == str(plot)


def test_robust_net_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["experiment", "robust-net", "--d", "12", "--m", "4", "--c", "0.85", "--width", "16",
            "--steps", "20", "--attacks", "deepfool"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert "cert(min)" in header and "bound" in header
    assert row.split()[:3] == ["12", "4", "0.85"]


@pytest.mark.parametrize("argv, word", [
    (["robust-net", "--c", "1.5"], "'c'"),
    (["robust-net", "--d", "16", "--m", "6", "--c", "0.1"], "measured c"),
    (["robust-net", "--attacks", "fgsm"], "deepfool"),
    (["init-attack", "--d", "a,b"], "--d"),
    (["init-attack", "--k", "0"], "'k'"),
    (["init-attack", "--activations", "tanh"], "softplus"),
])
def test_bad_input_is_one_error_line(argv: list[str], word: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advrobust experiment: error: ") and "\n" not in err
    assert word in err
