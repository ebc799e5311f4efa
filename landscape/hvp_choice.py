"""Which Hessian-vector product a probe uses: exact, or finite differences of gradients.

`hvp_method="finite_difference"` always uses the central difference (`landscape.hvp_fd`).
`hvp_method="auto"` uses an exact method (chosen by `landscape.hvp.HvpEngine`) unless its first
product shows that double backward cannot be trusted through this model:

* Fallback: the exact product raises (reentrant activation checkpointing, a kernel without a
  derivative for its backward, a function that refuses to be differentiated twice). The probe
  warns once, naming the error, and uses finite differences from then on.
* Self-check (`Probe(check_hvp=True)`, the default): double backward can also be *silently*
  wrong, e.g. through a `torch.autograd.Function` marked `once_differentiable`, whose backward
  runs without a graph so its second derivative is dropped. On the first product the probe
  multiplies one random Gaussian vector r (seeded, the same on every rank) both ways and
  compares: when ||H_exact r - H_fd r|| exceeds the finite difference's error bound
  (`hvp_fd.error_bound`, an a-priori estimate), it measures the finite difference's error: it
  computes H_fd r once more with half the step, and since the truncation error scales as the
  step squared, the error of the first is about (4/3) ||H_fd(h) r - H_fd(h/2) r||
  (`HvpCheck.step_error`). Only when the exact product differs by more than `CONFIRM` (10)
  times bound + step_error does the probe conclude that double backward is wrong, warn (naming
  the check) and use finite differences. A gradient that is not smooth at the step's scale
  (ReLU or max-pooling kinks) makes the two finite differences disagree, so the exact product
  is kept there, without a warning; so is a finite difference slightly less accurate than
  the a-priori bound. A wrong double backward whose error is within that margin (a few percent
  in float32) is not detected.

The check costs one exact product and two gradients on first use (two more when the first
comparison fails); they are not counted in the
estimators' `n_hvp`/`n_gradient` and are reported in `Probe.hvp_check`. The decision applies to
every later product of the probe, Gauss-Newton products included (their Jacobian-vector
product goes through the same double backward).

Distributed: every decision is reduced over the ranks, so all ranks take the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._reduce import fdot, fnorm
from .hvp import HVP_METHODS, HvpEngine, twice_differentiable
from .hvp_fd import (
    MAX_SHORTER,
    FiniteDifference,
    error_bound,
    halved_shorter,
    losses_blind,
    shorter_step,
)
from .hvp_memory import PeakNew, warm_up

if TYPE_CHECKING:  # pragma: no cover
    from .batch_pass import BatchPass

FINITE_DIFFERENCE = "finite_difference"
PRODUCT_METHODS = (*HVP_METHODS, FINITE_DIFFERENCE)
CHECK_SEED = 21  # seeds the self-check's random vector
CONFIRM = 10.0  # switch when exact and finite difference differ by this many times its error
# An estimator asking for relative tolerance tol may use finite differences when their measured
# relative error on the check's random vector is at most FD_ERROR_SHARE * tol (`fd_verdict`)
FD_ERROR_SHARE = 0.5
# ... and at least this many times faster than the exact product (timings on first use are noisy)
FD_SPEEDUP = 1.5


@dataclass(frozen=True)
class HvpCheck:
    """The self-check of the first product under `hvp_method="auto"`.

    `difference`: ||H_exact r - H_fd r|| for a Gaussian r; `bound`: the finite difference's error
    bound for it (a priori); `product_norm`: ||H_fd r||; `passed`: difference <= bound;
    `step_error`: when it did not pass, the finite difference's error measured by halving the
    step, (4/3) ||H_fd(h) r - H_fd(h/2) r|| (large for a gradient with kinks; NaN when not
    measured); `error`: the exact product's error message when it raised (then the numbers are
    NaN); `uses_finite_difference`: the probe's products are finite differences from then on.
    `exact_seconds`: one exact product by the method "auto" chose (its measured time per
    product, e.g. a backward pass through the kept graph); `fd_seconds`: the measured time of
    the finite difference on r (both summed over the ranks; NaN when not measured).
    """

    difference: float
    bound: float
    product_norm: float
    passed: bool
    step_error: float = float("nan")
    error: str | None = None
    uses_finite_difference: bool = False
    exact_seconds: float = float("nan")
    fd_seconds: float = float("nan")

    @property
    def fd_error(self) -> float:
        """The finite difference's measured relative error, ||H_exact r - H_fd r|| / ||H_fd r||."""
        return self.difference / max(self.product_norm, 1e-300)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fd_verdict(check: HvpCheck | None, tol: float) -> tuple[bool, str]:
    """Whether an estimator asking for relative tolerance `tol` should use finite-difference
    products instead of the exact ones, and why (one line). Yes when the self-check passed,
    the finite difference's measured relative error is at most FD_ERROR_SHARE * tol (measured
    on a random vector r) and it was measured at least FD_SPEEDUP times faster than an exact
    product. The estimator still checks its results with exact products (`exact_only`)."""
    if check is None or check.error is not None or check.uses_finite_difference:
        return False, "no self-check of the exact product ran (check_hvp=False?)"
    if not check.passed:
        return False, ("exact: the finite difference disagreed with it beyond its error bound "
                       "(a gradient with kinks at the step's scale?)")
    error, fast, slow = check.fd_error, check.fd_seconds, check.exact_seconds
    if not error <= FD_ERROR_SHARE * tol:
        return False, (f"exact: the finite difference's measured relative error {error:.2g} "
                       f"exceeds {FD_ERROR_SHARE:g} tol = {FD_ERROR_SHARE * tol:.2g}")
    if not fast * FD_SPEEDUP < slow:
        return False, (f"exact: {slow:.3g} s a product against {fast:.3g} s by finite "
                       f"differences (not {FD_SPEEDUP:g} times faster)")
    return True, (f"finite differences: {fast:.3g} s a product against {slow:.3g} s exact, "
                  f"relative error {error:.2g} <= {FD_ERROR_SHARE:g} tol")


