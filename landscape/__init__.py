"""landscape: the geometry of a neural network's loss around a trained checkpoint.

Everything runs off one `Probe` (model + data + loss). The public API is what this module exports.
"""

from .align import AlignResult, align_weights, aligned_barrier
from .checkpoint import load_checkpoint, read_state_dict
from .errors import LandscapeError
from .flatness import FlatnessResult, first_order_flatness
from .intrinsic import IntrinsicDimResult, intrinsic_dimension
from .probe import Cost, Evaluation, ParamInfo, Probe
from .sharpness import LayerSharpnessResult, SharpnessResult, adaptive_sharpness, sharpness

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
    # sharpness and flatness
    "sharpness",
    "adaptive_sharpness",
    "first_order_flatness",
    "SharpnessResult",
    "LayerSharpnessResult",
    "FlatnessResult",
    # permutation alignment and intrinsic dimension
    "align_weights",
    "AlignResult",
    "aligned_barrier",
    "intrinsic_dimension",
    "IntrinsicDimResult",
    # errors
    "LandscapeError",
]
