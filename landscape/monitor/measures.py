"""The measures a `CurvatureMonitor` can take, one function each, in the table `MEASURES`.

All are computed on the monitor's fixed measurement set, at the current weights w, with L the
sample-weighted mean loss over that set and H its Hessian (eval mode: dropout off, normalization
layers on their running statistics):

* `top_eigenvalue`: lambda_max(H), the largest algebraic eigenvalue, by Lanczos (relative
  residual `tol`) started from the previous measurement's top eigenvector (a random vector drawn
  from `seed` the first time), so a slowly turning eigenvector costs a few products. Row keys:
  `top_eigenvalue`, `top_eigenvalue_residual` (||H v - theta v|| checked with a product on the
  returned vector), `top_eigenvalue_error_bound` (min(r, r^2 / gap), Bauer-Fike or
  Kato-Temple), `top_eigenvalue_n_hvp` (products used, the check included) and
  `top_eigenvalue_converged`.
* `trace`: tr(H) by Hutch++ with `n_hvp` products and random vectors from `seed`; keys `trace`,
  `trace_stderr` (its standard error), `trace_n_hvp`.
* `frobenius`: ||H||_F = sqrt(tr(H^2)) by Hutch++ on H^2 with `n_hvp` products (`seed`); keys
  `frobenius`, `frobenius_stderr` (delta method), `frobenius_n_hvp`.
* `trace_ratio`: tr(H) lr / 2 with lr of the optimizer's first parameter group: SGD's
  linear-stability ratio (a minimum is linearly stable for SGD only if it is <= 1, Wu and Su
  2023). Keys `trace_ratio`, `trace_ratio_stderr`, `lr` and the `trace` keys it is computed from
  (one trace serves both measures).
* `gradient_norm`: ||grad L(w)||_2. `loss`: L(w). One gradient pass serves both.
* `eos_ratio`: how close training is to the edge of stability (1 = at the edge). SGD:
  (lambda_max + wd) lr (1 - d) / (2 + 2 beta), with lr, momentum beta, dampening d and weight
  decay wd of the optimizer's first parameter group ((2 + 2 beta) / (1 + 2 beta) for Nesterov);
  plain gradient descent: lambda_max lr / 2. Adam and AdamW: preconditioned_sharpness /
  ((2 + 2 beta1) / (1 - beta1)). Keys `eos_ratio`, `eos_threshold` (the sharpness at which the
  ratio is 1), `lr`, and the sharpness it is computed from.
* `preconditioned_sharpness` (Adam, AdamW): lambda_max(P^-1 H), P = (1 - beta1^t)
  diag(sqrt(v_t / (1 - beta2^t)) + eps) / lr read from the optimizer state, computed as the top
  eigenvalue of the symmetric P^-1/2 H P^-1/2 by warm-started Lanczos. NaN before the first
  step. Keys as for `top_eigenvalue`.
* `update_curvature`: u^T H u / ||u||^2 along the optimizer's last update u = w_t - w_(t-1) (one
  product; the monitor copies the weights before the optimizer step preceding a measurement).
  NaN when that step was not seen. Keys `update_curvature`, `update_norm` (||u||).

A measure is a function of a `MeasureContext` returning its row entries (a dict of floats),
registered with its description, settings, cost estimate and optimizer check in the shared
registry (`landscape.measures.MONITOR_REGISTRY`, by `register_monitor`); the monitor looks names
up there. `MEASURES` (name -> function) and `REQUIREMENTS` (name -> optimizer check) are live
views of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._random import generator
from ..curvature import hessian_frobenius, hessian_trace
from ..curvature.lanczos import lanczos_eigs
from ..errors import LandscapeError
from ..measures.registry import MONITOR_REGISTRY, MonitorSpec, register_monitor
from ..probe import Probe
from .optimizers import (
    adam_edge,
    adam_scaling,
    optimizer_kind,
    require_kind,
    require_optimizer,
    sgd_edge,
)

NAN = float("nan")


@dataclass(frozen=True)
class Settings:
    """Accuracy and budget of one measurement (see `CurvatureMonitor`)."""

    tol: float = 1e-3
    max_iter: int = 100
    n_hvp: int = 30
    max_basis: int = 20
    seed: int = 0


class MeasureContext:
    """What a measure may use: the probe at the current weights, the optimizer, settings, the
    warm-start vectors kept between measurements, the last update, and shared results (the top
    eigenpair and the gradient are computed once per measurement whoever asks first)."""

    def __init__(self, probe: Probe, optimizer: torch.optim.Optimizer | None,
                 settings: Settings, warm: dict[str, Tensor], update: Tensor | None):
        self.probe = probe
        self.optimizer = optimizer
        self.settings = settings
        self.warm = warm
        self.update = update
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once per measurement under `key`."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        return self.shared("gradient", self.probe.loss_and_gradient)

    def top_pair(self, name: str, matvec: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """Lanczos for the largest eigenvalue of `matvec`, warm-started from `warm[name]`
        (which it then replaces); the row entries `name`, `name_residual`, `name_n_hvp`,
        `name_converged`."""
        return self.shared(name, lambda: self._lanczos(name, matvec))

    def _lanczos(self, name: str, matvec: Callable[[Tensor], Tensor]) -> dict[str, float]:
        p, s = self.probe, self.settings
        gen = generator(s.seed)
        start = self.warm.get(name)
        if start is None or start.numel() != p.num_params or not torch.isfinite(start).all():
            start = torch.randn(p.num_params, generator=gen, dtype=p.dtype).to(p.device)
        else:
            start = start.clone()
        count = 0

        def counted(v: Tensor) -> Tensor:
            nonlocal count
            count += 1
            return matvec(v)

        out = lanczos_eigs(counted, start, 1, "largest", s.tol, s.max_iter,
                           min(s.max_basis, p.num_params), gen, return_vectors=True)
        self.warm[name] = out.vectors[0].detach()
        return {name: float(out.values[0]), f"{name}_residual": float(out.residuals[0]),
                f"{name}_error_bound": float(out.bounds[0]), f"{name}_n_hvp": count,
                f"{name}_converged": bool(out.converged)}


def top_eigenvalue(ctx: MeasureContext) -> dict[str, float]:
    return ctx.top_pair("top_eigenvalue", ctx.probe.hvp)


def preconditioned_sharpness(ctx: MeasureContext) -> dict[str, float]:
    name = "preconditioned_sharpness"
    scale, wd = adam_scaling(ctx.optimizer, ctx.probe.params)
    if scale is None:  # before the first step: no preconditioner yet
        return {name: NAN, f"{name}_residual": NAN, f"{name}_error_bound": NAN,
                f"{name}_n_hvp": 0, f"{name}_converged": False}
    shift = scale * scale * wd

    def matvec(v: Tensor) -> Tensor:
        out = ctx.probe.hvp(v * scale).mul_(scale)
        return out.add_(shift * v) if wd else out

    return ctx.top_pair(name, matvec)


def eos_ratio(ctx: MeasureContext) -> dict[str, float]:
    if optimizer_kind(ctx.optimizer) == "sgd":
        edge, row = sgd_edge(ctx.optimizer), top_eigenvalue(ctx)
    else:
        edge, row = adam_edge(ctx.optimizer), preconditioned_sharpness(ctx)
    value = row[edge.sharpness]
    return {**row, "eos_ratio": edge.ratio(value) if math.isfinite(value) else NAN,
            "eos_threshold": edge.threshold, "lr": edge.lr}


def trace(ctx: MeasureContext) -> dict[str, float]:
    def compute() -> dict[str, float]:
        s = ctx.settings
        r = hessian_trace(ctx.probe, n_hvp=s.n_hvp, method="hutch++", seed=s.seed)
        return {"trace": float(r.estimate), "trace_stderr": float(r.stderr),
                "trace_n_hvp": r.n_hvp}

    return ctx.shared("trace", compute)


def trace_ratio(ctx: MeasureContext) -> dict[str, float]:
    row = trace(ctx)
    lr = float(ctx.optimizer.param_groups[0]["lr"])
    return {**row, "trace_ratio": row["trace"] * lr / 2,
            "trace_ratio_stderr": row["trace_stderr"] * lr / 2, "lr": lr}


def frobenius(ctx: MeasureContext) -> dict[str, float]:
    s = ctx.settings
    r = hessian_frobenius(ctx.probe, n_hvp=s.n_hvp, method="hutch++", seed=s.seed)
    return {"frobenius": r.estimate, "frobenius_stderr": r.stderr, "frobenius_n_hvp": r.n_hvp}


def gradient_norm(ctx: MeasureContext) -> dict[str, float]:
    return {"gradient_norm": float(torch.linalg.vector_norm(ctx.loss_and_gradient()[1]))}


def loss(ctx: MeasureContext) -> dict[str, float]:
    return {"loss": float(ctx.loss_and_gradient()[0])}


def update_curvature(ctx: MeasureContext) -> dict[str, float]:
    u = ctx.update
    if u is None:
        return {"update_curvature": NAN, "update_norm": NAN}
    norm2 = float(u.double() @ u.double())
    if norm2 == 0:
        return {"update_curvature": NAN, "update_norm": 0.0}
    value = float((u.double() @ ctx.probe.hvp(u).double()) / norm2)
    return {"update_curvature": value, "update_norm": math.sqrt(norm2)}


def _require_lr(optimizer: Any) -> None:
    if optimizer is None:
        raise LandscapeError("measure 'trace_ratio' needs the training learning rate: pass "
                             "optimizer= to the monitor, or leave the measure out.")


Measure = Callable[[MeasureContext], dict[str, float]]

_EIGEN = ("tol", "max_iter", "max_basis", "seed")
_HUTCH = ("n_hvp", "seed")


def _lanczos_cost(s: Settings) -> dict[str, int]:
    return {"n_hvp": max(s.max_iter, 2)}  # at most max_iter products, the check included


def _hutch_cost(s: Settings) -> dict[str, int]:
    return {"n_hvp": s.n_hvp}


# The monitor's measures, in the shared registry (`landscape.measures.MONITOR_REGISTRY`): one
# `register_monitor` call adds a measure to the monitor. `requires` checks the optimizer when the
# monitor is built (a clear error then, not at step 5,000); None works with any, or none.
for _spec in (
    MonitorSpec("top_eigenvalue", "Largest algebraic Hessian eigenvalue by warm-started Lanczos.",
                _EIGEN, top_eigenvalue, _lanczos_cost),
    MonitorSpec("trace", "Hessian trace by Hutch++, with its standard error.", _HUTCH, trace,
                _hutch_cost),
    MonitorSpec("frobenius", "Frobenius norm of the Hessian by Hutch++ on H^2, with its "
                "standard error.", _HUTCH, frobenius, _hutch_cost),
    MonitorSpec("trace_ratio", "SGD's linear-stability ratio tr(H) lr / 2 (stable only if "
                "<= 1).", _HUTCH, trace_ratio, _hutch_cost, lambda opt: _require_lr(opt)),
    MonitorSpec("gradient_norm", "Euclidean norm of the gradient (exact).", (), gradient_norm,
                lambda s: {"n_gradient": 1}),
    MonitorSpec("loss", "Mean loss over the measurement set (exact).", (), loss,
                lambda s: {"n_gradient": 1}),
    MonitorSpec("eos_ratio", "How close training is to the edge of stability (1 = at the "
                "edge), from the (preconditioned) sharpness.", _EIGEN, eos_ratio, _lanczos_cost,
                lambda opt: require_kind(opt, ("sgd", "adam"), "eos_ratio")),
    MonitorSpec("preconditioned_sharpness", "Largest eigenvalue of Adam's preconditioned "
                "Hessian P^-1 H by warm-started Lanczos.", _EIGEN, preconditioned_sharpness,
                _lanczos_cost,
                lambda opt: require_kind(opt, ("adam",), "preconditioned_sharpness")),
    MonitorSpec("update_curvature", "Curvature u^T H u / ||u||^2 along the optimizer's last "
                "update u (one product).", (), update_curvature, lambda s: {"n_hvp": 1},
                lambda opt: require_optimizer(opt, "update_curvature")),
):
    register_monitor(_spec)


class _RegistryView(Mapping[str, Any]):
    """A live, read-only view of `MONITOR_REGISTRY`: name -> one field of each spec (specs where
    that field is None left out)."""

    def __init__(self, field: str):
        self._field = field

    def _table(self) -> dict[str, Any]:
        return {n: getattr(s, self._field) for n, s in MONITOR_REGISTRY.items()
                if getattr(s, self._field) is not None}

    def __getitem__(self, name: str) -> Any:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


# name -> function of a MeasureContext, and name -> check of the optimizer: views of the registry.
MEASURES: Mapping[str, Measure] = _RegistryView("run")
REQUIREMENTS: Mapping[str, Callable[[Any], None]] = _RegistryView("requires")
