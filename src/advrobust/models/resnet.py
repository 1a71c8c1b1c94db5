"""Residual networks for the reference architectures (He et al. 2016, "Deep residual learning
for image recognition"), small enough for CPU verification.

``resnet8``: a stride-2 3x3 stem (16 channels), three basic blocks with 16, 32 (stride 2) and
64 (stride 2) channels, global average pooling and a linear head: 8 weight layers, as
``ResNet-8`` of the CIFAR literature, with the stem downsampling so that bound propagation stays
cheap. The blocks are not a chain: the verifiers read them through the graph IR
(:mod:`advrobust.network.graph`; IBP and CROWN).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ResidualBlock", "resnet8_layers"]


def _side(size: int) -> int:
    """Output size of a 3x3 convolution with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class ResidualBlock(nn.Module):
    """``relu(conv(relu(conv(x))) + shortcut(x))``; the shortcut is the identity, or a strided
    1x1 convolution when the shape changes. No batch-norm: the block computes the same function
    in training and eval mode (as the verification literature's ResNets, e.g. Wong et al. 2018).

    Args:
        cin, cout: input / output channels.
        stride: stride of the first convolution (and of the shortcut).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """(N, cin, H, W) -> (N, cout, H / stride, W / stride)."""
        h = self.relu(self.conv1(x))
        return self.relu(self.conv2(h) + self.shortcut(x))


def resnet8_layers(shape: tuple[int, int, int], num_classes: int) -> list[nn.Module]:
    """The layers of ``resnet8`` for inputs of shape (C, H, W)."""
    c, h, w = shape
    for _ in range(3):
        h, w = _side(h), _side(w)
    return [
        nn.Conv2d(c, 16, 3, stride=2, padding=1), nn.ReLU(),
        ResidualBlock(16, 16), ResidualBlock(16, 32, stride=2), ResidualBlock(32, 64, stride=2),
        nn.AvgPool2d((h, w)), nn.Flatten(), nn.Linear(64, num_classes),
    ]
