"""What the monitor reads from an optimizer: learning rate, momentum, Adam's preconditioner.

Edge of stability (Cohen et al. 2021, 2022), on a quadratic with Hessian H:

* SGD with learning rate lr, heavy-ball momentum beta, dampening d and weight decay wd (PyTorch's
  `torch.optim.SGD`: the buffer is b <- beta b + (1 - d) (g + wd w), the step w <- w - lr b) is
  stable while lr (1 - d) lambda_max(H + wd I) < 2 + 2 beta. With Nesterov momentum the bound
  is (2 + 2 beta) / (1 + 2 beta). Plain gradient descent (beta = d = wd = 0): lambda_max < 2/lr.
* Adam and AdamW with a frozen preconditioner: the step is P^-1 m with
  P = (1 - beta1^t) diag(sqrt(v_t / (1 - beta2^t)) + eps) / lr (v_t the second-moment
  estimate `exp_avg_sq`, or `max_exp_avg_sq` with amsgrad; t the step count), m the
  first-moment average. It is stable while lambda_max(P^-1 H) < (2 + 2 beta1) / (1 - beta1),
  38 for beta1 = 0.9. Adam's coupled weight decay adds wd I to H; AdamW's decoupled decay
  shrinks w by (1 - lr wd) and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import LandscapeError

OPTIMIZER_KINDS = ("sgd", "adam")


def unwrap(optimizer: Any) -> torch.optim.Optimizer | None:
    """The `torch.optim.Optimizer` inside a wrapper (Lightning's `LightningOptimizer`,
    accelerate's `AcceleratedOptimizer`, itself an Optimizer subclass), or the optimizer
    itself; None stays None."""
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise LandscapeError(
            f"optimizer must be a torch.optim.Optimizer (or a wrapper of one); got "
            f"{type(optimizer).__name__}."
        )
    return optimizer


def optimizer_kind(optimizer: torch.optim.Optimizer | None) -> str | None:
    """"sgd" for `torch.optim.SGD`, "adam" for `Adam` and `AdamW`, else None."""
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    return None


def require_optimizer(optimizer: torch.optim.Optimizer | None, measure: str) -> None:
    """Raise when no optimizer was given (a measure that follows its steps)."""
    if optimizer is None:
        raise LandscapeError(
            f"measure {measure!r} follows the optimizer's steps; pass optimizer= to the "
            "monitor, or leave the measure out."
        )


def require_kind(optimizer: torch.optim.Optimizer | None, kinds: tuple[str, ...],
                 measure: str) -> None:
    """Raise unless the optimizer is one of `kinds` ("sgd", "adam")."""
    names = {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam or AdamW"}
    wanted = " or ".join(names[k] for k in kinds)
    if optimizer is None:
        raise LandscapeError(
            f"measure {measure!r} needs the training optimizer ({wanted}); pass optimizer= to "
            "the monitor, or leave the measure out."
        )
    if optimizer_kind(optimizer) not in kinds:
        raise LandscapeError(
            f"measure {measure!r} is defined for {wanted}; got {type(optimizer).__name__}. "
            "Leave it out of measures= (top_eigenvalue, trace, gradient_norm, loss and "
            "update_curvature work with any optimizer)."
        )


@dataclass(frozen=True)
class StabilityEdge:
    """The edge of stability of the optimizer's first parameter group, as it is now.

    `threshold`: the value of `sharpness` at which the ratio is 1 (for SGD 2 (1 + beta) /
    (lr (1 - d)) - wd, in units of the Hessian's eigenvalues; for Adam (2 + 2 beta1) /
    (1 - beta1), dimensionless). `sharpness`: which measure it applies to ("top_eigenvalue"
    or "preconditioned_sharpness"). `lr`: the group's learning rate. `shift`: what the
    dynamics add to the sharpness (SGD's weight decay wd: its matrix is H + wd I).
    """

    threshold: float
    sharpness: str
    lr: float
    shift: float = 0.0

    def ratio(self, value: float) -> float:
        """(value + shift) / (threshold + shift): 1 at the edge of stability."""
        return (value + self.shift) / (self.threshold + self.shift)


def sgd_edge(optimizer: torch.optim.Optimizer) -> StabilityEdge:
    """The edge of SGD's first parameter group: lambda_max(H) + wd must stay below
    (2 + 2 beta) / (lr (1 - d)) (heavy ball) or (2 + 2 beta) / ((1 + 2 beta) lr (1 - d))
    (Nesterov)."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    beta = float(group.get("momentum", 0.0))
    damp = float(group.get("dampening", 0.0))
    wd = float(group.get("weight_decay", 0.0))
    bound = 2.0 + 2.0 * beta
    if group.get("nesterov", False):
        bound /= 1.0 + 2.0 * beta
    edge = bound / (lr * (1.0 - damp)) if lr > 0 and damp < 1 else float("inf")
    return StabilityEdge(edge - wd, "top_eigenvalue", lr, wd)


def adam_edge(optimizer: torch.optim.Optimizer) -> StabilityEdge:
    """The edge (2 + 2 beta1) / (1 - beta1) of Adam's first parameter group."""
    group = optimizer.param_groups[0]
    beta1 = float(group["betas"][0])
    return StabilityEdge((2.0 + 2.0 * beta1) / (1.0 - beta1), "preconditioned_sharpness",
                         float(group["lr"]))


def adam_scaling(optimizer: torch.optim.Optimizer, params: list[Tensor]
                 ) -> tuple[Tensor | None, float]:
    """(D, wd): the flat vector D = P^-1/2 over `params` (so that D H D has the eigenvalues of
    P^-1 H), each parameter with its own group's lr, betas and eps, and the first group's
    coupled weight decay (0 for AdamW). Parameters the optimizer holds no state for (not
    trained by it, or before the first step) get D = 0. None when no parameter has state yet.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    parts, any_state = [], False
    for p in params:
        state = optimizer.state.get(p, {})
        group = group_of.get(id(p))
        if group is None or "exp_avg_sq" not in state:
            parts.append(torch.zeros(p.numel(), device=p.device, dtype=p.dtype))
            continue
        any_state = True
        beta1, beta2 = (float(b) for b in group["betas"])
        t = float(state["step"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
        denom = (v.detach().double() / (1.0 - beta2**t)).sqrt_().add_(float(group["eps"]))
        # D = (lr / ((1 - beta1^t) denom))^1/2: 0 where lr = 0 (the end of a decay schedule)
        inverse = denom.reciprocal_().mul_(float(group["lr"]) / (1.0 - beta1**t))
        parts.append(inverse.sqrt_().reshape(-1).to(p.dtype))
    if not any_state:
        return None, 0.0
    decoupled = isinstance(optimizer, torch.optim.AdamW) or optimizer.param_groups[0].get(
        "decoupled_weight_decay", False)
    wd = 0.0 if decoupled else float(optimizer.param_groups[0].get("weight_decay", 0.0))
    return torch.cat(parts), wd
