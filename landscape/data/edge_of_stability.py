"""The edge of stability on the built-in digits data (Cohen et al. 2021), with the monitor.

Full-batch gradient descent on a small tanh MLP with the mean squared error to one-hot targets:
the sharpness (top Hessian eigenvalue of the training loss) rises during training (progressive
sharpening) until it reaches 2 / lr, then hovers there while the loss keeps falling, not
monotonically. `scripts/edge_of_stability.py` draws it at three learning rates; the tests check
the hover on a short run.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .digits import digits_tensors
from .models import digits_mlp


def tanh_mlp(width: int = 64, depth: int = 2, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """64 -> width (tanh) x depth -> 10, PyTorch's default initialization from `seed`."""
    return digits_mlp(width, depth, seed=seed, activation=nn.Tanh).to(dtype)


def mse_data(n_samples: int = 512, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The first `n_samples` digits of the training split, with one-hot targets."""
    x, y = digits_tensors("train", dtype=dtype)
    return x[:n_samples], nn.functional.one_hot(y[:n_samples], 10).to(dtype)


def gradient_descent_run(lr: float, steps: int, *, every: int = 10, n_samples: int = 512,
                         width: int = 64, seed: int = 0, log_dir: str | os.PathLike | None = None,
                         tol: float = 1e-3) -> list[dict]:
    """Full-batch gradient descent with `lr` for `steps` steps, monitored every `every` steps
    (top eigenvalue, eos_ratio, loss); returns the monitor's rows (also written to
    `log_dir/curvature.jsonl` when given). Loss: `mse_loss` (mean over samples and the 10
    outputs). Measured here (2-core container, torch 2.13.0 CPU, 1 thread): about 13 s per
    1,000 steps with every=20 at the defaults."""
    from ..monitor import CurvatureMonitor

    x, y = mse_data(n_samples)
    model = tanh_mlp(width, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    monitor = CurvatureMonitor(model, (x, y), nn.functional.mse_loss, optimizer=opt,
                               every=every, measures=("top_eigenvalue", "eos_ratio", "loss"),
                               log_dir=log_dir, seed=seed, tol=tol, budget=None)
    monitor.step(0)
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        monitor.step(step)
    return monitor.rows
