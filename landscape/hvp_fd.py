"""Hessian-vector and Gauss-Newton-vector products from first derivatives alone.

For models that have no usable double backward (a `torch.autograd.Function` marked
`once_differentiable`, reentrant activation checkpointing, fused attention kernels, Triton
kernels), the Hessian-vector product is the central difference of two gradients:

    H v ~ (g(w + eps v) - g(w - eps v)) / (2 eps),        g = grad L.

Step rule. With u the unit roundoff of the dtype (2^-24 for float32, 2^-53 for float64) and
s(w, v) the size of w seen along v,

    eps = u^(1/3) s(w, v) / (2 ||v||),     s(w, v) = sum_t c_t ||v_t||_1 / ||v||,

where t runs over the parameter tensors, c_t is the RMS of tensor t (that of all of w for a
tensor of zeros; 1 when w is zero) and ||v_t||_1 the 1-norm of v's part in it. The step eps v
then has the length h = u^(1/3) s / 2 whatever the norm of v (a step that does not scale with v is
what makes other implementations wrong for vectors of large or small norm), and moves every
parameter by about u^(1/3) of its tensor's typical size: for v spread over all of w, s is
about ||w||; for v on one tensor, about that tensor's norm; for v = e_i, c_t. (A step of
u^(1/3) ||w|| along a vector concentrated on a small tensor, such as LayerNorm gains beside
embeddings, would move those parameters far beyond their size: float32 top eigenvalues of a
small GPT-2 were 2.6% low with that rule.) The factor 1/2 was measured: on that GPT-2's top
eigenvector the error is truncation (4x smaller per halving: 8e-4 at u^(1/3) s, 2e-4 at half
of it), on a float32 tanh MLP it is rounding (3e-5 at u^(1/3) s, 6e-5 at half).

Error. Truncation: the odd terms cancel, leaving (eps^2 / 6) D^3 g[v, v, v], of order
u^(2/3) ||H v|| when the curvature changes on the scale of w. Rounding: each gradient carries an
error of about u G (G the size of the per-batch gradients), divided by 2 eps: u G ||v|| / h =
u^(2/3) G ||v|| / s. The step balances the two, so both are O(u^(2/3)): about 1.5e-5 relative in
float32, 2e-11 in float64 (`error_bound` states the bound the self-check uses).

Step too long for the curvature (checked on every product). The rule's step moves each
parameter by u^(1/3) of its size, so over N parameters its length grows as sqrt(N): about 0.17
for GPT-2 small (124M) and 0.37 for GPT-2 medium. Along a direction of high curvature lambda the
loss is far from quadratic over that length (the loss changes by lambda h^2 / 2, 1.6 nats along
GPT-2 small's top eigenvector at lambda = 119), and the central difference returned 15.6 there
where H v gives 119. So each product also compares two estimates of the curvature along
v^ = v / ||v||, with f(t) = L(w + t v^) and h the step's length:

    q_grad = v^ . (g(w + h v^) - g(w - h v^)) / (2 h) = f2 + (h^2 / 6) f4 + ...
    q_loss = (f(h) + f(-h) - 2 f(0)) / h^2          = f2 + (h^2 / 12) f4 + ...

(f2, f4: the second and fourth derivatives of f at 0; the losses at w +- h v^ come with the two
gradients, f(0) from one forward pass per point w), so 2 |q_grad - q_loss| estimates the
truncation error of the product along v. Where it exceeds `TRUNCATION_TARGET` times
||H v|| / ||v|| and the losses' rounding (`LOSS_ROUNDING` u (|f(h)| + |f(-h)| + 2 |f(0)|) / h^2),
the product is made again with a step shortened as the h^2 law asks (`shorter_step`), at most
`MAX_SHORTER` times; the shorter length is kept as a cap for the probe's later products. Each
retry costs 2 gradients, f(0) one forward pass a point: both part of the product's cost (in
`n_batch_forward` and its time, not in `n_gradient` or `n_forward`).
On GPT-2 small's top eigenvector the error falls as h^2: 0.89 at the rule's length, 2.2e-2 at
1/16 of it and 1.4e-3 at 1/64 (`scripts/check_fd_step.py`).

Steps the losses cannot judge (verified by halving). The losses' rounding grows as 1 / h^2, so
once a step has been shortened it usually hides truncation far above the target: on GPT-2
medium the check stopped at a step 1% off along the top eigenvector (`losses_blind`). So after
a probe's step has been shortened once, every product whose truncation the losses cannot see is
made again at half the step (2 more gradients). By the h^2 law, FD(h) - FD(h/2) = 3 x the
truncation error of FD(h/2), a whole-vector estimate whose rounding (u G ||v|| / h) falls only
as 1 / h; where it exceeds TRUNCATION_TARGET ||H v|| (and GRAD_ROUNDING u G ||v|| / (h/2)) the
step is shortened by the h^2 law and the product made again (`halved_shorter`). The product
returned is the Richardson combination (4 FD(h/2) - FD(h)) / 3, whose h^2 term cancels. Such a
product costs 4 gradients (more on a retry) and holds two products at once. A probe whose
losses never showed truncation keeps 2-gradient products (small models, where the rule's step
is short: see the module's step rule).

The rule assumes a gradient that is smooth at the scale of the step. Where it is not (ReLU and
max-pooling kinks: a sample whose pre-activation changes sign between w - eps v and w + eps v
adds a jump divided by 2 eps), the central difference measures a smoothed Hessian, not the
Hessian of the current linear region that double backward returns; keep an exact method for
such models when it is available.

Cost: 2 gradients per product (4 when verified by halving; no graph kept); memory: one
parameter-sized copy of w (restored bitwise afterwards, also when a gradient raises) beside
the product (and the first product while one is verified by halving).

The Gauss-Newton product G v = J^T H_out J v takes J v from the central difference of the
outputs, (f(w + eps v) - f(w - eps v)) / (2 eps) (two forward passes), H_out J v by double
backward through the loss alone, and J^T by one backward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._reduce import local_abs_sum, local_square_sum
from .hvp_memory import heap_released
from .probe_data import call_model, unpack

if TYPE_CHECKING:  # pragma: no cover
    from .batch_pass import BatchPass

# The self-check's bound is this many times the finite difference's error estimate: the
# estimate's constants (third derivative, gradient rounding) are known only in order.
SAFETY = 100.0
# The truncation error along v allowed to a product, relative to ||H v|| / ||v|| (see the
# module); a product over it is made again with a shorter step, at most MAX_SHORTER times.
TRUNCATION_TARGET = 1e-4
MAX_SHORTER = 4
# The rounding of a float32 loss, in units of u |L|: a generous allowance for the sums of a
# forward pass, so that rounding is never read as truncation.
LOSS_ROUNDING = 100.0
# The rounding of a float32 gradient, in units of u G (G the size of the per-batch gradients),
# for the halving check (`halved_shorter`): again generous, so rounding is not read as truncation.
GRAD_ROUNDING = 100.0
# The step's constant: balances truncation (dominant on a small GPT-2's top eigenvector) and
# rounding (dominant on a tanh MLP) within a factor 4 of each one's optimum (module docstring).
STEP_FACTOR = 0.5


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2 of the dtype (2^-24 for float32, 2^-53 for float64)."""
    return torch.finfo(dtype).eps / 2


