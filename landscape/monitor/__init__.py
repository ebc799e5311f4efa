"""Curvature during training: `CurvatureMonitor` for a plain PyTorch loop, its measures and logs.

The Lightning and Hugging Face callbacks built on it live in `landscape.integrations`.
"""

from .loggers import read_rows
from .measures import MEASURES, REQUIREMENTS, MeasureContext
from .monitor import DEFAULT_MEASURES, CurvatureMonitor

__all__ = ["CurvatureMonitor", "DEFAULT_MEASURES", "MEASURES", "REQUIREMENTS", "MeasureContext",
           "read_rows"]
