"""Parameters named by glob patterns and spectra by block, against dense block Hessians of a
tiny GPT-2-style model written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import exact_hessian
from torch import nn

from landscape import LandscapeError, Probe, hessian_density, hessian_eigenvalues, hessian_trace
from landscape.curvature.blocks import js_distances

VOCAB, D, T = 11, 8, 5


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = nn.ModuleDict({"c_attn": nn.Linear(D, 3 * D), "c_proj": nn.Linear(D, D)})
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(D, 2 * D), "c_proj": nn.Linear(2 * D, D)})

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.attn["c_attn"](self.ln_1(x)).view(b, t, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn["c_proj"](a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp["c_proj"](nn.functional.gelu(self.mlp["c_fc"](self.ln_2(x))))


class TinyGPT(nn.Module):
    """GPT-2 layout: wte, wpe, h.{i}.{ln_1, attn, ln_2, mlp}, ln_f, head tied to wte."""

    def __init__(self, layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, D)
        self.wpe = nn.Embedding(T, D)
        self.h = nn.ModuleList(Block() for _ in range(layers))
        self.ln_f = nn.LayerNorm(D)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def lm_loss(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))


BLOCKS = {"attention": "h.*.attn.*", "mlp": "*.mlp.*", "embedding": ["wte*", "wpe.weight"]}


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = TinyGPT().double()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (6, T), generator=gen)
    targets = torch.randint(0, VOCAB, (6, T), generator=gen)
    return model, idx, targets


def _dense_block(model, idx, targets, names):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):  # the CPU flash kernel has no double backward
        return exact_hessian(model, idx, targets, loss_fn=lm_loss, names=names)


def test_glob_patterns_select_parameters_by_name(gpt):
    model, idx, targets = gpt
    probe = Probe(model, (idx, targets), loss_fn=lm_loss, params="h.*.attn.*")
    assert probe.param_names == [f"h.{i}.attn.{m}.{p}" for i in range(2)
                                 for m in ("c_attn", "c_proj") for p in ("weight", "bias")]
    mixed = Probe(model, (idx, targets), loss_fn=lm_loss,
                  params=["wte.weight", "h.1.mlp", "*ln_f*"])
    assert mixed.param_names == ["wte.weight", "h.1.mlp.c_fc.weight", "h.1.mlp.c_fc.bias",
                                 "h.1.mlp.c_proj.weight", "h.1.mlp.c_proj.bias",
                                 "ln_f.weight", "ln_f.bias"]


def test_a_pattern_matching_nothing_names_the_closest_names(gpt):
    model, idx, targets = gpt
    with pytest.raises(LandscapeError, match=r"matches the pattern 'h\.\*\.atn\.\*'.*closest.*"
                                             r"h\.\d\.attn"):
        Probe(model, (idx, targets), loss_fn=lm_loss, params="h.*.atn.*")
    with pytest.raises(LandscapeError, match="block 'mlp' of by=.*closest"):
        hessian_eigenvalues(Probe(model, (idx, targets), loss_fn=lm_loss), by={"mlp": "*.mpl.*"})


@pytest.mark.slow
def test_eigenvalues_and_traces_by_block_equal_dense_block_hessians(gpt):
    model, idx, targets = gpt
    probe = Probe(model, (idx, targets), loss_fn=lm_loss)
    eig = hessian_eigenvalues(probe, k=2, by=BLOCKS, tol=1e-8)
    n_max = max(eig.sizes.values())
    tr = hessian_trace(probe, by=BLOCKS, n_hvp=n_max)  # exact: n_hvp >= block size
    assert list(eig) == list(BLOCKS)
    for name in BLOCKS:
        names = Probe(model, (idx, targets), loss_fn=lm_loss,
                      params=BLOCKS[name]).param_names
        H = _dense_block(model, idx, targets, names)
        evals = torch.linalg.eigvalsh(H).flip(0)
        assert eig.sizes[name] == H.shape[0]
        np.testing.assert_allclose(eig[name].eigenvalues, evals[:2].numpy(), rtol=1e-6)
        assert tr[name].method == "exact"
        assert tr[name].estimate == pytest.approx(float(torch.trace(H)), rel=1e-8)


@pytest.mark.slow
def test_density_by_block_and_js_distances(gpt):
    model, idx, targets = gpt
    probe = Probe(model, (idx, targets), loss_fn=lm_loss)
    blocks = {**BLOCKS, "attention again": ["h.0.attn.*", "h.1.attn.*"]}
    dens = hessian_density(probe, by=blocks, n_vectors=3, n_steps=40, seed=0)
    for name in ("attention", "embedding"):
        names = Probe(model, (idx, targets), loss_fn=lm_loss, params=blocks[name]).param_names
        evals = torch.linalg.eigvalsh(_dense_block(model, idx, targets, names)).numpy()
        r = dens[name]
        assert r.num_params == len(evals)
        assert r.nodes.max() == pytest.approx(evals.max(), rel=1e-6)  # extreme Ritz values
        assert abs(r.mean - evals.mean()) <= 4 * r.mean_stderr + 1e-12
    d = dens.js_distances()
    assert d.names == list(blocks) and d.sigma > 0 and d.grid == 2000
    assert np.allclose(d.distances, d.distances.T) and np.all(np.diag(d.distances) == 0)
    assert d["attention", "attention again"] == pytest.approx(0.0, abs=1e-12)  # same block
    assert 0 < d["attention", "mlp"] <= 1
    assert "| attention |" in dens.to_markdown()


class _Nodes:
    def __init__(self, nodes, weights):
        self.nodes, self.weights = np.asarray(nodes, float), np.asarray(weights, float)


def test_js_distance_is_the_formula_on_the_common_grid():
    a, b = _Nodes([0.0, 1.0], [0.5, 0.5]), _Nodes([0.5, 3.0], [0.9, 0.1])
    d = js_distances({"a": a, "b": b}, sigma=0.2, grid=4001)
    t = np.linspace(0.0 - 1.0, 3.0 + 1.0, 4001)

    def dens(r):
        p = np.exp(-0.5 * ((t[:, None] - r.nodes) / 0.2) ** 2) @ r.weights
        return p / p.sum()

    p, q = dens(a), dens(b)
    m = (p + q) / 2
    kl = lambda x, y: np.sum(np.where(x > 0, x * np.log2(np.where(x > 0, x, 1) / y), 0.0))  # noqa: E731
    assert d["a", "b"] == pytest.approx(np.sqrt((kl(p, m) + kl(q, m)) / 2), rel=1e-9)
    far = js_distances({"a": _Nodes([0.0], [1.0]), "b": _Nodes([100.0], [1.0])}, sigma=0.1)
    assert far["a", "b"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(LandscapeError, match="at least two blocks"):
        js_distances({"a": a})


@pytest.mark.slow
def test_block_spectra_figure(gpt, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from landscape.plot import block_spectra_figure, save_figure

    model, idx, targets = gpt
    dens = hessian_density(Probe(model, (idx, targets), loss_fn=lm_loss), by=BLOCKS,
                           n_vectors=2, n_steps=20)
    fig = block_spectra_figure(dens)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in visible]
    assert any(t.startswith("attention (") for t in titles)
    assert any("JS distance" in t and "sigma" in t for t in titles)
    paths = save_figure(fig, tmp_path / "blocks")
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(LandscapeError, match="hessian_density"):
        block_spectra_figure(hessian_eigenvalues(Probe(model, (idx, targets), loss_fn=lm_loss),
                                                 by=BLOCKS))
