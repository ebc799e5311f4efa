"""No-grad evaluation re-batches the cached data into large chunks when the loss is a per-sample
mean: the same values as the user's batches, fewer forward passes; never with a batch loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from torch.utils.data import DataLoader, TensorDataset

from landscape import LandscapeError, Probe, loss_surface, random_direction
from landscape.probe_data import merge_batches


def _loader(batch_size: int, n: int = 90) -> DataLoader:
    x, y = tiny_data(n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_evaluation_in_chunks_equals_the_users_batches():
    model = tiny_mlp()
    chunked = Probe(model, _loader(7))
    kept = Probe(model, _loader(7), rebatch=False)
    whole = Probe(model, _loader(90))
    for p in (chunked, kept, whole):
        p.loss()  # first-use checks (always in the user's batches)
    delta = 0.1 * torch.ones(chunked.num_params, dtype=torch.float64)
    meters = [p.meter() for p in (chunked, kept)]
    a, b, c = (p.evaluate(delta) for p in (chunked, kept, whole))
    assert a.loss == pytest.approx(b.loss, rel=1e-12) and a.loss == pytest.approx(c.loss, rel=1e-12)
    assert a.accuracy == b.accuracy == c.accuracy and a.n_samples == b.n_samples == 90
    assert meters[0].cost().n_batch_forward == 1  # 13 user batches, one chunk
    assert meters[1].cost().n_batch_forward == 13


def test_surfaces_are_the_same_in_chunks(snapshot):
    model = tiny_mlp()
    chunked, kept = Probe(model, _loader(8)), Probe(model, _loader(8), rebatch=False)
    snap = snapshot(model)
    d1, d2 = random_direction(chunked, seed=0), random_direction(chunked, seed=1)
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-1, 1, 3)
    s1 = loss_surface(chunked, d1, d2, xs, ys)
    s2 = loss_surface(kept, d1, d2, xs, ys)
    np.testing.assert_allclose(s1.loss, s2.loss, rtol=1e-12)
    np.testing.assert_allclose(s1.accuracy, s2.accuracy)
    # the same values from far fewer forward passes: 12 points of 12 batches, or of one chunk
    # (both also pay the first-use checks, two passes of 12 batches)
    assert s2.cost.n_batch_forward == 12 * 12 + 2 * 12
    assert s1.cost.n_batch_forward <= 12 + 2 * 12 + 1  # +1: a measure of the activations
    snap.assert_unchanged()


def test_a_batch_loss_keeps_the_users_batches():
    """A batch loss may depend on the whole batch (contrastive losses), so chunks would change
    it: here the loss is the batch's mean over its largest-logit sample only."""
    model = tiny_mlp()
    x, y = tiny_data(40)
    batches = [(x[s : s + 10], y[s : s + 10]) for s in range(0, 40, 10)]

    def batch_loss(m, batch):
        out = m(batch[0])
        return out.max()

    probe = Probe(model, batches, batch_loss=batch_loss)
    probe.loss()
    meter = probe.meter()
    value = probe.loss()
    assert meter.cost().n_batch_forward == 4
    with torch.no_grad():
        expected = float(sum(model(b[0]).max() for b in batches) / 4)
    assert value == pytest.approx(expected, rel=1e-12)


def test_chunks_respect_the_size_limit_and_odd_structures():
    x, y = tiny_data(25)
    batches = [(x[s : s + 4], y[s : s + 4]) for s in range(0, 25, 4)]  # 6 of 4, one of 1

    def count(b):
        return len(b[1])

    chunks = merge_batches(batches, 10, count)
    assert [count(c) for c in chunks] == [8, 8, 9]
    torch.testing.assert_close(torch.cat([c[0] for c in chunks]), x)
    assert merge_batches(batches, 100, count)[0][0].shape == (25, 5)
    # dict inputs merge key by key; non-tensor entries must agree
    dicts = [({"a": x[s : s + 5], "flag": True}, y[s : s + 5]) for s in range(0, 25, 5)]
    merged = merge_batches(dicts, 100, count)
    assert merged[0][0]["a"].shape == (25, 5) and merged[0][0]["flag"] is True
    # structures that cannot be concatenated: None (the caller keeps the user's batches)
    ragged = [(x[:4], y[:4]), (x[:4, :3], y[:4])]
    assert merge_batches(ragged, 100, count) is None


def test_rebatch_option_is_checked():
    with pytest.raises(LandscapeError, match="rebatch must be"):
        Probe(tiny_mlp(), _loader(7), rebatch="yes")


def test_a_list_of_two_tensors_with_a_batch_loss_is_two_batches():
    """Token batches for a language model: [t1, t2] with a batch loss are two batches, not an
    (inputs, targets) pair; a tuple stays a pair."""
    tokens = torch.randn(2, 6, 5, dtype=torch.float64)
    model = tiny_mlp()

    def batch_loss(m, batch):
        return m(batch).pow(2).mean()

    probe = Probe(model, [tokens[0], tokens[1]], batch_loss=batch_loss,
                  n_samples_fn=lambda b: len(b))
    with torch.no_grad():
        expected = float((batch_loss(model, tokens[0]) + batch_loss(model, tokens[1])) / 2)
    assert probe.loss() == pytest.approx(expected, rel=1e-12)
    pair = Probe(model, (tokens[0], tokens[1]), batch_loss=lambda m, b: m(b[0]).mean(),
                 n_samples_fn=lambda b: len(b[0]))
    assert pair.n_samples == 6
