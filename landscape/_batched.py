"""Several grid points in one pass: `torch.func.vmap` over stacked weights.

For a chunk of k points c_1 ... c_k the weights theta_i = w + offset + sum_j c_ij d_j are
stacked into a (k, num_params) tensor and the model is called once per data batch through
`torch.func.functional_call` under `vmap`, so k small forward passes become one batched pass
(batched matrix products, grouped convolutions). The values are the same function of the
weights as the per-point loop (`Probe.evaluate_points`), up to floating-point rounding of the
batched kernels (the tests check 1e-6 relative in float64 on an MLP and a BatchNorm CNN).

Used by `landscape.surface` when `batched=True`, or by default (`batched=None`) when the model is
small enough for the memory budget and the first chunk evaluates under vmap; any error under
vmap (a model that calls `.item()`, data-dependent control flow, an unsupported operator) makes
the caller fall back to the exact per-point loop for the rest of the grid. The caller's model is
never written: the weights live in the stacked tensor only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._points import buffer_path
from .batch_pass import BatchPass, Evaluation
from .probe import Probe

MAX_CHUNK_CPU = 32  # larger chunks give nothing more on a CPU
MAX_CHUNK_CUDA = 256


class _EvalModule(nn.Module):
    """Calls the per-batch loss; `functional_call` swaps `model.*` parameters/buffers."""

    def __init__(self, passes: BatchPass):
        super().__init__()
        self.model = passes.model
        self.passes = passes
        self.has_accuracy = True

    def forward(self, batch: Any) -> tuple[Tensor, Tensor]:
        loss, _, correct = self.passes.compute(batch)
        self.has_accuracy = correct is not None
        if correct is None:
            return loss, torch.full((), -1, dtype=torch.int64, device=loss.device)
        return loss, correct


def chunk_size(probe: Probe, n_points: int, budget_bytes: int | None = None) -> int:
    """How many points to stack: budget / (weights + activations per point), capped.

    The activations of one point are estimated as the sum of the outputs of the model's leaf
    modules on the largest cached batch (an upper bound on what inference keeps alive), times 2
    for the batched kernels' temporaries. Default budget: 256 MiB on CPU, a quarter of the free
    memory on CUDA. Returns 1 when batching is pointless (one point, or no room for two).
    """
    if n_points < 2:
        return 1
    device = probe.device
    if budget_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 4
        else:
            budget_bytes = 256 * 2**20
    activations = probe.batch_pass.activation_bytes(evaluation=True)
    per_point = 3 * probe.num_params * probe.dtype.itemsize + 2 * activations
    cap = MAX_CHUNK_CUDA if device.type == "cuda" else MAX_CHUNK_CPU
    return int(max(1, min(cap, n_points, budget_bytes // max(per_point, 1))))


def evaluate_chunk(probe: Probe, directions: Sequence[Tensor], coords: Sequence[Sequence[float]],
                   buffer_ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
                   ) -> list[Evaluation]:
    """`Evaluation`s at w + sum_j c_j d_j for the points `coords`, all at once under vmap.

    Raises whatever vmap raises for a model it cannot batch: the caller falls back to the loop.
    Not for distributed probes (the caller checks). Cost: one `n_forward` per point, one
    `n_batch_forward` per point and batch, as the loop counts them.
    """
    k = len(coords)
    bp = probe.batch_pass
    dirs = [bp.check_vector(d, "direction") for d in directions]
    c = torch.tensor([list(map(float, p)) for p in coords], dtype=torch.float64)
    module = _EvalModule(bp)
    names = ["model." + n for n in probe.param_names]
    infos = probe.param_info
    with bp.session(None), torch.no_grad():
        theta = probe.flat_params().expand(k, -1).clone()
        for j, d in enumerate(dirs):
            theta.addcmul_(c[:, j : j + 1].to(theta), d.unsqueeze(0))
        moving = buffer_path(probe.model, buffer_ends)
        buf_names = ["model." + n for n, b in probe.model.named_buffers()
                     if any(b is m for m, _, _ in moving)]
        weight = c[:, 0].to(probe.device)
        bufs = [torch.lerp(lo.unsqueeze(0), hi.unsqueeze(0),
                           weight.to(lo.dtype).view(-1, *([1] * lo.ndim)))
                for _, lo, hi in moving]

        def one(th: Tensor, bs: list[Tensor], batch: Any) -> tuple[Tensor, Tensor]:
            state = {n: th[i.start : i.stop].view(i.shape) for n, i in zip(names, infos)}
            state.update(zip(buf_names, bs))
            return torch.func.functional_call(module, state, (batch,))

        batched = torch.func.vmap(one, in_dims=(0, 0, None))
        loss_sum: Tensor | None = None
        correct_sum: Tensor | None = None
        n, has_acc = 0, True
        for batch in bp.eval_batches():
            loss, correct = batched(theta, bufs, batch)
            n_b = bp.n_samples(batch)
            bp.counts["n_batch_forward"] += k - 1  # compute counted the call once
            term = loss.double() * n_b
            loss_sum = term if loss_sum is None else loss_sum + term
            has_acc = has_acc and module.has_accuracy
            correct_sum = correct if correct_sum is None else correct_sum + correct
            n += n_b
    if loss_sum is None or n == 0:
        raise RuntimeError("no batches")  # the loop raises the proper error
    rows = torch.stack([loss_sum, correct_sum.double()]).tolist()  # type: ignore[union-attr]
    bp.counts["n_forward"] += k
    return [Evaluation(rows[0][i] / n, rows[1][i] / n if has_acc else None, n) for i in range(k)]
