"""The Probe: loss, gradient and HVP against exact answers; safety; every bad-input error."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape import LandscapeError, Probe

HVP_METHODS = ["cached_graph", "double_backward", "forward_over_reverse", "auto"]


def test_loss_is_sample_weighted_mean_with_unequal_last_batch():
    model = tiny_mlp()
    x, y = tiny_data(37)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)  # 10, 10, 10, 7
    full = nn.functional.cross_entropy(model(x), y).item()
    probe = Probe(model, loader)
    assert probe.loss() == pytest.approx(full, rel=1e-12)
    assert probe.n_samples == 37
    # a plain mean of the batch means would be wrong here: make sure the test can tell
    batch_means = [nn.functional.cross_entropy(model(xb), yb).item() for xb, yb in loader]
    assert abs(np.mean(batch_means) - full) > 1e-6


def test_accuracy_is_the_argmax_rate_with_ties_going_to_the_first_class():
    model = tiny_mlp()
    x, y = tiny_data(37)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    want = (model(x).argmax(1) == y).double().mean().item()
    assert Probe(model, loader).evaluate().accuracy == pytest.approx(want, abs=1e-15)
    # constant logits tied between classes 0 and 1: argmax is class 0, so only targets 0 count
    tied = nn.Linear(3, 3)
    with torch.no_grad():
        tied.weight.zero_()
        tied.bias.copy_(torch.tensor([1.0, 1.0, 0.0]))
    xt, yt = torch.randn(6, 3), torch.tensor([0, 1, 1, 2, 0, 1])
    assert Probe(tied, (xt, yt)).evaluate().accuracy == pytest.approx(2 / 6)


def test_device_tensor_sums_equal_host_sums():
    # the GPU path keeps the sums on the device; run it on CPU to check it agrees
    model = tiny_mlp()
    x, y = tiny_data(37)
    host = Probe(model, DataLoader(TensorDataset(x, y), batch_size=10))
    device = Probe(model, DataLoader(TensorDataset(x, y), batch_size=10))
    device.batch_pass.host_sums = False
    a, b = host.evaluate(), device.evaluate()
    assert b.loss == pytest.approx(a.loss, rel=1e-14) and b.accuracy == a.accuracy
    d = torch.randn(host.num_params, dtype=torch.float64)
    got = list(device.evaluate_points([d], [(0.5,), (-1.0,)]))
    want = list(host.evaluate_points([d], [(0.5,), (-1.0,)]))
    assert [e.loss for e in got] == pytest.approx([e.loss for e in want], rel=1e-14)
    assert [e.accuracy for e in got] == [e.accuracy for e in want]


@pytest.mark.parametrize("method", HVP_METHODS)
def test_gradient_and_hvp_match_exact_hessian(method):
    model = tiny_mlp()
    x, y = tiny_data(37)
    probe = Probe(model, DataLoader(TensorDataset(x, y), batch_size=10), hvp_method=method)
    H = exact_hessian(model, x, y)
    flat0 = probe.flat_params()
    g_exact = torch.autograd.grad(nn.functional.cross_entropy(model(x), y),
                                  list(model.parameters()))
    g_exact = torch.cat([g.reshape(-1) for g in g_exact])
    assert torch.allclose(probe.gradient(), g_exact, atol=1e-10, rtol=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(probe.num_params, generator=gen, dtype=torch.float64)
        assert torch.allclose(probe.hvp(v), H @ v, atol=1e-8, rtol=1e-8)
    assert torch.equal(probe.flat_params(), flat0)
    if method == "auto":
        assert probe.hvp_method_used in ("cached_graph", "double_backward", "forward_over_reverse")


def test_hvp_at_perturbed_point_matches_exact_hessian_there():
    model = tiny_mlp()
    x, y = tiny_data(20)
    probe = Probe(model, (x, y))
    delta = 0.1 * torch.randn(probe.num_params, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(3))
    moved = tiny_mlp()
    with torch.no_grad():
        for p, d in zip(moved.parameters(), probe.unflatten(delta).values()):
            p.add_(d)
    H = exact_hessian(moved, x, y)
    v = torch.ones(probe.num_params, dtype=torch.float64)
    assert torch.allclose(probe.hvp(v, delta), H @ v, atol=1e-8)
    loss_exact = nn.functional.cross_entropy(moved(x), y).item()
    assert probe.loss(delta) == pytest.approx(loss_exact, rel=1e-12)
    loss, g, hg = probe.gradient_and_hvp(None, delta)
    assert loss == pytest.approx(loss_exact, rel=1e-12)
    assert torch.allclose(hg, H @ g, atol=1e-8)
    # back at w the cached graph must not be stale
    H0 = exact_hessian(model, x, y)
    assert torch.allclose(probe.hvp(v), H0 @ v, atol=1e-8)


def test_ggn_vp_matches_explicit_gauss_newton():
    model = tiny_mlp()
    x, y = tiny_data(15)
    probe = Probe(model, (x, y))
    params = dict(model.named_parameters())
    names = list(params)
    flat0 = probe.flat_params()

    def outputs_of(flat):
        parts = {i.name: flat[i.start : i.stop].view(i.shape) for i in probe.param_info}
        return torch.func.functional_call(model, {n: parts[n] for n in names}, (x,))

    J = torch.autograd.functional.jacobian(outputs_of, flat0).reshape(-1, probe.num_params)
    out = model(x).detach()
    H_out = torch.autograd.functional.hessian(
        lambda o: nn.functional.cross_entropy(o.view_as(out), y), out.reshape(-1))
    G = J.T @ H_out @ J
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(probe.num_params, dtype=torch.float64, generator=gen)
    assert torch.allclose(probe.ggn_vp(v), G @ v, atol=1e-10)
    assert torch.linalg.eigvalsh(G).min() > -1e-10  # PSD


def test_unused_parameters_get_zero_gradient_and_curvature():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(5, 3).double()
            self.unused = nn.Linear(5, 3).double()

        def forward(self, x):
            return self.used(x)

    model = WithUnused()
    x, y = tiny_data(12)
    probe = Probe(model, (x, y))
    assert probe.num_params == 36
    g = probe.gradient()
    hv = probe.hvp(torch.ones(36, dtype=torch.float64))
    assert torch.all(g[18:] == 0) and torch.all(hv[18:] == 0)
    assert g[:18].abs().sum() > 0


def test_frozen_parameters_are_left_out_and_selection_by_name():
    model = tiny_mlp()
    model[0].weight.requires_grad_(False)
    x, y = tiny_data(12)
    probe = Probe(model, (x, y))
    assert probe.param_names == ["0.bias", "2.weight", "2.bias"]
    sub = Probe(model, (x, y), params=["2"])
    assert sub.param_names == ["2.weight", "2.bias"]
    H = exact_hessian(model, x, y, names=["2.weight", "2.bias"])
    v = torch.randn(sub.num_params, dtype=torch.float64)
    assert torch.allclose(sub.hvp(v), H @ v, atol=1e-10)
    pred = Probe(model, (x, y), params=lambda n, p: n.endswith("bias"))
    assert pred.param_names == ["0.bias", "2.bias"]
    restricted = probe.restricted(["2.weight"])
    assert restricted.num_params == 18
    with pytest.raises(LandscapeError, match="frozen"):
        Probe(model, (x, y), params=["0.weight"])
    with pytest.raises(LandscapeError, match="no trainable parameter is named 'fc9'"):
        Probe(model, (x, y), params=["fc9"])


def test_float32_cnn_with_batchnorm_is_measured_in_eval_mode(snapshot):
    from landscape.data import digits_cnn, digits_tensors

    model = digits_cnn().train()
    x, y = digits_tensors("train", image=True)
    x, y = x[:200], y[:200]
    snap = snapshot(model)
    probe = Probe(model, DataLoader(TensorDataset(x, y), batch_size=64))
    with torch.no_grad():
        model.eval()
        expected = nn.functional.cross_entropy(model(x), y).item()
        model.train()
    assert probe.loss() == pytest.approx(expected, rel=1e-5)
    probe.hvp(torch.ones(probe.num_params))
    snap.assert_unchanged()
    assert model.training


def test_data_is_cached_on_device_and_loader_not_rerun():
    x, y = tiny_data(30)
    calls = {"n": 0}

    class Counting:
        def __iter__(self):
            calls["n"] += 1
            yield from ((x[i : i + 10], y[i : i + 10]) for i in range(0, 30, 10))

    probe = Probe(tiny_mlp(), Counting())
    for _ in range(4):
        probe.loss()
    probe.gradient()
    assert calls["n"] == 2  # the first pass and the determinism check; then the cache
    uncached = Probe(tiny_mlp(), Counting(), cache_bytes=0, check_data=False)
    calls["n"] = 0
    uncached.loss()
    uncached.loss()
    assert calls["n"] == 3  # the first-use pass, then one per call


def test_shuffled_loader_is_accepted_and_cost_is_counted():
    x, y = tiny_data(40)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    probe = Probe(tiny_mlp(), loader, cache_bytes=0)
    meter = probe.meter()
    a = probe.loss()
    b = probe.loss()
    probe.gradient()
    probe.hvp(torch.ones(probe.num_params, dtype=torch.float64))
    assert a == pytest.approx(b, rel=1e-12)
    cost = meter.cost()
    assert (cost.n_forward, cost.n_gradient, cost.n_hvp) == (2, 1, 1)
    assert cost.n_batch_forward >= 2 * 5 + 5
    assert cost.seconds > 0


def test_dict_batches_with_batch_loss():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 8)
            self.norm = nn.LayerNorm(8)
            self.out = nn.Linear(8, 11)

        def forward(self, ids, labels):
            logits = self.out(self.norm(self.emb(ids)))
            return nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))

    g = torch.Generator().manual_seed(0)
    batches = [{"ids": torch.randint(0, 11, (4, 6), generator=g),
                "labels": torch.randint(0, 11, (4, 6), generator=g)} for _ in range(3)]
    model = TinyLM()
    probe = Probe(model, batches, batch_loss=lambda m, b: m(**b))
    expected = np.mean([model(**b).item() for b in batches])
    assert probe.loss() == pytest.approx(expected, rel=1e-5)
    assert probe.n_samples == 12
    assert probe.gradient().shape == (probe.num_params,)
    with pytest.raises(LandscapeError, match="cannot unpack a batch of type dict"):
        Probe(model, batches).loss()


def test_model_untouched_after_every_call_and_after_errors(snapshot):
    from landscape.data import digits_cnn, digits_tensors

    model = digits_cnn().double()
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    x, y = digits_tensors("train", image=True, dtype=torch.float64)
    x, y = x[:64], y[:64]
    snap = snapshot(model)
    probe = Probe(model, DataLoader(TensorDataset(x, y), batch_size=20))
    n = probe.num_params
    v = torch.ones(n, dtype=torch.float64)
    calls = [
        probe.loss, probe.gradient, lambda: probe.hvp(v), lambda: probe.hvp(v, 0.01 * v),
        lambda: probe.ggn_vp(v), lambda: probe.gradient_and_hvp(v, v * 0.01),
        lambda: probe.evaluate(v * 0.01),
        lambda: list(probe.evaluate_points([v], [(0.1,), (-0.2,)])),
        lambda: probe.subset(10).loss(), lambda: probe.sample_groups(30)[0].gradient(),
    ]
    for call in calls:
        call()
    with probe.perturbed(v):
        pass
    snap.assert_unchanged()

    calls = {"n": 0}

    def exploding(outputs, targets):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        return nn.functional.cross_entropy(outputs, targets)

    bad = Probe(model, (x, y), exploding, batch_size=20)
    with pytest.raises(RuntimeError, match="boom"):
        bad.gradient(v * 0.5)
    snap.assert_unchanged()
    with pytest.raises(RuntimeError, match="boom"):
        bad.hvp(v, 0.1 * v)
    snap.assert_unchanged()
    gen = probe.evaluate_points([v], [(1.0,), (2.0,)])
    next(gen)
    gen.close()  # interrupted mid-way
    snap.assert_unchanged()
    with pytest.raises(KeyError):
        with probe.perturbed(v):
            raise KeyError("inside")
    snap.assert_unchanged()


def test_non_finite_loss_away_from_checkpoint_is_data_not_error():
    model = tiny_mlp()
    x, y = tiny_data(10)
    probe = Probe(model, (x, y), lambda o, t: (o ** 2).mean() * 1e300)
    probe.loss()
    assert math.isinf(probe.loss(torch.full((probe.num_params,), 1e10, dtype=torch.float64)))


def test_hessian_operator_works_with_scipy():
    from scipy.sparse.linalg import eigsh

    model = tiny_mlp()
    x, y = tiny_data(20)
    probe = Probe(model, (x, y))
    H = exact_hessian(model, x, y).numpy()
    vals = eigsh(probe.hessian_operator(), k=2, which="LA", tol=1e-10)[0]
    assert np.allclose(np.sort(vals), np.sort(np.linalg.eigvalsh(H))[-2:], rtol=1e-7)


def test_subset_and_sample_groups_partition_the_data():
    model = tiny_mlp()
    x, y = tiny_data(25)
    probe = Probe(model, DataLoader(TensorDataset(x, y), batch_size=7))
    groups = probe.sample_groups(10)
    assert [g.n_samples for g in groups] == [10, 10, 5]
    assert groups[1].loss() == pytest.approx(
        nn.functional.cross_entropy(model(x[10:20]), y[10:20]).item(), rel=1e-12)
    weighted = sum(g.loss() * g.n_samples for g in groups) / 25
    assert weighted == pytest.approx(probe.loss(), rel=1e-12)
    sub = probe.subset(9, seed=1)
    assert sub.n_samples == 9
    assert sub.loss() == pytest.approx(probe.subset(9, seed=1).loss())


# ---------------------------------------------------------------- errors


def test_error_empty_data():
    with pytest.raises(LandscapeError, match="data is empty"):
        Probe(tiny_mlp(), []).loss()
    empty = DataLoader(TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(LandscapeError, match="data is empty"):
        Probe(tiny_mlp(), empty).gradient()


def test_error_non_finite_loss_at_checkpoint():
    x, y = tiny_data(10)
    x[3, 0] = float("nan")
    with pytest.raises(LandscapeError, match="loss at the checkpoint is not finite"):
        Probe(tiny_mlp(), (x, y)).loss()


def test_error_random_augmentation_is_not_deterministic():
    x, y = tiny_data(30)

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return x[i] + 0.3 * torch.randn(5, dtype=torch.float64), y[i]

    with pytest.raises(LandscapeError, match="not deterministic"):
        Probe(tiny_mlp(), DataLoader(Augmented(), batch_size=8)).loss()
    # the opt-out skips the check
    Probe(tiny_mlp(), DataLoader(Augmented(), batch_size=8), check_data=False).loss()


def test_error_no_trainable_parameters():
    model = tiny_mlp().requires_grad_(False)
    with pytest.raises(LandscapeError, match="no trainable parameters"):
        Probe(model, tiny_data())


def test_error_batch_cannot_be_unpacked():
    batches = [(torch.zeros(3, 5, dtype=torch.float64),)]
    with pytest.raises(LandscapeError, match="cannot unpack a batch of type tuple"):
        Probe(tiny_mlp(), batches).loss()


def test_error_vector_wrong_length_or_dtype():
    probe = Probe(tiny_mlp(), tiny_data())
    with pytest.raises(LandscapeError, match=f"num_params={probe.num_params}"):
        probe.hvp(torch.ones(3, dtype=torch.float64))
    with pytest.raises(LandscapeError, match="dtype torch.float32"):
        probe.hvp(torch.ones(probe.num_params, dtype=torch.float32))
    with pytest.raises(LandscapeError, match="must be a torch.Tensor"):
        probe.loss([0.0] * probe.num_params)


def test_error_bad_data_and_options():
    with pytest.raises(LandscapeError, match="one-shot iterator"):
        Probe(tiny_mlp(), (b for b in [tiny_data()]))
    with pytest.raises(LandscapeError, match="not iterable"):
        Probe(tiny_mlp(), 3)
    with pytest.raises(LandscapeError, match="hvp_method must be one of"):
        Probe(tiny_mlp(), tiny_data(), hvp_method="fast")
    with pytest.raises(LandscapeError, match="never moves your model"):
        Probe(tiny_mlp(), tiny_data(), device="meta")
    with pytest.raises(LandscapeError, match="scalar tensor"):
        Probe(tiny_mlp(), tiny_data(), lambda o, t: o).loss()


def test_hvp_through_fused_attention_kernels():
    """scaled_dot_product_attention's fused float32 CPU/GPU kernels have no double backward."""

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 12)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # (batch, heads, seq, dim)
            h = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.out(h.mean((1, 2)))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    model = Attention()
    probe = Probe(model, (x.float(), y))
    v = torch.randn(probe.num_params, generator=g, dtype=torch.float64)
    # float64 runs the math kernel, whose double backward exists: the reference
    reference = Probe(copy.deepcopy(model).double(), (x, y)).hvp(v)
    assert torch.allclose(probe.hvp(v.float()).double(), reference, rtol=1e-4, atol=1e-5)
    _, _, hv = probe.gradient_and_hvp(v.float())
    assert torch.allclose(hv.double(), reference, rtol=1e-4, atol=1e-5)
