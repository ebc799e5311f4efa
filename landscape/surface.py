"""Loss lines, loss surfaces, interpolation between checkpoints and PCA of trajectories.

Conventions (docs/measures.md, "Directions, surfaces and barriers"; Li et al. 2018):

* Line: f(a) = L(w + a d), `loss[i] = f(alphas[i])`.
* Plane: f(a, b) = L(w + a d1 + b d2), `loss[i, j] = f(xs[i], ys[j])` (shape `(len(xs),
  len(ys))`, also for non-square grids). d1 and d2 are not orthogonalized; their cosine is reported.
* Points where the loss is not finite are stored as NaN (loss and accuracy): far from the minimum
  the loss may diverge; that is data, not an error. A non-finite loss at w itself is an error.
* Accuracy is the fraction in [0, 1] of correct argmax predictions when the task is classification
  (None otherwise).

Every point is evaluated through `probe.evaluate_points`: the weights are written in place
(no allocation per point), data batches come from the probe's device cache, and the model is
restored bitwise at the end, also after an exception.

Exact evaluation uses all of the probe's data. `max_samples=m` is for quick looks at big data:
each point is evaluated on `n_groups = 8` independent uniform subsets of `m // 8` samples each
(`probe.subset(m // 8, seed_g)`, seeds drawn from `seed`; the same subsets at every point, so the
surface is smooth). The reported loss is the mean of the group losses and `loss_stderr` their
sample standard deviation divided by sqrt(8): an unbiased estimate of L and an honest standard
error, because the groups are independent draws (a group is a sample without replacement; two
groups may share samples).

Storage: with `out="surface.h5"` (or `.npz`) the grid is written as it is computed and a rerun
with the same settings evaluates only the missing points; see `landscape.storage`.

Distributed (`torch.distributed` initialized, a distributed probe): every rank calls the function
with the same arguments and returns the whole result. `shard=` picks what is split:

* "points": rank r evaluates the missing points r, r + W, r + 2W, ... each on ALL the data
  (a non-distributed view of the probe, in the single-process batch order), and the ranks
  exchange their finished points once per round of W points. No collective per point and no
  waiting on the slowest batch share: this scales with the ranks as long as each rank can hold
  the data, and gives the single-process values bitwise.
* "data": every point on the distributed probe (each rank its share of the batches, one
  all-reduce per point): for data too big for one rank, or a loader with a DistributedSampler.
* "auto" (default): "points" when every rank sees all the data (not a DistributedSampler), the
  whole data fits in the device cache of every rank (`Probe(cache_bytes=)`; otherwise every
  rank would re-read all the data for every point), and there are at least W points; else "data".

With `out=`, rank 0 alone reads and writes the file; every rank resumes from its `done` mask.
`max_samples=` subsets are drawn by global sample index, so they are the same in both modes.

Speed (`batched=`, `autocast=`):

* The per-point loop (`probe.evaluate_points`): w + offset is kept in one flat buffer, a point
  costs 1 + len(directions) vector operations, one multi-tensor copy into the parameters, the
  forward passes over the cached batches, and one host transfer (loss and correct count).
* `batched=True` (or None = auto, which picks it on CUDA only): chunks of points evaluated at
  once with `torch.func.vmap` over stacked weights (`landscape._batched`); the chunk is the
  memory budget (256 MiB on CPU, a quarter of free CUDA memory) over weights + activations per
  point. Same values up to floating-point rounding of the batched kernels. A model vmap cannot
  handle falls back silently to the loop. On CPU it is slower than the loop on the benchmarked
  models (vmapped convolutions become grouped convolutions), hence not the CPU default.
  Distributed runs always use the loop.
* `autocast=True`: forward passes under `torch.autocast(dtype=torch.bfloat16)`: approximate
  losses, recorded as `autocast="bfloat16"` in the result, the file's settings and its hash.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._grid import N_GROUPS, Recompute, buffer_ends, run_grid  # noqa: F401 - N_GROUPS too
from ._results import to_jsonable
from ._validate import OneOf, validate_params
from .batchnorm import input_batches
from .directions import (
    Checkpoint,
    Direction,
    as_vector,
    cosine,
    flat_from_checkpoint,
)
from .errors import LandscapeError
from .probe import Cost, Probe
from .storage import GridStore, read

INTERPOLATION_BUFFERS = ("interpolate", "recompute", "keep")


@dataclass(frozen=True)
class Line:
    """A 1D loss curve f(alphas[i]) = loss[i], and for interpolations the barrier.

    Attributes:
        alphas: step sizes along the direction (float64, as given).
        loss: f at each alpha; NaN where not finite.
        accuracy: fraction correct at each alpha (classification), else None.
        loss_stderr: standard error of each loss with `max_samples=`, else None (exact).
        direction: how the direction was made (normalization, seed, source, norm).
        n_samples: samples per point (all data, or the subsets' total with `max_samples=`).
        max_samples, seed: the subset options (None, 0 for exact evaluation).
        cost: forward passes and seconds spent (`probe.meter()`), None when loaded from a file.
        autocast: "bfloat16" when evaluated under `autocast=True` (approximate losses), else None.
        barrier: interpolations only: max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1))
            (Frankle et al. 2020), over the evaluated alphas in [0, 1].
        barrier_alpha: the a where the barrier occurs.
        error_barrier, error_barrier_alpha: the same for the error 1 - accuracy.
        distance: ||w_B - w_A|| over the probed parameters.
        cosine: cos(w_A, w_B) of the two weight vectors.
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    loss_stderr: np.ndarray | None
    direction: dict[str, Any]
    n_samples: int
    max_samples: int | None
    seed: int
    cost: Cost | None
    barrier: float | None = None
    barrier_alpha: float | None = None
    error_barrier: float | None = None
    error_barrier_alpha: float | None = None
    distance: float | None = None
    cosine: float | None = None
    autocast: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class Surface:
    """A 2D loss surface: `loss[i, j] = L(w + xs[i] d1 + ys[j] d2)`, shape (len(xs), len(ys)).

    Attributes:
        xs, ys: coordinates along d1 and d2 (float64).
        loss: the loss grid; NaN where not finite (or not computed yet, in a partial file).
        accuracy: the accuracy grid (classification), else None.
        loss_stderr: standard errors with `max_samples=`, else None.
        directions: how d1 and d2 were made (normalization, seed, source, norm).
        cosine: cos(d1, d2) (the directions are not orthogonalized).
        n_samples, max_samples, seed: as in `Line`.
        settings_hash: SHA-256 of the settings (what a stored file is checked against).
        cost: forward passes and seconds spent, None when loaded from a file.
        path: the file it was stored in, if any.
        autocast: "bfloat16" when evaluated under `autocast=True` (approximate losses), else None.
    """

    xs: np.ndarray
    ys: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    loss_stderr: np.ndarray | None
    directions: tuple[dict[str, Any], dict[str, Any]]
    cosine: float
    n_samples: int
    max_samples: int | None
    seed: int
    settings_hash: str
    cost: Cost | None = None
    path: str | None = None
    complete: bool = field(default=True)
    autocast: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Surface:
        """Read a surface written by `loss_surface(..., out=path)` (possibly partial: see
        `complete`; missing points are NaN)."""
        data = read(path)
        s = data["settings"]
        if s.get("kind") != "surface":
            raise LandscapeError(f"{str(path)!r} holds a {s.get('kind')!r}, not a surface.")
        return cls(
            xs=data["xs"], ys=data["ys"], loss=data["loss"],
            accuracy=_none_if_all_nan(data["accuracy"]),
            loss_stderr=_none_if_all_nan(data["loss_stderr"]),
            directions=tuple(s["directions"]),
            cosine=float("nan") if s["cosine"] is None else float(s["cosine"]),
            n_samples=int(s["n_samples"]), max_samples=s["max_samples"], seed=int(s["seed"]),
            settings_hash=data["settings_hash"], cost=None, path=str(path),
            complete=bool(data["done"].all()), autocast=s.get("autocast"),
        )

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


