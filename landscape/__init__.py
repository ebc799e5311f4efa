"""landscape: the geometry of a neural network's loss around a trained checkpoint.

Everything runs off one `Probe` (model + data + loss). The public API is what this module exports.
"""

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
