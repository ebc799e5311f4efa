"""CurvatureMonitor: measures against exact Hessians, edge-of-stability thresholds by hand, and a
training run that is bitwise the same with and without the monitor."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian, tiny_data, tiny_mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape import CurvatureMonitor, LandscapeError
from landscape.monitor import MEASURES, read_rows
from landscape.monitor.optimizers import adam_edge, sgd_edge

ALL_SGD = ("top_eigenvalue", "trace", "gradient_norm", "loss", "eos_ratio", "update_curvature")


class DrawsRandom(nn.Module):
    """Draws from every global RNG in each forward pass (train or eval), output unchanged: a
    stand-in for user code that consumes randomness while the monitor measures."""

    def forward(self, x):
        torch.rand(())
        np.random.rand()
        random.random()
        return x


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3),
                         DrawsRandom(), nn.Linear(16, 3)).double()


def _train(monitor_kwargs=None, steps=30, optimizer="sgd"):
    """30 steps with dropout, BatchNorm and a shuffling loader (no generator: it draws from the
    global RNG); the monitor, if any, measures every 5 steps on a shuffling loader too."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = _net()
    x, y = tiny_data(96)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-2))
    monitor = None
    if monitor_kwargs is not None:
        measure_set = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16, shuffle=True)
        monitor = CurvatureMonitor(model, measure_set, optimizer=opt, every=5, budget=None,
                                   **monitor_kwargs)
    step = 0
    model.train()
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            if monitor is not None:
                monitor.step(step)
            if step == steps:
                break
    rngs = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    return model, opt, monitor, rngs


@pytest.mark.parametrize("optimizer,measures", [
    ("sgd", ALL_SGD),
    ("adam", ("top_eigenvalue", "preconditioned_sharpness", "eos_ratio", "update_curvature")),
])
def test_training_is_bitwise_the_same_with_the_monitor(optimizer, measures):
    plain, opt_a, _, rng_a = _train(optimizer=optimizer)
    watched, opt_b, monitor, rng_b = _train(dict(measures=measures), optimizer=optimizer)
    assert len(monitor.rows) == 6
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name
    for pa, pb in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(pa.grad, pb.grad)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key
    assert torch.equal(rng_a[0], rng_b[0])
    assert np.array_equal(rng_a[1], rng_b[1])
    assert rng_a[2] == rng_b[2]
    assert watched.training
    finite = [r for r in monitor.rows if np.isfinite(r["update_curvature"])]
    assert len(finite) == 6  # the step before each measurement was seen
    monitor.close()


def test_one_measurement_leaves_model_grads_and_modes(snapshot):
    model, (x, y) = _net(), tiny_data(40)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    snap = snapshot(model)
    monitor = CurvatureMonitor(model, (x, y), optimizer=opt, measures=ALL_SGD[:-1])
    monitor.measure(0)
    snap.assert_unchanged()
    assert all(p.grad is g for p, g in zip(model.parameters(), grads))


def _dense_top(model, x, y):
    return float(torch.linalg.eigvalsh(exact_hessian(model, x, y))[-1])


def test_measures_match_the_exact_hessian():
    model, (x, y) = tiny_mlp(), tiny_data()
    h = exact_hessian(model, x, y)
    monitor = CurvatureMonitor(model, (x, y), measures=("top_eigenvalue", "trace",
                                                        "gradient_norm", "loss"),
                               tol=1e-8, n_hvp=200)
    row = monitor.measure(0)
    assert row["top_eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(h)[-1]), rel=1e-8)
    assert row["trace"] == pytest.approx(float(torch.trace(h)), rel=1e-10)  # n <= n_hvp: exact
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert row["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert row["gradient_norm"] == pytest.approx(float(grad.norm()), rel=1e-10)
    assert row["top_eigenvalue_converged"] and row["top_eigenvalue_residual"] >= 0
    exact = float(torch.linalg.eigvalsh(h)[-1])
    assert abs(row["top_eigenvalue"] - exact) <= row["top_eigenvalue_error_bound"] + 1e-12
    assert row["n_hvp"] == row["top_eigenvalue_n_hvp"] + row["trace_n_hvp"]


def test_warm_start_saves_products():
    model, (x, y) = tiny_mlp(hidden=12), tiny_data(60)
    monitor = CurvatureMonitor(model, (x, y), measures=("top_eigenvalue",), tol=1e-6)
    cold = monitor.measure(0)
    with torch.no_grad():  # a small step: the top eigenvector turns a little
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    warm = monitor.measure(1)
    assert warm["top_eigenvalue"] == pytest.approx(_dense_top(model, x, y), rel=1e-8)
    assert warm["top_eigenvalue_n_hvp"] <= 0.6 * cold["top_eigenvalue_n_hvp"]


def test_preconditioned_sharpness_matches_a_dense_computation():
    model, (x, y) = tiny_mlp(), tiny_data()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2, betas=(0.8, 0.95), eps=1e-4,
                           weight_decay=0.01)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    monitor = CurvatureMonitor(model, (x, y), optimizer=opt, tol=1e-9,
                               measures=("preconditioned_sharpness", "eos_ratio"))
    row = monitor.measure(4)
    # P = (1 - beta1^t) diag(sqrt(v / (1 - beta2^t)) + eps) / lr, from the state by hand
    b1, b2, lr, eps, wd, t = 0.8, 0.95, 3e-2, 1e-4, 0.01, 4
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()])
    p_diag = (1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps) / lr
    h = exact_hessian(model, x, y) + wd * torch.eye(len(v), dtype=v.dtype)  # coupled decay
    dense = torch.linalg.eigvals(torch.diag(1 / p_diag) @ h).real.max()  # P^-1 H, unsymmetric
    assert row["preconditioned_sharpness"] == pytest.approx(float(dense), rel=1e-7)
    assert row["eos_threshold"] == pytest.approx((2 + 2 * b1) / (1 - b1))
    assert row["eos_ratio"] == pytest.approx(float(dense) / 18.0, rel=1e-7)  # 3.6 / 0.2


