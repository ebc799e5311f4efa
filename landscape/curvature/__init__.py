"""Curvature of the loss at w: Hessian eigenvalues, trace and spectral density."""

from .alignment import AlignmentResult, hessian_alignment
from .batch_spectrum import BatchRow, BatchSpectrum, batch_size_spectrum
from .density import hessian_density
from .frobenius import FrobeniusResult, hessian_frobenius
from .lanczos import hessian_eigenvalues
from .results import DensityResult, EigenResult, LayerResults, TraceResult
from .trace import hessian_trace

__all__ = [
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "hessian_frobenius",
    "batch_size_spectrum",
    "hessian_alignment",
    "FrobeniusResult",
    "BatchSpectrum",
    "BatchRow",
    "AlignmentResult",
    "EigenResult",
    "TraceResult",
    "DensityResult",
    "LayerResults",
]
