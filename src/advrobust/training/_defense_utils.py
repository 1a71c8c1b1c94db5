"""Helpers shared by the defense objectives: seeded generators and mode handling."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["GeneratorCache", "attack_mode"]


class GeneratorCache:
    """One ``torch.Generator`` per device, seeded from a fixed seed (no global seeding).

    With ``seed=None`` the generators are seeded from torch's default generator, so training
    stays reproducible under the caller's own ``torch.manual_seed``.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator:
        """The generator for ``device``, created on first use."""
        key = str(device)
        if key not in self._generators:
            seed = self.seed if self.seed is not None else int(
                torch.randint(0, 2**62, (1,)).item())
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            self._generators[key] = gen
        return self._generators[key]

    def get_state(self) -> dict[str, torch.Tensor]:
        """The state of every generator created so far, by device (for resuming training)."""
        return {key: gen.get_state() for key, gen in self._generators.items()}

    def set_state(self, states: dict[str, torch.Tensor]) -> None:
        """Restore generators saved by :meth:`get_state` (creating them as needed)."""
        for key, state in states.items():
            self.get(torch.device(key)).set_state(state)


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run an inner attack on ``model`` in eval mode; restore every module's mode on exit.

    Eval mode makes the attacked function deterministic (no dropout) and keeps adversarial
    batches out of batch-norm running statistics. Parameter ``requires_grad`` flags are left as
    they are: the attacks take input gradients with ``torch.autograd.grad``.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training
