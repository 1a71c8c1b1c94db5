"""``advrobust attack`` end to end on a tiny digits model trained in a temporary folder."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust import InvalidParameterError, LpBall
from advrobust.attacks import PGD
from advrobust.cli import main
from advrobust.cli.attack import attack_classes, build_attack
from advrobust.data import load_dataset
from advrobust.evaluation import summarize_attack
from advrobust.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained for a few SGD steps on scikit-learn's digits."""
    train = load_dataset("digits", "train")
    model = build_model("small", (1, 8, 8), 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(train), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model.eval(), arch="small",
                    arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["attack", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report_matches_the_library(checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack", "pgd",
                   "--norm", "linf", "--eps", "0.1", "--steps", "5", "--n", "60")
    for key in ("clean_accuracy", "robust_accuracy", "fooling_rate", "rmse", "median_norm",
                "seconds", "attack", "threat"):
        assert key in out
    assert out["attack"] == "pgd" and out["attack_params"]["steps"] == 5
    assert out["threat"] == str(LpBall("linf", 0.1))
    # The same run through the library (one batch, the same seed) gives the same numbers.
    from advrobust.models import load_checkpoint

    model = load_checkpoint(checkpoint).model
    test = load_dataset("digits", "test").take(60)
    result = PGD(steps=5)(model, test.x, test.y, LpBall("linf", 0.1),
                          generator=torch.Generator().manual_seed(0))
    expected = summarize_attack(model, test.x, test.y, result)
    for key in ("clean_accuracy", "robust_accuracy", "fooling_rate", "rmse"):
        assert out[key] == pytest.approx(expected[key])
    assert 0 <= out["robust_accuracy"] <= out["clean_accuracy"] <= 1
    assert out["clean_accuracy"] > 0.5  # the model learned something, so the check means much


def test_table_examples_and_plot(checkpoint: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    npz, png = tmp_path / "ex.npz", tmp_path / "grid.png"
    code = main(["attack", "--model", str(checkpoint), "--data", "digits", "--attack", "fgsm",
                 "--norm", "l2", "--eps", "0.5", "--n", "20", "--save-examples", str(npz),
                 "--plot", str(png)])
    assert code == 0
    table = capsys.readouterr().out
    assert "robust_accuracy" in table and "fgsm" in table
    saved = np.load(npz)
    assert set(saved.files) == {"x", "x_adv", "y", "pred_clean", "pred_adv"}
    assert saved["x"].shape == saved["x_adv"].shape == (20, 1, 8, 8)
    norms = np.linalg.norm((saved["x_adv"] - saved["x"]).reshape(20, -1), axis=1)
    assert (norms <= 0.5 + 1e-5).all()
    assert png.stat().st_size > 1000


def test_targeted_run_skips_the_target_class(checkpoint: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack", "pgd",
                   "--eps", "0.3", "--steps", "5", "--n", "50", "--target", "3",
                   "--param", "targeted_loss=target-vs-all")
    labels = load_dataset("digits", "test").take(50).y
    assert out["skipped"] == int((labels == 3).sum()) and out["n"] == 50 - out["skipped"]
    assert out["attack_params"]["targeted_loss"] == "target-vs-all"


def test_unbounded_box(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack", "fgsm",
                   "--eps", "0.1", "--n", "10", "--unbounded")
    assert out["lo"] is None and out["hi"] is None  # -inf / inf are written as null


@pytest.mark.parametrize(("argv", "message"), [
    (["--attack", "nope"], "--attack must be one of {.*fgsm.*pgd.*}. Got 'nope'"),
    (["--attack", "fgsm", "--steps", "3"], "--steps does not apply to fgsm"),
    (["--attack", "pgd", "--param", "steps=many"], "'steps' parameter of PGD takes int values"),
    (["--attack", "pgd", "--param", "colour=red"], "PGD has no parameter 'colour'"),
    (["--attack", "pgd", "--param", "steps"], "--param must be NAME=VALUE"),
    (["--attack", "pgd", "--steps", "0"], r"'steps' parameter of PGD must be an int in \[1"),
    (["--attack", "pgd", "--unbounded", "--lo", "0"], "--unbounded cannot be combined"),
    (["--attack", "pgd", "--norm", "l7"], "'norm' parameter of LpBall"),
    (["--attack", "pgd", "--target", "12"], r"--target must be a class in \[0, 9\]"),
])
def test_bad_arguments_are_clear_errors(argv: list[str], message: str, checkpoint: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1",
                 "--n", "5", *argv])
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_build_attack_converts_params_by_type() -> None:
    args = argparse.Namespace(steps=7, step_size=None, restarts=2,
                              param=["random_start=false", "loss=margin", "step_size=0.02",
                                     "l1_sparsity=0.1"])
    attack = build_attack("pgd", args)
    assert attack.get_params() == {"steps": 7, "step_size": 0.02, "restarts": 2,
                                   "random_start": False, "loss": "margin",
                                   "targeted_loss": "target-vs-true", "l1_sparsity": 0.1}
    with pytest.raises(InvalidParameterError, match="takes bool values. Got 'maybe'"):
        build_attack("pgd", argparse.Namespace(param=["random_start=maybe"]))
    assert {"fgsm", "pgd"} <= set(attack_classes())