def step_length(scale: float, dtype: torch.dtype) -> float:
    """h = u^(1/3) s / 2: the length of the step eps v, for the scale s = s(w, v)."""
    return STEP_FACTOR * unit_roundoff(dtype) ** (1 / 3) * scale


def error_bound(hv_norm: float, grad_size: float, v_norm: float, scale: float,
                dtype: torch.dtype) -> float:
    """SAFETY * u^(2/3) (||H v|| + G ||v|| / s): a bound on ||FD - H v|| (see the module)."""
    u23 = unit_roundoff(dtype) ** (2 / 3)
    return SAFETY * u23 * (hv_norm + grad_size * v_norm / scale)


def loss_rounding(length: float, loss_scale: float, dtype: torch.dtype) -> float:
    """2 LOSS_ROUNDING u loss_scale / length^2: the truncation error along v (2 |q_grad -
    q_loss|) that the losses' rounding could fake; below it the losses cannot see truncation."""
    return 2 * LOSS_ROUNDING * unit_roundoff(dtype) * loss_scale / length ** 2


def losses_blind(product_size: float, length: float, loss_scale: float,
                 dtype: torch.dtype) -> bool:
    """True where the losses' rounding exceeds TRUNCATION_TARGET * product_size: a step that
    passes the loss check may then still be too long (see the module)."""
    return loss_rounding(length, loss_scale, dtype) > TRUNCATION_TARGET * product_size


