"""``advrobust detect`` end to end on a digits checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from torch import nn

from advrobust.cli import detect
from advrobust.errors import InvalidParameterError
from advrobust.models import save_checkpoint


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="advrobust")
    detect.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoint(digits_model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(path, digits_model, arch="small", arch_kwargs={"input_shape": (1, 8, 8)})
    return path


def test_detect_prints_json_report(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["detect", "--model", str(checkpoint), "--data", "digits", "--n", "30",
                   "--attacks", "pgd,cw,evasive-cw", "--eps", "0.1", "--fit-n", "500",
                   "--cw-steps", "20", "--cw-search", "3", "--json"])
    assert detect.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["attacks"]) == {"pgd", "cw", "evasive-cw"}
    assert report["target_fpr"] == 0.05
    assert 0 <= report["attacks"]["cw"]["success_rate"] <= 1


def test_detect_table_and_unknown_attack(checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["detect", "--model", str(checkpoint), "--data", "digits", "--n", "10",
                   "--attacks", "fgsm", "--fit-n", "200"])
    assert detect.run(args) == 0
    assert "fgsm: detection rate" in capsys.readouterr().out
    bad = _parse(["detect", "--model", str(checkpoint), "--attacks", "pgd,deepfool"])
    with pytest.raises(InvalidParameterError, match="--attacks must be among .* Got deepfool"):
        detect.run(bad)


def test_detect_save_rows_agree_with_the_report(checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import torch

    from advrobust.data import load_dataset
    from advrobust.models import load_checkpoint

    save = tmp_path / "d.jsonl"
    args = _parse(["detect", "--model", str(checkpoint), "--data", "digits", "--n", "25",
                   "--attacks", "pgd,fgsm", "--eps", "0.1", "--fit-n", "200", "--batch-size",
                   "7", "--save", str(save), "--json", "--no-progress"])
    assert detect.run(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "50 per-sample rows" in captured.err
    rows = [json.loads(line) for line in save.read_text().splitlines()]
    assert len(rows) == 25 * 2  # one row per sample and attack
    for name in ("pgd", "fgsm"):
        mine = [r for r in rows if r["attack"] == name]
        assert sorted(r["index"] for r in mine) == list(range(25))
        attacked = [r for r in mine if r["success"] is not None]
        assert all(r["prediction"] == r["label"] for r in attacked)
        got = report["attacks"][name]
        assert got["n"] == len(attacked)
        assert got["success_rate"] == pytest.approx(sum(r["success"] for r in attacked)
                                                    / len(attacked))
        assert all(r["detected"] <= r["success"] for r in attacked)  # detected => success
        assert all((r["adv_score"] > report["threshold"]) == r["detected"]
                   for r in attacked if r["success"])
    assert report["clean_fpr"] == pytest.approx(sum(r["clean_flagged"] for r in rows) / 50)
    witnesses = np.load(save.with_suffix(".npz"))
    pairs = zip(witnesses["method"].tolist(), witnesses["index"].tolist(), strict=True)
    assert sorted(pairs) == sorted((r["attack"], r["index"]) for r in rows if r["success"])
    data = load_dataset("digits", "test").take(25)
    idx, x_adv = torch.from_numpy(witnesses["index"]), torch.from_numpy(witnesses["x"])
    with torch.no_grad():  # real adversarial examples inside the ball
        assert bool((load_checkpoint(checkpoint).model(x_adv).argmax(1) != data.y[idx]).all())
    assert float((x_adv - data.x[idx]).abs().amax()) <= 0.1 + 1e-6
    again = _parse(["detect", "--model", str(checkpoint), "--data", "digits", "--n", "5",
                    "--attacks", "fgsm", "--save", str(save)])
    with pytest.raises(InvalidParameterError, match="--force"):
        detect.run(again)
