"""landscape: the geometry of a neural network's loss around a trained checkpoint.

Everything runs off one `Probe` (model + data + loss). The public API is what this module exports.
"""

from .checkpoint import load_checkpoint, read_state_dict
from .curvature import (
    DensityResult,
    EigenResult,
    LayerResults,
    TraceResult,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
)
from .errors import LandscapeError
from .probe import Cost, Evaluation, ParamInfo, Probe

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
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "LayerResults",
    # errors
    "LandscapeError",
]
