"""Regression tests for the bad inputs of issue 15: each one a clear error (one line, exit 2,
before any expensive work) instead of a traceback or a silent result."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from advrobust import LpBall
from advrobust.attacks import PGD
from advrobust.cli import main
from advrobust.data import download_mnist
from advrobust.errors import CheckpointError, InvalidInputError
from advrobust.models import build_model, load_checkpoint, save_checkpoint

KW = {"input_shape": [1, 8, 8], "num_classes": 10}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "small.pt"
    save_checkpoint(path, build_model("mlp2", (1, 8, 8), 10, seed=0).eval(), arch="mlp2",
                    arch_kwargs=KW)
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"advrobust {argv[0]}: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _attack(checkpoint: Path, *extra: str) -> list[str]:
    return ["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1", "--n",
            "4", *extra]


def test_plot_extension_is_checked_before_the_attack(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.cli.attack as attack_cli

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the attack ran before the --plot check")

    monkeypatch.setattr(attack_cli, "load_model", never)
    err = _error(capsys, _attack(checkpoint, "--plot", str(tmp_path / "p.txt")))
    assert "--plot" in err and ".png" in err and "p.txt" in err
    err = _error(capsys, _attack(checkpoint, "--save-examples", str(tmp_path / "e.txt")))
    assert "--save-examples" in err and ".npz" in err
    err = _error(capsys, ["dictionary", "plot", str(tmp_path / "d.npz"), "--out",
                          str(tmp_path / "atoms.bmpx")])
    assert "--out" in err and ".png" in err


def _vnnlib(path: Path, inputs: int, outputs: int) -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))" for i in range(inputs)]
    lines += ["(assert (>= Y_1 Y_0))"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vnnlib_sizes_must_match_the_network(checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    base = ["verify", "--model", str(checkpoint), "--vnnlib"]
    err = _error(capsys, [*base, str(_vnnlib(tmp_path / "five.vnnlib", 5, 10))])
    assert "5 input variables" in err and "64" in err and "five.vnnlib" in err
    err = _error(capsys, [*base, str(_vnnlib(tmp_path / "seven.vnnlib", 64, 7))])
    assert "7 output variables" in err and "10 outputs" in err and "C of shape" not in err


def test_eps_with_vnnlib_is_refused(checkpoint: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    prop = _vnnlib(tmp_path / "p.vnnlib", 64, 10)
    err = _error(capsys, ["verify", "--model", str(checkpoint), "--vnnlib", str(prop),
                          "--eps", "0.3"])
    assert "--eps" in err and "--vnnlib" in err


def test_nan_weights_are_refused_at_load(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model("mlp2", (1, 8, 8), 10, seed=0)
    path = tmp_path / "nan.pt"
    torch.save({"format": "advrobust-checkpoint", "version": 1, "arch": "mlp2",
                "arch_kwargs": {**KW, "normalize": None},
                "state_dict": {k: torch.full_like(v, float("nan")) if i == 0 else v
                               for i, (k, v) in enumerate(model.state_dict().items())},
                "metadata": {}}, path)
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(path)
    err = _error(capsys, _attack(path))
    assert "nan.pt" in err and "NaN" in err


def test_attack_inputs_dtype_generator_and_nan_outputs() -> None:
    model = build_model("mlp2", (1, 8, 8), 10, seed=0).eval()
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    threat = LpBall("linf", 0.1)
    with pytest.raises(InvalidInputError, match=r"float64.*x.to\(torch.float32\)"):
        PGD(steps=2)(model, x.double(), y, threat)
    with pytest.raises(InvalidInputError, match="'generator'.*torch.Generator.*int 0"):
        PGD(steps=2)(model, x, y, threat, generator=0)  # type: ignore[arg-type]
    with torch.no_grad():
        model[-1].bias[3] = float("inf")
    with pytest.raises(InvalidInputError, match="NaN or infinite"):
        PGD(steps=2)(model, x, y, threat)


def test_detect_fit_n_over_the_split_is_an_error(checkpoint: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["detect", "--model", str(checkpoint), "--data", "digits", "--n", "4",
                          "--attacks", "pgd", "--fit-n", "10000000"])
    assert "--fit-n" in err and "1347" in err and "10000000" in err
    err = _error(capsys, ["detect", "--model", str(checkpoint), "--data", "digits", "--n", "4",
                          "--attacks", "pgd", "--fit-n", "1"])
    assert "--fit-n must be >= 2" in err and "clean_x" not in err


def test_normalize_message_for_one_channel(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["train", "--model", "mlp2", "--data", "digits", "--epochs", "1",
                          "--normalize", "0.1,0.2", "0.3,0.4", "--out", str(tmp_path / "m.pt")])
    assert "1 value per statistic" in err and "1 or 1" not in err


def test_pickled_npz_is_refused_without_numpys_unsafe_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "d.npz"
    raw.write_bytes(pickle.dumps({"atoms": 1}))
    err = _error(capsys, ["dictionary", "plot", str(raw), "--out", str(tmp_path / "a.png")])
    assert "pickled Python objects" in err and "allow_pickle" not in err


def test_dictionary_learn_defaults_work_on_digits(checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.npz"
    assert main(["dictionary", "learn", "--model", str(checkpoint), "--data", "digits",
                 "--n", "10", "--iterations", "1", "--coding-steps", "1", "--out", str(out),
                 "--json", "--no-progress"]) == 0
    assert '"heldout"' in capsys.readouterr().out and out.is_file()
    err = _error(capsys, ["dictionary", "learn", "--model", str(checkpoint), "--data",
                          "digits", "--n", "10", "--iterations", "1", "--out", str(out)])
    assert "--force" in err  # and an existing --out is not overwritten silently
    err = _error(capsys, ["dictionary", "learn", "--model", str(checkpoint), "--data",
                          "digits", "--n", "10", "--heldout-n", "451",
                          "--out", str(tmp_path / "e.npz")])
    assert "--heldout-n" in err and "450" in err


def test_download_follows_the_umask(tmp_path: Path) -> None:
    source = tmp_path / "mirror"
    source.mkdir()
    sums = {}
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (source / name).write_bytes(name.encode())
        sums[name] = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
    old = os.umask(0o022)
    try:
        folder = download_mnist(tmp_path / "mnist", base_url=source.as_uri(), checksums=sums)
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {0o644}


def test_stray_numpy_float_arrays_still_load(tmp_path: Path) -> None:
    # the pickle refusal must not catch ordinary numeric npz files
    from advrobust.core._npz import npz_reason

    assert npz_reason(ValueError("bad magic")) == "bad magic"
    np.savez(tmp_path / "ok.npz", a=np.zeros(2))
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as data:
        assert data["a"].shape == (2,)


def test_binary_files_where_text_is_expected(checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # a checkpoint passed as VNNLIB, TOML or instances CSV: one line naming the file
    err = _error(capsys, ["verify", "--model", str(checkpoint), "--vnnlib", str(checkpoint)])
    assert "small.pt" in err and "not a VNNLIB text file" in err
    # (a campaign config error lists its problems, one per line)
    assert main(["campaign", "run", str(checkpoint), "--store", str(tmp_path / "c.db")]) == 2
    err = capsys.readouterr().err
    assert "small.pt" in err and "not a TOML text file" in err and "Traceback" not in err
    err = _error(capsys, ["vnncomp", "--instances", str(checkpoint), "--out",
                          str(tmp_path / "r.csv")])
    assert "small.pt" in err and "not an instances CSV" in err


def test_empty_or_truncated_npz_is_a_format_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    np.savez(tmp_path / "ok.npz", atoms=np.zeros(100))
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes((tmp_path / "ok.npz").read_bytes()[:200])
    for path in (empty, truncated):
        err = _error(capsys, ["dictionary", "plot", str(path), "--out", str(tmp_path / "a.png")])
        assert path.name in err and "not a valid dictionary file" in err


def test_smooth_plot_extension_is_checked_before_certifying(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.cli.smooth as smooth_cli

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the --plot check")

    monkeypatch.setattr(smooth_cli, "load_model", never)
    err = _error(capsys, ["smooth", "certify", "--model", str(checkpoint), "--data", "digits",
                          "--images", "2", "--n", "20", "--n0", "5", "--sigma", "0.25",
                          "--plot", str(tmp_path / "s.txt")])
    assert "--plot" in err and ".png" in err and "s.txt" in err


def test_experiment_plot_extension_is_checked_before_running(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.experiments as experiments

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the experiment ran before the --plot check")

    monkeypatch.setattr(experiments, "init_attack", never)
    monkeypatch.setattr(experiments, "robust_net", never)
    for action in ("init-attack", "robust-net"):
        err = _error(capsys, ["experiment", action, "--d", "10", "--plot",
                              str(tmp_path / "x.txt")])
        assert "--plot" in err and ".png" in err and "x.txt" in err


def test_train_warns_when_the_model_is_at_chance(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # lr 1e6 leaves finite weights at 0.1 accuracy: exit 0, but not silently
    import warnings

    with pytest.warns(UserWarning, match=r"chance level.*--lr \(got 1e\+06\)"):
        assert main(["train", "--model", "mlp2", "--data", "digits", "--n", "200", "--epochs",
                     "1", "--lr", "1e6", "--no-progress", "--out", str(tmp_path / "m.pt")]) == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*chance level")
        assert main(["train", "--model", "mlp2", "--data", "digits", "--epochs", "2",
                     "--no-progress", "--out", str(tmp_path / "ok.pt")]) == 0


def test_demo_cache_dir_that_is_a_file(checkpoint: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["demo", "--n", "5", "--epochs", "1", "--cache-dir", str(checkpoint)])
    assert "--cache-dir" in err and "small.pt" in err and "is a file" in err


def test_campaign_never_writes_into_a_foreign_sqlite_database(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    (tmp_path / "small.pt").write_bytes(checkpoint.read_bytes())
    config = tmp_path / "c.toml"
    config.write_text('[data]\nname = "digits"\nn = 2\n[[models]]\nname = "a"\n'
                      'checkpoint = "small.pt"\n[[threats]]\nnorm = "linf"\neps = [0.05]\n'
                      '[certify]\nmethods = ["ibp"]\n')
    foreign = tmp_path / "mine.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (text)")
    err = _error(capsys, ["campaign", "run", str(config), "--store", str(foreign),
                          "--no-progress"])
    assert "mine.db" in err and "something else" in err and "notes" in err
    with sqlite3.connect(foreign) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}
    assert main(["campaign", "run", str(config), "--store", str(tmp_path / "new.db"),
                 "--no-progress"]) == 0


def test_report_refuses_to_overwrite_without_force(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    out.write_text("mine")
    err = _error(capsys, ["report", str(tmp_path / "none.db"), "--out", str(out)])
    assert "--force" in err and "r.html" in err and out.read_text() == "mine"


def test_dictionary_coding_steps_zero_is_refused(checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.npz"
    err = _error(capsys, ["dictionary", "learn", "--model", str(checkpoint), "--data", "digits",
                          "--n", "10", "--iterations", "1", "--coding-steps", "0",
                          "--out", str(out)])
    assert "--coding-steps must be >= 1" in err and "Got 0" in err and not out.exists()


def test_experiment_plot_with_one_trial_has_no_torch_warning(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: std() degrees of freedom <= 0 (one network)
        assert main(["experiment", "init-attack", "--d", "10", "--trials", "1",
                     "--activations", "relu", "--plot", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0


def test_train_ctrl_c_says_where_the_last_epoch_is(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import advrobust.training as training

    out = tmp_path / "m.pt"

    def interrupted_fit(model: torch.nn.Module, *args: object, **kwargs: object) -> None:
        save_checkpoint(out, model, arch="mlp2", arch_kwargs=KW)  # "epoch 1" written
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "fit", interrupted_fit)
    assert main(["train", "--model", "mlp2", "--data", "digits", "--epochs", "5",
                 "--no-progress", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"--resume {out}" in err and "interrupted (Ctrl-C)" in err and "Traceback" not in err
