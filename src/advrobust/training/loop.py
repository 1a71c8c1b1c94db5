"""The training loop: SGD over seeded shuffled batches, any objective, per-epoch records.

``fit`` owns batches, optimiser, schedule, progress, divergence handling and checkpoints; the
:class:`~advrobust.training.Objective` owns the loss of one batch. Defenses (adversarial,
certified, regularised training) plug in as objectives without touching the loop.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_bool, check_choice, check_float, check_int
from advrobust.core.modes import model_device
from advrobust.core.progress import progress_bar
from advrobust.errors import InvalidParameterError, TrainingDivergedError
from advrobust.training._data import as_tensors, check_model_fits, error_rate
from advrobust.training.ema import WeightEMA, check_ema_decay
from advrobust.training.history import EpochStats, History
from advrobust.training.objective import Objective
from advrobust.training.objectives import Standard
from advrobust.training.schedule import check_drop_epochs, lr_at_epoch

__all__ = ["fit"]

logger = logging.getLogger(__name__)


class _Diverged(Exception):
    def __init__(self, batch: int, loss: float, restored: str) -> None:
        super().__init__(batch, loss, restored)
        self.batch, self.loss, self.restored = batch, loss, restored


def fit(model: nn.Module, train: Any, *, test: Any = None, objective: Objective | None = None,
        epochs: int = 10, lr: float = 0.1, batch_size: int = 100, momentum: float = 0.0,
        weight_decay: float = 0.0, lr_drop_epochs: tuple[int, ...] | list[int] | None = None,
        lr_drop_factor: float = 0.1, optimizer: str = "sgd", lr_schedule: str = "step",
        seed: int = 0, progress: bool = True, shift: int = 0,
        checkpoint_path: str | os.PathLike[str] | None = None, arch: str | None = None,
        arch_kwargs: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
        on_epoch_end: Callable[[EpochStats], None] | None = None,
        resume: Mapping[str, Any] | None = None, ema: float | None = None) -> History:
    """Train ``model`` in place with SGD on ``objective``; evaluate on ``test`` every epoch.

    The course's recipe is the default (plain SGD, lr 0.1, batches of 100, cross-entropy);
    :func:`~advrobust.training.course_schedule` adds its lr drop for ``cnn``. Batches are
    reshuffled every epoch from ``seed`` (a private ``torch.Generator``; the global RNG is not
    touched) and moved to the device of the model's parameters. The model's train/eval mode is
    restored at the end.

    Args:
        model: The model to train (modified in place).
        train: Training data: an object with ``x`` (N, C, H, W) float and ``y`` (N,) int
            tensors (e.g. ``advrobust.data.Dataset``) or a tuple ``(x, y)``.
        test: Test data in the same forms, or None.
        objective: Loss of one batch; default :class:`~advrobust.training.Standard`
            (cross-entropy). ``objective.prepare(model, input_shape)`` runs before the first
            batch.
        epochs: Number of passes over ``train``.
        lr: Initial learning rate.
        batch_size: Samples per SGD step (the last batch of an epoch may be smaller).
        momentum: SGD momentum.
        weight_decay: SGD L2 penalty.
        lr_drop_epochs: Epoch counts after which the rate is multiplied by ``lr_drop_factor``
            (``(5,)``: epochs 6 and later use ``lr * lr_drop_factor``).
        lr_drop_factor: Factor of each drop, in (0, 1].
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"`` (Kingma & Ba 2015, default
            betas; ``momentum`` must then be 0).
        lr_schedule: ``"step"`` (``lr`` with the drops above) or ``"cyclic"``: the rate rises
            linearly from 0 to ``lr`` over the first 40% of the batches and falls back to 0
            at the end, updated every batch (the schedule of fast adversarial training, Wong,
            Rice & Kolter 2020; ``lr_drop_epochs`` must then be empty).
        seed: Seed of the shuffling (and of the shifts).
        shift: Data augmentation by random translation: every training image of every batch
            is moved by an integer offset drawn uniformly from ``[-shift, shift]`` in each of
            its last two (spatial) dimensions, the uncovered border filled with zeros (the
            random-crop-with-padding of LeCun et al. 1998 and of most image pipelines). The
            objective sees the shifted batch; 0 (default) trains on the images as they are.
            Needs image data (N, C, H, W).
        progress: Show a tqdm bar per epoch with its loss and errors.
        checkpoint_path: If given, write a checkpoint there after every epoch and on
            divergence; needs ``arch`` and ``arch_kwargs`` (see ``save_checkpoint``).
        arch: Architecture name for the checkpoint.
        arch_kwargs: ``build_model`` keyword arguments for the checkpoint.
        metadata: Extra checkpoint metadata (primitives), merged over what ``fit`` records;
            used only with ``checkpoint_path``.
        on_epoch_end: Called with each epoch's :class:`EpochStats`.
        resume: The ``training_state`` of a checkpoint written by ``fit`` (see
            :attr:`~advrobust.models.LoadedCheckpoint.training_state`), with ``model`` holding
            that checkpoint's weights: training continues after its last epoch with its
            optimizer state, learning-rate schedule and random streams, so an interrupted run
            resumed this way ends with the weights an uninterrupted run would have. The
            hyper-parameters must be the ones it was written with.
        ema: If given, keep an exponential moving average of the weights with this decay per
            step, in [0, 1) (see :class:`~advrobust.training.ema.WeightEMA`; 0.999 averages
            over roughly the last 1,000 steps). The per-epoch test error is that of the
            average, every checkpoint's weights are the average (the last iterate, needed to
            resume, is its ``training_state["weights"]``), and ``model`` holds the average at
            the end. None (default): no averaging.

    Returns:
        The per-epoch :class:`History`.

    Raises:
        InvalidParameterError: a bad hyper-parameter, objective or checkpoint request (checked
            before training, including that ``model`` fits ``arch`` / ``arch_kwargs``).
        CheckpointError: ``model``'s weights do not fit ``arch`` / ``arch_kwargs``.
        InvalidInputError: malformed data, or labels the model's outputs cannot cover.
        TrainingDivergedError: the loss or the weights became NaN / inf. The model then holds
            the last good weights (before the offending batch, or from the end of the previous
            epoch), also written to ``checkpoint_path`` if given.
    """
    plan = _Plan.make(epochs, lr, batch_size, momentum, weight_decay, lr_drop_epochs,
                      lr_drop_factor, seed, progress, optimizer, lr_schedule, shift, ema)
    objective = _check_objective(objective)
    if not any(p.requires_grad for p in model.parameters()):
        raise InvalidParameterError("fit needs a model with trainable parameters; this one has "
                                    "none (or none with requires_grad=True).")
    if checkpoint_path is not None:
        if arch is None or arch_kwargs is None:
            raise InvalidParameterError(
                "fit needs 'arch' and 'arch_kwargs' (how to rebuild the model) to write "
                f"'checkpoint_path'. Got arch={arch!r}, arch_kwargs={arch_kwargs!r}.")
        from advrobust.models import check_checkpointable

        check_checkpointable(model, arch=arch, arch_kwargs=arch_kwargs, metadata=metadata)
    x, y = as_tensors(train, "train")
    if plan.shift and x.dim() != 4:
        raise InvalidParameterError(
            "The 'shift' parameter of fit needs image data (N, C, H, W) to translate. Got "
            f"training inputs of shape {tuple(x.shape)} with shift={plan.shift}.")
    test_xy = None if test is None else as_tensors(test, "test")
    device = model_device(model) or torch.device("cpu")
    check_model_fits(model, x, y, device)
    objective.prepare(model, tuple(x.shape[1:]))

    def save(history: History, diverged: bool = False,
             state: dict[str, Any] | None = None) -> None:
        from advrobust.models import save_checkpoint

        assert checkpoint_path is not None and arch is not None and arch_kwargs is not None
        meta = _metadata(train, x, plan, objective, history, diverged)
        save_checkpoint(checkpoint_path, model, arch=arch, arch_kwargs=arch_kwargs,
                        metadata={**meta, **(metadata or {})}, training_state=state)

    was_training = model.training
    try:
        return _run(model, x, y, test_xy, objective, plan, device,
                    None if checkpoint_path is None else save, on_epoch_end,
                    _check_resume(resume, plan))
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class _Plan:
    """The validated hyper-parameters of one ``fit`` call."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    lr_drop_epochs: tuple[int, ...]
    lr_drop_factor: float
    seed: int
    progress: bool
    optimizer: str = "sgd"
    lr_schedule: str = "step"
    shift: int = 0
    ema: float | None = None

    @classmethod
    def make(cls, epochs: int, lr: float, batch_size: int, momentum: float, weight_decay: float,
             lr_drop_epochs: Any, lr_drop_factor: float, seed: int, progress: bool,
             optimizer: str = "sgd", lr_schedule: str = "step", shift: int = 0,
             ema: float | None = None) -> _Plan:
        epochs = check_int(epochs, "epochs", "fit", low=1)
        optimizer = check_choice(optimizer, "optimizer", "fit", ("sgd", "adam"))
        lr_schedule = check_choice(lr_schedule, "lr_schedule", "fit", ("step", "cyclic"))
        if optimizer == "adam" and momentum != 0:
            raise InvalidParameterError(
                "The 'momentum' parameter of fit must be 0 with optimizer='adam' (Adam keeps "
                f"its own moments). Got {momentum!r} instead.")
        if lr_schedule == "cyclic" and lr_drop_epochs:
            raise InvalidParameterError(
                "The 'lr_drop_epochs' parameter of fit must be empty with "
                f"lr_schedule='cyclic'. Got {lr_drop_epochs!r} instead.")
        return cls(
            epochs=epochs, lr=check_float(lr, "lr", "fit", low=0, low_open=True),
            batch_size=check_int(batch_size, "batch_size", "fit", low=1),
            momentum=check_float(momentum, "momentum", "fit", low=0, high=1, high_open=True),
            weight_decay=check_float(weight_decay, "weight_decay", "fit", low=0),
            lr_drop_epochs=check_drop_epochs(lr_drop_epochs, epochs),
            lr_drop_factor=check_float(lr_drop_factor, "lr_drop_factor", "fit", low=0, high=1,
                                       low_open=True),
            seed=check_int(seed, "seed", "fit", low=0),
            progress=check_bool(progress, "progress", "fit"),
            optimizer=optimizer, lr_schedule=lr_schedule,
            shift=check_int(shift, "shift", "fit", low=0), ema=check_ema_decay(ema))

    def rate(self, epoch: int, fraction: float) -> float:
        """The learning rate at ``epoch`` (0-based) after ``fraction`` of its batches."""
        if self.lr_schedule == "cyclic":
            t = (epoch + fraction) / self.epochs
            return self.lr * (t / 0.4 if t <= 0.4 else max(0.0, (1.0 - t) / 0.6))
        return lr_at_epoch(epoch, self.lr, self.lr_drop_epochs, self.lr_drop_factor)

    def optimizer_for(self, model: nn.Module) -> torch.optim.Optimizer:
        """A fresh optimiser over ``model``'s parameters."""
        if self.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=self.lr,
                                    weight_decay=self.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def as_dict(self) -> dict[str, Any]:
        """The hyper-parameters as checkpoint metadata (lists, no ``progress``)."""
        out = asdict(self)
        out.pop("progress")
        out["lr_drop_epochs"] = list(self.lr_drop_epochs)
        return out


