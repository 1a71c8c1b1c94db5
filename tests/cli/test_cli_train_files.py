"""``advrobust train --out``: refuse to overwrite, one writer at a time, umask, clear write
errors, Ctrl-C (exit 130) and ``--resume`` to the result of an uninterrupted run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import advrobust.models
from advrobust.cli import main
from advrobust.cli._common import OutputLock
from advrobust.models import load_checkpoint

TRAIN = ["train", "--model", "mlp2", "--data", "digits", "--n", "200", "--test-n", "20",
         "--batch-size", "50", "--momentum", "0.9", "--lr", "0.05", "--no-progress"]


def _train(out: Path, *extra: str) -> int:
    return main([*TRAIN, "--out", str(out), *extra])


def test_out_is_not_overwritten_without_force(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    assert _train(out, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "--force" in err and str(out) in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"
    assert _train(out, "--epochs", "1", "--force") == 0
    assert load_checkpoint(out).arch == "mlp2"


def test_a_second_writer_of_the_same_out_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    with OutputLock(out, "--out"):  # another process is writing it
        assert _train(out, "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert f"is in use by PID {os.getpid()}" in err and not out.exists()
    assert _train(out, "--epochs", "1") == 0  # the lock is gone with its holder
    assert not (tmp_path / ".m.pt.lock").exists()


def test_checkpoint_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        assert _train(tmp_path / "m.pt", "--epochs", "1") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("case", ["directory", "file-as-folder"])
def test_unwritable_out_fails_up_front_naming_the_users_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    if case == "directory":
        out = tmp_path / "adir"
        out.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "m.pt"
    assert _train(out, "--epochs", "50") == 2  # 50 epochs: would take long if not up front
    err = capsys.readouterr().err.strip()
    assert err.startswith("advrobust train: error: ") and "\n" not in err
    assert ".tmp" not in err and ("adir" in err or "afile" in err)


def test_ctrl_c_then_resume_gives_the_uninterrupted_result(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ("--epochs", "2", "--defense", "pgd", "--eps", "0.1", "--attack-steps", "1",
             "--n", "100")
    assert _train(tmp_path / "full.pt", *flags) == 0
    real_save = advrobust.models.save_checkpoint

    def save_then_interrupt(*args: object, **kwargs: object) -> Path:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(advrobust.models, "save_checkpoint", save_then_interrupt)
    part = tmp_path / "part.pt"
    assert _train(part, *flags) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err
    assert load_checkpoint(part).training_state["epoch"] == 1  # type: ignore[index]
    monkeypatch.setattr(advrobust.models, "save_checkpoint", real_save)
    assert _train(part, *flags, "--resume", str(part)) == 0
    full, resumed = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(part)
    for (name, a), b in zip(full.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.metadata["history"]["train_loss"] == full.metadata["history"]["train_loss"]


def test_resume_with_other_flags_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    assert _train(out, "--epochs", "1") == 0
    capsys.readouterr()
    assert _train(out, "--epochs", "1", "--resume", str(out), "--seed", "3") == 2
    assert "seed" in capsys.readouterr().err


def test_missing_resume_is_reported_before_existing_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, missing = tmp_path / "m.pt", tmp_path / "missing.pt"
    out.write_bytes(b"precious")
    assert _train(out, "--epochs", "50", "--resume", str(missing)) == 2  # up front
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"advrobust train: error: --resume {str(missing)!r} does not exist")
    assert f"Also, --out {str(out)!r} exists already" in err and "\n" not in err
    assert out.read_bytes() == b"precious"
    # alone (no --out in the way), and --resume naming the missing --out itself
    assert _train(tmp_path / "new.pt", "--epochs", "50", "--resume", str(missing)) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "does not exist" in err and "Also" not in err
    assert _train(missing, "--epochs", "50", "--resume", str(missing)) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Also" not in err and not missing.exists()
