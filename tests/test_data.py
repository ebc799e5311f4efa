"""The built-in digits data and reference models."""

from __future__ import annotations

import pytest
import torch

from landscape import LandscapeError
from landscape.data import digits_cnn, digits_loaders, digits_mlp, digits_resnet, digits_tensors


def test_digits_split_is_fixed_standardized_and_complete():
    xtr, ytr = digits_tensors("train")
    xte, yte = digits_tensors("test")
    assert xtr.shape == (1438, 64) and xte.shape == (359, 64)
    assert len(ytr) + len(yte) == 1797
    assert set(ytr.tolist()) == set(range(10))
    assert torch.allclose(xtr.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.equal(digits_tensors("train")[1], ytr)  # the same split every time
    assert digits_tensors("all", image=True)[0].shape == (1797, 1, 8, 8)
    with pytest.raises(LandscapeError, match="split must be"):
        digits_tensors("validation")


def test_models_run_and_skip_variant_differs():
    x, _ = digits_tensors("test", image=True)
    assert digits_cnn()(x).shape == (359, 10)
    assert digits_mlp()(x.flatten(1)).shape == (359, 10)
    with_skip, without = digits_resnet(skip=True).eval(), digits_resnet(skip=False).eval()
    assert with_skip(x).shape == (359, 10)
    # same weights (same seed), different function
    assert not torch.allclose(with_skip(x), without(x))
    # building a model does not disturb the global RNG
    state = torch.random.get_rng_state()
    digits_mlp(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())


def test_loaders_cover_the_split():
    train, test = digits_loaders(batch_size=100)
    assert sum(len(y) for _, y in train) == 1438
    assert sum(len(y) for _, y in test) == 359