def _check_objective(objective: Any) -> Objective:
    if objective is None:
        return Standard()
    if not isinstance(objective, Objective):
        raise InvalidParameterError(
            "The 'objective' parameter of fit must be an advrobust.training.Objective (e.g. "
            f"Standard()). Got {type(objective).__name__} instead.")
    return objective


def _check_resume(resume: Mapping[str, Any] | None, plan: _Plan) -> Mapping[str, Any] | None:
    """Refuse a training state written with other hyper-parameters (or by something else)."""
    if resume is None:
        return None
    keys = ("epoch", "plan", "optimizer", "shuffle_rng", "objective_rngs", "history")
    if not isinstance(resume, Mapping) or any(k not in resume for k in keys):
        raise InvalidParameterError(
            "The 'resume' parameter of fit must be the training_state of a checkpoint written "
            f"by fit (keys {list(keys)}). Got {type(resume).__name__} instead.")
    saved, now = dict(resume["plan"]), plan.as_dict()
    saved.setdefault("shift", 0)  # written before the option existed
    saved.setdefault("ema", None)
    differ = [f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in now.items()
              if saved.get(k) != v]
    if differ:
        raise InvalidParameterError(
            "Cannot resume: the checkpoint was trained with other hyper-parameters ("
            + "; ".join(differ) + "). Resume with the original ones.")
    if not 0 < int(resume["epoch"]) <= plan.epochs:
        raise InvalidParameterError(
            f"Cannot resume: the checkpoint holds {resume['epoch']} epochs of {plan.epochs}.")
    return resume