@dataclass(frozen=True)
class TrajectoryPCA:
    """The plane of an optimization trajectory (Li et al. 2018, section 7).

    Attributes:
        directions: the first two principal directions (unit norm, orthogonal), as Directions.
        explained_variance: fraction of the variance of the rows w_t - w_T explained by each.
        coords: (T, 2) coordinates of w_t - w_T projected on the two directions (the last row is
            (0, 0)): the path to draw over `loss_surface(probe, *directions, ...)` when the probe
            sits at the last checkpoint w_T.
    """

    directions: tuple[Direction, Direction]
    explained_variance: np.ndarray
    coords: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"directions": [d.to_dict() for d in self.directions],
                            "explained_variance": self.explained_variance,
                            "coords": self.coords})


# ---------------------------------------------------------------------- public functions


def loss_line(probe: Probe, direction: Direction | Tensor, alphas: Sequence[float] | np.ndarray,
              *, max_samples: int | None = None, seed: int = 0,
              out: str | os.PathLike | None = None, progress: bool = False,
              shard: str = "auto", batched: bool | None = None,
              autocast: bool = False) -> Line:
    """The loss along a line, f(a) = L(w + a d), at each a in `alphas`.

    Args:
        probe: the model at w, its data and loss.
        direction: a `Direction` or a flat tensor of length `probe.num_params`.
        alphas: step sizes (any order, may be negative).
        max_samples: evaluate each point on 8 independent subsets of max_samples // 8 samples
            and report the standard error (module docstring); None: all data, exact.
        seed: seeds the subsets (ignored for exact evaluation).
        out: optional `.h5`/`.npz` file written as points are computed; a rerun resumes.
        progress: show a tqdm progress bar (rank 0 only when distributed).
        shard: distributed only: "auto", "points" (each rank its own points, on all the data)
            or "data" (every point on every rank's share of the data); module docstring.
        batched: evaluate several points at once with `torch.func.vmap` over stacked weights
            (module docstring, "Speed"). None (default): on CUDA when the chunk fits the memory
            budget, else the per-point loop; True: also on CPU (where it is slower on the
            benchmarked models); False: never. Any vmap error falls back to the loop. Ignored
            (the loop) under torch.distributed.
        autocast: evaluate under `torch.autocast` in bfloat16 (CUDA, or CPU). Faster on GPUs
            but APPROXIMATE: the stored losses are not L(w + ...) exactly. Recorded as
            `autocast="bfloat16"` in the result and in the file's settings (and its hash).

    Returns:
        A `Line` (the whole line on every rank). Non-finite losses are NaN.

    Example:
        >>> import torch
        >>> from landscape import Probe, loss_line
        >>> lin = torch.nn.Linear(2, 2)
        >>> probe = Probe(lin, (torch.randn(8, 2), torch.zeros(8).long()))
        >>> line = loss_line(probe, torch.zeros(probe.num_params), [0.0, 1.0])
        >>> bool(line.loss[0] == line.loss[1] == probe.loss())
        True
    """
    vec = as_vector(probe, direction)
    a = _coords(alphas, "alphas")
    meter = probe.meter()
    store = run_grid(probe, [vec], {"alphas": a}, "line", [_meta(direction, vec)], out,
                      max_samples, seed, progress, {}, shard, batched=batched, autocast=autocast)
    return _make_line(probe, a, store, _meta(direction, vec), max_samples, seed, meter.cost())


