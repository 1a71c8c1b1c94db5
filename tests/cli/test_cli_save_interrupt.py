"""Per-sample ``--save`` files, Ctrl-C keeping finished batches, exit statuses, progress."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import advrobust.cli.attack as attack_cli
from advrobust.attacks import PGD
from advrobust.cli import main
from advrobust.core.progress import StatusLine, progress_bar
from advrobust.data import load_dataset
from advrobust.models import load_checkpoint


@pytest.fixture
def checkpoint(digits_checkpoint: Path) -> Path:
    return digits_checkpoint


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_attack_save_rows_agree_with_the_model(checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "pgd.jsonl"
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--n", "30",
                 "--eps", "0.1", "--steps", "5", "--batch-size", "8", "--save", str(save),
                 "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = _rows(save)
    assert [r["index"] for r in rows] == list(range(30))
    assert sum(r["success"] for r in rows) / 30 == pytest.approx(summary["attack_success_rate"])
    witnesses = np.load(save.with_suffix(".npz"))
    assert witnesses["index"].tolist() == [r["index"] for r in rows if r["success"]]
    model = load_checkpoint(checkpoint).model
    data = load_dataset("digits", "test").take(30)
    idx = torch.from_numpy(witnesses["index"])
    x_adv = torch.from_numpy(witnesses["x"])
    with torch.no_grad():
        assert bool((model(x_adv).argmax(1) != data.y[idx]).all())  # real counterexamples
    assert float((x_adv - data.x[idx]).abs().amax()) <= 0.1 + 1e-6
    assert all((r["margin"] < 0) == r["success"] for r in rows if r["prediction"] == r["label"])
    # a second run does not overwrite the file silently
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--n", "4",
                 "--eps", "0.1", "--save", str(save)]) == 2
    assert "--force" in capsys.readouterr().err


def test_ctrl_c_keeps_the_finished_batches(checkpoint: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(PGD):
        calls = 0

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            type(self).calls += 1
            if type(self).calls == 3:
                raise KeyboardInterrupt
            return super().__call__(*args, **kwargs)

    monkeypatch.setattr(attack_cli, "build_attack", lambda name, args: Interrupted(steps=3))
    save, examples = tmp_path / "rows.csv", tmp_path / "ex.npz"
    code = main(["attack", "--model", str(checkpoint), "--data", "digits", "--n", "40",
                 "--eps", "0.1", "--batch-size", "10", "--save", str(save), "--save-examples",
                 str(examples), "--no-progress"])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) after 20 of 40 samples; saved 20 per-sample rows" in err
    assert "the 20 finished examples" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert len(save.read_text().splitlines()) == 1 + 20  # header + two finished batches
    assert np.load(examples)["x_adv"].shape[0] == 20
    assert save.with_suffix(".npz").is_file()


def test_verify_save_rows_and_counterexamples(checkpoint: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "v.jsonl"
    assert main(["verify", "--model", str(checkpoint), "--data", "digits", "--n", "20",
                 "--eps", "0.05", "--method", "crown", "--save", str(save), "--json",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = _rows(save)
    assert len(rows) == 20
    assert sum(r["verdict"] == "verified" for r in rows) == summary["verified"]
    assert all(r["lower"] > 0 for r in rows if r["verdict"] == "verified")
    assert all(r["lower"] is None or r["upper"] is None or r["lower"] <= r["upper"] + 1e-5
               for r in rows)
    witnesses = np.load(save.with_suffix(".npz"))
    assert witnesses["index"].tolist() == [r["index"] for r in rows
                                           if r["verdict"] == "falsified"]


def test_progress_status_line_when_not_a_terminal() -> None:
    out = io.StringIO()
    bar = StatusLine(range(4), desc="stage", unit="batch", interval=0.0, file=out)
    assert list(bar) == [0, 1, 2, 3]
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("stage: 1/4 batch (25%)") and "ETA" in lines[0]
    assert lines[-1].endswith("(done)") and "\r" not in out.getvalue()
    quiet = io.StringIO()
    slow = StatusLine(range(3), desc="s", interval=3600.0, file=quiet)
    list(slow)
    slow.close()
    assert quiet.getvalue() == ""  # short stages say nothing


def test_progress_bar_is_silent_for_empty_or_disabled_stages(
        capsys: pytest.CaptureFixture[str]) -> None:
    for bar in (progress_bar([], desc="bab"), progress_bar(range(3), disable=True),
                progress_bar(total=0, desc="milp")):
        list(bar) if bar.iterable is not None else bar.update(0)
        bar.close()
    assert capsys.readouterr().err == ""


def test_large_split_without_n_is_announced_with_a_forecast(
        checkpoint: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.cli._common as common

    monkeypatch.setattr(common, "ANNOUNCE_ABOVE", 100)  # digits test has 450 samples
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1",
                 "--steps", "1", "--batch-size", "100", "--no-progress", "--json"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "using all 450 samples" in err[0]
    forecast = [line for line in err if "the first 100 of 450 samples took" in line]
    assert len(forecast) == 1 and "for all of them" in forecast[0]
    # with --n nothing is announced: the user chose the size
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1",
                 "--steps", "1", "--n", "300", "--batch-size", "100", "--no-progress"]) == 0
    assert "samples took" not in capsys.readouterr().err


def test_forecast_extrapolates_the_first_batch() -> None:
    from advrobust.core.progress import Forecast

    out = io.StringIO()
    ahead = Forecast(1000, "advrobust verify", file=out)
    ahead.start -= 10.0  # the first 100 samples took 10 s
    ahead.update(100)
    ahead.update(200)  # said once
    line = out.getvalue().strip()
    assert line.count("\n") == 0 and "the first 100 of 1000 samples took 10s" in line
    assert "about 1m40s for all of them" in line
    quiet = io.StringIO()
    Forecast(1000, "x", enabled=False, file=quiet).update(100)
    assert quiet.getvalue() == ""


def test_ctrl_c_before_the_first_batch_leaves_no_empty_file(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.evaluation

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(advrobust.evaluation, "evaluate_attack", stop)
    save = tmp_path / "rows.jsonl"
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1",
                 "--n", "20", "--save", str(save), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "advrobust attack: interrupted (Ctrl-C) after 0 of 20 samples; nothing was saved"
    assert not save.exists() and not save.with_suffix(".npz").exists()  # a rerun needs no --force


def test_ctrl_c_while_a_batch_is_kept_takes_effect_after_it() -> None:
    import os
    import signal

    from advrobust.cli._common import held_interrupt

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the batch is being written
            steps.append("rows written")
        steps.append("not reached")
    assert steps == ["rows written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_finished_console_run_ignores_a_late_ctrl_c(
        checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C during the interpreter's shutdown after a complete run (torch's atexit hooks)
    printed an "Exception ignored ... KeyboardInterrupt" traceback (hostile tour)."""
    import signal

    monkeypatch.setattr("sys.argv", ["advrobust", "info", str(checkpoint)])
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main() == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert main(["info", str(checkpoint)]) == 0  # called as a library: the handler stays
    assert signal.getsignal(signal.SIGINT) is before
