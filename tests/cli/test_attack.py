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


# ---------------------------------------------------------------- the whole catalogue on the CLI
def test_help_lists_every_attack_with_its_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    import inspect

    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, cls in attack_classes().items():
        assert re.search(rf"\s{re.escape(name)} +\[", text), name
        if name in ("ensemble", "transfer"):
            continue
        for pname, p in inspect.signature(cls.__init__).parameters.items():
            if p.kind is p.KEYWORD_ONLY:
                default = "<required>" if p.default is p.empty else repr(p.default)
                assert f"{pname}={default}" in text, (name, pname)
    assert {"ensemble", "transfer", "universal", "strongest", "cw", "deepfool"} <= set(
        attack_classes())


def test_ensemble_from_members_matches_the_library(checkpoint: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.attacks import DeepFool, Ensemble
    from advrobust.models import load_checkpoint

    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack",
                   "ensemble", "--members", "fgsm,deepfool", "--norm", "l2", "--eps", "0.6",
                   "--steps", "4", "--n", "40", "--param", "fgsm.loss=margin")
    members = out["attack_params"]["members"]
    assert [m["attack"] for m in members] == ["fgsm", "deepfool"]
    assert members[0]["loss"] == "margin" and members[1]["steps"] == 4  # --steps: DeepFool only
    model = load_checkpoint(checkpoint).model
    test = load_dataset("digits", "test").take(40)
    ens = Ensemble([build_attack("fgsm", argparse.Namespace(param=["loss=margin"])),
                    DeepFool(steps=4)])
    res = ens(model, test.x, test.y, LpBall("l2", 0.6))
    assert out["robust_accuracy"] == pytest.approx(1 - res.success_rate)
    assert sum(out["broken_by"].values()) == 40
    assert out["broken_by"].get("None", 0) == int((~res.success).sum())
    assert out["exhausted"] == int((~res.success).sum())


def test_transfer_reports_the_transfer_rate(checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.attacks.transfer import transfer_rate
    from advrobust.models import load_checkpoint

    source = build_model("small", (1, 8, 8), 10, seed=5)
    src_path = tmp_path / "source.pt"
    save_checkpoint(src_path, source.eval(), arch="small",
                    arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack",
                   "transfer", "--source-model", str(src_path), "--source-attack", "pgd",
                   "--steps", "5", "--eps", "0.3", "--n", "40", "--save-examples",
                   str(tmp_path / "ex.npz"))
    assert out["attack_params"]["source_attack"] == {**PGD(steps=5).get_params(),
                                                     "attack": "pgd"}
    saved = np.load(tmp_path / "ex.npz")
    x_adv, y = torch.from_numpy(saved["x_adv"]), torch.from_numpy(saved["y"])
    with torch.no_grad():
        on_source = source(x_adv).argmax(1) != y
        on_target = load_checkpoint(checkpoint).model(x_adv).argmax(1) != y
    assert out["source_success_rate"] == pytest.approx(float(on_source.float().mean()))
    assert out["transfer_rate"] == pytest.approx(transfer_rate(on_source, on_target))
    assert 0 < on_source.sum() and out["transfer_rate"] < 1  # different models: not all transfer


def test_universal_saves_npz_and_png_and_measures_held_out(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.attacks import fooling_rate, load_universal
    from advrobust.models import load_checkpoint

    npz, png = tmp_path / "uap.npz", tmp_path / "uap.png"
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--split", "train",
                   "--n", "60", "--attack", "universal", "--norm", "l2", "--eps", "1.5",
                   "--param", "method=sgd", "--param", "batch_size=20", "--param",
                   "max_passes=2", "--heldout-n", "50", "--save-perturbation", str(npz),
                   "--plot", str(png))
    uap = load_universal(npz)
    assert png.stat().st_size > 1000 and out["universal"]["plot"] == str(png)
    assert float(uap.perturbation.norm()) <= 1.5 + 1e-5
    model = load_checkpoint(checkpoint).model
    heldout = load_dataset("digits", "test").take(50).x
    assert out["universal"]["fooling_rate_heldout"] == pytest.approx(
        fooling_rate(model, heldout, uap.perturbation, uap.threat))
    assert out["universal"]["heldout_n"] == 50
    # The report's fooling rate is that of the one perturbation on the images it was fitted on.
    assert out["fooling_rate"] == pytest.approx(out["universal"]["fooling_rate_train"])
    again = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--split",
                     "train", "--n", "60", "--attack", "universal-apply", "--norm", "l2",
                     "--eps", "1.5", "--param", f"perturbation={npz}")
    assert again["fooling_rate"] == pytest.approx(out["fooling_rate"])


