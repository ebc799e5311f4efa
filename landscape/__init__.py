"""landscape: the geometry of a neural network's loss around a trained checkpoint.

Everything runs off one `Probe` (model + data + loss). The public API is what this module exports.
"""

from .agreement import AgreementResult, quadratic_agreement
from .checkpoint import load_checkpoint, read_state_dict
from .entropy import LocalEntropyResult, local_entropy
from .errors import LandscapeError
from .flatness import FlatnessResult, first_order_flatness
from .pacbayes import PacBayesResult, pac_bayes_flatness
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
    # PAC-Bayes flatness, local entropy, quadratic-model agreement
    "pac_bayes_flatness",
    "local_entropy",
    "quadratic_agreement",
    "PacBayesResult",
    "LocalEntropyResult",
    "AgreementResult",
    # errors
    "LandscapeError",
]
