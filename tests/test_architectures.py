"""Every architecture users bring: transformers, convnets, LSTMs, tied, unused and frozen
parameters, compiled modules and low-precision models.

Each model is small and float64, so the Probe's top eigenvalue can be checked against an
independent reference: scipy's `eigsh` on a Hessian-vector product written here (double backward
over the whole data, outside the Probe), and the Rayleigh quotient of the Probe's eigenvector.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers.models import ModelSnapshot, tiny_data, tiny_mlp
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from landscape import (
    LandscapeError,
    Probe,
    direction_from_checkpoint,
    first_order_flatness,
    hessian_eigenvalues,
    hessian_trace,
    load_checkpoint,
    loss_line,
    loss_surface,
    random_direction,
    sharpness,
)
from landscape.data.architectures import (
    causal_lm_loss,
    convnext,
    gpt2_lm,
    image_data,
    lstm_classifier,
    lstm_lm,
    resnet,
    token_data,
    vit,
)

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread avoids the cost of contention on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])  # the fused kernels have no double backward


def reference_hessian(model: nn.Module, names: list[str], batches: list, loss_of) -> LinearOperator:
    """H of the sample-weighted mean loss over `batches` w.r.t. the parameters `names`, as a
    float64 LinearOperator; each matvec is a double backward written here, not the Probe's."""
    own = dict(model.named_parameters())
    params = [own[n] for n in names]
    sizes = [p.numel() for p in params]
    counts = [len(b["input_ids"]) if isinstance(b, dict) else len(b[0] if isinstance(b, tuple)
                                                                   else b) for b in batches]
    total = sum(counts)

    def matvec(x: np.ndarray) -> np.ndarray:
        vs = [t.view_as(p) for t, p in zip(torch.from_numpy(x.reshape(-1)).split(sizes), params)]
        out = torch.zeros(sum(sizes), dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            with _math_attention():
                for batch, n_b in zip(batches, counts):
                    g = torch.autograd.grad(loss_of(model, batch), params, create_graph=True,
                                            allow_unused=True)
                    dot = sum((gi * vi).sum() for gi, vi in zip(g, vs) if gi is not None)
                    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                        continue
                    hv = torch.autograd.grad(dot, params, allow_unused=True)
                    out += torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                      for h, p in zip(hv, params)]) * (n_b / total)
        finally:
            model.train(was_training)
        return out.numpy()

    n = sum(sizes)
    return LinearOperator((n, n), matvec=matvec, dtype=np.float64)


def _classify(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _with_unused_and_frozen(model: nn.Module, frozen: str) -> nn.Module:
    """Add a parameter that never reaches the loss and freeze the named one."""
    model.unused = nn.Parameter(torch.randn(5, dtype=torch.float64))
    dict(model.named_parameters())[frozen].requires_grad_(False)
    return model


def _image_batches(size: int, channels: int, n_classes: int) -> list:
    x, y = image_data(12, size, channels, n_classes, seed=1)
    return [(x[:8].double(), y[:8]), (x[8:].double(), y[8:])]  # unequal batches


def _gpt2():
    model = gpt2_lm(vocab_size=24, context=8, width=16, depth=2, heads=2).double()
    tokens = token_data(10, 8, 24, seed=1)
    batches = [{"input_ids": tokens[:6]}, {"input_ids": tokens[6:]}]
    return _with_unused_and_frozen(model, "wpe.weight"), batches, causal_lm_loss


def _vit():
    model = vit(image_size=8, patch_size=4, channels=2, width=16, depth=1, heads=2,
                n_classes=5).double()
    return _with_unused_and_frozen(model, "cls"), _image_batches(8, 2, 5), _classify


def _convnext():
    model = convnext(channels=2, dims=(8, 12), depths=(1, 1), n_classes=4,
                     layer_scale=0.5).double()
    return _with_unused_and_frozen(model, "norm.weight"), _image_batches(8, 2, 4), _classify


def _resnet(bottleneck=False):
    model = resnet(channels=2, widths=(4, 6), blocks=(1, 1), n_classes=3,
                   bottleneck=bottleneck).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return _with_unused_and_frozen(model, "stem.0.weight"), _image_batches(8, 2, 3), _classify


def _lstm():
    model = lstm_classifier(vocab_size=20, embed=6, hidden=8, n_classes=3).double()
    tokens = token_data(10, 7, 20, seed=2)
    labels = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(3))
    batches = [(tokens[:4], labels[:4]), (tokens[4:], labels[4:])]
    return _with_unused_and_frozen(model, "embed.weight"), batches, _classify


