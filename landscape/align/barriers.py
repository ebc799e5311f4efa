"""Loss and error barriers between two minima, on the raw weights and after permutation
alignment (Frankle et al. 2020; Entezari et al. 2022; Ainsworth et al. 2023)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from .. import batchnorm
from .._results import to_jsonable
from .._validate import OneOf, validate_params
from ..errors import LandscapeError
from ..probe import Probe
from ..surface import interpolate
from .solvers import AlignResult, align_weights
from .spec import PermutationSpec
from .trace import example_input

BUFFERS = ("interpolate", "recompute", "keep")


@dataclass(frozen=True)
class BarrierCurve:
    """The linear path f(a) = L((1 - a) w_A + a w_B) and its barriers (docs/measures.md).

    Attributes:
        alphas: the interpolation coefficients a (ascending, always containing 0 and 1).
        loss: f(a) at each alpha. error: 1 - accuracy at each alpha (None without accuracy).
        loss_barrier: max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)); loss_barrier_alpha
            the a where it occurs. error_barrier, error_barrier_alpha: the same on the error.
        distance: ||w_A - w_B|| over the probed parameters; cosine: cos(w_A, w_B).
    """

    alphas: list[float]
    loss: list[float]
    error: list[float] | None
    loss_barrier: float
    loss_barrier_alpha: float
    error_barrier: float | None
    error_barrier_alpha: float | None
    distance: float
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class AlignedBarrierResult:
    """Barriers between model A and model B before (`raw`) and after (`aligned`) alignment.

    Attributes:
        raw, aligned: the interpolation curves and barriers (`BarrierCurve`).
        alignment: the `AlignResult` (permutations, objective trace).
        buffers: "interpolate" or "keep" (what happened to floating-point buffers such as
            BatchNorm running statistics along the path).
        n_forward: passes over the probe's data. seconds: wall-clock time, alignment included.
    """

    raw: BarrierCurve
    aligned: BarrierCurve
    alignment: AlignResult
    buffers: str
    n_forward: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable({k: v for k, v in vars(self).items() if k != "alignment"})
        out["alignment"] = self.alignment.to_dict()
        return out


@validate_params(buffers=OneOf(BUFFERS))
def aligned_barrier(probe: Probe, model_b: nn.Module, alphas: Sequence[float] | None = None,
                    *, max_iter: int = 100, seed: int = 0, buffers: str = "interpolate",
                    bn_data: Any = None, batch_size: int = 256,
                    spec: PermutationSpec | None = None) -> AlignedBarrierResult:
    """Loss and error barriers between the probe's model (A) and `model_b`, raw and aligned.

    Along f(a) = L((1 - a) w_A + a w_B) for each a in `alphas` (0 and 1 added), the barrier is
    max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)) (Frankle et al. 2020; Entezari et al.
    2022), once with w_B as given and once with w_B permuted by `align_weights` (Ainsworth et al.
    2023). Parameters the probe does not probe stay at model A's values.

    Args:
        probe: a `Probe` of model A and the data the barrier is measured on.
        model_b: the second network, same architecture (not changed).
        alphas: interpolation coefficients; None means 21 points evenly spaced on [0, 1].
            Points outside [0, 1] are evaluated but do not enter the barrier.
        max_iter, seed: passed to `align_weights`.
        buffers: what BatchNorm running statistics (floating-point buffers) are at each a.
            "interpolate": the same path (1 - a) b_A + a b_B, so f(1) is model B itself (cheap,
            but the interpolated network's true statistics differ: its activations shrink,
            "variance collapse", Jordan et al. 2023, and the barrier is overstated);
            "recompute": reset and re-estimated at each a (`landscape.batchnorm`: only the
            BatchNorm layers in train mode; one extra pass per point; what Ainsworth et al.
            2023 do for BatchNorm networks) on `bn_data`, or on the probe's data when it is
            None;
            "keep": model A's all along. All buffers are restored bitwise afterwards.
        bn_data: for "recompute", other inputs than the probe's to estimate the statistics on
            (typically training data when the barrier is measured on test data): an
            `(inputs, targets)` tensor pair, an inputs tensor (both split into batches of
            `batch_size`), or an iterable of batches whose first element is the inputs.
        batch_size: batch size when `bn_data` is a tensor.
        spec: the permutation structure (`PermutationSpec`); None: derived from model A, run on
            the inputs of the probe's first batch (`permutation_spec`).

    Returns:
        `AlignedBarrierResult` with the raw and the aligned `BarrierCurve`.

    Raises:
        LandscapeError: a bad option, architectures differ, an unsupported operation.
    """
    if bn_data is not None and buffers != "recompute":
        raise LandscapeError("bn_data is only used with buffers='recompute' (the inputs to "
                             "re-estimate the BatchNorm statistics on); drop it or pass "
                             "buffers='recompute'.")
    alphas = np.linspace(0.0, 1.0, 21) if alphas is None else np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or not np.all(np.isfinite(alphas)):
        raise LandscapeError("alphas must be a 1-D sequence of finite numbers.")
    alphas = np.unique(np.concatenate([alphas, [0.0, 1.0]]))
    start = time.perf_counter()
    meter = probe.meter()
    alignment = align_weights(
        probe.model, model_b, spec=spec, max_iter=max_iter, seed=seed,
        example_input=None if spec is not None else example_input(probe))
    raw_sd = {k: v.detach() for k, v in model_b.state_dict().items()}
    bn_batches = None if bn_data is None else batchnorm.input_batches(bn_data, batch_size)
    curves = [_curve(probe, sd, alphas, buffers, bn_batches)
              for sd in (raw_sd, alignment.state_dict)]
    return AlignedBarrierResult(
        raw=curves[0], aligned=curves[1], alignment=alignment, buffers=buffers,
        n_forward=meter.cost().n_forward, seconds=time.perf_counter() - start,
    )


def _curve(probe: Probe, sd_b: dict[str, Tensor], alphas: np.ndarray, buffers: str,
           bn_batches: list[Any] | None) -> BarrierCurve:
    """The interpolation curve to `sd_b` (`landscape.interpolate`)."""
    line = interpolate(probe, sd_b, alphas, buffers=buffers, bn_data=bn_batches)
    error = None if line.accuracy is None else (1.0 - line.accuracy).tolist()
    return BarrierCurve(
        alphas=line.alphas.tolist(), loss=line.loss.tolist(), error=error,
        loss_barrier=line.barrier, loss_barrier_alpha=line.barrier_alpha,
        error_barrier=line.error_barrier, error_barrier_alpha=line.error_barrier_alpha,
        distance=line.distance, cosine=line.cosine,
    )
