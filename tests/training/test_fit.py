"""The training loop: learns, is reproducible, validates, and stops cleanly on divergence."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor, nn

from advrobust.errors import (
    CheckpointError,
    InvalidInputError,
    InvalidParameterError,
    TrainingDivergedError,
)
from advrobust.models import build_model, load_checkpoint
from advrobust.training import EpochStats, History, Objective, Standard, fit

FAST = {"epochs": 5, "batch_size": 50, "momentum": 0.9, "progress": False}


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learns_digits_above_90_percent(digits) -> None:
    train, test = digits
    model = build_model("mlp2", (1, 8, 8), seed=0).eval()
    history = fit(model, train, test=test, **FAST)
    assert not model.training  # the caller's mode is restored
    assert isinstance(history, History) and len(history) == 5
    assert history.test_accuracy is not None and history.test_accuracy > 0.9
    assert history.test_accuracy == pytest.approx(_accuracy(model, *test))
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(0 <= e <= 1 for e in history.train_error + history.test_error)


def test_same_seed_same_weights_and_global_rng_untouched(digits) -> None:
    train, _ = digits
    small = (train[0][:300], train[1][:300])
    runs = []
    for seed, data in ((1, small), (1, SimpleNamespace(x=small[0], y=small[1])), (2, small)):
        model = build_model("small", (1, 8, 8), seed=0)
        rng = torch.get_rng_state()
        fit(model, data, epochs=2, batch_size=32, seed=seed, progress=False)
        assert torch.equal(torch.get_rng_state(), rng)
        runs.append(_state(model))
    assert _same(runs[0], runs[1])  # a Dataset-like object and a tuple train alike
    assert not _same(runs[0], runs[2])  # the seed drives the shuffling


def test_train_error_is_measured_on_the_trained_batches(digits) -> None:
    train, _ = digits
    model = build_model("mlp2", (1, 8, 8), seed=0)
    with torch.no_grad():  # a constant classifier: every prediction is class 3
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.arange(10.0) == 3)
    history = fit(model, train, epochs=1, lr=1e-9, progress=False)
    expected = float((train[1] != 3).float().mean())
    assert history.train_error[0] == pytest.approx(expected)
    assert history.test_error == [None] and history.test_accuracy is None


class _Recorder(Objective):
    """Cross-entropy that records its calls and turns NaN at a chosen call."""

    def __init__(self, *, nan_at: int | None = None, poison_at: int | None = None) -> None:
        self.nan_at = nan_at
        self.poison_at = poison_at
        self.calls: list[tuple[float, dict[str, Tensor]]] = []
        self.prepared: tuple | None = None

    def prepare(self, model: nn.Module, input_shape) -> None:
        assert not self.calls
        self.prepared = tuple(input_shape)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        self.calls.append((progress, _state(model)))
        loss = Standard()(model, x, y, progress)
        if len(self.calls) == self.nan_at:
            return loss * float("nan")
        if len(self.calls) == self.poison_at:  # finite loss, NaN gradient: sqrt'(|0|) * 0
            return loss + sum((p - p.detach()).abs().sqrt().sum() for p in model.parameters())
        return loss


def test_prepare_and_progress_reach_the_objective(digits) -> None:
    train, _ = digits
    objective = _Recorder()
    fit(build_model("small", (1, 8, 8)), train, objective=objective, epochs=2, batch_size=700,
        progress=False)
    assert objective.prepared == (1, 8, 8)
    assert [p for p, _ in objective.calls] == [0.0, 0.25, 0.5, 0.75]


def test_nan_loss_stops_with_the_weights_from_before_the_batch(digits, tmp_path: Path) -> None:
    train, _ = digits
    model = build_model("small", (1, 8, 8), seed=0)
    objective = _Recorder(nan_at=17)  # epoch 2 (14 batches per epoch), batch 3
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TrainingDivergedError, match="epoch 2, batch 3.*before this batch"):
        fit(model, train, objective=objective, epochs=3, progress=False, checkpoint_path=path,
            arch="small", arch_kwargs={"input_shape": (1, 8, 8)})
    assert len(objective.calls) == 17
    assert _same(_state(model), objective.calls[-1][1])
    saved = load_checkpoint(path)
    assert saved.metadata["diverged"] is True and saved.metadata["epochs"] == 1
    assert _same(saved.model.state_dict(), objective.calls[-1][1])


def test_nan_weights_roll_back_to_the_start_of_the_epoch(digits) -> None:
    train, _ = digits
    model = build_model("small", (1, 8, 8), seed=0)
    ends: list[dict[str, Tensor]] = []
    with pytest.raises(TrainingDivergedError, match="epoch 2, batch 5.*start of this epoch"):
        fit(model, train, objective=_Recorder(poison_at=19), epochs=3, progress=False,
            on_epoch_end=lambda stats: ends.append(_state(model)))
    assert len(ends) == 1 and _same(_state(model), ends[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lr_drop_takes_effect(digits) -> None:
    train, _ = digits
    seen: list[EpochStats] = []
    snapshots: list[dict[str, Tensor]] = []
    model = build_model("small", (1, 8, 8), seed=0)
    history = fit(model, train, epochs=3, lr_drop_epochs=[1], lr_drop_factor=1e-9,
                  progress=False, on_epoch_end=lambda s: (seen.append(s),
                                                         snapshots.append(_state(model))))
    assert history.lr == pytest.approx([0.1, 1e-10, 1e-10])
    assert seen == history.epochs
    for k in snapshots[0]:  # after the drop the weights barely move
        torch.testing.assert_close(snapshots[2][k], snapshots[0][k], atol=1e-6, rtol=0)
    assert not _same(snapshots[0], _state(build_model("small", (1, 8, 8), seed=0)))


def test_cyclic_schedule_follows_its_closed_form_per_batch(digits) -> None:
    """One full batch per epoch: batch 0 of epoch 0 runs at lr 0, epoch 1 at lr (1-0.5)/0.6."""
    x, y = digits[0][0][:200], digits[0][1][:200]
    model = build_model("small", (1, 8, 8), seed=0)
    start = _state(model)
    fit(model, (x, y), epochs=1, batch_size=200, lr=0.5, lr_schedule="cyclic", progress=False)
    assert _same(start, _state(model))  # the rate starts at 0
    expected = build_model("small", (1, 8, 8), seed=0)
    loss = torch.nn.functional.cross_entropy(expected(x), y)
    grads = torch.autograd.grad(loss, list(expected.parameters()))
    with torch.no_grad():
        for p, g in zip(expected.parameters(), grads, strict=True):
            p -= 0.5 * (0.5 / 0.6) * g
    history = fit(model, (x, y), epochs=2, batch_size=200, lr=0.5, lr_schedule="cyclic",
                  progress=False)
    assert history.lr == pytest.approx([0.0, 0.5 * 0.5 / 0.6])
    for k, v in _state(expected).items():
        torch.testing.assert_close(_state(model)[k], v, atol=1e-6, rtol=1e-5)


def test_adam_learns_and_is_recorded(digits, tmp_path: Path) -> None:
    train, test = digits
    model = build_model("mlp2", (1, 8, 8), seed=0)
    history = fit(model, train, test=test, epochs=3, batch_size=50, lr=3e-3, optimizer="adam",
                  lr_schedule="cyclic", progress=False, checkpoint_path=tmp_path / "a.pt",
                  arch="mlp2", arch_kwargs={"input_shape": [1, 8, 8]})
    assert history.test_accuracy is not None and history.test_accuracy > 0.9
    meta = load_checkpoint(tmp_path / "a.pt").metadata
    assert meta["optimizer"] == "adam" and meta["lr_schedule"] == "cyclic"


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"optimizer": "rmsprop"}, InvalidParameterError, "'optimizer'.*'sgd', 'adam'"),
    ({"optimizer": "adam", "momentum": 0.9}, InvalidParameterError, "'momentum'.*adam"),
    ({"lr_schedule": "cosine"}, InvalidParameterError, "'lr_schedule'.*'step', 'cyclic'"),
    ({"lr_schedule": "cyclic", "lr_drop_epochs": [1], "epochs": 2}, InvalidParameterError,
     "'lr_drop_epochs'.*cyclic"),
    ({"epochs": 0}, InvalidParameterError, "'epochs'"),
    ({"lr": 0.0}, InvalidParameterError, "'lr'"),
    ({"batch_size": 0}, InvalidParameterError, "'batch_size'"),
    ({"lr_drop_epochs": [7]}, InvalidParameterError, "'lr_drop_epochs'"),
    ({"lr_drop_factor": 2.0}, InvalidParameterError, "'lr_drop_factor'"),
    ({"shift": -1}, InvalidParameterError, "'shift'"),
    ({"shift": 2, "train": (torch.zeros(4, 64), torch.zeros(4, dtype=torch.long))},
     InvalidParameterError, "'shift' parameter of fit needs image data"),
    ({"objective": lambda m, x, y, p: 0}, InvalidParameterError, "Objective"),
    ({"checkpoint_path": "x.pt"}, InvalidParameterError, "'arch' and 'arch_kwargs'"),
    ({"train": [1, 2, 3]}, InvalidInputError, "'train' must be"),
    ({"train": (torch.zeros(4, 1, 8, 8), torch.zeros(4))}, InvalidInputError, "int64"),
    ({"train": (torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long))},
     InvalidInputError, "NaN"),
    ({"train": (torch.zeros(4, 1, 8, 8), torch.full((4,), 10))}, InvalidInputError, "\\[0, 9\\]"),
    ({"train": (torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))}, InvalidInputError,
     "cannot run on inputs of shape \\(3, 8, 8\\)"),
    ({"test": (torch.zeros(4, 1, 8, 8),)}, InvalidInputError, "'test' must be"),
])
def test_bad_arguments_raise_naming_them(digits, kwargs: dict, error: type, match: str) -> None:
    args = {"train": digits[0], "epochs": 1, "progress": False} | kwargs
    model = build_model("small", (1, 8, 8), seed=0)
    before = _state(model)
    with pytest.raises(error, match=match):
        fit(model, args.pop("train"), **args)
    assert _same(before, _state(model))


def test_checkpoint_requests_are_checked_before_training(digits, tmp_path: Path) -> None:
    objective = _Recorder()
    model = build_model("small", (1, 8, 8), seed=0)
    common = {"objective": objective, "epochs": 1, "progress": False,
              "checkpoint_path": tmp_path / "m.pt"}
    with pytest.raises(CheckpointError, match="do not fit architecture 'mlp2'"):
        fit(model, digits[0], arch="mlp2", arch_kwargs={"input_shape": (1, 8, 8)}, **common)
    with pytest.raises(InvalidParameterError, match="metadata\\['where'\\]"):
        fit(model, digits[0], arch="small", arch_kwargs={"input_shape": (1, 8, 8)},
            metadata={"where": tmp_path}, **common)
    assert not objective.calls and not list(tmp_path.iterdir())
    history = fit(model, digits[0], arch="small", arch_kwargs={"input_shape": (1, 8, 8)},
                  metadata={"note": "run 1"}, **common)
    saved = load_checkpoint(tmp_path / "m.pt")
    assert saved.metadata["note"] == "run 1" and saved.metadata["epochs"] == 1
    assert saved.metadata["history"] == history.to_dict()
    assert _same(saved.model.state_dict(), _state(model))