def _objective_rngs(objective: Objective) -> dict[str, Any]:
    from advrobust.training._defense_utils import GeneratorCache

    return {name: value for name, value in vars(objective).items()
            if isinstance(value, GeneratorCache)}


def _training_state(epoch: int, plan: _Plan, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, objective: Objective,
                    history: History, weights: dict[str, Tensor] | None = None) -> dict[str, Any]:
    state = {"epoch": epoch, "plan": plan.as_dict(), "optimizer": optimizer.state_dict(),
             "shuffle_rng": generator.get_state(),
             "objective_rngs": {k: v.get_state() for k, v in _objective_rngs(objective).items()},
             "history": history.to_dict()}
    if weights is not None:  # the last iterate, when the checkpoint's weights are an EMA
        state["weights"] = weights
    return state


def _restore(resume: Mapping[str, Any], optimizer: torch.optim.Optimizer,
             generator: torch.Generator, objective: Objective) -> tuple[int, History]:
    optimizer.load_state_dict(resume["optimizer"])
    generator.set_state(resume["shuffle_rng"])
    caches = _objective_rngs(objective)
    for name, states in resume["objective_rngs"].items():
        if name in caches:
            caches[name].set_state(states)
    return int(resume["epoch"]), History.from_dict(resume["history"])


def _run(model: nn.Module, x: Tensor, y: Tensor, test: tuple[Tensor, Tensor] | None,
         objective: Objective, plan: _Plan, device: torch.device,
         save: Callable[..., None] | None, on_epoch_end: Callable[[EpochStats], None] | None,
         resume: Mapping[str, Any] | None = None) -> History:
    optimizer = plan.optimizer_for(model)
    generator = torch.Generator().manual_seed(plan.seed)
    history, first = History(), 0
    ema = None if plan.ema is None else WeightEMA(model, plan.ema)
    if resume is not None:
        first, history = _restore(resume, optimizer, generator, objective)
        if ema is not None:  # the checkpoint's weights are the average; its state the iterate
            ema.load(model.state_dict())
            model.load_state_dict(resume["weights"])
    for epoch in range(first, plan.epochs):
        start = time.perf_counter()
        rate = plan.rate(epoch, 0.0)
        bar = progress_bar(total=-(-len(y) // plan.batch_size),
                           desc=f"epoch {epoch + 1}/{plan.epochs}", unit="batch",
                           disable=not plan.progress, leave=True)
        try:
            loss, err = _train_epoch(model, x, y, objective, optimizer, generator, plan, epoch,
                                     device, bar, ema)
        except _Diverged as div:
            bar.close()
            if save is not None:
                save(history, diverged=True)
            raise TrainingDivergedError(
                f"Training diverged: the loss or the weights became non-finite (loss {div.loss}) "
                f"at epoch {epoch + 1}, batch {div.batch}. The model holds {div.restored}"
                + ("" if save is None else ", also written to the checkpoint")
                + f". Try a smaller learning rate (lr was "
                f"{optimizer.param_groups[0]['lr']:g}).") from None
        weights = None if ema is None else _swap_in(model, ema)  # model: the average
        test_err = None if test is None else error_rate(model, *test, device, plan.batch_size)
        stats = EpochStats(epoch + 1, rate, loss, err, test_err, time.perf_counter() - start)
        history.epochs.append(stats)
        bar.set_postfix_str(_summary(stats), refresh=True)
        bar.close()
        logger.info("epoch %d/%d: %s", epoch + 1, plan.epochs, _summary(stats))
        if save is not None:
            save(history, state=_training_state(epoch + 1, plan, optimizer, generator,
                                                objective, history, weights))
        if weights is not None:
            model.load_state_dict(weights)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    if ema is not None:
        model.load_state_dict(ema.shadow)
    return history


def _swap_in(model: nn.Module, ema: WeightEMA) -> dict[str, Tensor]:
    """Load the average into ``model``; return the model's own weights (the last iterate)."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.shadow)
    return own


def _summary(stats: EpochStats) -> str:
    test = "" if stats.test_error is None else f" test_err {stats.test_error:.2%}"
    return (f"loss {stats.train_loss:.4f} train_err {stats.train_error:.2%}{test} "
            f"lr {stats.lr:g} ({stats.seconds:.1f}s)")


def _train_epoch(model: nn.Module, x: Tensor, y: Tensor, objective: Objective,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator, plan: _Plan,
                 epoch: int, device: torch.device, bar: Any,
                 ema: WeightEMA | None = None) -> tuple[float, float]:
    """One pass over shuffled batches; returns (mean loss, train error)."""
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    order = torch.randperm(len(y), generator=generator)
    n_batches = -(-len(y) // plan.batch_size)
    total_loss, wrong, seen = 0.0, 0, 0
    model.train()
    with _LastOutput(model) as last:
        for b in range(n_batches):
            idx = order[b * plan.batch_size:(b + 1) * plan.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            if plan.shift:
                xb = random_shift(xb, plan.shift, generator)
            for group in optimizer.param_groups:
                group["lr"] = plan.rate(epoch, b / n_batches)
            last.reset(len(yb))
            loss = _batch_loss(objective, model, xb, yb, (epoch + b / n_batches) / plan.epochs)
            value = float(loss.detach())
            if not torch.isfinite(loss):
                raise _Diverged(b + 1, value, "the weights from before this batch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                model.load_state_dict(snapshot)
                raise _Diverged(b + 1, value, "the weights from the start of this epoch")
            if ema is not None:
                ema.update(model)
            total_loss += value * len(yb)
            wrong += last.wrong(model, xb, yb)
            seen += len(yb)
            bar.update(1)
            if b % 20 == 0:
                bar.set_postfix_str(f"loss {value:.4f}", refresh=False)
    return total_loss / seen, wrong / seen


def random_shift(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Translate every image of ``x`` (N, C, H, W) by its own offset in ``[-shift, shift]``^2.

    The offsets are drawn on the CPU from ``generator``; pixels moved in from outside the image
    are 0. Returns a new tensor on ``x``'s device.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(-shift, shift + 1, (2, n), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    rows = (shift - offsets[0])[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = (shift - offsets[1])[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def _batch_loss(objective: Objective, model: nn.Module, x: Tensor, y: Tensor,
                progress: float) -> Tensor:
    loss = objective(model, x, y, progress)
    if not torch.is_tensor(loss) or loss.numel() != 1 or not loss.requires_grad:
        raise InvalidParameterError(
            f"The objective {type(objective).__name__} must return a scalar tensor that depends "
            f"on the model's parameters. Got {loss!r} instead.")
    return loss.reshape(())


class _LastOutput:
    """Remembers the last (B, K) output of the model's forward in training mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.size = model, 0
        self.out_: Tensor | None = None

    def __enter__(self) -> _LastOutput:
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if module.training and torch.is_tensor(output) and output.dim() == 2 \
                and output.shape[0] == self.size:
            self.out_ = output.detach()

    def reset(self, size: int) -> None:
        self.size, self.out_ = size, None

    def wrong(self, model: nn.Module, x: Tensor, y: Tensor) -> int:
        out = self.out_
        if out is None:  # the objective never ran the whole model in training mode
            with torch.no_grad():
                out = model(x)
        return int((out.argmax(dim=1) != y).sum())


def _metadata(train: Any, x: Tensor, plan: _Plan, objective: Objective, history: History,
              diverged: bool) -> dict[str, Any]:
    from advrobust.training.defenses import describe_objective

    described = describe_objective(objective)
    return {
        **plan.as_dict(), "epochs": len(history), "epochs_planned": plan.epochs,
        "dataset": getattr(train, "name", None), "split": getattr(train, "split", None),
        "n_train": int(x.shape[0]),
        "objective": {"name": described["type"], "params": described["params"]},
        "clean_accuracy": history.test_accuracy, "history": history.to_dict(),
        "diverged": diverged,
    }