def test_preconditioned_sharpness_before_the_first_step_is_nan():
    model, (x, y) = tiny_mlp(), tiny_data()
    opt = torch.optim.AdamW(model.parameters())
    row = CurvatureMonitor(model, (x, y), optimizer=opt).measure(0)
    assert np.isnan(row["preconditioned_sharpness"]) and np.isnan(row["eos_ratio"])


def test_update_curvature_is_the_rayleigh_quotient_of_the_last_step():
    model, (x, y) = tiny_mlp(), tiny_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    monitor = CurvatureMonitor(model, (x, y), optimizer=opt, every=3, budget=None,
                               measures=("update_curvature",))
    before = None
    for step in range(1, 4):
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        row = monitor.step(step)
    u = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - before
    h = exact_hessian(model, x, y)
    assert row["update_curvature"] == pytest.approx(float(u @ h @ u / (u @ u)), rel=1e-10)
    assert row["update_norm"] == pytest.approx(float(u.norm()), rel=1e-12)
    monitor.close()


@pytest.mark.parametrize("kwargs,threshold", [
    (dict(lr=0.1), 20.0),                                   # gradient descent: 2 / lr
    (dict(lr=0.1, momentum=0.9), 38.0),                     # (2 + 2 beta) / lr
    (dict(lr=0.1, momentum=0.9, nesterov=True), 3.8 / 0.28),  # (2 + 2b) / ((1 + 2b) lr)
    (dict(lr=0.1, momentum=0.5, dampening=0.5), 60.0),      # lr (1 - d) is the step
    (dict(lr=0.1, weight_decay=0.5), 19.5),                 # lambda + wd < 2 / lr
])
def test_sgd_edge_of_stability_by_hand(kwargs, threshold):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], **kwargs)
    edge = sgd_edge(opt)
    assert edge.threshold == pytest.approx(threshold)
    assert edge.ratio(edge.threshold) == pytest.approx(1.0)
    assert edge.lr == 0.1


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_threshold_is_where_a_quadratic_turns_unstable(nesterov):
    """PyTorch's momentum update on L = lambda w^2 / 2: the iteration matrix's spectral radius
    crosses 1 at the threshold."""
    lr, beta = 0.1, 0.9
    edge = sgd_edge(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr, momentum=beta,
                                    nesterov=nesterov)).threshold

    def radius(lam):  # state (w, buffer): b' = beta b + lam w; w' = w - lr (step)
        if nesterov:  # step = g + beta b' = lam w + beta (beta b + lam w)
            m = np.array([[1 - lr * lam * (1 + beta), -lr * beta**2], [lam, beta]])
        else:  # step = b'
            m = np.array([[1 - lr * lam, -lr * beta], [lam, beta]])
        return max(abs(np.linalg.eigvals(m)))

    assert radius(edge * 0.999) < 1 < radius(edge * 1.001)


def test_adam_threshold_by_hand():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], betas=(0.9, 0.999))
    assert adam_edge(opt).threshold == pytest.approx(38.0)


