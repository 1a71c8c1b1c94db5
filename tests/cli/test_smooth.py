"""``advrobust smooth certify / predict`` end to end on a small noise-trained digits model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from advrobust.cli import main
from advrobust.data import load_dataset
from advrobust.models import build_model, save_checkpoint
from advrobust.training import NoiseAugmentation, fit

BASE = ["--data", "digits", "--sigma", "0.25", "--images", "12", "--alpha", "0.01",
        "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kwargs = {"input_shape": (1, 8, 8), "num_classes": 10}
    model = build_model("small", seed=0, **kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(model, load_dataset("digits", "train"), epochs=2, lr=0.05, momentum=0.9,
            batch_size=50, seed=0, objective=NoiseAugmentation(sigma=0.25, seed=0),
            progress=False)
    finally:
        torch.set_num_threads(before)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "s.pt", model, arch="small",
                           arch_kwargs=kwargs,
                           metadata={"defense": {"name": "noise", "params": {"sigma": 0.25}}})


def test_certify_prints_certified_accuracy_and_plots(checkpoint: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "c.png"
    argv = ["smooth", "certify", "--model", str(checkpoint), *BASE, "--n", "400", "--n0", "20",
            "--radii", "0,0.1,0.3,10"]
    assert main([*argv, "--json", "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    acc = out["certified_accuracy"]
    assert out["radii"] == [0, 0.1, 0.3, 10] and acc == sorted(acc, reverse=True)
    assert acc[0] >= 0.5 and acc[-1] == 0.0  # 10 is beyond the largest certifiable radius
    assert "not the base model" in out["certifies"] and out["confidence"] == pytest.approx(0.99)
    samples = out["samples"]
    right = [p == y and r >= 0.1 for p, y, r in
             zip(samples["prediction"], samples["label"], samples["radius"], strict=True)]
    assert acc[1] == pytest.approx(sum(right) / 12)
    assert png.stat().st_size > 1000
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "certified accuracy at r=0.3" in table and "smoothed classifier" in table


def test_predict_counts_right_wrong_and_abstained(checkpoint: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smooth", "predict", "--model", str(checkpoint), *BASE, "--n", "300",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] * 12 + out["abstained"] + out["wrong"] == pytest.approx(12)
    assert out["accuracy"] >= 0.5


@pytest.mark.parametrize("flags, match", [
    (["--sigma", "0"], "'sigma' parameter of Smoothed must be a finite float in (0, inf)"),
    (["--n0", "0"], "'n0' parameter of Smoothed.certify"),
    (["--alpha", "1"], "'alpha' parameter of Smoothed.certify"),
    (["--images", "0"], "--images must be an int >= 1"),
    (["--radii", "0,x"], "--radii must be comma-separated numbers"),
    # a leading minus: argparse alone said "argument --radii: expected one argument"
    (["--radii", "-1,0.5"], "--radii must be numbers >= 0 (a radius is a distance). Got -1 in "
                            "--radii '-1,0.5'"),
    (["--radii=-1,0.5"], "Got -1 in --radii '-1,0.5'"),
    (["--radii", "-.5,1"], "Got -0.5 in --radii '-.5,1'"),
    (["--radii", "0,-0.25"], "Got -0.25 in --radii '0,-0.25'"),
])
def test_bad_flags_are_named(checkpoint: Path, flags: list[str], match: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["smooth", "certify", "--model", str(checkpoint), *BASE, "--n", "50", *flags]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_small_n_and_sigma_mismatch_warn(checkpoint: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["smooth", "certify", "--model", str(checkpoint), *BASE, "--n", "5", "--n0", "5",
            "--sigma", "0.5"]
    with pytest.warns(UserWarning) as record:
        assert main(argv) == 0
    text = " ".join(str(w.message) for w in record)
    assert "smallest n that could is 7" in text and "trained with noise sigma=0.25" in text
    assert "12 of 12" in capsys.readouterr().out


def test_several_models_smooth_their_ensemble(checkpoint: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two --model checkpoints smooth their soft-voting ensemble; with the same checkpoint twice
    it votes like the one model, so every certificate is the same (same noise seed)."""
    argv = ["smooth", "certify", *BASE, "--n", "200", "--n0", "20", "--json"]
    assert main([*argv, "--model", str(checkpoint)]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main([*argv, "--model", str(checkpoint), str(checkpoint)]) == 0
    pair = json.loads(capsys.readouterr().out)
    assert main([*argv, "--model", str(checkpoint), "--model", str(checkpoint)]) == 0
    repeated = json.loads(capsys.readouterr().out)
    assert "ensemble of 2 models" in pair["data"] and "ensemble" not in single["data"]
    assert pair["samples"] == single["samples"] == repeated["samples"]
    assert pair["certified_accuracy"] == single["certified_accuracy"]


def test_join_number_lists_touches_only_list_options() -> None:
    from advrobust.cli._common import join_number_lists

    assert join_number_lists(["smooth", "certify", "--radii", "-1,0.5", "--n", "-3"]) == \
        ["smooth", "certify", "--radii=-1,0.5", "--n", "-3"]
    assert join_number_lists(["--radii", "--json"]) == ["--radii", "--json"]
    assert join_number_lists(["--", "--radii", "-1"]) == ["--", "--radii", "-1"]
