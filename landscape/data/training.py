"""Minimal training loops for the built-in models (tests, benchmarks, the demo)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from .._validate import OneOf, validate_params

OPTIMIZERS = ("sgd", "adam", "sam")
SCHEDULES = ("constant", "cosine")


@validate_params(optimizer=OneOf(OPTIMIZERS), schedule=OneOf(SCHEDULES))
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
    sam_rho: float = 0.05,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    schedule: str = "constant",
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train `model` in place with SGD (with momentum), Adam or SAM, and return it in eval mode.

    `schedule="cosine"` anneals the learning rate from `lr` to 0 over the epochs
    (lr_e = lr (1 + cos(pi e / epochs)) / 2 in epoch e, counted from 0; Loshchilov and Hutter
    2017); "constant" keeps `lr`. `on_epoch(epoch, model)` is called after each epoch (counted
    from 1) with the model in eval mode (training resumes in train mode): a place to record the
    training loss, e.g. to check a plateau.

    SAM (Foret et al. 2021) here is the minimal two-pass version over SGD with momentum: the
    gradient is taken at w + sam_rho * g / ||g|| (l2 ball of radius `sam_rho`), then applied at w.

    Randomness (dropout, the loader's shuffling if its generator is unset) runs under a forked RNG
    seeded by `seed`, so the caller's global RNG is left alone.
    """
    if optimizer in ("sgd", "sam"):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                if optimizer == "sam":
                    _sam_ascent_gradient(model, lambda x=x, y=y: loss_fn(model(x), y), sam_rho)
                opt.step()
            if on_epoch is not None:
                on_epoch(epoch + 1, model.eval())
    opt.zero_grad(set_to_none=True)
    return model.eval()


def _sam_ascent_gradient(model: nn.Module, closure: Callable[[], Tensor], rho: float) -> None:
    """Replace each .grad by the gradient at w + rho g / ||g||, leaving the weights at w."""
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
        steps = [rho * p.grad / (norm + 1e-12) for p in params]  # 1e-12: g = 0 at a minimum
        for p, e in zip(params, steps):
            p.add_(e)
    for p in params:
        p.grad = None
    closure().backward()
    with torch.no_grad():
        for p, e in zip(params, steps):
            p.sub_(e)
