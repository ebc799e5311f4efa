"""Measures by name, shared by `audit`, `compare`, `track` and training monitors.

`REGISTRY[name]` is a `MeasureSpec` (description, settings for a budget's effort, how to run,
estimated cost); `register` adds one. See `landscape.measures.registry`.
"""

from .registry import (
    BASE_DESCRIPTIONS,
    BUDGETS,
    EFFORT,
    REGISTRY,
    Measure,
    MeasureContext,
    MeasureSpec,
    base_measures,
    descriptions,
    estimated_cost,
    from_result,
    measure_names,
    register,
    run_measure,
)
from .spread import N_SPLITS
from .stability import batch_sizes_for
from .standard import RHO_ADAPTIVE, RHO_AVERAGE, RHO_FLATNESS, RHO_WORST

__all__ = [
    "BASE_DESCRIPTIONS", "BUDGETS", "EFFORT", "REGISTRY", "RHO_ADAPTIVE", "RHO_AVERAGE",
    "RHO_FLATNESS", "RHO_WORST", "N_SPLITS", "Measure", "MeasureContext", "MeasureSpec",
    "base_measures", "batch_sizes_for", "descriptions", "estimated_cost", "from_result",
    "measure_names", "register", "run_measure",
]
