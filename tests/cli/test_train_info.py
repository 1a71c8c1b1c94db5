"""``advrobust train`` and ``advrobust info`` end to end on the bundled digits."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from advrobust.cli import info, train
from advrobust.errors import CheckpointError
from advrobust.models import Normalize, load_checkpoint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advrobust")
    sub = parser.add_subparsers(dest="command")
    train.register(sub)
    info.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def test_train_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    assert _run(["train", "--model", "small", "--data", "digits", "--n", "300", "--test-n",
                 "100", "--epochs", "2", "--batch-size", "50", "--seed", "3", "--normalize",
                 "0.5", "0.25", "--shift", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    loaded = load_checkpoint(out)
    assert isinstance(loaded.model[0], Normalize)
    assert loaded.arch == "small" and loaded.arch_kwargs["normalize"] == [[0.5], [0.25]]
    meta = loaded.metadata
    assert meta["dataset"] == "digits" and meta["n_train"] == 300 and meta["n_test"] == 100
    assert meta["epochs"] == 2 and meta["seed"] == 3 and meta["objective"]["name"] == "Standard"
    assert meta["shift"] == 1
    assert meta["clean_accuracy"] == pytest.approx(summary["clean_accuracy"])
    assert summary["n_train"] == 300 and len(summary["history"]["test_error"]) == 2

    assert _run(["info", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["arch"] == "small" and shown["parameters"] == loaded.num_parameters
    assert shown["metadata"]["clean_accuracy"] == pytest.approx(meta["clean_accuracy"])

    assert _run(["info", str(out)]) == 0
    table = capsys.readouterr().out
    assert "small" in table and "clean_accuracy" in table and "2 epochs" in table


def test_train_course_default_drops_lr_for_cnn(tmp_path: Path) -> None:
    out = tmp_path / "cnn.pt"
    assert _run(["train", "--model", "cnn", "--n", "100", "--test-n", "50", "--epochs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    meta = load_checkpoint(out).metadata
    assert meta["lr_drop_epochs"] == [1] and meta["history"]["lr"] == pytest.approx([0.1, 0.01])


def test_info_refuses_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        _run(["info", str(bad)])


def test_train_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    assert "advrobust train --model" in capsys.readouterr().out


def test_main_reports_a_bad_checkpoint_as_an_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.cli import main

    assert main(["info", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _demo(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    from advrobust.cli import main

    assert main(["demo", "--cache-dir", str(tmp_path), "--epochs", "2", "--n", "40",
                 "--eps", "0.02", "0.1", "--json", *extra]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_demo_trains_caches_and_brackets_robustness(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    first = _demo(tmp_path, capsys)
    cached = tmp_path / "demo-mlp2-digits-seed0-2ep.pt"
    assert first["origin"].startswith("trained") and cached.exists()
    assert load_checkpoint(cached).metadata["epochs"] == 2
    again = _demo(tmp_path, capsys)
    assert again["origin"] == f"cached {cached}" and again["rows"] == first["rows"]
    rows = first["rows"]
    assert [r["eps"] for r in rows] == [0.02, 0.1] and first["n"] == 40
    for r in rows:  # the bracket: certified (lower) <= PGD robust (upper) <= clean
        assert r["crown_certified_accuracy"] <= r["pgd_robust_accuracy"] <= first["clean_accuracy"]
    assert rows[1]["pgd_robust_accuracy"] <= rows[0]["pgd_robust_accuracy"]
    cached.write_bytes(b"corrupt cache")  # a broken cache is retrained, not trusted
    assert _demo(tmp_path, capsys)["origin"].startswith("trained")


def test_demo_and_data_options_report_bad_values(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from advrobust.cli import main

    assert main(["demo", "--cache-dir", str(tmp_path), "--n", "0"]) == 2
    assert "'--n' parameter of advrobust demo must be an int in [1, inf). Got 0" in \
        capsys.readouterr().err
    assert main(["train", "--model", "small", "--n", "0", "--out", str(tmp_path / "m.pt")]) == 2
    assert "'--n' parameter of advrobust train must be an int in [1, inf)" in \
        capsys.readouterr().err


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "advrobust", "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for command in ("demo", "train", "info", "attack", "verify"):
        assert command in done.stdout