def test_eos_ratio_of_gradient_descent_on_a_quadratic():
    from landscape.data.quadratic import Quadratic

    h = torch.diag(torch.tensor([5.0, 1.0], dtype=torch.float64))
    model = Quadratic(h, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    row = CurvatureMonitor(model, [torch.zeros(1)], batch_loss=lambda m, _b: m(),
                           optimizer=opt).measure(0)
    assert row["top_eigenvalue"] == pytest.approx(5.0)
    assert row["eos_ratio"] == pytest.approx(5.0 * 0.3 / 2)
    assert row["lr"] == 0.3 and row["eos_threshold"] == pytest.approx(2 / 0.3)


def test_default_measures_without_an_optimizer_leave_out_eos_ratio():
    model, data = tiny_mlp(), tiny_data()
    monitor = CurvatureMonitor(model, data)
    assert monitor.measures == ("top_eigenvalue", "gradient_norm")
    assert monitor.step(1) is None and monitor.step(0)["step"] == 0


def test_measures_table_is_the_registry():
    assert set(MEASURES) >= {"top_eigenvalue", "trace", "gradient_norm", "loss", "eos_ratio",
                             "preconditioned_sharpness", "update_curvature"}


def test_the_monitor_takes_its_measures_from_the_shared_registry():
    """One registry for every workflow (issue 20): each monitor measure is listed in
    `landscape.measures.MONITOR_REGISTRY` with its settings and a cost estimate, and a measure
    registered there is one the monitor takes, its optimizer check included."""
    from landscape.measures import MONITOR_REGISTRY, MonitorSpec, monitor_cost, register_monitor
    from landscape.monitor.measures import Settings

    assert set(MONITOR_REGISTRY) == set(MEASURES)
    fields = set(Settings.__dataclass_fields__)
    assert all(s.description and set(s.settings) <= fields for s in MONITOR_REGISTRY.values())
    costs = monitor_cost(tuple(MONITOR_REGISTRY), Settings(max_iter=40, n_hvp=12))
    assert costs["top_eigenvalue"] == {"n_hvp": 40} and costs["trace"] == {"n_hvp": 12}
    assert costs["loss"] == {"n_gradient": 1} and all(costs.values())

    def weight_norm_sq(ctx):
        return {"weight_norm_sq": float(sum(p.detach().pow(2).sum()
                                            for p in ctx.probe.model.parameters()))}

    def no_optimizer(optimizer):
        if optimizer is not None:
            raise LandscapeError("weight_norm_sq takes no optimizer")

    register_monitor(MonitorSpec("weight_norm_sq", "Squared weight norm (test).", (),
                                 weight_norm_sq, lambda s: {}, no_optimizer))
    try:
        model, data = tiny_mlp(), tiny_data()
        row = CurvatureMonitor(model, data, measures=("weight_norm_sq", "loss")).measure(0)
        expected = float(sum(p.detach().pow(2).sum() for p in model.parameters()))
        assert row["weight_norm_sq"] == pytest.approx(expected) and "loss" in row
        assert "weight_norm_sq" in MEASURES
        with pytest.raises(LandscapeError, match="takes no optimizer"):
            CurvatureMonitor(model, data, measures=("weight_norm_sq",),
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    finally:
        del MONITOR_REGISTRY["weight_norm_sq"]
    assert "weight_norm_sq" not in MEASURES


@pytest.mark.parametrize("kwargs,match", [
    (dict(measures=("eos_ratio",)), "needs the training optimizer"),
    (dict(measures=("preconditioned_sharpness",), optimizer="sgd"), "Adam or AdamW"),
    (dict(measures=("eos_ratio",), optimizer="rmsprop"), "RMSprop"),
    (dict(measures=("update_curvature",)), "follows the optimizer"),
    (dict(measures=("sharpest",)), "measures must be among"),
    (dict(loggers=("csv",)), "pass log_dir"),
    (dict(loggers=("stdout",)), "loggers must hold"),
    (dict(every=0), "every must be"),
])
def test_bad_settings_raise_at_construction(kwargs, match):
    model, data = tiny_mlp(), tiny_data()
    makers = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}
    if "optimizer" in kwargs:
        kwargs["optimizer"] = makers[kwargs["optimizer"]](model.parameters(), lr=0.1)
    with pytest.raises(LandscapeError, match=match):
        CurvatureMonitor(model, data, **kwargs)


def test_the_training_iterator_is_refused():
    model, (x, y) = tiny_mlp(), tiny_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    with pytest.raises(LandscapeError, match="one-shot iterator"):
        CurvatureMonitor(model, iter(loader))


def test_file_and_callable_loggers(tmp_path):
    model, data = tiny_mlp(), tiny_data()
    seen = []
    monitor = CurvatureMonitor(model, data, every=2, log_dir=tmp_path, budget=None,
                               measures=("top_eigenvalue", "loss"),
                               loggers=("jsonl", "csv", lambda row, step: seen.append((step, row))))
    for step in range(5):
        monitor.step(step)
    rows = read_rows(tmp_path / "curvature.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[-1]["top_eigenvalue"] == pytest.approx(monitor.rows[-1]["top_eigenvalue"])
    lines = (tmp_path / "curvature.csv").read_text().splitlines()
    assert lines[0].split(",")[:2] == ["step", "top_eigenvalue"] and len(lines) == 4
    assert [s for s, _ in seen] == [0, 2, 4]
    assert seen[0][1]["curvature/loss"] == pytest.approx(monitor.rows[0]["loss"])
    assert "curvature/step" not in seen[0][1]
    assert json.loads((tmp_path / "curvature.jsonl").read_text().splitlines()[0])["step"] == 0


def test_tensorboard_logger_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, data = tiny_mlp(), tiny_data()
    monitor = CurvatureMonitor(model, data, every=3, log_dir=tmp_path, loggers=("tensorboard",),
                               budget=None)
    for step in range(7):
        monitor.step(step)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    events = acc.Scalars("curvature/top_eigenvalue")
    assert [e.step for e in events] == [0, 3, 6]
    assert events[-1].value == pytest.approx(monitor.rows[-1]["top_eigenvalue"], rel=1e-6)


def test_wandb_logger_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    model, data = tiny_mlp(), tiny_data()
    with pytest.raises(LandscapeError, match="wandb.init"):
        CurvatureMonitor(model, data, loggers=("wandb",))
    run = wandb.init(project="landscape-test", dir=str(tmp_path))
    try:
        monitor = CurvatureMonitor(model, data, every=2, loggers=("wandb",), budget=None)
        for step in range(5):
            monitor.step(step)
        history = run.summary
        assert history["curvature/step"] == 4
        assert history["curvature/top_eigenvalue"] == pytest.approx(
            monitor.rows[-1]["top_eigenvalue"])
    finally:
        run.finish()


@pytest.mark.slow
def test_import_landscape_does_not_import_the_integrations():
    code = ("import sys, landscape, landscape.monitor; bad = [m for m in ('lightning', "
            "'transformers', 'tensorboard', 'wandb', 'torch.utils.tensorboard') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_preconditioned_sharpness_is_zero_at_zero_learning_rate():
    """The end of a linear decay schedule: lr = 0, Adam does not move, P^-1 = 0."""
    model, (x, y) = tiny_mlp(), tiny_data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.param_groups[0]["lr"] = 0.0
    row = CurvatureMonitor(model, (x, y), optimizer=opt,
                           measures=("preconditioned_sharpness",)).measure(1)
    assert row["preconditioned_sharpness"] == 0.0


def test_a_missing_extra_names_the_install_command():
    from landscape._extras import require

    with pytest.raises(LandscapeError, match=r"pip install 'landscape-probe\[wandb\]'"):
        require("landscape_no_such_module", "wandb", "the 'wandb' logger")


def test_a_missing_extra_names_the_module_really_missing(tmp_path, monkeypatch):
    # as torch.utils.tensorboard does without tensorboard: the module imports, its import fails
    from landscape._extras import require

    (tmp_path / "landscape_shim.py").write_text("import landscape_absent_package\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(LandscapeError, match="needs the landscape_absent_package package"):
        require("landscape_shim", "tensorboard", "the 'tensorboard' logger")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_the_budget_skips_scheduled_steps(monkeypatch):
    """Training steps of 1 s, measurements of 2 s, budget 5%: the first scheduled step is
    measured, later ones only while measuring stays within 5% of the training time."""
    import landscape.monitor.monitor as module

    clock = FakeClock()
    monkeypatch.setattr(module, "time", clock)
    model, data = tiny_mlp(), tiny_data()

    def slowed(monitor):
        measure = monitor.measure

        def slow(step):
            clock.now += 2.0
            return measure(step)

        monitor.measure = slow
        return monitor

    monitor = slowed(CurvatureMonitor(model, data, every=5, measures=("loss",)))
    for step in range(1, 201):
        clock.now += 1.0
        monitor.step(step)
    steps = [r["step"] for r in monitor.rows]
    assert steps[0] == 5 and 2 <= len(steps) <= 6
    spent = 2.0 * len(steps)
    assert spent <= 0.05 * 200 + 2.0  # within the budget but for one measurement
    assert sorted(steps + monitor.skipped) == list(range(5, 201, 5))
    unlimited = slowed(CurvatureMonitor(model, data, every=5, measures=("loss",), budget=None))
    for step in range(1, 21):
        clock.now += 1.0
        unlimited.step(step)
    assert [r["step"] for r in unlimited.rows] == [5, 10, 15, 20] and not unlimited.skipped