def loss_surface(probe: Probe, dx: Direction | Tensor, dy: Direction | Tensor,
                 xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray, *,
                 max_samples: int | None = None, seed: int = 0,
                 out: str | os.PathLike | None = None, progress: bool = False,
                 shard: str = "auto", batched: bool | None = None,
                 autocast: bool = False) -> Surface:
    """The loss on a plane, `loss[i, j] = L(w + xs[i] dx + ys[j] dy)`.

    Points are evaluated row by row (i outer, j inner). With `out=` the file is written as
    points are computed (at most every 2 s, and when the run ends or raises); a rerun with the
    same probe weights, directions, grid and subset options evaluates only the missing points.
    A file made with other settings raises `LandscapeError`.

    Args:
        probe: the model at w, its data and loss.
        dx, dy: `Direction`s or flat tensors of length `probe.num_params` (not orthogonalized;
            `Surface.cosine` reports their cosine).
        xs, ys: coordinates along dx and dy (the grid may be non-square).
        max_samples, seed, out, progress, shard, batched, autocast: as in `loss_line`.

    Returns:
        A `Surface` (the whole grid on every rank); memory is O(len(xs) len(ys)) floats plus
        the probe's.

    Raises:
        LandscapeError: a direction of the wrong length, empty or non-finite coordinates, a bad
            `out` suffix, or a stored file made with other settings.
    """
    vx, vy = as_vector(probe, dx, "dx"), as_vector(probe, dy, "dy")
    x, y = _coords(xs, "xs"), _coords(ys, "ys")
    metas = [_meta(dx, vx), _meta(dy, vy)]
    cos = cosine(vx, vy)
    meter = probe.meter()
    store = run_grid(probe, [vx, vy], {"xs": x, "ys": y}, "surface", metas, out, max_samples,
                      seed, progress, {"cosine": _json_float(cos)}, shard, batched=batched,
                      autocast=autocast)
    return Surface(
        xs=x, ys=y, loss=store.loss.copy(), accuracy=_none_if_all_nan(store.accuracy),
        loss_stderr=None if max_samples is None else store.loss_stderr.copy(),
        directions=(metas[0], metas[1]), cosine=cos, n_samples=store.settings["n_samples"],
        max_samples=max_samples, seed=seed, settings_hash=store.hash, cost=meter.cost(),
        path=None if out is None else str(out), autocast=store.settings.get("autocast"),
    )


