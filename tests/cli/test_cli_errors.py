"""Bad command lines end in one clear error line and exit status 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from advrobust.cli import main
from advrobust.cli._attack_report import describe_params
from advrobust.cli.verify import _fit_shape
from advrobust.errors import InvalidInputError
from advrobust.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small digits model: the errors below come before any real work."""
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    model = build_model("small", (1, 8, 8), 10, seed=0).eval()
    save_checkpoint(path, model, arch="small",
                    arch_kwargs={"input_shape": [1, 8, 8], "num_classes": 10})
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``advrobust ARGV``; assert exit status 2 and one 'error:' line; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"advrobust {argv[0]}: error: ") and "\n" not in err, err
    return err


def test_attack_missing_required_parameter(checkpoint: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base = ["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1", "--n", "4"]
    err = _error(capsys, [*base, "--attack", "dictionary"])
    assert "--dictionary" in err
    err = _error(capsys, [*base, "--attack", "universal-apply"])
    assert "--param perturbation=" in err
    err = _error(capsys, [*base, "--attack", "ensemble", "--members", "pgd,universal-apply"])
    assert "universal-apply.perturbation" in err


def test_missing_input_files(checkpoint: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.npz")
    base = ["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1", "--n", "4"]
    assert missing in _error(capsys, [*base, "--attack", "dictionary", "--dictionary", missing])
    assert missing in _error(capsys, [*base, "--attack", "universal-apply", "--param",
                                      f"perturbation={missing}"])
    assert missing in _error(capsys, ["dictionary", "plot", missing,
                                      "--out", str(tmp_path / "a.png")])
    assert missing in _error(capsys, ["train", "--model", "mlp2", "--data", "digits",
                                      "--defense", "dict-adv", "--dictionary", missing,
                                      "--out", str(tmp_path / "d.pt")])


def test_verify_missing_onnx_and_vnnlib(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    onnx_path = str(tmp_path / "nope.onnx")
    assert onnx_path in _error(capsys, ["verify", "--onnx", onnx_path, "--data", "digits",
                                        "--eps", "0.1"])


def test_verify_without_eps(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--eps" in _error(capsys, ["verify", "--model", str(checkpoint), "--data", "digits",
                                      "--n", "3"])


def test_verify_shape_mismatch_is_an_input_error() -> None:
    with pytest.raises(InvalidInputError, match="784"):
        _fit_shape(torch.zeros(2, 1, 8, 8), (784, 1))


def test_detect_unknown_attack(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["detect", "--model", str(checkpoint), "--attacks", "pgd,foo",
                          "--n", "4"])
    assert "foo" in err and "evasive-cw" in err


def test_train_test_n_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--test-n" in _error(capsys, ["train", "--model", "mlp2", "--data", "digits",
                                         "--n", "20", "--epochs", "1", "--test-n", "0",
                                         "--no-progress", "--out", str(tmp_path / "m.pt")])


def test_attack_params_show_paths_as_text(tmp_path: Path) -> None:
    class _WithPath:
        def get_params(self) -> dict[str, object]:
            return {"dictionary": tmp_path / "dict.npz", "steps": 3}

    params = describe_params(_WithPath())
    assert params == {"dictionary": str(tmp_path / "dict.npz"), "steps": 3}
    assert "PosixPath" not in f"{params}" and json.dumps(params)


def test_flags_of_another_attack_or_mode_are_refused(checkpoint: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    base = ["attack", "--model", str(checkpoint), "--data", "digits", "--eps", "0.1", "--n", "4"]
    assert "--members" in _error(capsys, [*base, "--attack", "pgd", "--members", "pgd,fgsm"])
    assert "--source-model" in _error(capsys, [*base, "--attack", "pgd", "--source-model",
                                               str(checkpoint)])
    assert "--counterexample" in _error(capsys, ["verify", "--model", str(checkpoint),
                                                 "--data", "digits", "--eps", "0.1", "--n", "3",
                                                 "--counterexample", "cex.txt"])


def test_demo_help_names_only_what_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    description = capsys.readouterr().out.split("options:")[0]
    assert "CROWN" in description and "MILP from" not in description


def test_n_beyond_the_split_names_the_flag(checkpoint: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, ["attack", "--model", str(checkpoint), "--data", "digits",
                          "--eps", "0.1", "--n", "100000"])
    assert "--n" in err and "100000" in err and "450" in err


def test_rgb_perturbations_are_drawn_visibly(tmp_path: Path) -> None:
    from matplotlib.image import imread

    from advrobust.cli._attack_report import plot_examples

    x = torch.full((2, 3, 8, 8), 0.5)
    x_adv = x.clone()
    x_adv[:, 0] += 0.03  # +eps on red only: drawn pink (1, 0.5, 0.5), not near-black
    y = torch.zeros(2, dtype=torch.long)
    plot_examples(tmp_path / "p.png", x, x_adv, y, y, y)
    img = imread(tmp_path / "p.png")[..., :3]
    bottom = img[2 * img.shape[0] // 3:]
    pink = (bottom[..., 0] > 0.9) & (abs(bottom[..., 1] - 0.5) < 0.06) & (
        abs(bottom[..., 2] - 0.5) < 0.06)
    assert pink.sum() > 500


def test_warnings_print_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from advrobust.cli import info as info_cli

    before, seen = warnings.formatwarning, []

    def fake_run(args: object) -> int:
        seen.append(warnings.formatwarning("boom", UserWarning, "/x/lib.py", 7, "src line"))
        return 0

    monkeypatch.setattr(info_cli, "run", fake_run)
    assert main(["info", "any.pt"]) == 0
    assert seen == ["advrobust info: warning: boom\n"]
    assert warnings.formatwarning is before


def test_detect_fit_n_and_norm_labels(checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["detect", "--model", str(checkpoint), "--data", "digits", "--n", "6"]
    assert "--fit-n" in _error(capsys, [*base, "--fit-n", "0"])
    assert main([*base, "--fit-n", "40", "--attacks", "fgsm,cw", "--cw-steps", "2",
                 "--cw-search", "1"]) == 0
    out = capsys.readouterr().out  # pgd / fgsm distortions are linf, C&W's l2: say which
    assert "fgsm: median linf norm detected" in out and "cw: median l2 norm" in out


def test_json_numbers_carry_no_float32_noise() -> None:
    import torch

    from advrobust.cli._common import _jsonable

    acc = float(torch.tensor(0.9, dtype=torch.float32))  # 0.8999999761581421
    assert _jsonable({"a": acc, "b": [float("nan"), 1.2345678912e-5]}) == {
        "a": 0.9, "b": [None, 1.234568e-05]}


def test_plot_shows_changed_predictions_first(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from advrobust.cli import _attack_report

    shown: list[int] = []
    real = _attack_report.plot_examples

    def spy_title(self: object, title: str, **kw: object) -> None:
        if title.startswith("y="):
            shown.append(int(title.split()[0][2:]))

    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", spy_title)
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10)
    clean = y.clone()
    adv = y.clone()
    adv[[7, 9]] = 0  # only samples 7 and 9 were broken
    real(tmp_path / "p.png", x, x.clone(), y, clean, adv, columns=4)
    assert shown == [7, 9, 0, 1]
