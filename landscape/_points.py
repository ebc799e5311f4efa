"""Evaluating the loss at points w + offset + sum_k c_k d_k, one pass over the data each: the
parameters written in place and restored bitwise, the buffer paths of interpolations, the
BatchNorm re-estimation, and the evaluation sums of one point (with a short path for repeated
points on a CPU).

Callers: `Probe.evaluate` and `Probe.evaluate_points`, on which the grid engine (`_grid`) builds.
Everything passes over the data through a `BatchPass`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import batchnorm
from .batch_pass import BatchPass, Evaluation, copy_all
from .errors import LandscapeError
from .probe_data import call_model, to_device, unpack


def evaluate_points(
    bp: BatchPass, directions: Sequence[Tensor], coords: Iterable[Sequence[float]],
    offset: Tensor | None = None,
    buffer_ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None,
    recompute_batchnorm: bool = False,
    batchnorm_inputs: Sequence[Any] | None = None,
) -> Iterator[Evaluation]:
    """`Probe.evaluate_points` (which see) on the pass `bp`."""
    dirs = [bp.check_vector(d, "direction") for d in directions]
    base = None if offset is None else bp.check_vector(offset, "offset")
    moving = buffer_path(bp.model, buffer_ends)
    inputs = None if batchnorm_inputs is None else [
        to_device(x, bp.device, bp.dtype) for x in batchnorm_inputs]
    with bp.session(None), torch.inference_mode(), \
            batchnorm.statistics_restored(bp.model) as bn_layers:
        backup = [p.detach().clone() for p in bp.params]
        buffer_backup = [b.detach().clone() for b, _, _ in moving]
        # One flat buffer: per point 1 + len(dirs) vector ops and one multi-tensor copy into
        # the parameters, instead of a Python loop over parameters.
        start = bp.flat(backup)
        if base is not None:
            start.add_(base)
        point = torch.empty_like(start)
        views = bp.split(point)
        plan = None
        try:
            for c in coords:
                if len(c) != len(dirs):
                    raise LandscapeError(
                        f"each point needs {len(dirs)} coordinates; got {len(c)}."
                    )
                if dirs:
                    torch.add(start, dirs[0], alpha=float(c[0]), out=point)
                    for ck, dk in zip(c[1:], dirs[1:]):
                        point.add_(dk, alpha=float(ck))
                else:
                    point.copy_(start)
                copy_all(bp.params, views)
                for buf, lo, hi in moving:
                    torch.lerp(lo, hi, float(c[0]), out=buf)
                if recompute_batchnorm and bn_layers:
                    reestimate_batchnorm(bp, bn_layers, inputs)
                if plan:
                    yield evaluate_plan(bp, plan)
                    continue
                # the first point with every check; later points may take the short path
                yield evaluate_here(bp)
                plan = eval_plan(bp)
        finally:
            copy_all(bp.params, backup)
            for (buf, _, _), b in zip(moving, buffer_backup):
                buf.copy_(b)

def reestimate_batchnorm(bp: BatchPass, layers: list[nn.Module], inputs: list[Any] | None) -> None:
    """BatchNorm running statistics re-estimated at the current parameters on this probe's
    data (distributed: each rank's batch means averaged over all ranks' batches), or on
    `inputs` (batches of model inputs)."""
    n_local, error = 0, None

    def run() -> None:
        nonlocal n_local
        for batch in bp.data.batches() if inputs is None else inputs:
            if inputs is None:
                bp.compute(batch)
            else:
                call_model(bp.model, batch)
            n_local += 1

    try:
        batchnorm.reestimate(layers, run)
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
        error = e
    bp.counts["n_forward"] += 1
    if not bp.comm.active:
        if error is not None:
            raise error
        return
    stats = [b for m in layers for b in (m.running_mean, m.running_var)]
    for b in stats:
        b.mul_(n_local)
    counts = [m.num_batches_tracked for m in layers]
    (n_total,) = bp.comm.reduce([n_local], tensors=stats + counts, error=error)
    for b in stats:
        b.div_(n_total)

def buffer_path(model: nn.Module, ends: tuple[dict[str, Tensor], dict[str, Tensor]] | None
                 ) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(buffer, start, end) for each floating-point buffer named in both ends."""
    if ends is None:
        return []
    start, end = ends
    out = []
    for name, buf in model.named_buffers():
        if name in start and name in end and buf.is_floating_point():
            a, b = start[name], end[name]
            if a.shape != buf.shape or b.shape != buf.shape:
                raise LandscapeError(
                    f"buffer {name!r} has shape {tuple(buf.shape)} in the model but "
                    f"{tuple(a.shape)} / {tuple(b.shape)} at the interpolation ends."
                )
            out.append((buf, a.to(buf), b.to(buf)))
    return out


