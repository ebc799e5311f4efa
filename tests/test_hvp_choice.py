"""How hvp_method="auto" chooses: by measured time per product among the methods whose memory
fits the budget, with the kept graph's memory counted as distinct storage (not as saved-tensor
references). Correctness tests with fake timings, never timed tests."""

from __future__ import annotations

import math

import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp
from torch import nn

from landscape import Probe, hvp
from landscape.hvp import SavedStorage, choose_method


def test_choose_method_takes_the_fastest_within_the_budget():
    times = {"cached_graph": 1.0, "double_backward": 2.0, "forward_over_reverse": 0.5}
    assert choose_method(times, fits=list(times)) == "forward_over_reverse"
    assert choose_method(times, fits=["cached_graph", "double_backward"]) == "cached_graph"
    assert choose_method({**times, "cached_graph": math.inf}, fits=["cached_graph",
                         "double_backward"]) == "double_backward"
    assert choose_method({}, fits=list(times)) == "double_backward"


def test_saved_storage_counts_each_storage_once_and_leaves_out_parameters():
    w = torch.randn(1000, requires_grad=True)

    def graph():
        a = w.exp()  # saves its result a
        return (a * a).sum() + (a[:500] * a[500:]).sum() + (w * w).sum()  # a, a, views, w

    saved = SavedStorage([w])
    with saved.counting():
        loss = graph()
    assert saved.total == 4000  # a's storage once; w (excluded) not at all
    refs = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: refs.append(t.numel() * t.element_size()) or t, lambda t: t):
        loss = graph()
    assert sum(refs) == 4000 * 3 + 2000 * 2 + 4000 * 2  # what counting references gave
    del loss


class _Tied(nn.Module):
    """One 60x60 weight applied ten times: autograd saves it ten times, it is stored once."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(60, 60, generator=g, dtype=torch.float64) / 8)
        self.head = nn.Linear(60, 3, dtype=torch.float64)

    def forward(self, x):
        for _ in range(10):
            x = torch.tanh(x @ self.w)
        return self.head(x)


def test_auto_keeps_a_graph_whose_distinct_storage_fits_though_its_references_do_not():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 60, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4,), generator=g)
    model = _Tied()
    n = sum(p.numel() for p in model.parameters())
    # references: the weight alone 10 x 28.8 kB; distinct: activations + the kept gradient
    budget = 3 * n * 8
    probe = Probe(model, (x, y), batch_size=4, graph_bytes=budget)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    H = exact_hessian(model, x, y)
    torch.testing.assert_close(probe.hvp(v), H @ v)
    assert probe.hvp_method_used == "cached_graph"
    assert 0 < probe._hvp.graph_bytes_measured <= budget
    torch.testing.assert_close(probe.hvp(v), H @ v)  # through the kept graph


def _fake_one_batch_times(monkeypatch, ratio):
    """forward-over-reverse measured `ratio` times double backward on one batch."""
    monkeypatch.setattr(hvp.HvpEngine, "_time_uncached",
                        lambda self, v: {"double_backward": 1.0, "forward_over_reverse": ratio})


def test_auto_picks_the_faster_method_by_measured_time_even_when_the_graph_fits(monkeypatch):
    model = tiny_mlp()
    x, y = tiny_data(90)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    H = exact_hessian(model, x, y)
    # 9 batches: forward-over-reverse is timed on one batch; here it is 100 times faster
    _fake_one_batch_times(monkeypatch, 0.01)
    fast = Probe(model, (x, y), batch_size=10)
    torch.testing.assert_close(fast.hvp(v), H @ v)
    assert fast.hvp_method_used == "forward_over_reverse"
    assert fast._hvp._graph is None  # the graph was not kept
    assert set(fast._hvp.times) == set(hvp.HVP_METHODS) - {"auto"}
    torch.testing.assert_close(fast.hvp(v), H @ v)
    # twice slower: the kept graph (one backward pass a product) wins
    _fake_one_batch_times(monkeypatch, 2.0)
    cached = Probe(model, (x, y), batch_size=10)
    torch.testing.assert_close(cached.hvp(v), H @ v)
    assert cached.hvp_method_used == "cached_graph"
    times = cached._hvp.times
    assert times["cached_graph"] < times["double_backward"] < times["forward_over_reverse"]


class _ExpGrad(torch.autograd.Function):
    """f(w) = exp(w), whose backward ends in exp: the gradient is the output of an operation
    that saves its output, so a kept graph must keep the gradient's values."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return w.exp()

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return torch.exp(w + grad.log())  # = grad * exp(w) for grad > 0


class _ExpModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))

    def forward(self, x):
        return _ExpGrad.apply(self.w).sum() * x.sum() / x.sum()


def test_the_kept_graph_frees_the_gradient_values_only_where_no_backward_reads_them():
    model = tiny_mlp()
    x, y = tiny_data(30)
    probe = Probe(model, (x, y), batch_size=30)
    v = torch.randn(probe.num_params, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    H = exact_hessian(model, x, y)
    torch.testing.assert_close(probe.hvp(v), H @ v)
    kept = [g for g in probe._hvp._graph[0] if g is not None]
    assert kept and all(g.untyped_storage().nbytes() == 0 for g in kept)  # no vector kept
    torch.testing.assert_close(probe.hvp(v), H @ v)
    # a gradient that its own backward reads (exp saves its output) keeps its values
    exp_model = _ExpModel()
    ones = torch.ones(2, 1, dtype=torch.float64)
    exp_probe = Probe(exp_model, [(ones, ones)], batch_loss=lambda m, b: m(b[0]),
                      n_samples_fn=lambda b: 2)
    u = torch.randn(7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = exp_model.w.detach().exp() * u  # H = diag(exp(w))
    for _ in range(2):  # the first product and one through the kept graph
        torch.testing.assert_close(exp_probe.hvp(u), expected)
    assert exp_probe.hvp_method_used == "cached_graph"
    assert exp_probe._hvp._graph[0][0].untyped_storage().nbytes() > 0


def test_finite_differences_are_chosen_for_a_call_only_when_faster_and_accurate_enough():
    from landscape.hvp_choice import HvpCheck, fd_verdict

    # measured relative error 1e-4; 1 s a finite difference against 2 s exact
    check = HvpCheck(1e-4, 1.0, 1.0, True, exact_seconds=2.0, fd_seconds=1.0)
    assert fd_verdict(check, tol=1e-3)[0]  # 1e-4 <= tol / 2, and 2x faster
    use, why = fd_verdict(check, tol=1e-4)  # not accurate enough for tol 1e-4
    assert not use and "exceeds" in why
    slow = HvpCheck(1e-4, 1.0, 1.0, True, exact_seconds=1.2, fd_seconds=1.0)
    assert not fd_verdict(slow, tol=1e-3)[0]  # not 1.5x faster
    kinks = HvpCheck(1e-4, 1e-5, 1.0, False, exact_seconds=2.0, fd_seconds=1.0)
    assert not fd_verdict(kinks, tol=1e-3)[0]  # the check did not pass
    assert not fd_verdict(None, tol=1e-3)[0]
