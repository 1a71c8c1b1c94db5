"""An exponential moving average (EMA) of a model's weights, kept by the training loop.

After every optimiser step ``t`` the average moves towards the new weights ``w_t``:
``ema_t = decay * ema_{t-1} + (1 - decay) * w_t`` with ``ema_0 = w_0`` (the weights training
started from), i.e. ``ema_T = decay^T w_0 + (1 - decay) sum_{t=1..T} decay^(T-t) w_t``. The
average of the iterates is a better point estimate than the last iterate of noisy SGD
(Polyak & Juditsky 1992; Izmailov et al. 2018 average over an epoch-level schedule, the EMA
form is the one of Tarvainen & Valpola 2017 and of most image-classification recipes).
Floating-point parameters and buffers are averaged; integer buffers (e.g. BatchNorm's
``num_batches_tracked``) follow the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from advrobust.core._validation import check_float

__all__ = ["WeightEMA", "check_ema_decay"]


def check_ema_decay(decay: float | None, owner: str = "fit") -> float | None:
    """``decay`` as a float in [0, 1), or None (no averaging); raise naming ``ema``."""
    if decay is None:
        return None
    return check_float(decay, "ema", owner, low=0.0, high=1.0, high_open=True)


class WeightEMA:
    """The running average of ``model``'s state, started from its current weights.

    Args:
        model: The model being trained (read, never modified).
        decay: Weight of the old average per step, in [0, 1) (0: the average is the last
            iterate).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = check_float(decay, "decay", "WeightEMA", low=0.0, high=1.0, high_open=True)
        self.shadow: dict[str, Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step: move the average towards ``model``'s current weights."""
        for name, value in model.state_dict().items():
            avg = self.shadow[name]
            if avg.is_floating_point():
                avg.lerp_(value.detach(), 1.0 - self.decay)
            else:
                avg.copy_(value)

    def load(self, state: Mapping[str, Tensor]) -> None:
        """Take ``state`` (a state dict of the same model) as the current average."""
        self.shadow = {k: v.detach().clone() for k, v in state.items()}