def halved_shorter(error: float, product_size: float, grad_size: float, v_norm: float,
                   half_length: float, dtype: torch.dtype) -> float | None:
    """The factor to shorten the step h by where the product at h / 2 is still too long, else
    None. `error`: ||FD(h) - FD(h/2)|| / 3, the truncation error of the product at h / 2 by the
    h^2 law; `product_size`: its norm ||H v||; `grad_size`: the size G of the per-batch
    gradients. Errors within the gradients' rounding, GRAD_ROUNDING u G ||v|| / (h / 2), are not
    truncation. The factor meets TRUNCATION_TARGET * product_size by the h^2 law with a margin
    (0.7), within [1/100, 1/2]."""
    noise = GRAD_ROUNDING * unit_roundoff(dtype) * grad_size * v_norm / half_length
    allowed = TRUNCATION_TARGET * product_size
    if not math.isfinite(error) or error <= max(allowed, noise):
        return None
    return min(0.5, max(0.01, 0.7 * math.sqrt(allowed / error)))


def shorter_step(q_grad: float, q_loss: float, product_size: float, length: float,
                 loss_scale: float, dtype: torch.dtype) -> float | None:
    """A shorter step length where the step `length` is too long for the curvature along v,
    else None. `q_grad`, `q_loss`: the curvature along v from the gradients and from the losses
    (see the module); `product_size`: ||H v|| / ||v||; `loss_scale`: |f(h)| + |f(-h)| + 2 |f(0)|.

    The truncation error 2 |q_grad - q_loss| is compared with TRUNCATION_TARGET * product_size;
    below the losses' rounding, 2 LOSS_ROUNDING u loss_scale / length^2, it cannot be told from
    noise and the step stands. The shorter length meets the target by the h^2 law with a margin
    (0.7), within [length / 100, length / 2]."""
    error = 2 * abs(q_grad - q_loss)
    noise = loss_rounding(length, loss_scale, dtype)
    allowed = TRUNCATION_TARGET * product_size
    if not math.isfinite(error) or error <= max(allowed, noise):
        return None
    return length * min(0.5, max(0.01, 0.7 * math.sqrt(allowed / error)))


def is_reentrant_checkpoint_error(error: BaseException) -> bool:
    """True for the error `torch.autograd.grad` raises through reentrant checkpointing."""
    return isinstance(error, RuntimeError) and "use_reentrant=True" in str(error)


@contextlib.contextmanager
def grads_kept(model: torch.nn.Module, params: Sequence[Tensor] | None = None
               ) -> Iterator[None]:
    """`.grad` of every parameter (or of `params`) set aside inside the block and put back on
    exit, so a `loss.backward()` inside leaves the user's gradients (the same objects) untouched."""
    params = list(model.parameters()) if params is None else list(params)
    saved = [q.grad for q in params]
    try:
        for q in params:
            q.grad = None
        yield
    finally:
        for q, g in zip(params, saved):
            q.grad = g


class Gradients:
    """Per-batch gradients of the probe's loss, by `torch.autograd.grad`, or, through reentrant
    activation checkpointing (which refuses `.grad()`), by `loss.backward()` with the model's
    `.grad` fields set aside and restored (`grads_kept`)."""

    def __init__(self, passes: BatchPass):
        self.passes = passes
        self.by_backward = False

    def batch(self, batch: Any) -> tuple[Tensor, int, Sequence[Tensor | None]]:
        """(mean loss, n samples, gradient of the mean loss per probed parameter)."""
        p = self.passes
        loss, n_b, _ = p.compute(batch)
        if not self.by_backward:
            try:
                return loss, n_b, torch.autograd.grad(loss, p.params, allow_unused=True)
            except RuntimeError as e:
                if not is_reentrant_checkpoint_error(e):
                    raise
                self.by_backward = True
                loss, n_b, _ = p.compute(batch)  # the failed pass freed its graph
        with grads_kept(p.model):
            loss.backward()
            grads = [q.grad for q in p.params]
        return loss, n_b, grads