def _lstm_lm():
    model = lstm_lm(vocab_size=12, embed=6, hidden=5, layers=2).double()
    tokens = token_data(7, 6, 12, seed=4)
    batches = [{"input_ids": tokens[:3]}, {"input_ids": tokens[3:]}]
    return _with_unused_and_frozen(model, "embed.weight"), batches, causal_lm_loss


ARCHITECTURES = {"gpt2": _gpt2, "vit": _vit, "convnext": _convnext, "resnet": _resnet,
                 "resnet_bottleneck": lambda: _resnet(bottleneck=True), "lstm": _lstm,
                 "lstm_lm": _lstm_lm}


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap of fused attention
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_curvature_is_exact_and_the_model_unchanged(arch):
    model, batches, loss_of = ARCHITECTURES[arch]()
    model.train()  # the probe measures in eval mode and must restore this
    snap = ModelSnapshot(model)
    kwargs = {"batch_loss": causal_lm_loss} if loss_of is causal_lm_loss else {}
    probe = Probe(model, batches, **kwargs)
    names = probe.param_names
    assert "unused" in names
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 1 and frozen[0] not in names
    if arch == "gpt2":  # tied: one parameter for the embedding and the output projection
        assert model.head.weight is model.wte.weight
        assert "head.weight" not in names and "wte.weight" in names

    top = hessian_eigenvalues(probe, k=1, tol=1e-8, return_vectors=True)
    trace = hessian_trace(probe, n_hvp=9, seed=1)
    sharp = sharpness(probe, 0.05, steps=3)
    d1, d2 = random_direction(probe, seed=0), random_direction(probe, seed=1)
    grid = np.linspace(-0.5, 0.5, 3)
    plane = loss_surface(probe, d1, d2, grid, grid, batched=False)
    stacked = loss_surface(probe, d1, d2, grid, grid, batched=True)  # the CUDA default path
    gradient = probe.gradient()
    loss = probe.loss()
    snap.assert_unchanged()

    op = reference_hessian(model, names, batches, loss_of)
    (exact,), _ = eigsh(op, k=1, which="LA", tol=1e-10)
    assert top.converged
    assert top.eigenvalues[0] == pytest.approx(exact, rel=1e-6)
    v = top.eigenvectors[0].numpy()
    hv = op.matvec(v)
    assert float(v @ hv) == pytest.approx(exact, rel=1e-6)  # Rayleigh quotient
    assert np.linalg.norm(hv - exact * v) <= 1e-3 * abs(exact)
    unused = next(i for i in probe.param_info if i.name == "unused")
    assert torch.all(gradient[unused.start:unused.stop] == 0)
    assert np.abs(v[unused.start:unused.stop]).max() < 1e-8  # H is zero there

    assert math.isfinite(trace.estimate) and math.isfinite(trace.stderr)
    assert math.isfinite(sharp.value) and sharp.value > 0
    assert plane.loss[1, 1] == pytest.approx(loss, rel=1e-12)
    assert np.all(np.isfinite(plane.loss))
    np.testing.assert_allclose(stacked.loss, plane.loss, rtol=1e-8)
    snap.assert_unchanged()


# ---------------------------------------------------------------------- torch.compile