@validate_params(buffers=OneOf(INTERPOLATION_BUFFERS))
def interpolate(probe: Probe, other: Checkpoint,
                alphas: Sequence[float] | np.ndarray | None = None, *,
                buffers: str = "interpolate", bn_data: Any = None,
                max_samples: int | None = None, seed: int = 0,
                progress: bool = False, shard: str = "auto", batched: bool | None = None,
                autocast: bool = False) -> Line:
    """Linear interpolation f(a) = L((1 - a) w_A + a w_B) from the probe's w_A to `other`'s w_B.

    The probed parameters are interpolated; parameters outside the probe stay as they are.
    Floating-point buffers (BatchNorm running statistics) follow `buffers`:

    * "interpolate" (default): along the same path, (1 - a) b_A + a b_B, so that f(0) and f(1)
      are the two checkpoints' own losses. Cheap, but between the ends the network's real
      activation statistics differ (they shrink: "variance collapse", Jordan et al. 2023), so
      the barrier of a BatchNorm network is overstated;
    * "recompute": re-estimated at every alpha on the probe's data, or on `bn_data`
      (`landscape.batchnorm`: only the BatchNorm layers in train mode, the plain mean over the
      batches; on the subsets with `max_samples`), one more forward pass per point, always in
      the per-point loop (not under vmap). What Ainsworth et al. (2023) and Jordan et al.
      (2023) report for BatchNorm networks; f(0) and f(1) then use re-estimated, not stored,
      statistics. Nothing changes for a model without BatchNorm;
    * "keep": the probe's model's buffers at every alpha.

    Every parameter and buffer is restored bitwise afterwards.

    The barrier (Frankle et al. 2020; Entezari et al. 2022) is
    max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)), taken over the evaluated alphas in
    [0, 1] (0 and 1 are always evaluated, even when not in `alphas`); the same on the error
    1 - accuracy for classification. The barrier is >= 0; with no alphas strictly inside (0, 1)
    it is 0, so pass a fine grid.

    Args:
        probe: the model at w_A (alpha 0).
        other: w_B (alpha 1): a state dict, a model of the same architecture, or a checkpoint path.
        alphas: where to evaluate (may range outside [0, 1]); default 0, 0.05, ..., 1.
        buffers: "interpolate", "recompute" or "keep" (above).
        bn_data: for "recompute", other inputs than the probe's to estimate the statistics on
            (say training data while the probe holds test data): an inputs tensor or an
            `(inputs, targets)` tensor pair (split into batches of 256), or an iterable of
            batches whose first element is the inputs.
        max_samples, seed, progress, shard, batched, autocast: as in `loss_line`.

    Returns:
        A `Line` with `barrier`, `barrier_alpha`, `error_barrier`, `error_barrier_alpha`,
        `distance` = ||w_B - w_A|| and `cosine` = cos(w_A, w_B).

    Example:
        >>> import torch
        >>> from landscape import Probe, interpolate
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> line = interpolate(Probe(a, (torch.randn(8, 2), torch.zeros(8).long())), b)
        >>> line.barrier >= 0
        True
    """
    if bn_data is not None and buffers != "recompute":
        raise LandscapeError("bn_data is only used with buffers='recompute' (the inputs to "
                             "re-estimate the BatchNorm statistics on); drop it or pass "
                             "buffers='recompute'.")
    a = _coords(np.linspace(0.0, 1.0, 21) if alphas is None else alphas, "alphas")
    w_a = probe.flat_params()
    w_b = flat_from_checkpoint(probe, other)
    plan: Any = None  # "keep"
    if buffers == "interpolate":
        plan = buffer_ends(probe, other)
    elif buffers == "recompute":
        plan = Recompute(None if bn_data is None else input_batches(bn_data))
    d = w_b - w_a
    extra = np.array([e for e in (0.0, 1.0) if not np.any(a == e)])
    full = np.concatenate([a, extra])
    meta = {"source": "checkpoint", "normalization": None, "ignore": None, "seed": None,
            "norm": float(d.double().norm())}
    meter = probe.meter()
    store = run_grid(probe, [d], {"alphas": full}, "line", [meta], None, max_samples, seed,
                      progress, {"buffers": buffers}, shard, plan, batched=batched,
                      autocast=autocast)
    cost = meter.cost()
    loss, acc = store.loss, _none_if_all_nan(store.accuracy)
    loss_barrier, barrier_alpha = barrier(full, loss)
    err_barrier = err_alpha = None
    if acc is not None:
        err_barrier, err_alpha = barrier(full, 1.0 - acc)
    n = len(a)
    return Line(
        alphas=a, loss=loss[:n].copy(), accuracy=None if acc is None else acc[:n].copy(),
        loss_stderr=None if max_samples is None else store.loss_stderr[:n].copy(),
        direction=meta, n_samples=store.settings["n_samples"], max_samples=max_samples,
        seed=seed, cost=cost, barrier=loss_barrier, barrier_alpha=barrier_alpha,
        error_barrier=err_barrier, error_barrier_alpha=err_alpha,
        distance=float(d.double().norm()), cosine=cosine(w_a, w_b),
        autocast=store.settings.get("autocast"),
    )



