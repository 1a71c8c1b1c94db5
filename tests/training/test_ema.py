"""``fit(..., ema=DECAY)`` / ``advrobust train --ema``: an exponential moving average of the
weights equal to its closed form, written to the checkpoint, resumable, checked inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from advrobust.cli import main
from advrobust.errors import InvalidParameterError
from advrobust.models import build_model, load_checkpoint
from advrobust.training import Objective, Standard, fit
from advrobust.training.ema import WeightEMA

ARCH = {"arch": "small", "arch_kwargs": {"input_shape": [1, 8, 8]}}


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Iterates(Objective):
    """Cross-entropy that records the weights each batch starts from (w_0 ... w_{T-1})."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Tensor]] = []
        self.loss = Standard()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        self.seen.append(_state(model))
        return self.loss(model, x, y, progress)


def _train(digits, ema: float | None, *, epochs: int = 2,
           objective: Objective | None = None, **kwargs) -> nn.Module:
    model = build_model("small", (1, 8, 8), seed=0)
    x, y = digits[0]
    fit(model, (x[:300], y[:300]), objective=objective, epochs=epochs, batch_size=60, lr=0.2,
        momentum=0.5, progress=False, ema=ema, **kwargs)
    return model


@pytest.fixture(scope="module")
def plain(digits) -> dict[str, Tensor]:
    """The weights of the run without averaging."""
    return _state(_train(digits, None))


@settings(max_examples=4, deadline=None)
@given(decay=st.sampled_from([0.3, 0.99]) | st.floats(0.0, 0.999))
def test_average_equals_its_closed_form_and_leaves_the_iterates_alone(
        digits, plain: dict[str, Tensor], decay: float) -> None:
    recorder = _Iterates()
    averaged = _train(digits, decay, objective=recorder)
    iterates = [*recorder.seen, plain]  # w_0 ... w_T (T = 10 steps; w_T: the run without EMA)
    steps = len(iterates) - 1
    assert steps == 10
    for name, value in _state(averaged).items():
        closed = decay ** steps * iterates[0][name].double()
        for t in range(1, steps + 1):
            closed += (1 - decay) * decay ** (steps - t) * iterates[t][name].double()
        torch.testing.assert_close(value.double(), closed, atol=1e-5, rtol=1e-4)


def test_zero_decay_is_the_last_iterate_and_averaging_changes_the_weights(
        digits, plain: dict[str, Tensor]) -> None:
    last, averaged = _state(_train(digits, 0.0)), _state(_train(digits, 0.9))
    for name, value in plain.items():
        assert torch.equal(last[name], value), name
    assert any(not torch.equal(averaged[k], v) for k, v in plain.items())


def test_integer_buffers_follow_the_model() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, 0.5)
    model.train()
    model(torch.randn(8, 3))  # num_batches_tracked 0 -> 1, running stats move
    with torch.no_grad():
        model[0].weight.add_(2.0)
    before = ema.shadow["0.weight"].clone()
    ema.update(model)
    assert int(ema.shadow["1.num_batches_tracked"]) == 1
    torch.testing.assert_close(ema.shadow["0.weight"], before + 1.0)
    torch.testing.assert_close(ema.shadow["1.running_mean"],
                               0.5 * model[1].running_mean)  # from 0 halfway to the new value


def test_checkpoint_holds_the_average_and_resume_equals_an_uninterrupted_run(
        digits, tmp_path: Path) -> None:
    full = _train(digits, 0.8, epochs=3, checkpoint_path=tmp_path / "full.pt", **ARCH)
    saved = load_checkpoint(tmp_path / "full.pt")
    assert saved.metadata["ema"] == 0.8
    for name, value in _state(full).items():
        assert torch.equal(saved.model.state_dict()[name], value), name
    last = _train(digits, None, epochs=3)
    assert saved.training_state is not None
    for name, value in _state(last).items():  # the iterate, kept to resume from
        assert torch.equal(saved.training_state["weights"][name], value), name

    class Stop(Exception):
        pass

    def stop_after_one(stats) -> None:
        raise Stop

    with pytest.raises(Stop):
        _train(digits, 0.8, epochs=3, checkpoint_path=tmp_path / "part.pt",
               on_epoch_end=stop_after_one, **ARCH)
    part = load_checkpoint(tmp_path / "part.pt")
    assert part.training_state is not None and part.training_state["epoch"] == 1
    resumed, (x, y) = part.model, digits[0]
    fit(resumed, (x[:300], y[:300]), epochs=3, batch_size=60, lr=0.2, momentum=0.5,
        progress=False, ema=0.8, resume=part.training_state)
    for name, value in _state(full).items():
        assert torch.equal(_state(resumed)[name], value), name
    with pytest.raises(InvalidParameterError, match="ema: 0.8 then, 0.5 now"):
        fit(load_checkpoint(tmp_path / "part.pt").model, (x[:300], y[:300]), epochs=3,
            batch_size=60, lr=0.2, momentum=0.5, progress=False, ema=0.5,
            resume=load_checkpoint(tmp_path / "part.pt").training_state)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_decay_outside_zero_one_is_refused_naming_ema(digits, decay: object) -> None:
    model = build_model("small", (1, 8, 8), seed=0)
    before = _state(model)
    with pytest.raises(InvalidParameterError, match="'ema'.*\\[0, 1\\)"):
        fit(model, digits[0], epochs=1, progress=False, ema=decay)  # type: ignore[arg-type]
    assert all(torch.equal(v, _state(model)[k]) for k, v in before.items())
    with pytest.raises(InvalidParameterError, match="'decay'"):
        WeightEMA(model, 1.0)


def test_cli_ema_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = ["train", "--model", "mlp2", "--data", "digits", "--n", "100", "--test-n", "20",
             "--batch-size", "50", "--epochs", "1", "--no-progress"]
    assert main([*train, "--out", str(tmp_path / "m.pt"), "--ema", "0.9"]) == 0
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.metadata["ema"] == 0.9 and ckpt.training_state is not None
    assert "weights" in ckpt.training_state
    capsys.readouterr()
    assert main([*train, "--out", str(tmp_path / "bad.pt"), "--ema", "1"]) == 2
    err = capsys.readouterr().err
    assert "'ema'" in err and "Traceback" not in err and not (tmp_path / "bad.pt").exists()