def test_sanity_checks_and_flags_in_json(checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.cli import attack as attack_cli
    from advrobust.models import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    with pytest.warns(UserWarning, match="already misclassified"):  # said so, and counted
        out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack",
                       "deepfool", "--norm", "l2", "--eps", "3", "--n", "60", "--steps", "3")
    # three DeepFool steps leave most samples PGD breaks at l2 3 unbroken: the cross-check says so
    assert [w["code"] for w in out["sanity"]] == ["minimum-norm-misses"]
    assert out["sanity"][0]["fraction"] > 0.3
    test = load_dataset("digits", "test").take(60)
    with torch.no_grad():
        wrong = int((loaded.model(test.x).argmax(1) != test.y).sum())
    assert wrong > 0 and out["already_adversarial"] == wrong
    assert isinstance(out["exhausted"], int)

    class Softmaxed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = loaded.model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x).softmax(dim=1)

    fake = argparse.Namespace(model=Softmaxed().eval(), arch="small")
    monkeypatch.setattr(attack_cli, "load_model", lambda path: fake)
    with pytest.warns(UserWarning, match="probabilities"):
        out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack",
                       "fgsm", "--eps", "0.1", "--n", "20")
    codes = [w["code"] for w in out["sanity"]]
    assert "probabilities" in codes
    assert all(w["advice"] for w in out["sanity"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--attack", "ensemble"], "--attack ensemble needs --members"),
    (["--attack", "ensemble", "--members", "pgd,nope"], "--members must be one of"),
    (["--attack", "ensemble", "--members", "pgd,ensemble"], "Got 'ensemble'"),
    (["--attack", "transfer", "--source-model", "x.pt", "--source-attack", "transfer"],
     "--source-attack must be one of"),
    (["--attack", "ensemble", "--members", "pgd", "--param", "fgsm.loss=ce"],
     "'fgsm' is not one of --members"),
    (["--attack", "ensemble", "--members", "pgd", "--param", "steps=3"],
     "the ensemble takes {cascade}"),
    (["--attack", "transfer"], "--attack transfer needs --source-model"),
    (["--attack", "pgd", "--save-perturbation", "u.npz"],
     "--save-perturbation applies to --attack universal only"),
    (["--attack", "universal", "--target", "3"], "--attack universal is untargeted"),
])
def test_catalogue_argument_errors(argv: list[str], message: str, checkpoint: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1",
                 "--n", "5", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_norm_flag_selects_the_variant_of_minimum_norm_attacks(
        checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--model", str(checkpoint), "--data", "digits", "--attack", "cw",
                   "--norm", "linf", "--eps", "0.2", "--steps", "10", "--n", "12",
                   "--param", "binary_search_steps=2", "--param", "lr=0.05")
    assert out["attack_params"]["norm"] == "linf" and out["max_norm"] <= 0.2 + 1e-6
    assert build_attack("deepfool", argparse.Namespace(norm="l2", param=[])).norm == "l2"
    with pytest.raises(InvalidParameterError, match="'norm' parameter of DeepFool"):
        build_attack("deepfool", argparse.Namespace(norm="l1", param=[]))
    explicit = build_attack("cw", argparse.Namespace(norm="linf", param=["norm=l2"]))
    assert explicit.norm == "l2"  # --param wins over --norm


def test_data_of_another_shape_is_a_clear_error(checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # An 8x8-digits model asked to attack a 1x4x4 data set written as mnist.npz.
    import numpy as np

    root = tmp_path / "mnist"
    root.mkdir()
    imgs = np.zeros((3, 4, 4), dtype=np.uint8)
    labels = np.zeros(3, dtype=np.uint8)
    np.savez(root / "mnist.npz", x_train=imgs, y_train=labels, x_test=imgs, y_test=labels)
    code = main(["attack", "--model", str(checkpoint), "--data", "mnist", "--data-dir",
                 str(root), "--eps", "0.1", "--n", "3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "takes inputs of shape (1, 8, 8)" in err and "(1, 4, 4)" in err
