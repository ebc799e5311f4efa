"""Curvature of the loss at w: Hessian eigenvalues, trace and spectral density."""

from .density import hessian_density
from .lanczos import hessian_eigenvalues
from .results import DensityResult, EigenResult, LayerResults, TraceResult
from .trace import hessian_trace

__all__ = [
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "LayerResults",
]
