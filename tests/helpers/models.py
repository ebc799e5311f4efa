"""Small float64 models, their exact Hessians, and the snapshot a measurement must leave
unchanged."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


class ModelSnapshot:
    """Everything a measurement must leave as it was: parameters, buffers, .grad and modes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.grads = {n: None if p.grad is None else p.grad.clone()
                      for n, p in model.named_parameters()}
        self.modes = {n: m.training for n, m in model.named_modules()}
        self.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    def assert_unchanged(self) -> None:
        now = self.model.state_dict(keep_vars=True)
        assert now.keys() == self.state.keys()
        for k, v in self.state.items():
            assert torch.equal(now[k].detach(), v), f"{k} changed"
            assert now[k].dtype == v.dtype
        for n, p in self.model.named_parameters():
            old = self.grads[n]
            assert (p.grad is None) == (old is None), f"{n}.grad changed"
            if old is not None:
                assert torch.equal(p.grad, old), f"{n}.grad changed"
            assert p.requires_grad == self.requires_grad[n]
        assert {n: m.training for n, m in self.model.named_modules()} == self.modes


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn=None,
                  names: list[str] | None = None) -> torch.Tensor:
    """The exact Hessian of the mean loss over (x, y) w.r.t. the (named) trainable parameters."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is not None:
        named = [(n, p) for n, p in named if n in names]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    was_training = model.training
    model.eval()

    def f(flat):
        parts = torch.split(flat, sizes)
        params = {n: t.view(s) for (n, _), t, s in zip(named, parts, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    try:
        return torch.autograd.functional.hessian(f, flat0)
    finally:
        model.train(was_training)


def tiny_mlp(seed: int = 0, dtype=torch.float64, hidden: int = 6) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.7)
    return model


def tiny_data(n: int = 37, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y
