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
    # A short ensemble: the ordering holds by construction (the ensemble's column is its
    # worst case with PGD's; certification is sound), whatever the attack budgets.
    code = main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--eps", "0.03",
                 "--n", "30", "--pgd-steps", "10", "--ensemble-steps", "10",
                 "--ensemble-queries", "50", "--json", "--no-progress"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 30 and out["arch"] == "small"
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


def test_save_writes_one_row_per_sample(checkpoint: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "eval.csv"
    assert main(["evaluate", "--model", str(checkpoint), "--data", "digits", "--eps", "0.03",
                 "--n", "12", "--pgd-steps", "5", "--no-ensemble", "--save", str(save),
                 "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    import csv

    rows = list(csv.DictReader(save.open()))
    assert [int(r["index"]) for r in rows] == list(range(12))
    assert sum(r["clean_correct"] == "True" for r in rows) == round(out["clean_accuracy"] * 12)
    assert sum(r["pgd_robust"] == "True" for r in rows) == round(out["pgd_accuracy"] * 12)
    assert all(r["ensemble_robust"] == "" for r in rows)  # not run
    # a certified sample is never one PGD broke
    assert not any(r["certified"] == "True" and r["pgd_robust"] == "False" for r in rows)
