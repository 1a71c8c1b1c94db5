"""``advrobust train --defense``: every defense family end to end on the bundled digits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from advrobust.attacks.dictionary import Dictionary, project_atoms, sample_laplace, save_dictionary
from advrobust.cli import info, train
from advrobust.errors import InvalidParameterError
from advrobust.models import load_checkpoint
from advrobust.training.defenses import DEFENSES

BASE = ["--model", "small", "--data", "digits", "--n", "200", "--test-n", "60", "--epochs",
        "1", "--batch-size", "50", "--no-progress", "--seed", "1"]

#: defense -> (its CLI flags, objective class, parameters the checkpoint must record).
CASES: dict[str, tuple[list[str], str, dict[str, object]]] = {
    "standard": ([], "Standard", {}),
    "pgd": (["--eps", "0.1", "--attack-steps", "3", "--ramp", "0.5"], "AdversarialPGD",
            {"eps": 0.1, "steps": 3, "ramp": 0.5, "seed": 1}),
    "fgsm": (["--eps", "0.1", "--alpha", "0.12"], "FastFGSM",
             {"eps": 0.1, "alpha": 0.12, "seed": 1}),
    "trades": (["--eps", "0.1", "--beta", "3", "--attack-steps", "2"], "TRADES",
               {"eps": 0.1, "beta": 3.0, "steps": 2}),
    "tv": (["--eps", "0.1", "--norm", "l2"], "GradientNormPenalty", {"eps": 0.1, "norm": "l2"}),
    "tv-lip": (["--eps", "0.1", "--lam", "0.2", "--double-backprop"], "LipschitzPenalty",
               {"lam": 0.2, "double_backprop": True}),
    "ibp": (["--eps", "0.05", "--warmup", "0.2", "--ramp", "0.3"], "IBPTraining",
            {"eps": 0.05, "warmup": 0.2, "ramp": 0.3}),
    "crown-ibp": (["--eps", "0.05", "--kappa-end", "0.7"], "CROWNIBP",
                  {"eps": 0.05, "kappa_end": 0.7}),
    "noise": (["--sigma", "0.25"], "NoiseAugmentation", {"sigma": 0.25, "seed": 1}),
    "gaussian": (["--sigma", "0.5"], "NoiseAugmentation", {"sigma": 0.5, "seed": 1}),
    "consistency": (["--sigma", "0.5", "--lam", "2", "--eta", "0.1", "--noise-samples", "3"],
                    "ConsistencyRegularization", {"sigma": 0.5, "lam": 2.0, "eta": 0.1, "m": 3}),
    "smoothadv": (["--sigma", "0.25", "--eps", "0.5", "--attack-steps", "1", "--warmup", "0"],
                  "SmoothAdv", {"sigma": 0.25, "eps": 0.5, "steps": 1, "warmup": 0.0}),
    "dict-adv": (["--dictionary", "DICT", "--attack-steps", "2"],
                 "DictionaryAdversarialTraining", {"steps": 2}),
    "dict-noise": (["--dictionary", "DICT", "--augmented-weight", "0.3"],
                   "DictionaryNoiseTraining", {"augmented_weight": 0.3, "seed": 1}),
    "gloro": (["--eps", "0.3", "--ramp", "0.5"], "GloRo", {"eps": 0.3, "ramp": 0.5}),
}


@pytest.fixture(autouse=True)
def _one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dictionary_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gen = torch.Generator().manual_seed(0)
    atoms = project_atoms(torch.randn((64, 3), generator=gen) * 0.3)
    codes = sample_laplace((3, 40), 0.5, generator=gen)
    d = Dictionary(atoms=atoms, input_shape=(1, 8, 8), codes=codes, lambda1=0.05,
                   lambda2=0.001, loss="ce", dataset="digits")
    return save_dictionary(tmp_path_factory.mktemp("dict") / "d.npz", d)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advrobust")
    sub = parser.add_subparsers(dest="command")
    train.register(sub)
    info.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_every_registered_defense_has_a_case() -> None:
    assert set(CASES) == set(DEFENSES)


@pytest.mark.parametrize("name", list(CASES))
def test_defense_trains_and_the_checkpoint_records_it(
        name: str, tmp_path: Path, dictionary_file: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    flags, cls, expected = CASES[name]
    flags = [str(dictionary_file) if f == "DICT" else f for f in flags]
    out = tmp_path / "m.pt"
    assert _run(["train", *BASE, "--defense", name, *flags, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    meta = load_checkpoint(out).metadata
    assert meta["defense"]["name"] == name == summary["defense"]["name"]
    for key, value in expected.items():
        assert meta["defense"]["params"][key] == value
    assert meta["objective"]["name"] == cls
    assert summary["clean_accuracy"] is not None and 0 <= summary["clean_accuracy"] <= 1
    if name.startswith("dict"):
        assert meta["defense"]["params"]["dictionary"] == str(dictionary_file)
    _run(["info", str(out)])
    shown = capsys.readouterr().out
    assert "defense" in shown and name in shown


def test_defense_parameters_reach_the_objective(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    _run(["train", *BASE, "--defense", "pgd", "--eps", "0.2", "--norm", "l2", "--attack-steps",
          "4", "--attack-step-size", "0.07", "--warmup", "0.1", "--ramp", "0.4",
          "--out", str(out), "--json"])
    params = load_checkpoint(out).metadata["objective"]["params"]
    assert params["steps"] == 4 and params["step_size"] == 0.07 and params["seed"] == 1
    assert params["threat"]["eps"] == 0.2 and params["threat"]["norm"] == "l2"
    assert params["schedule"]["params"]["warmup"] == 0.1
    assert params["schedule"]["params"]["ramp"] == 0.4


def test_adam_and_cyclic_schedule_are_recorded(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    _run(["train", *BASE, "--epochs", "2", "--optimizer", "adam", "--lr", "0.01",
          "--lr-schedule", "cyclic", "--out", str(out), "--json"])
    meta = load_checkpoint(out).metadata
    assert meta["optimizer"] == "adam" and meta["lr_schedule"] == "cyclic"
    assert meta["history"]["lr"] == pytest.approx([0.0, 0.01 * 0.5 / 0.6])


@pytest.mark.parametrize("flags, match", [
    (["--defense", "tv", "--eps", "0.1", "--beta", "2"],
     "--defense tv does not take --beta; it takes: --eps, --norm, --fd-step"),
    (["--defense", "pgd"], "--defense pgd needs --eps"),
    (["--defense", "noise"], "--defense noise needs --sigma"),
    (["--defense", "dict-adv", "--eps", "0.1"], "does not take --eps"),
    (["--report", "10"], "--report needs --report-eps"),
    (["--lr-schedule", "cyclic", "--lr-drop", "1"], "--lr-drop cannot be combined"),
])
def test_wrong_flags_are_named(flags: list[str], match: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        _run(["train", *BASE, *flags, "--out", str(tmp_path / "m.pt")])
    assert not (tmp_path / "m.pt").exists()  # refused before training


def test_unknown_defense_lists_the_valid_ones(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run(["train", *BASE, "--defense", "madry", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert "madry" in err and all(name in err for name in DEFENSES)


@pytest.mark.parametrize("flags, match", [
    (["--defense", "ibp", "--eps", "0.1", "--warmup", "0.7", "--ramp", "0.5"], "add up"),
    (["--defense", "pgd", "--eps", "0.1", "--ramp", "1.5"], "ramp"),
    (["--defense", "ibp", "--eps", "-0.1"], "eps"),
    (["--defense", "pgd", "--eps", "0.1", "--norm", "l7"], "l7"),
    (["--defense", "noise", "--sigma", "0"], "needs --sigma > 0"),
    (["--defense", "consistency", "--sigma", "0"], "needs --sigma > 0"),
])
def test_bad_defense_values_fail_before_training(flags: list[str], match: str,
                                                 tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        _run(["train", *BASE, *flags, "--out", str(tmp_path / "m.pt")])
    assert not (tmp_path / "m.pt").exists()


def test_report_brackets_the_trained_model(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    assert _run(["train", *BASE, "--n", "600", "--epochs", "4", "--momentum", "0.9",
                 "--defense", "ibp", "--eps", "0.02",
                 "--report", "30", "--report-no-ensemble", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["report"]
    assert report["n"] == 30 and "0.02" in report["threat"]
    assert report["ensemble_accuracy"] is None
    clean, pgd, cert = (report[k] for k in ("clean_accuracy", "pgd_accuracy",
                                            "certified_accuracy"))
    assert cert is not None and 0 <= cert <= pgd <= clean <= 1
    assert clean > 0.3  # trained, not a constant guess
    _run(["train", *BASE, "--report", "20", "--report-eps", "0.05", "--report-no-certify",
          "--out", str(out), "--force"])
    table = capsys.readouterr().out
    for row in ("clean accuracy", "pgd accuracy", "ensemble accuracy", "certified accuracy"):
        assert row in table
    assert "certified accuracy  not run" in table and "ensemble accuracy   not run" not in table
