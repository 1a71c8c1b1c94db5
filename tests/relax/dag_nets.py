"""Seeded random DAG networks for the graph-IR tests: residual adds, concatenations, subtraction,
sigmoid / tanh / LeakyReLU / ReLU, max pooling and a written-out input normalisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTS = (nn.ReLU, nn.Sigmoid, nn.Tanh, lambda: nn.LeakyReLU(0.1))


class RandomDag(nn.Module):
    """``width``-wide MLP DAG on flat inputs of size ``d``: per block a residual add or a concat
    of two activated branches (activations drawn from :data:`ACTS`)."""

    def __init__(self, seed: int, d: int = 5, width: int = 6, blocks: int = 2,
                 classes: int = 3, acts: tuple = ACTS) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)

        def pick() -> nn.Module:
            return acts[int(torch.randint(len(acts), (1,), generator=gen))]()  # type: ignore[no-any-return]

        self.inp = nn.Linear(d, width)
        self.kinds = [int(torch.randint(3, (1,), generator=gen)) for _ in range(blocks)]
        self.la = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.lb = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.merge = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(blocks))
        self.acts = nn.ModuleList(pick() for _ in range(2 * blocks + 1))
        self.out = nn.Linear(width, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / max(1, p.shape[-1]) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = self.acts[0](self.inp((x - 0.5) * 2.0))
        for i, kind in enumerate(self.kinds):
            u = self.acts[2 * i + 1](self.la[i](h))
            if kind == 0:
                h = h + u
            elif kind == 1:
                h = self.merge[i](torch.cat([u, self.acts[2 * i + 2](self.lb[i](h))], dim=1))
            else:
                h = u - self.acts[2 * i + 2](self.lb[i](h))
        return self.out(h)


class ConvDag(nn.Module):
    """A tiny residual CNN on (1, 6, 6) inputs with max pooling and a sigmoid head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(27, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.c1(x))
        h = self.pool(h + torch.relu(self.c2(h)))
        return self.head(torch.sigmoid(self.fc(h.flatten(1))))
