"""``advrobust dictionary learn / plot`` and ``advrobust attack --attack dictionary`` end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from advrobust.attacks import load_dictionary
from advrobust.cli import attack as attack_cli
from advrobust.cli import dictionary as dictionary_cli
from advrobust.errors import AdvRobustError, InvalidInputError, InvalidParameterError
from advrobust.models import build_model, save_checkpoint
from attacks._catalogue import one_thread


def _parser() -> argparse.ArgumentParser:
    # ``dictionary`` is not in cli.COMMANDS until the lead registers it: build the parser here.
    parser = argparse.ArgumentParser(prog="advrobust")
    sub = parser.add_subparsers(dest="command")
    dictionary_cli.register(sub)
    attack_cli.register(sub)
    return parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    args = _parser().parse_args([*argv, "--json"])
    with one_thread():
        assert args.func(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained seeded MLP (the CLI plumbing does not need accuracy)."""
    model = build_model("small", (1, 8, 8), 10, seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, model.eval(), arch="small",
                    arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    return path


@pytest.mark.parametrize("extra", [
    ["--iterations", "4", "--plot", "atoms.png", "--examples", "examples.png"],
    ["--stochastic", "--batch-size", "16", "--epochs", "2"]])
def test_learn_plot_and_attack(checkpoint: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], extra: list[str]) -> None:
    out_file = tmp_path / "dict.npz"
    extra = [str(tmp_path / e) if e.endswith(".png") else e for e in extra]
    report = _run(capsys, "dictionary", "learn", "--model", str(checkpoint), "--data", "digits",
                  "--n", "40", "--atoms", "3", "--heldout-n", "20", "--coding-steps", "3",
                  "--out", str(out_file), *extra)
    d = load_dictionary(out_file, input_shape=(1, 8, 8), dataset="digits")
    assert d.num_atoms == 3 and d.method == report["method"]
    assert report["method"] == ("sadil" if "--stochastic" in extra else "adil")
    for split in ("train", "heldout"):
        assert 0 <= report[split]["fooling_rate"] <= 1 and report[split]["rmse"] >= 0
    assert report["heldout"]["n"] == 20 and report["seconds_per_iteration"] > 0
    if "--plot" in extra:
        assert (tmp_path / "atoms.png").stat().st_size > 0
        assert (tmp_path / "examples.png").stat().st_size > 0
    else:
        plotted = _run(capsys, "dictionary", "plot", str(out_file), "--out",
                       str(tmp_path / "again.png"))
        assert plotted["atoms"] == 3 and (tmp_path / "again.png").stat().st_size > 0

    attacked = _run(capsys, "attack", "--model", str(checkpoint), "--data", "digits",
                    "--attack", "dictionary", "--norm", "l2", "--eps", "3", "--n", "20",
                    "--dictionary", str(out_file), "--param", "steps=3")
    assert attacked["attack"] == "dictionary" and attacked["n"] == 20
    assert 0 <= attacked["fooling_rate"] <= 1 and attacked["max_norm"] <= 3 + 1e-5
    # the file records the dataset it was learned on: another one is refused
    wrong = _parser().parse_args(["attack", "--model", str(checkpoint), "--data", "digits",
                                  "--attack", "dictionary", "--eps", "3", "--n", "5",
                                  "--param", f"dictionary={out_file}",
                                  "--param", "dataset=mnist"])
    with pytest.raises(InvalidInputError, match="learned on 'digits', not 'mnist'"):
        wrong.func(wrong)
    # --dictionary is the flag of the dictionary attack only; --data sets the dataset checked
    pgd = _parser().parse_args(["attack", "--model", str(checkpoint), "--data", "digits",
                                "--attack", "pgd", "--eps", "3", "--n", "5",
                                "--dictionary", str(out_file)])
    with pytest.raises(InvalidParameterError, match="--dictionary does not apply to pgd"):
        pgd.func(pgd)


def test_dictionary_from_another_input_shape_is_rejected(checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from advrobust.attacks import Dictionary, save_dictionary

    other = save_dictionary(tmp_path / "other.npz",
                            Dictionary(atoms=torch.eye(16)[:, :2], input_shape=(1, 4, 4)))
    args = _parser().parse_args(["attack", "--model", str(checkpoint), "--data", "digits",
                                 "--attack", "dictionary", "--eps", "1", "--n", "5",
                                 "--param", f"dictionary={other}"])
    with pytest.raises(InvalidInputError, match="atoms have shape"):
        args.func(args)
    bad = _parser().parse_args(["dictionary", "learn", "--model", str(checkpoint), "--data",
                                "digits", "--n", "5", "--atoms", "0", "--out",
                                str(tmp_path / "x.npz")])
    with pytest.raises(AdvRobustError, match="'atoms' parameter"):
        bad.func(bad)
