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