def evaluate_here(bp: BatchPass) -> Evaluation:
    """Loss and accuracy at the current parameters. The sums are Python floats on CPU and
    device tensors elsewhere, with one host transfer (a single `tolist()`) per call."""
    on_cpu = bp.host_sums
    loss_sum: Tensor | float | None = None
    correct_sum: Tensor | int | None = None
    n, has_acc, error = 0, True, None
    try:
        for batch in bp.eval_batches():
            loss, n_b, correct = bp.compute(batch)
            if on_cpu:
                term: Tensor | float = loss.item() * n_b
            else:
                term = loss.double() * n_b
            loss_sum = term if loss_sum is None else loss_sum + term
            if correct is None:
                has_acc = False
            elif has_acc:
                c = int(correct) if on_cpu else correct
                correct_sum = c if correct_sum is None else correct_sum + c
            n += n_b
    except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
        error = e
    if loss_sum is None:
        sums = [0.0, 0.0]
    elif on_cpu:
        sums = [float(loss_sum), float(correct_sum or 0)]
    elif not has_acc or correct_sum is None:
        sums = [float(loss_sum), 0.0]
    else:
        sums = torch.stack([loss_sum, correct_sum.double()]).tolist()
    total, n_correct, n, n_no_acc = bp.comm.reduce(
        [sums[0], sums[1], n, 0.0 if has_acc else 1.0], error=error)
    n = int(n)
    bp.counts["n_forward"] += 1
    if n == 0:
        raise LandscapeError("data is empty: the loader yielded no batches.")
    accuracy = n_correct / n if n_no_acc == 0 else None
    return Evaluation(total / n, accuracy, n)

def eval_plan(bp: BatchPass) -> list[tuple[Any, Any, int, bool]] | None:
    """(inputs, targets, n samples, targets are class labels) per evaluation batch, for
    `_evaluate_plan`; None where the short path does not apply (a batch loss, a device
    without host sums, a distributed probe, a custom sample count)."""
    if (bp.batch_loss is not None or not bp.host_sums or bp.comm.active
            or bp.n_samples_fn is not None):
        return None
    plan = []
    for batch in bp.eval_batches():
        inputs, targets = unpack(batch)
        labels = (isinstance(targets, Tensor) and targets.ndim == 1
                  and not targets.is_floating_point())
        plan.append((inputs, targets, bp.n_samples(batch), labels))
    return plan

def evaluate_plan(bp: BatchPass, plan: list[tuple[Any, Any, int, bool]]) -> Evaluation:
    """`_evaluate_here` on a CPU, in one process, with `loss_fn`: the same sums with the
    batch checks done once (by the first point), so a small model's points cost little more
    than their forward passes."""
    model, loss_fn = bp.model, bp.loss_fn
    loss_sum, correct, n, has_acc = 0.0, 0, 0, True
    for inputs, targets, n_b, labels in plan:
        outputs = call_model(model, inputs)
        loss_sum += loss_fn(outputs, targets).item() * n_b
        if labels and isinstance(outputs, Tensor) and outputs.ndim == 2:
            correct += int((outputs.max(1).indices == targets).sum())
        else:
            has_acc = False
        n += n_b
    bp.counts["n_batch_forward"] += len(plan)
    bp.counts["n_forward"] += 1
    return Evaluation(loss_sum / n, correct / n if has_acc else None, n)
