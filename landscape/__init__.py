"""landscape: the geometry of a neural network's loss around a trained checkpoint.

Everything runs off one `Probe` (model + data + loss). The public API is what this module exports.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agreement import AgreementResult, quadratic_agreement
    from .align import (
        AlignResult,
        PermutationSpec,
        align_weights,
        aligned_barrier,
        apply_permutation,
        permutation_spec,
    )
    from .audit import AuditReport, Measure, audit
    from .checkpoint import load_checkpoint, read_state_dict
    from .compare import Comparison, PairResult, compare
    from .curvature import (
        AlignmentResult,
        BatchRow,
        BatchSpectrum,
        DensityResult,
        EigenResult,
        FrobeniusResult,
        LayerResults,
        TraceResult,
        batch_size_spectrum,
        hessian_alignment,
        hessian_density,
        hessian_eigenvalues,
        hessian_frobenius,
        hessian_trace,
    )
    from .directions import (
        Direction,
        direction_from_checkpoint,
        direction_from_vector,
        random_direction,
    )
    from .entropy import LocalEntropyResult, local_entropy
    from .errors import LandscapeError
    from .flatness import FlatnessResult, first_order_flatness
    from .intrinsic import IntrinsicDimResult, intrinsic_dimension
    from .monitor import CurvatureMonitor
    from .pacbayes import PacBayesResult, pac_bayes_flatness
    from .probe import Cost, Evaluation, ParamInfo, Probe
    from .sharpness import LayerSharpnessResult, SharpnessResult, adaptive_sharpness, sharpness
    from .spread import DataSpread, data_spread
    from .surface import (
        Line,
        Surface,
        TrajectoryPCA,
        interpolate,
        loss_line,
        loss_surface,
        pca_directions,
    )
    from .track import Track, track

# Where each public name lives. The names load on first use (PEP 562), so `import landscape`
# and the command line's `--help` stay fast: torch and matplotlib load only when needed.
_EXPORTS: dict[str, str] = {
    "AgreementResult": ".agreement",
    "quadratic_agreement": ".agreement",
    "AlignResult": ".align",
    "PermutationSpec": ".align",
    "align_weights": ".align",
    "aligned_barrier": ".align",
    "apply_permutation": ".align",
    "permutation_spec": ".align",
    "AuditReport": ".audit",
    "Measure": ".audit",
    "audit": ".audit",
    "load_checkpoint": ".checkpoint",
    "read_state_dict": ".checkpoint",
    "Comparison": ".compare",
    "PairResult": ".compare",
    "compare": ".compare",
    "AlignmentResult": ".curvature",
    "BatchRow": ".curvature",
    "BatchSpectrum": ".curvature",
    "DensityResult": ".curvature",
    "EigenResult": ".curvature",
    "FrobeniusResult": ".curvature",
    "LayerResults": ".curvature",
    "TraceResult": ".curvature",
    "batch_size_spectrum": ".curvature",
    "hessian_alignment": ".curvature",
    "hessian_density": ".curvature",
    "hessian_eigenvalues": ".curvature",
    "hessian_frobenius": ".curvature",
    "hessian_trace": ".curvature",
    "Direction": ".directions",
    "direction_from_checkpoint": ".directions",
    "direction_from_vector": ".directions",
    "random_direction": ".directions",
    "LocalEntropyResult": ".entropy",
    "local_entropy": ".entropy",
    "LandscapeError": ".errors",
    "FlatnessResult": ".flatness",
    "first_order_flatness": ".flatness",
    "IntrinsicDimResult": ".intrinsic",
    "intrinsic_dimension": ".intrinsic",
    "CurvatureMonitor": ".monitor",
    "PacBayesResult": ".pacbayes",
    "pac_bayes_flatness": ".pacbayes",
    "Cost": ".probe",
    "Evaluation": ".probe",
    "ParamInfo": ".probe",
    "Probe": ".probe",
    "LayerSharpnessResult": ".sharpness",
    "SharpnessResult": ".sharpness",
    "adaptive_sharpness": ".sharpness",
    "sharpness": ".sharpness",
    "DataSpread": ".spread",
    "data_spread": ".spread",
    "Line": ".surface",
    "Surface": ".surface",
    "TrajectoryPCA": ".surface",
    "interpolate": ".surface",
    "loss_line": ".surface",
    "loss_surface": ".surface",
    "pca_directions": ".surface",
    "Track": ".track",
    "track": ".track",
}

__version__ = "0.1.0"

__all__ = [
    # the probe
    "Probe",
    "Cost",
    "Evaluation",
    "ParamInfo",
    # checkpoints
    "load_checkpoint",
    "read_state_dict",
    # curvature
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "hessian_frobenius",
    "batch_size_spectrum",
    "hessian_alignment",
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "FrobeniusResult",
    "BatchSpectrum",
    "BatchRow",
    "AlignmentResult",
    "LayerResults",
    # sharpness and flatness
    "sharpness",
    "adaptive_sharpness",
    "first_order_flatness",
    "SharpnessResult",
    "LayerSharpnessResult",
    "FlatnessResult",
    # how much the data decides
    "data_spread",
    "DataSpread",
    # directions and surfaces
    "Direction",
    "random_direction",
    "direction_from_vector",
    "direction_from_checkpoint",
    "Line",
    "Surface",
    "TrajectoryPCA",
    "loss_line",
    "loss_surface",
    "interpolate",
    "pca_directions",
    # workflows
    "audit",
    "AuditReport",
    "Measure",
    "compare",
    "Comparison",
    "PairResult",
    "track",
    "Track",
    "CurvatureMonitor",
    # beyond the peers
    "pac_bayes_flatness",
    "PacBayesResult",
    "local_entropy",
    "LocalEntropyResult",
    "quadratic_agreement",
    "AgreementResult",
    # permutation alignment and intrinsic dimension
    "align_weights",
    "AlignResult",
    "aligned_barrier",
    "permutation_spec",
    "PermutationSpec",
    "apply_permutation",
    "intrinsic_dimension",
    "IntrinsicDimResult",
    # errors
    "LandscapeError",
]


class _Package(types.ModuleType):
    """The package's module type. Importing a submodule binds it as an attribute of the package;
    where a public function has the submodule's name (`audit`, `compare`, `track`,
    `sharpness`), the function is bound instead, as an eager `from .audit import audit` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f".{name}":
            value = getattr(value, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    """A public name (or a submodule such as `landscape.curvature`) imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