def test_compiled_model_is_measured_through_its_original_module(snapshot):
    model = tiny_mlp()
    x, y = tiny_data()
    compiled = torch.compile(model, backend="aot_eager")  # aot_autograd: no double backward
    snap = snapshot(model)
    probe = Probe(compiled, (x, y))
    plain = Probe(model, (x, y))
    got = hessian_eigenvalues(probe, k=2)  # a raw RuntimeError through the compiled graph
    want = hessian_eigenvalues(plain, k=2)
    np.testing.assert_array_equal(got.eigenvalues, want.eigenvalues)
    assert probe.model is model
    assert probe.param_names == [n for n, _ in model.named_parameters()]
    assert first_order_flatness(probe, 0.05, steps=2).value == pytest.approx(
        first_order_flatness(plain, 0.05, steps=2).value, rel=1e-12)
    snap.assert_unchanged()


def test_checkpoints_and_directions_with_compiled_models():
    model, other = tiny_mlp(seed=0), tiny_mlp(seed=1)
    x, y = tiny_data()
    compiled_other = torch.compile(other, backend="aot_eager")
    probe = Probe(torch.compile(model, backend="aot_eager"), (x, y))
    # a compiled model's state dict has `_orig_mod.` keys: directions read through them
    d = direction_from_checkpoint(probe, compiled_other)
    want = torch.cat([p.detach().reshape(-1) for p in other.parameters()]) - probe.flat_params()
    assert torch.equal(d.vector, want)
    # loading either way round: compiled checkpoint into a plain model, plain into compiled
    fresh = tiny_mlp(seed=2)
    load_checkpoint(fresh, compiled_other.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), other.parameters()))
    target = tiny_mlp(seed=3)
    load_checkpoint(torch.compile(target, backend="aot_eager"), other.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), other.parameters()))


def test_models_compiled_in_place_or_in_parts_are_refused_with_the_fix():
    x, y = tiny_data()
    inner = nn.Sequential(tiny_mlp())
    inner[0] = torch.compile(inner[0], backend="aot_eager")
    with pytest.raises(LandscapeError, match="submodule '0' is compiled .* uncompiled model"):
        Probe(inner, (x, y))
    in_place = tiny_mlp()
    in_place.compile(backend="aot_eager")
    with pytest.raises(LandscapeError, match=r"the model is compiled \(\.compile\(\)\)"):
        Probe(in_place, (x, y))


# ---------------------------------------------------------------------- low precision


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_curvature_is_refused_and_measured_on_a_float32_copy(low, snapshot):
    model = tiny_mlp(dtype=torch.float32).to(low)
    x, y = tiny_data(dtype=torch.float32)
    snap = snapshot(model)
    probe = Probe(model, (x, y))
    assert probe.dtype == low
    for measure in (lambda p: hessian_eigenvalues(p), lambda p: hessian_trace(p, n_hvp=3),
                    lambda p: sharpness(p, 0.05, steps=2),
                    lambda p: first_order_flatness(p, 0.05, steps=2)):
        with pytest.raises(LandscapeError, match=r"rounding noise.*dtype=torch\.float32"):
            measure(probe)
    line = loss_line(probe, random_direction(probe), [-0.5, 0.0, 0.5])  # allowed: forward only
    assert np.all(np.isfinite(line.loss))

    wide = Probe(model, (x, y), dtype=torch.float32)
    assert wide.dtype == torch.float32 and wide.model is not model
    reference = Probe(copy.deepcopy(model).float(), (x, y))
    np.testing.assert_array_equal(hessian_eigenvalues(wide, k=2).eigenvalues,
                                  hessian_eigenvalues(reference, k=2).eigenvalues)
    assert sharpness(wide, 0.05, steps=2).value == sharpness(reference, 0.05, steps=2).value
    snap.assert_unchanged()  # still bf16/fp16, bitwise


def test_dtype_option_keeps_a_model_already_in_that_dtype_and_checks_its_value():
    model = tiny_mlp()
    x, y = tiny_data()
    assert Probe(model, (x, y), dtype=torch.float64).model is model  # no copy needed
    with pytest.raises(LandscapeError, match="dtype must be None .* got torch.bfloat16"):
        Probe(model, (x, y), dtype=torch.bfloat16)