class Products:
    """The probe's Hessian-vector products (divided by the sample count, reduced over ranks)."""

    def __init__(self, passes: BatchPass, engine: HvpEngine, method: str, check: bool):
        self.passes, self.engine = passes, engine
        self.method, self.check_first = method, check
        self.fd = FiniteDifference(passes)
        self.halvings = 0  # finite-difference products verified by halving their step
        self.use_fd = method == FINITE_DIFFERENCE
        self.settled = method != "auto"
        self.check: HvpCheck | None = None
        self.chosen_fd = False  # finite differences chosen for a call by `for_tolerance`
        # the peak storage of a plain gradient, measured by the self-check (`hvp_memory`)
        self.gradient_bytes: int | None = None

    def hvp(self, v: Tensor, at_checkpoint: bool, out: Tensor | None = None) -> Tensor:
        """H v at the probe's current parameters (inside its session); an exact product is
        written into `out` where the method allows it (check whether the result is `out`)."""
        if not self.settled:
            return self._first(v, at_checkpoint)
        if self.use_fd:
            return self.finite_difference(v)
        result = self.exact(v, at_checkpoint, tolerant=False, out=out)
        assert result is not None
        return result

    def inherit(self, other: Products) -> None:
        """Take over a settled decision of another probe of the same model (a sub-probe)."""
        if other.settled and self.method == other.method:
            self.use_fd, self.settled, self.check = other.use_fd, True, other.check

    def settle(self, at_checkpoint: bool) -> None:
        """Make the "auto" decision now (before a product that bypasses `hvp`)."""
        if not self.settled:
            self._first(None, at_checkpoint, want=False)

    @contextlib.contextmanager
    def for_tolerance(self, tol: float, at_checkpoint: bool = True) -> Iterator[str]:
        """Inside the block, products are finite differences when `fd_verdict` says so for
        relative tolerance `tol` (the kept gradient graph is dropped then: it is rebuilt when an
        exact product at the checkpoint is needed again); yields the one-line reason. Only under
        hvp_method="auto" (settled here first, at the checkpoint)."""
        if self.method != "auto" or not at_checkpoint:
            yield f"hvp_method={self.method!r}" + ("" if at_checkpoint else " (off the checkpoint)")
            return
        with self.passes.session(None):  # eval mode, restored: the model is not changed
            self.settle(at_checkpoint)
        if self.use_fd:
            yield ("finite differences: double backward is unavailable or wrong through this "
                   "model (probe.hvp_check)")
            return
        use, reason = fd_verdict(self.check, tol)
        if not use:
            yield reason
            return
        self.engine.drop_graph()
        self.use_fd = self.chosen_fd = True
        try:
            yield reason
        finally:
            self.use_fd = self.chosen_fd = False

    @contextlib.contextmanager
    def exact_only(self) -> Iterator[None]:
        """Exact products inside the block where `for_tolerance` chose finite differences."""
        if not self.chosen_fd:
            yield
            return
        self.use_fd = False
        try:
            yield
        finally:
            self.use_fd = True

    def exact(self, v: Tensor, at_checkpoint: bool, tolerant: bool,
              out: Tensor | None = None) -> Tensor | None:
        """The exact product (into `out` when given, where the engine's method allows it);
        with `tolerant`, None (on every rank) when it raised a RuntimeError or
        NotImplementedError on any rank, with the reason kept in `_reason`."""
        p = self.passes
        into, out, n, error, failure = out, None, 0, None, None
        with twice_differentiable():
            try:  # no placeholder output while the product runs: one vector less at the peak
                out, n = self.engine.product(v, at_checkpoint, into)
            except (RuntimeError, NotImplementedError) as e:
                if tolerant:
                    failure = e
                else:
                    error = e
            except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
                error = e
        if out is None:  # it raised: zeros to reduce (the given buffer's contents are lost)
            out = torch.zeros_like(v) if into is None else into.zero_()
        n, n_failed = p.comm.reduce([n, float(failure is not None)], [out], error)
        if n_failed:
            text = str(failure).strip().splitlines()[0] if failure is not None else ""
            self._reason = f"{type(failure).__name__}: {text}" if failure is not None \
                else "double backward failed on another rank"
            return None
        return out.div_(n)

    def finite_difference(self, v: Tensor, shrink: float = 1.0, sizes: bool = False) -> Tensor:
        """The central-difference product (2 gradients), step times `shrink`, made again with
        a shorter step while the step is too long for the curvature along v
        (`hvp_fd.shorter_step`, 2 more gradients a retry, part of the product's cost); with
        `sizes`, the gradients' size for the error bound is kept (`_grad_size`)."""
        for retry in range(MAX_SHORTER + 1):
            out, losses = self._finite_difference_once(v, shrink, sizes)
            if retry == MAX_SHORTER:
                return out
            shorter, blind = self._shorter(v, out, losses)
            if shorter is None and blind and self.fd.length_cap < math.inf:
                out, shorter = self._halved(v, out, shrink)
            if shorter is None:
                return out
            self.fd.length_cap = shorter
            del out
        raise AssertionError("unreachable")  # pragma: no cover

    def _halved(self, v: Tensor, out: Tensor, shrink: float) -> tuple[Tensor, float | None]:
        """(the Richardson product (4 FD(h/2) - FD(h)) / 3, a shorter step length or None), for
        a product `out` = FD(h) whose truncation the losses could not see: the product is made
        again at h / 2 (2 gradients) and, by the h^2 law, ||FD(h) - FD(h/2)|| / 3 is the
        truncation error of FD(h/2) (`hvp_fd.halved_shorter` judges it); the returned
        combination cancels the h^2 term. Holds two products at once (`hvp_memory`)."""
        h, v_norm = self.fd.length, fnorm(v)
        half, _ = self._finite_difference_once(v, shrink / 2, sizes=True)
        self.halvings += 1
        out.sub_(half)  # FD(h) - FD(h/2): three times the truncation of FD(h/2)
        error = fnorm(out) / 3
        half.sub_(out, alpha=1 / 3)
        del out
        factor = halved_shorter(error, fnorm(half), self._grad_size, v_norm, self.fd.length,
                                self.passes.dtype)
        return half, None if factor is None else h * factor

    def _finite_difference_once(self, v: Tensor, shrink: float, sizes: bool
                                ) -> tuple[Tensor, tuple[float, float]]:
        """(H v by one central difference, the mean losses at w + h v^ and w - h v^)."""
        p = self.passes
        out, n, size, error = None, 0, 0.0, None
        try:  # no placeholder output while the product runs: one vector less at the peak
            out, n, size = self.fd.hvp_sum(v, shrink, sizes)
        except Exception as e:  # noqa: BLE001 - raised on every rank by reduce
            error = e
        out = torch.zeros_like(v) if out is None else out
        n, size, plus, minus = p.comm.reduce([n, size, *self.fd.loss_sums], [out], error)
        if sizes:
            self._grad_size = size / max(n, 1)
        return out.div_(n), (plus / max(n, 1), minus / max(n, 1))

    def _shorter(self, v: Tensor, out: Tensor, losses: tuple[float, float]
                 ) -> tuple[float | None, bool]:
        """(a shorter step where the last product's step was too long along v, else None;
        whether the losses' rounding hid truncation above the target, `hvp_fd.losses_blind`)."""
        h = self.fd.length
        v_norm = fnorm(v)
        if h <= 0 or v_norm == 0:
            return None, False
        at_w, n = self.passes.comm.reduce([self.fd.loss_sum_at_w(), self.passes.data.n_local])
        at_w /= max(n, 1)
        q_grad = fdot(v, out) / v_norm ** 2
        q_loss = (losses[0] + losses[1] - 2 * at_w) / h ** 2
        scale = abs(losses[0]) + abs(losses[1]) + 2 * abs(at_w)
        size, dtype = fnorm(out) / v_norm, self.passes.dtype
        return (shorter_step(q_grad, q_loss, size, h, scale, dtype),
                losses_blind(size, h, scale, dtype))

    def _random_vector(self) -> Tensor:
        p = self.passes
        gen = torch.Generator().manual_seed(CHECK_SEED)
        return torch.randn(p.num_params, generator=gen, dtype=p.dtype).to(p.device)

    def _first(self, v: Tensor | None, at_checkpoint: bool, want: bool = True
               ) -> Tensor | None:
        """The first product under "auto": fallback on error, then (check_hvp) the self-check;
        returns H v (None when not `want`ed: `settle`, whose v is None: the check's random
        vector stands in for it)."""
        p = self.passes
        p.prepare()  # the first-use data checks, before anything is timed
        warm_up()  # and the memory meter's one-time setup
        r = self._random_vector() if self.check_first or v is None else v
        fd_r, t_fd = None, 0.0
        if self.check_first:  # first: its displacements of w would invalidate a kept graph
            t0 = time.perf_counter()
            halvings = self.halvings
            with PeakNew() as meter:
                fd_r = self.finite_difference(r, sizes=True)
            t_fd = _since(t0, p.device) - meter.seconds
            # it holds its sum, a copy of w and a gradient's work (and the first product where
            # it was made again at half the step); a gradient its sum and work
            held = 1 + (self.halvings > halvings)
            self.gradient_bytes = meter.peak - held * r.numel() * r.element_size()
        t0 = time.perf_counter()
        exact_r = self.exact(r, at_checkpoint, tolerant=True)
        t_exact = _since(t0, p.device)
        if exact_r is None:
            # a data error raises here, before any warning
            out = self.finite_difference(r if v is None else v)
            self.check = HvpCheck(float("nan"), float("nan"), float("nan"), False,
                                  error=self._reason, uses_finite_difference=True)
            self._switch(
                f"hvp_method='auto': double backward is unavailable through this model "
                f"({self._reason}); using finite-difference Hessian-vector products "
                "(2 gradients each). Pass hvp_method='finite_difference' to choose it.")
            return out
        if fd_r is None:
            self.settled = True
            return exact_r
        # an exact product from now on costs what the engine measured for its choice
        t_exact = self.engine.times.get(self.engine.chosen or "", t_exact)
        t_exact, t_fd = p.comm.reduce([t_exact, t_fd])
        fd_norm = float(torch.linalg.vector_norm(fd_r))
        diff = float(torch.linalg.vector_norm(exact_r.sub_(fd_r)))  # in place: no temporary
        bound = error_bound(fd_norm, self._grad_size, float(torch.linalg.vector_norm(r)),
                            self.fd.scale(r), p.dtype)
        del exact_r
        step_error = float("nan")
        if diff > bound:  # wrong double backward, or a finite difference less accurate?
            half = self.finite_difference(r, shrink=0.5)
            step_error = 4 / 3 * float(torch.linalg.vector_norm(half - fd_r))
            del half
        del fd_r
        switch = diff > CONFIRM * (bound + step_error)  # False while step_error is NaN
        self.check = HvpCheck(diff, bound, fd_norm, diff <= bound, step_error,
                              uses_finite_difference=switch, exact_seconds=t_exact,
                              fd_seconds=t_fd)
        if not switch:
            self.settled = True
            return self.exact(v, at_checkpoint, tolerant=False) if want else None
        self._switch(
            f"Hessian-vector product self-check (check_hvp) failed: the exact product (double "
            f"backward) and the finite difference differ by {diff / max(fd_norm, 1e-300):.3g} "
            f"relative on a random vector, over {CONFIRM:g} times the finite difference's "
            f"error ({(bound + step_error) / max(fd_norm, 1e-300):.2g}); double backward is "
            "wrong through some part of the model (a once_differentiable autograd Function?). "
            "Using finite-difference products (2 gradients each); pass "
            "hvp_method='finite_difference' to choose it, or check_hvp=False to skip the check.")
        return self.finite_difference(v) if want else None

    def _switch(self, message: str) -> None:
        self.engine.drop_graph()
        self.use_fd = True
        self.settled = True
        warnings.warn(message, RuntimeWarning, stacklevel=5)


def _since(t0: float, device: torch.device) -> float:
    """Seconds since t0, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0
