"""Small reference models for the digits data (8x8 images, 10 classes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def digits_mlp(hidden: int = 32, depth: int = 2, *, seed: int | None = None,
               activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A ReLU MLP 64 -> hidden (x depth) -> 10 for flattened digits.

    Args:
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        activation: the nonlinearity's class (nn.Tanh for the edge-of-stability runs).
        seed: fixes the initialization; None (default) draws it from torch's global generator,
            as `torch.nn` layers do, so `torch.manual_seed` decides it.

    Example:
        >>> a, b = digits_mlp(seed=0), digits_mlp(seed=1)
        >>> bool((a[0].weight == digits_mlp(seed=0)[0].weight).all())
        True
        >>> bool((a[0].weight == b[0].weight).all())
        False
    """
    return seeded(seed, lambda: _mlp(hidden, depth, activation))


def _mlp(hidden: int, depth: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def digits_cnn(channels: int = 8, *, seed: int | None = None) -> nn.Sequential:
    """A small CNN with BatchNorm for (N, 1, 8, 8) digits: two conv-BN-ReLU blocks, then linear.

    `seed` fixes the initialization; None (default) draws it from torch's global generator.
    """

    def build() -> nn.Sequential:
        c = channels
        return nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * c * 4 * 4, 10),
        )

    return seeded(seed, build)


class _Block(nn.Module):
    def __init__(self, channels: int, skip: bool):
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + x if self.skip else out)


class DigitsResNet(nn.Module):
    """A small residual network (Li et al. 2018 compare it with `skip=False`, its plain twin)."""

    def __init__(self, channels: int = 8, n_blocks: int = 3, skip: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(channels, skip) for _ in range(n_blocks)])
        self.head = nn.Linear(channels, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.stem(x))
        return self.head(out.mean(dim=(2, 3)))


def digits_resnet(channels: int = 8, n_blocks: int = 3, *, skip: bool = True,
                  seed: int | None = None) -> DigitsResNet:
    """A small ResNet for (N, 1, 8, 8) digits; `skip=False` removes the skip connections.

    `seed` fixes the initialization; None (default) draws it from torch's global generator.
    """
    return seeded(seed, lambda: DigitsResNet(channels, n_blocks, skip))


def seeded(seed: int | None, build):
    """Build a model under a fixed seed without touching the caller's global RNG state; with
    seed None, from the global generator (as `torch.nn` does)."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