def pca_directions(probe: Probe, checkpoints: Sequence[Checkpoint]) -> TrajectoryPCA:
    """The two principal directions of a trajectory w_0 ... w_T and the path's coordinates.

    The rows w_t - w_T (probed parameters only) are centred and decomposed by SVD (as
    scikit-learn's PCA, which Li et al. use); the explained variance is the fraction of the total
    variance of the rows. The path is the projection of w_t - w_T (not centred) on the two unit
    directions, so the last checkpoint sits at (0, 0).

    Args:
        probe: defines the parameters; put it at the last checkpoint w_T to draw the surface.
        checkpoints: at least 3 state dicts, models or paths, in training order; the last is w_T.
    """
    if len(checkpoints) < 3:
        raise LandscapeError(
            f"pca_directions needs at least 3 checkpoints (a trajectory); got {len(checkpoints)}."
        )
    w = torch.stack([flat_from_checkpoint(probe, c).double() for c in checkpoints])
    rows = w - w[-1]
    centred = rows - rows.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    if total <= 0:
        raise LandscapeError("the checkpoints are all identical: the trajectory has no variance.")
    comps = vh[:2]
    coords = (rows @ comps.T).cpu().numpy()
    dirs = tuple(Direction(c.to(probe.dtype), None, None, None, "pca") for c in comps)
    return TrajectoryPCA(directions=dirs, explained_variance=(s[:2] ** 2 / total).cpu().numpy(),
                         coords=coords)


# ---------------------------------------------------------------------- helpers


def _make_line(probe: Probe, a: np.ndarray, store: GridStore, meta: dict[str, Any],
               max_samples: int | None, seed: int, cost: Cost) -> Line:
    return Line(
        alphas=a, loss=store.loss.copy(), accuracy=_none_if_all_nan(store.accuracy),
        loss_stderr=None if max_samples is None else store.loss_stderr.copy(), direction=meta,
        n_samples=store.settings["n_samples"], max_samples=max_samples, seed=seed, cost=cost,
        autocast=store.settings.get("autocast"),
    )


def barrier(alphas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(max over a in [0, 1] of f(a) - ((1 - a) f(0) + a f(1)), the a where it occurs).

    `alphas` must contain 0 and 1; points outside [0, 1] are ignored. A non-finite f(a) in
    [0, 1] (a diverged point) makes the barrier NaN: it is unknown, not the largest finite gap.
    """
    a = np.asarray(alphas, dtype=float)
    f = np.asarray(values, dtype=float)
    f0, f1 = f[a == 0.0][0], f[a == 1.0][0]
    inside = (a >= 0.0) & (a <= 1.0)
    gap = f[inside] - ((1.0 - a[inside]) * f0 + a[inside] * f1)
    if not np.all(np.isfinite(gap)):
        return float("nan"), float("nan")
    k = int(np.argmax(gap))
    return float(gap[k]), float(a[inside][k])


def _coords(values: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise LandscapeError(f"{name} must be a sequence of numbers; got {values!r}.") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise LandscapeError(f"{name} must be a non-empty sequence of finite numbers.")
    return arr


def _meta(direction: Direction | Tensor, vec: Tensor) -> dict[str, Any]:
    if isinstance(direction, Direction):
        return direction.to_dict()
    return {"normalization": None, "ignore": None, "seed": None, "source": "vector",
            "norm": float(vec.double().norm()), "num_params": vec.numel()}


def _json_float(x: float) -> float | None:
    return x if np.isfinite(x) else None


def _none_if_all_nan(arr: np.ndarray) -> np.ndarray | None:
    return None if np.all(np.isnan(arr)) else arr.copy()


