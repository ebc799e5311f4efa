"""Leave training exactly as it was: the state a measurement could touch, saved and restored.

Inside `untouched(model)`: every random number generator training uses (torch's CPU generator,
each initialized CUDA device's, numpy's global one and Python's `random`), each parameter's
`.grad` (the same tensor object, not a copy), every buffer's values, and each submodule's
train/eval mode are restored on exit, even when the measurement raised. Gradients are enabled and
autocast is off inside, so a monitor called under `torch.no_grad()` (a callback) or inside an
autocast region measures in the model's own precision. The parameters themselves are the
Probe's to restore (it does so bitwise); the optimizer is only read.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Restore torch (CPU and initialized CUDA devices), numpy and Python RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """RNGs, `.grad`, buffers and modes of `model` restored on exit (see the module doc)."""
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    devices = {p.device.type for p in model.parameters()} or {"cpu"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(rng_untouched())
        stack.enter_context(torch.enable_grad())
        for kind in devices & {"cpu", "cuda"}:
            stack.enter_context(torch.autocast(kind, enabled=False))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    if not torch.equal(b, saved):
                        b.copy_(saved)
            for p, g in grads:
                p.grad = g
            for m, mode in modes:
                m.training = mode