def _add_scaled(dst: Sequence[Tensor], src: Sequence[Tensor | None], alpha: float) -> None:
    for d, t in zip(dst, src):
        if t is not None:
            d.add_(t, alpha=alpha)


class FiniteDifference:
    """Central-difference Hessian- and Gauss-Newton-vector products over a probe's batches."""

    def __init__(self, passes: BatchPass):
        self.passes = passes
        self.gradients = Gradients(passes)
        # parameters and vectors split over the ranks (FSDP): norms are reduced over them
        self.sharded = False
        self.length_cap = math.inf  # the longest step the truncation check allows
        # of the last product: its step length h and sum of n_b L_b at w + h v^ and w - h v^
        self.length, self.loss_sums = 0.0, (0.0, 0.0)
        self._w_loss: tuple[tuple[int, ...], float] | None = None  # (versions, sum n_b L_b)

    def _versions(self) -> tuple[int, ...]:
        return tuple(q._version for q in self.passes.params)

    def loss_sum_at_w(self) -> float:
        """sum over this rank's batches of n_b L_b at the current parameters: one forward pass,
        kept while the parameters' version counters say they are unchanged (a product's
        bitwise restoration of w keeps it). Over the user's batches, as the gradients at
        w +- h v^ are, not the merged chunks of `probe.evaluate`, so that the three losses of
        the second difference are summed alike; not counted in `n_forward` (part of a
        product's cost)."""
        key = self._versions()
        if self._w_loss is None or self._w_loss[0] != key:
            p, total = self.passes, 0.0
            with torch.no_grad():
                for batch in p.data.batches():
                    loss, n_b, _ = p.compute(batch)
                    total += n_b * float(loss)
            self._w_loss = (key, total)
        return self._w_loss[1]

    def norm(self, tensors: Sequence[Tensor]) -> float:
        """The 2-norm of a list of tensors (over all ranks' shards when `sharded`)."""
        local = sum(local_square_sum(t) for t in tensors)
        if self.sharded:
            (local,) = self.passes.comm.reduce([local])
        return local ** 0.5

    def scale(self, v: Tensor) -> float:
        """s(w, v) = sum_t c_t ||v_t||_1 / ||v||: the size of w seen along v (see the module),
        c_t the RMS of parameter tensor t (that of all of w where tensor t is zero; 1 when w
        is zero)."""
        params = self.passes.params
        sums = [local_square_sum(q) for q in params]  # float64 sums, no float64 copies
        ones = [local_abs_sum(t) for t in self.passes.split(v)]
        squares = local_square_sum(v)
        counts = [q.numel() for q in params]
        if self.sharded:  # sums over all ranks' shards
            k = len(sums)
            reduced = self.passes.comm.reduce([*sums, *counts, *ones, squares])
            sums, counts, ones, squares = (reduced[:k], reduced[k:2 * k], reduced[2 * k:-1],
                                           reduced[-1])
        overall = (sum(sums) / max(sum(counts), 1)) ** 0.5 or 1.0
        c = [(s2 / max(k, 1)) ** 0.5 or overall for s2, k in zip(sums, counts)]
        return sum(ci * oi for ci, oi in zip(c, ones)) / squares ** 0.5 if squares else overall

    def step(self, v: Tensor, shrink: float = 1.0) -> tuple[float, float, float]:
        """(eps, s(w, v), ||v||) for the product with v: the rule's length, at most
        `length_cap` (set by the truncation check), times `shrink`."""
        v_norm = self.norm([v])
        size = self.scale(v)
        h = shrink * min(step_length(size, self.passes.dtype), self.length_cap)
        return (h / v_norm if v_norm > 0 else 0.0), size, v_norm

    @contextlib.contextmanager
    def displaced(self) -> Iterator[Any]:
        """Yields `move(sign, vs, eps)`, which writes w + sign eps v into the parameters; w is
        restored bitwise on exit (one stored copy of w)."""
        params = self.passes.params
        backup = [q.detach().clone() for q in params]

        def move(sign: float, vs: Sequence[Tensor], eps: float) -> None:
            with torch.no_grad():
                for q, b, d in zip(params, backup, vs):
                    q.copy_(b).add_(d, alpha=sign * eps)

        try:
            yield move
        finally:
            with torch.no_grad():
                for q, b in zip(params, backup):
                    q.copy_(b)

    def hvp_sum(self, v: Tensor, shrink: float = 1.0, sizes: bool = True
                ) -> tuple[Tensor, int, float]:
        """(sum over this rank's batches of n_b H_b v, number of samples, sum of n_b times the
        batch gradient norms at the two points / 2; 0 without `sizes`, which saves a pass
        over each gradient), by central differences (2 gradients), with the step of the rule
        times `shrink`."""
        p = self.passes
        eps, _, v_norm = self.step(v, shrink)
        out = torch.zeros_like(v)
        if v_norm == 0:
            return out, p.data.n_local, 0.0
        views, vs = p.split(out), p.split(v)
        n, size, losses = 0, 0.0, {1.0: 0.0, -1.0: 0.0}
        w_loss_kept = self._w_loss is not None and self._w_loss[0] == self._versions()
        vector = p.num_params * p.dtype.itemsize
        with self.displaced() as move, \
                heap_released(vector, p.device.type == "cpu") as release:
            for sign in (1.0, -1.0):
                move(sign, vs, eps)
                n = 0
                for batch in p.data.batches():
                    loss, n_b, grads = self.gradients.batch(batch)
                    _add_scaled(views, grads, sign * n_b / (2 * eps))
                    size += n_b * self.norm_local(grads) / 2 if sizes else 0.0
                    losses[sign] += n_b * float(loss.detach())
                    n += n_b
                    del grads  # not alive during the next gradient: one vector less at the peak
                    if release is not None:  # a heap left fragmented by a graph's build
                        release.check()
        if w_loss_kept and self._w_loss is not None:  # w restored bitwise: its loss stands
            self._w_loss = (self._versions(), self._w_loss[1])
        self.length, self.loss_sums = eps * v_norm, (losses[1.0], losses[-1.0])
        return out, n, size

    @staticmethod
    def norm_local(tensors: Sequence[Tensor | None]) -> float:
        return float(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
                         for t in tensors if t is not None)) ** 0.5

    def ggn_sum(self, vs: list[Tensor], total: Tensor) -> int:
        """Add sum over this rank's batches of n_b G_b v into `total` (J v by central
        differences of the outputs); return the number of samples."""
        p = self.passes
        v = torch.cat([t.reshape(-1) for t in vs])
        eps, _, v_norm = self.step(v)
        if v_norm == 0:
            return p.data.n_local
        views = p.split(total)
        n = 0
        with self.displaced() as move:
            for batch in p.data.batches():
                inputs, targets = unpack(batch)
                n_b = p.n_samples(batch)
                with torch.no_grad():
                    move(1.0, vs, eps)
                    plus = call_model(p.model, inputs)
                    move(-1.0, vs, eps)
                    jv = (plus - call_model(p.model, inputs)).div_(2 * eps)
                    move(0.0, vs, eps)
                p.counts["n_batch_forward"] += 2
                outputs = call_model(p.model, inputs)
                p.counts["n_batch_forward"] += 1
                out = outputs.detach().requires_grad_(True)
                dl = torch.autograd.grad(p.loss_fn(out, targets), out, create_graph=True)[0]
                h_jv = (torch.autograd.grad(dl, out, grad_outputs=jv)[0] if dl.requires_grad
                        else torch.zeros_like(out))
                jt = torch.autograd.grad(outputs, p.params, grad_outputs=h_jv, allow_unused=True)
                _add_scaled(views, jt, n_b)
                n += n_b
        return n
