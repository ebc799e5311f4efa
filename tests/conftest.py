"""Shared fixtures and checks: exact Hessians of small float64 models, and model snapshots."""

from __future__ import annotations

import pytest
import torch
from helpers.models import ModelSnapshot, exact_hessian, tiny_data, tiny_mlp  # noqa: F401

# `exact_hessian`, `tiny_data` and `tiny_mlp` stay importable from here for older test files;
# new tests import them from tests/helpers.


@pytest.fixture
def snapshot():
    return ModelSnapshot


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """The built-in digits models draw their initialization from torch's global generator when
    no seed is given: seed it per test so every test sees the same networks in any order."""
    torch.manual_seed(0)
