"""The fixed costs of a first curvature call stay small (issue 19, point 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.models import tiny_data, tiny_mlp
from torch import nn

from landscape import Probe, hessian_eigenvalues, hvp_choice
from landscape._reduce import CHUNK, local_abs_sum, local_square_sum
from landscape.curvature import _basis
from landscape.hvp_fd import step_length
from landscape.hvp_memory import PeakNew


def test_the_memory_meter_does_not_import_dynamo():
    """The meter's dispatch mode runs without torch's dynamo-disabling wrapper, whose first use
    imports torch._dynamo (about 1 s of CPU, which the first product of a process paid)."""
    code = textwrap.dedent("""
        import sys
        import torch
        from landscape.hvp_memory import PeakNew
        with PeakNew() as meter:
            x = torch.ones(1000).mul(2)
        assert meter.peak >= 4000, meter.peak
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_the_self_check_draws_one_random_vector():
    """Settling "auto" before an estimator's first product draws the check's random vector
    only (it drew a second, unused one: a quarter of a gradient at 28M parameters)."""
    drawn = []
    original = hvp_choice.Products._random_vector

    def counted(self):
        drawn.append(1)
        return original(self)

    model, (x, y) = tiny_mlp(), tiny_data()
    probe = Probe(model, (x, y), loss_fn=nn.CrossEntropyLoss())
    try:
        hvp_choice.Products._random_vector = counted
        hessian_eigenvalues(probe, k=1, tol=1e-3)
    finally:
        hvp_choice.Products._random_vector = original
    assert probe.hvp_check is not None and len(drawn) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_local_sums_match_float64(dtype):
    """Sums of squares and of absolute values over chunks, accumulated in float64."""
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(7 * (CHUNK // 7 + 999), generator=g) * 3).to(dtype).reshape(-1, 7)
    ref = a.double()
    assert local_square_sum(a) == pytest.approx(float((ref * ref).sum()), rel=1e-7)
    assert local_abs_sum(a) == pytest.approx(float(ref.abs().sum()), rel=1e-7)
    assert local_square_sum(a[:0]) == local_abs_sum(a[:0]) == 0.0
    c = torch.full((3 * CHUNK,), 0.1)  # equal positive terms: no float32 drift
    assert local_square_sum(c) == pytest.approx(3 * CHUNK * float(c[0]) ** 2, rel=1e-7)


def test_finite_difference_step_follows_its_rule_in_float64():
    """eps = u^(1/3) s / (2 ||v||), s = sum_t c_t ||v_t||_1 / ||v||, with the sums in float64."""
    model, (x, y) = tiny_mlp(dtype=torch.float32, hidden=40), tiny_data(dtype=torch.float32)
    probe = Probe(model, (x, y), loss_fn=nn.CrossEntropyLoss())
    fd = probe.products.fd
    v = torch.randn(probe.num_params, generator=torch.Generator().manual_seed(1))
    parts = probe.batch_pass.split(v)
    rms = [float(q.detach().double().pow(2).mean().sqrt()) for q in probe.batch_pass.params]
    v_norm = float(v.double().norm())
    s = sum(c * float(t.double().abs().sum()) for c, t in zip(rms, parts)) / v_norm
    eps, size, norm = fd.step(v)
    assert size == pytest.approx(s, rel=1e-6)  # float32 terms, float64 sums
    assert norm == pytest.approx(v_norm, rel=1e-6)
    assert eps == pytest.approx(step_length(s, torch.float32) / v_norm, rel=1e-6)


def test_a_restart_reads_a_single_block_in_place():
    """rows[:p] = S^T rows[:size] with all rows in one block: the only temporary is the p new
    rows of a column block (no copy of the old rows), and the result is exact."""
    g = torch.Generator().manual_seed(2)
    n = 3 * _basis._COLUMN_BLOCK + 5
    basis = _basis.Basis(n, 7, torch.device("cpu"), torch.float32)
    for i in range(7):
        basis.set(i, torch.randn(n, generator=g))
    old = torch.stack([basis.row(i) for i in range(6)])
    coeffs = torch.randn(6, 3, generator=g)
    with PeakNew() as meter:
        basis.transform_in_place(coeffs)
    assert meter.peak <= 3 * _basis._COLUMN_BLOCK * 4 + 2**16
    torch.testing.assert_close(torch.stack([basis.row(i) for i in range(3)]), coeffs.T @ old)
