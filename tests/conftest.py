"""Shared fixtures (model snapshots, a seeded global generator). Shared helpers live in
tests/helpers/; the test files sit in folders that mirror the package (tests/curvature/ for
landscape/curvature/, ...). The folders have no __init__.py: pytest puts each on sys.path (and
tests/ itself, for `helpers`), so every test file name must be unique across tests/."""

from __future__ import annotations

import pytest
import torch
from helpers.models import ModelSnapshot


@pytest.fixture
def snapshot():
    return ModelSnapshot


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """The built-in digits models draw their initialization from torch's global generator when
    no seed is given: seed it per test so every test sees the same networks in any order."""
    torch.manual_seed(0)
