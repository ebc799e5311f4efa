"""Minimal training loops for the built-in models (tests, benchmarks, the demo)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..errors import LandscapeError

OPTIMIZERS = ("sgd", "adam")


def train(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    epochs: int = 10,
    lr: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
) -> nn.Module:
    """Train `model` in place with SGD (with momentum) or Adam, and return it in eval mode.

    Randomness (dropout, the loader's shuffling if its generator is unset) runs under a forked RNG
    seeded by `seed`, so the caller's global RNG is left alone.
    """
    if optimizer not in OPTIMIZERS:
        raise LandscapeError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}.")
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()
