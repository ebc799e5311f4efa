"""Permutation alignment (weight matching) and aligned barriers: exact recovery of a permutation."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from landscape import AlignResult, LandscapeError, Probe, align_weights, aligned_barrier
from landscape.align import apply_permutation, barrier, permutation_spec, random_permutation
from landscape.data import digits_cnn, digits_mlp, digits_resnet, digits_tensors
from landscape.data.training import train

BUILDERS = {
    "mlp": (lambda: digits_mlp(hidden=16, seed=0), False),
    "cnn": (lambda: digits_cnn(channels=4, seed=0), True),
    "resnet": (lambda: digits_resnet(channels=4, n_blocks=2, seed=0), True),
    "plain": (lambda: digits_resnet(channels=4, n_blocks=2, skip=False, seed=0), True),
}


def _data(image: bool, n: int | None = None):
    x, y = digits_tensors("train", image=image)
    return (x, y) if n is None else (x[:n], y[:n])


@pytest.fixture(scope="module")
def trained():
    """Each architecture briefly trained on digits (so the barrier to a permuted copy is large)."""
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only contend on a shared machine
    try:
        for name, (build, image) in BUILDERS.items():
            x, y = _data(image, 512)
            loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
            out[name] = train(build(), loader, epochs=10, lr=0.01, optimizer="adam", seed=0)
    finally:
        torch.set_num_threads(threads)
    return out


def _permuted_copy(model: nn.Module, seed: int = 1):
    spec = permutation_spec(model, IMAGE.to(next(model.parameters()).dtype)
                            if any(isinstance(m, nn.Conv2d) for m in model.modules()) else None)
    perms = random_permutation(spec, seed)
    other = copy.deepcopy(model)
    other.load_state_dict(apply_permutation(model.state_dict(), spec, perms))
    return other, perms


def _randomize_buffers(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)


IMAGE = torch.zeros(2, 1, 8, 8)


def test_spec_of_resnet_merges_residual_stream():
    spec = permutation_spec(digits_resnet(channels=4, n_blocks=2), IMAGE)
    # the stem and both conv2 outputs are one group (the residual stream); each conv1 its own
    assert spec.groups == {"stem.0": 4, "blocks.0.conv1": 4, "blocks.1.conv1": 4}
    assert spec.axes["blocks.1.conv2.weight"] == {0: (("stem.0",),), 1: (("blocks.1.conv1",),)}
    assert spec.axes["blocks.0.bn2.running_var"] == {0: (("stem.0",),)}
    assert spec.axes["head.weight"] == {1: (("stem.0",),)}
    assert "head.bias" not in spec.axes  # the output is never permuted
    plain = permutation_spec(digits_resnet(channels=4, n_blocks=2, skip=False), IMAGE)
    assert len(plain.groups) == 5


def test_spec_of_cnn_flatten_blocks():
    spec = permutation_spec(digits_cnn(channels=4), IMAGE)
    # conv channel c covers features c*16 ... c*16 + 15 of the flattened 8 x 4 x 4 map
    assert spec.axes["7.weight"] == {1: (("3", 16),)}
    assert spec.axes["4.running_mean"] == {0: (("3",),)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_permuted_copy_computes_same_function(name):
    build, image = BUILDERS[name]
    model = build().double().eval()
    _randomize_buffers(model)
    other, perms = _permuted_copy(model)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     other.state_dict().values()))
    x = _data(image, 50)[0].double()
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_alignment_recovers_permutation(name, trained, snapshot):
    model = trained[name]
    other, perms = _permuted_copy(model, seed=5)
    snaps = snapshot(model), snapshot(other)
    res = align_weights(model, other, example_input=_data(BUILDERS[name][1], 2)[0])
    for s in snaps:
        s.assert_unchanged()
    assert isinstance(res, AlignResult) and res.converged
    for k, v in model.state_dict().items():
        assert torch.equal(res.state_dict[k], v), k
    # perms[g] maps aligned unit i -> unit of `other`; `other` unit j = model unit perms0[g][j]
    for g, p in res.perms.items():
        assert torch.equal(perms[g][torch.tensor(p)], torch.arange(len(p)))
    assert all(b >= a for a, b in zip(res.objective, res.objective[1:]))
    json.dumps(res.to_dict())
    assert "state_dict" not in res.to_dict()


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
def test_aligned_barrier_zero_after_large_before(name, trained, snapshot):
    model = trained[name]
    other, _ = _permuted_copy(model, seed=5)
    snaps = snapshot(model), snapshot(other)
    probe = Probe(model, _data(BUILDERS[name][1], 512))
    res = aligned_barrier(probe, other, alphas=[0.25, 0.5, 0.75])
    for s in snaps:
        s.assert_unchanged()
    assert res.raw.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the endpoints compute the same function: equal losses, and the raw path climbs
    assert res.raw.loss[0] == pytest.approx(res.raw.loss[-1], abs=1e-5)
    assert res.raw.loss_barrier > 0.3 * res.raw.loss[0] + 0.1
    assert res.raw.error_barrier > 0.05
    assert abs(res.aligned.loss_barrier) < 1e-12 and res.aligned.error_barrier == 0
    assert res.aligned.distance == 0 and res.raw.distance > 1
    assert res.n_forward == 10
    json.dumps(res.to_dict())


def test_independent_mlps_barrier_drops():
    x, y = _data(False)
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]
    a = train(digits_mlp(hidden=32, seed=0), loader, epochs=5, lr=0.05, seed=0)
    b = train(digits_mlp(hidden=32, seed=1), loader, epochs=5, lr=0.05, seed=1)
    res = aligned_barrier(Probe(a, (x, y)), b, alphas=[0.5], seed=0)
    assert res.aligned.loss_barrier < 0.7 * res.raw.loss_barrier
    assert res.aligned.distance < res.raw.distance
    assert res.alignment.objective[-1] > res.alignment.objective[0]


def test_buffers_keep_and_interpolate(trained, snapshot):
    model = trained["cnn"]
    other, _ = _permuted_copy(model, seed=2)
    probe = Probe(model, _data(True, 300))
    snap = snapshot(model)
    keep = aligned_barrier(probe, other, alphas=[0.5], buffers="keep")
    interp = aligned_barrier(probe, other, alphas=[0.5], buffers="interpolate")
    snap.assert_unchanged()
    # interpolated buffers: f(1) is model B itself, which equals model A's function
    assert interp.raw.loss[-1] == pytest.approx(interp.raw.loss[0], abs=1e-5)
    assert keep.raw.loss[-1] != pytest.approx(keep.raw.loss[0], abs=1e-3)
    assert keep.aligned.loss == interp.aligned.loss
    x, _ = _data(True, 256)
    redo = aligned_barrier(probe, other, alphas=[0.5], buffers="recompute", bn_data=x)
    snap.assert_unchanged()
    # statistics re-estimated on the same inputs at every point: the aligned path is flat
    assert abs(redo.aligned.loss_barrier) < 1e-9 and redo.raw.loss_barrier > 0.1
    assert redo.raw.loss[0] == pytest.approx(redo.raw.loss[-1], abs=1e-5)
    # without bn_data the statistics come from the probe's own data: the same conclusions
    own = aligned_barrier(probe, other, alphas=[0.5], buffers="recompute")
    snap.assert_unchanged()
    assert abs(own.aligned.loss_barrier) < 1e-9 and own.raw.loss_barrier > 0.1
    assert own.raw.loss != redo.raw.loss  # other inputs, other statistics


def test_barrier_ground_truth():
    # DESIGN.md ground truth 9: (w^2 - 1)^2 between w = -1 and w = 1 has barrier 1 at a = 1/2
    alphas = torch.linspace(0, 1, 11).tolist()
    values = [((2 * a - 1) ** 2 - 1) ** 2 for a in alphas]
    value, at = barrier(alphas, values)
    assert value == pytest.approx(1.0) and at == pytest.approx(0.5)


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).cumsum(1) * torch.softmax(x, dim=1)


def test_errors(trained):
    with pytest.raises(LandscapeError, match="cumsum.*by hand"):
        permutation_spec(_Gated())
    with pytest.raises(LandscapeError, match="same architecture"):
        align_weights(digits_mlp(hidden=8), digits_mlp(hidden=16))
    with pytest.raises(LandscapeError, match="max_iter"):
        align_weights(digits_mlp(), digits_mlp(), max_iter=0)
    probe = Probe(trained["mlp"], _data(False, 50))
    with pytest.raises(LandscapeError, match="buffers must be one of"):
        aligned_barrier(probe, trained["mlp"], buffers="reset")
    with pytest.raises(LandscapeError, match="bn_data is only used with buffers='recompute'"):
        aligned_barrier(probe, trained["mlp"], buffers="keep", bn_data=_data(False, 50)[0])
    spec = permutation_spec(digits_mlp(hidden=8))
    with pytest.raises(LandscapeError, match="permutation of range"):
        apply_permutation(digits_mlp(hidden=8).state_dict(), spec, {"0": [0] * 8, "2": range(8)})
