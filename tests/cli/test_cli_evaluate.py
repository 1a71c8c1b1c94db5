"""``advrobust evaluate``: the robustness bracket of a checkpoint, side by side, from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advrobust.cli import main
from advrobust.data import load_dataset
from advrobust.models import build_model, save_checkpoint
from advrobust.training import fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = load_dataset("digits", "train")
    model = build_model("small", train.input_shape, train.num_classes, seed=0)
    fit(model, train.take(600), epochs=5, batch_size=50, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model.eval(), arch="small",
                    arch_kwargs={"input_shape": list(train.input_shape), "num_classes": 10})
    return path


def test_report_orders_the_bracket(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--eps", "0.03",
                 "--n", "40", "--pgd-steps", "10", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["arch"] == "small"
    clean, pgd, ens, cert = (out[k] for k in ("clean_accuracy", "pgd_accuracy",
                                               "ensemble_accuracy", "certified_accuracy"))
    assert 0.5 < clean <= 1  # a trained model, not a constant one
    assert cert <= ens <= pgd <= clean  # certified <= strongest attack <= PGD <= clean
    assert all("exceeds the attacked accuracy" not in w for w in out["warnings"])


def test_table_and_bad_input(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--eps", "0.03",
                 "--n", "10", "--no-ensemble", "--no-certify"]) == 0
    out = capsys.readouterr().out
    assert "pgd accuracy" in out and "not run" in out
    assert main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--eps", "-1",
                 "--n", "10"]) == 2
    assert "eps" in capsys.readouterr().err
