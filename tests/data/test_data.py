"""The built-in digits data, reference models and the quadratic ground truth."""

from __future__ import annotations

import pytest
import torch

from landscape import LandscapeError
from landscape.data import (
    digits_cnn,
    digits_loaders,
    digits_mlp,
    digits_resnet,
    digits_tensors,
    quadratic_probe,
)


def test_digits_split_is_fixed_standardized_and_complete():
    xtr, ytr = digits_tensors("train")
    xte, yte = digits_tensors("test")
    assert xtr.shape == (1438, 64) and xte.shape == (359, 64)
    assert len(ytr) + len(yte) == 1797
    assert set(ytr.tolist()) == set(range(10))
    assert torch.allclose(xtr.mean(0), torch.zeros(64), atol=1e-5)
    assert torch.equal(digits_tensors("train")[1], ytr)  # the same split every time
    assert digits_tensors("all", image=True)[0].shape == (1797, 1, 8, 8)
    raw, _ = digits_tensors("train", standardize=False, dtype=torch.float64)
    assert torch.equal(raw, raw.round()) and raw.min() == 0 and raw.max() == 16
    standardized = (raw - raw.mean(0)) / raw.std(0).clamp_min(1e-3)
    torch.testing.assert_close(standardized.float(), xtr)
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


def test_quadratic_probe_has_the_loss_gradient_and_hessian_it_is_built_with(snapshot):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    H, w_star = a @ a.T, torch.randn(4, generator=g, dtype=torch.float64)
    start = torch.randn(4, generator=g, dtype=torch.float64)
    lin = torch.randn(4, generator=g, dtype=torch.float64)
    probe = quadratic_probe(H, minimum=w_star, start=start, offset=0.5, gradient=lin)
    snap = snapshot(probe.model)
    v = start - w_star
    assert probe.loss() == pytest.approx(0.5 + 0.5 * float(v @ H @ v) + float(lin @ v),
                                         rel=1e-12)
    torch.testing.assert_close(probe.gradient(), H @ v + lin)
    u = torch.randn(4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(probe.hvp(u), H @ u)
    assert quadratic_probe([2.0, 5.0]).loss() == 0.0  # starts at its minimum by default
    torch.testing.assert_close(quadratic_probe([2.0, 5.0]).hvp(torch.ones(2, dtype=torch.float64)),
                               torch.tensor([2.0, 5.0], dtype=torch.float64))
    snap.assert_unchanged()


@pytest.mark.parametrize("kwargs, match", [
    (dict(hessian=[[1.0, 2.0]]), "square matrix"),
    (dict(hessian=[[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
    (dict(hessian=[1.0, 2.0], minimum=[0.0]), "minimum must have length 2"),
    (dict(hessian=[1.0, 2.0], start=[0.0, 1.0, 2.0]), "start must have length 2"),
    (dict(hessian=[1.0, 2.0], gradient=[1.0]), "gradient must have length 2"),
])
def test_quadratic_probe_rejects_bad_input(kwargs, match):
    with pytest.raises(LandscapeError, match=match):
        quadratic_probe(**kwargs)


def test_digits_models_follow_the_global_seed_unless_given_one():
    """A "second network" made after another torch.manual_seed is a different network (as with
    torch.nn layers); seed= fixes the initialization whatever the global state."""
    from landscape.data import digits_cnn, digits_mlp, digits_resnet

    for make in (digits_mlp, digits_cnn, digits_resnet):
        torch.manual_seed(0)
        first = torch.nn.utils.parameters_to_vector(make().parameters())
        torch.manual_seed(1)
        second = torch.nn.utils.parameters_to_vector(make().parameters())
        assert not torch.equal(first, second), make.__name__
        torch.manual_seed(0)
        assert torch.equal(first, torch.nn.utils.parameters_to_vector(make().parameters()))
        fixed = [torch.nn.utils.parameters_to_vector(make(seed=3).parameters()) for _ in range(2)]
        torch.manual_seed(5)
        fixed.append(torch.nn.utils.parameters_to_vector(make(seed=3).parameters()))
        assert torch.equal(fixed[0], fixed[1]) and torch.equal(fixed[0], fixed[2])


def test_cosine_schedule_anneals_the_step_and_on_epoch_sees_each_epoch():
    """Plain SGD on L(w) = w^2 / 2 (gradient w), one batch an epoch: w_e = w_{e-1} (1 - lr_e),
    lr_e = lr (1 + cos(pi e / E)) / 2 for e = 0..E-1 under "cosine", lr under "constant"."""
    import math

    from landscape.data.training import train

    def run(schedule):
        model = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        seen = []
        train(model, [(torch.zeros(1, 1), torch.zeros(1))], epochs=4, lr=0.5, momentum=0.0,
              schedule=schedule, loss_fn=lambda out, _y: 0.5 * (model.weight ** 2).sum(),
              on_epoch=lambda e, m: seen.append((e, m.training, m.weight.item())))
        return seen

    expected, w = [], 1.0
    for e in range(4):
        w *= 1 - 0.5 * (1 + math.cos(math.pi * e / 4)) / 2
        expected.append((e + 1, False, pytest.approx(w)))
    assert run("cosine") == expected
    assert [s[2] for s in run("constant")] == pytest.approx([0.5 ** k for k in range(1, 5)])
    with pytest.raises(LandscapeError, match="schedule"):
        train(torch.nn.Linear(1, 1), [], schedule="linear")
