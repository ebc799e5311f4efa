"""Measures by name, shared by `audit`, `compare`, `track` and training monitors.

`REGISTRY[name]` is a `MeasureSpec` (description, settings for a budget's effort, how to run,
estimated cost); `register` adds one. `MONITOR_REGISTRY[name]` is a `MonitorSpec`, a measure of
`landscape.monitor.CurvatureMonitor` (description, settings, function, cost estimate);
`register_monitor` adds one. See `landscape.measures.registry`.
"""

from .registry import (
    BASE_DESCRIPTIONS,
    BUDGETS,
    EFFORT,
    MONITOR_REGISTRY,
    REGISTRY,
    Measure,
    MeasureContext,
    MeasureSpec,
    MonitorSpec,
    base_measures,
    descriptions,
    estimated_cost,
    from_result,
    measure_names,
    monitor_cost,
    register,
    register_monitor,
    run_measure,
)
from .spread import N_SPLITS
from .stability import batch_sizes_for
from .standard import RHO_ADAPTIVE, RHO_AVERAGE, RHO_FLATNESS, RHO_WORST

# isort: split
# last: the monitor registers its measures in MONITOR_REGISTRY, so the registry lists them all
from ..monitor import measures as _monitor_measures  # noqa: F401

__all__ = [
    "BASE_DESCRIPTIONS", "BUDGETS", "EFFORT", "MONITOR_REGISTRY", "REGISTRY", "RHO_ADAPTIVE",
    "RHO_AVERAGE", "RHO_FLATNESS", "RHO_WORST", "N_SPLITS", "Measure", "MeasureContext",
    "MeasureSpec", "MonitorSpec", "base_measures", "batch_sizes_for", "descriptions",
    "estimated_cost", "from_result", "measure_names", "monitor_cost", "register",
    "register_monitor", "run_measure",
]
