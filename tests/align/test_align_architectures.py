"""Permutation alignment beyond MLPs and ResNets: a GPT-2-style transformer with tied embeddings,
a small ViT, a ConvNeXt-style stack with squeeze-excitation and LSTM/GRU classifiers.

For each: a randomly permuted copy computes the same outputs, and weight matching recovers the
permutation exactly (aligned weights equal, aligned distance and barrier 0). Then two independently
trained transformers: the barrier drops after alignment.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from landscape import (
    LandscapeError,
    PermutationSpec,
    Probe,
    align_weights,
    aligned_barrier,
    compare,
)
from landscape.align import apply_permutation, permutation_spec, random_permutation
from landscape.data.sequence import (
    TinyGPT,
    modular_sum_tensors,
    sequence_loss,
    tiny_gpt,
    trained_tiny_gpt,
)

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ViTBlock(nn.Module):
    """timm-style: fused qkv reshaped to (3, heads, head_dim), scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, width: int = 16, heads: int = 2, depth: int = 2, patch: int = 4):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (8 // patch) ** 2 + 1, width))
        self.blocks = nn.Sequential(*[ViTBlock(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: permute to channels-last and back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))  # layer scale
        self.se = SqueezeExcite(dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(nn.functional.gelu(self.pwconv1(self.norm(y))))
        return x + self.se(y.permute(0, 3, 1, 2))


class TinyConvNeXt(nn.Module):
    def __init__(self, dims: tuple[int, int] = (8, 16)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dims[0], 2, stride=2), LayerNorm2d(dims[0]))
        self.stage1 = nn.Sequential(ConvNeXtBlock(dims[0]), ConvNeXtBlock(dims[0]))
        self.down = nn.Sequential(LayerNorm2d(dims[0]), nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = ConvNeXtBlock(dims[1])
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], 10)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class RecurrentClassifier(nn.Module):
    def __init__(self, kind: type[nn.Module] = nn.LSTM, vocab: int = 12, hidden: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, 6)
        self.rnn = kind(6, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, 3)

    def forward(self, idx):
        out, _ = self.rnn(self.emb(idx))
        return self.fc(out[:, -1])


class CheckedGPT(TinyGPT):
    """nanoGPT's shape check in Python: torch.fx cannot trace it, torch.export can."""

    def forward(self, idx):
        if idx.size(1) > self.wpe.num_embeddings:
            raise ValueError("sequence longer than the context")
        return super().forward(idx)


class TorchEncoder(nn.Module):
    """PyTorch's own nn.TransformerEncoder (read through torch.export)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, idx):
        return self.head(self.encoder(self.emb(idx)).mean(1))


def _inputs(name: str, n: int = 24):
    g = torch.Generator().manual_seed(7)
    if name.startswith("gpt"):
        return modular_sum_tensors(n, seed=3)
    if name in ("lstm", "gru", "torch_encoder"):
        return torch.randint(0, 12, (n, 5), generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), \
        torch.randint(0, 10, (n,), generator=g)


MODELS = {
    "gpt": lambda: tiny_gpt(vocab=8, width=16, n_heads=2, n_layers=2),
    "gpt_export": lambda: CheckedGPT(vocab=8, width=16, n_heads=2, n_layers=2),
    "vit": TinyViT,
    "convnext": TinyConvNeXt,
    "torch_encoder": TorchEncoder,
    "lstm": lambda: RecurrentClassifier(nn.LSTM),
    "gru": lambda: RecurrentClassifier(nn.GRU),
}


def _random_model(name: str) -> nn.Module:
    """float64, every parameter random (LayerNorm weights, layer scale and biases too, so each
    hidden unit has its own signature)."""
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


def _permuted(model: nn.Module, spec: PermutationSpec, seed: int = 5):
    perms = random_permutation(spec, seed)
    other = copy.deepcopy(model)
    other.load_state_dict(apply_permutation(model.state_dict(), spec, perms))
    return other, perms


def test_gpt_spec_structure():
    model = tiny_gpt(vocab=8, width=16, n_heads=2)
    spec = permutation_spec(model, _inputs("gpt", 4)[0])
    assert spec.groups == {"wte": 16, "blocks.0.attn:heads": 2, "blocks.0.attn:head_dims0": 8,
                           "blocks.0.attn:head_dims1": 8, "blocks.0.mlp.0": 64,
                           "blocks.1.attn:heads": 2, "blocks.1.attn:head_dims0": 8,
                           "blocks.1.attn:head_dims1": 8, "blocks.1.mlp.0": 64}
    assert spec.nested["blocks.1.attn:head_dims1"] == "blocks.1.attn:heads"
    # the residual stream: embeddings (tied output layer too), every LayerNorm, projections
    for key in ("wte.weight", "lm_head.weight", "wpe.weight"):
        assert spec.axes[key] == {1: (("wte",),)}
    for key in ("ln_f.bias", "blocks.0.ln_2.weight", "blocks.1.attn.c_proj.bias"):
        assert spec.axes[key] == {0: (("wte",),)}
    heads, qk, vo = "blocks.0.attn:heads", "blocks.0.attn:head_dims0", "blocks.0.attn:head_dims1"
    # fused q|k|v rows: three segments of heads x head dims; q and k share the within-head
    # permutation, v has its own, which the output projection's columns follow
    assert spec.axes["blocks.0.attn.c_attn.weight"] == {
        0: ((heads, qk), (heads, qk), (heads, vo)), 1: (("wte",),)}
    assert spec.axes["blocks.0.attn.c_proj.weight"] == {0: (("wte",),), 1: ((heads, vo),)}
    assert "blocks.0.attn.mask" not in spec.axes
    json.dumps(spec.to_dict())


def test_export_fallback_when_fx_fails():
    model = CheckedGPT(vocab=8, width=16, n_heads=2)
    with pytest.raises(Exception, match="symbolically traced variables"):
        torch.fx.symbolic_trace(model)
    spec = permutation_spec(model, _inputs("gpt", 4)[0])
    assert spec.nested and spec.axes["lm_head.weight"] == spec.axes["wte.weight"]
    assert len(spec.groups) == len(permutation_spec(tiny_gpt(width=16, n_heads=2),
                                                    _inputs("gpt", 4)[0]).groups)


def test_input_guessed_from_the_first_layer():
    # a convolution first: square inputs of 8, 16, ... pixels are tried (this ViT needs 8 x 8)
    assert permutation_spec(TinyViT()) == permutation_spec(TinyViT(), torch.zeros(2, 1, 8, 8))
    # an embedding first: token ids
    gpt = tiny_gpt(width=16, n_heads=2)
    assert permutation_spec(gpt) == permutation_spec(gpt, _inputs("gpt", 2)[0])


def test_vit_convnext_rnn_spec_structure():
    vit = permutation_spec(TinyViT(), _inputs("vit", 2)[0].float())
    stream = vit.axes["cls_token"][2][0][0]
    assert vit.axes["pos_embed"] == {2: ((stream,),)}
    assert vit.axes["patch_embed.weight"] == {0: ((stream,),)}
    assert vit.axes["head.weight"] == {1: ((stream,),)}
    assert sum(g.endswith(":heads") for g in vit.groups) == 2
    cnx = permutation_spec(TinyConvNeXt(), _inputs("convnext", 2)[0].float())
    assert cnx.axes["stage1.0.dwconv.weight"] == {0: (("stem.0",),)}  # depthwise: follows
    assert cnx.axes["stage1.1.gamma"] == {0: (("stem.0",),)}
    assert cnx.axes["stage1.0.se.reduce.weight"] == {0: (("stage1.0.se.reduce",),),
                                                     1: (("stem.0",),)}
    assert cnx.axes["down.0.weight"] == {0: (("stem.0",),)}
    lstm = permutation_spec(RecurrentClassifier(), _inputs("lstm", 2)[0])
    assert lstm.axes["emb.weight"] == {1: (("emb",),)}
    assert lstm.axes["rnn.weight_ih_l0"] == {0: (("rnn.l0",),) * 4, 1: (("emb",),)}
    assert lstm.axes["rnn.weight_hh_l1"] == {0: (("rnn.l1",),) * 4, 1: (("rnn.l1",),)}
    assert lstm.axes["rnn.weight_ih_l1"][1] == (("rnn.l0",),)
    gru = permutation_spec(RecurrentClassifier(nn.GRU), _inputs("gru", 2)[0])
    assert gru.axes["rnn.bias_hh_l0"] == {0: (("rnn.l0",),) * 3}


@pytest.mark.parametrize("name", list(MODELS))
def test_permuted_copy_same_outputs_and_alignment_recovers_it(name, snapshot):
    model = _random_model(name)
    x, y = _inputs(name)
    spec = permutation_spec(model, x[:2])
    other, perms = _permuted(model, spec)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     other.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=1e-10)
    snaps = snapshot(model), snapshot(other)
    res = align_weights(model, other, spec=spec)
    for s in snaps:
        s.assert_unchanged()
    assert res.converged
    for k, v in model.state_dict().items():
        assert torch.equal(res.state_dict[k], v), k
    for g, p in res.perms.items():  # aligned unit i is unit p[i] of `other`, i.e. unit i of A
        if g in spec.nested:
            outer = torch.tensor(res.perms[spec.nested[g]])
            truth = perms[g][outer]  # the slot's permutation moves with its head
            assert torch.equal(truth.gather(1, torch.tensor(p)),
                               torch.arange(len(p[0])).expand(len(p), -1))
        else:
            assert torch.equal(perms[g][torch.tensor(p)], torch.arange(len(p)))
    loss = sequence_loss if name.startswith("gpt") else None
    probe = Probe(model, (x, y), loss)
    bar = aligned_barrier(probe, other, alphas=[0.5], spec=spec)
    assert bar.aligned.distance == 0 and bar.raw.distance > 1
    assert abs(bar.aligned.loss_barrier) < 1e-12
    json.dumps(bar.to_dict())


def test_compiled_model_and_hand_given_spec():
    model = _random_model("lstm")
    x, _ = _inputs("lstm", 4)
    compiled = torch.compile(model)  # compiled lazily: never run here
    spec = permutation_spec(compiled, x)
    assert "_orig_mod.rnn.weight_hh_l0" in spec.axes
    other, _ = _permuted(model, permutation_spec(model, x))
    res = align_weights(compiled, torch.compile(other), example_input=x)
    assert all(torch.equal(res.state_dict[f"_orig_mod.{k}"], v)
               for k, v in model.state_dict().items())


class _Branchy(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:
            h = h * 2
        return self.fc2(h)


HAND_SPEC = PermutationSpec(groups={"hidden": 6},
                            axes={"fc1.weight": {0: "hidden"}, "fc1.bias": {0: "hidden"},
                                  "fc2.weight": {1: "hidden"}})


class _BranchyWithSpec(_Branchy):
    def permutation_spec(self):
        return HAND_SPEC


def test_untraceable_model_error_and_hand_given_spec():
    a, b = _Branchy().double(), _Branchy().double()
    with pytest.raises(LandscapeError, match="not from your data.*by hand"):
        align_weights(a, b, example_input=torch.zeros(2, 4, dtype=torch.float64))
    other, perms = _permuted(a, HAND_SPEC)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(other(x), a(x))
    res = align_weights(a, other, spec=HAND_SPEC)
    assert torch.equal(perms["hidden"][torch.tensor(res.perms["hidden"])],
                       torch.arange(6))
    own = _BranchyWithSpec().double()
    own.load_state_dict(a.state_dict())
    assert permutation_spec(own) is HAND_SPEC  # the model's own method
    res2 = align_weights(own, other)
    assert res2.perms == res.perms


def test_spec_errors():
    with pytest.raises(LandscapeError, match="not in groups"):
        PermutationSpec(groups={"h": 3}, axes={"w": {0: "g"}})
    with pytest.raises(LandscapeError, match="must directly follow its outer group"):
        PermutationSpec(groups={"heads": 2, "dims": 3}, axes={"w": {0: ("dims", "heads")}},
                        nested={"dims": "heads"})
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    bad = PermutationSpec(groups={"h": 5}, axes={"0.weight": {0: "h"}})
    with pytest.raises(LandscapeError, match="has 6 entries but its layout"):
        align_weights(model, copy.deepcopy(model), spec=bad)
    missing = PermutationSpec(groups={"h": 6}, axes={"fc.weight": {0: "h"}})
    with pytest.raises(LandscapeError, match="not in the model's state dict"):
        align_weights(model, copy.deepcopy(model), spec=missing)
    nested = PermutationSpec(groups={"heads": 2, "dims": 3},
                             axes={"0.weight": {0: ("heads", "dims")}}, nested={"dims": "heads"})
    with pytest.raises(LandscapeError, match="2 permutations of range"):
        apply_permutation(model.state_dict(), nested, {"heads": [1, 0], "dims": [0, 1, 2]})
    with pytest.raises(LandscapeError, match="pass example_input"):
        permutation_spec(nn.GRU(4, 3))
    with pytest.raises(LandscapeError, match="does not run on example_input"):
        permutation_spec(TinyViT(), torch.zeros(2, 1, 12, 12))
    with pytest.raises(LandscapeError, match="grouped convolution"):
        permutation_spec(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 8, 1, groups=2)),
                         torch.zeros(1, 4, 2, 2))


def test_independent_transformers_barrier_drops_after_alignment():
    # scripts/align_transformers.py measures the same on more seed pairs (docs/guides/alignment.md)
    a, b = trained_tiny_gpt(seed=0), trained_tiny_gpt(seed=1)
    test = modular_sum_tensors(512, seed=1)
    probes = {"a": Probe(a, test, sequence_loss), "b": Probe(b, test, sequence_loss)}
    pair = compare(probes, measures=[], interpolation_points=5).pairs[0]
    assert pair.loss[0] < 1.0 and pair.loss[-1] < 1.0  # both learned (chance: ln 8 = 2.08)
    assert pair.alignment_note is None and pair.barrier > 1.0
    assert pair.aligned_barrier < 0.9 * pair.barrier
    assert pair.aligned_distance < pair.distance


def test_cli_compare_reports_aligned_barrier_of_a_vit(tmp_path, capsys):
    from landscape.cli import main

    torch.manual_seed(0)
    model = TinyViT()
    spec = permutation_spec(model, torch.zeros(2, 1, 8, 8))
    other, _ = _permuted(model, spec)
    torch.save(model.state_dict(), tmp_path / "a.pt")
    torch.save(other.state_dict(), tmp_path / "b.pt")
    (tmp_path / "vit.py").write_text("from test_align_architectures import TinyViT\n\n"
                                     "def make():\n    return TinyViT()\n")
    assert main(["compare", "--model", f"{tmp_path / 'vit.py'}:make", "--data", "digits:test",
                 str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--measures=loss",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "aligned loss barrier" in capsys.readouterr().out
    pair = json.loads((tmp_path / "out" / "comparison.json").read_text())["pairs"][0]
    assert pair["alignment_note"] is None
    assert pair["aligned_distance"] == 0 and pair["distance"] > 1
    assert abs(pair["aligned_barrier"]) < 1e-6


def test_hugging_face_gpt2_through_torch_export():
    """A real GPT-2 (transformers, built from a config: no download). torch.fx cannot trace it;
    torch.export can. Runs when the optional `transformers` is installed (pip install .[hf])."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    x = torch.randint(0, 50, (3, 8), generator=g)
    spec = permutation_spec(model, x)
    stream = spec.axes["transformer.wte.weight"][1]
    assert spec.axes["lm_head.weight"] == {1: stream}  # tied
    assert spec.axes["transformer.h.1.ln_2.bias"] == {0: stream}
    # GPT-2's Conv1D stores weights as (in, out): the heads are on axis 1
    assert len(spec.axes["transformer.h.0.attn.c_attn.weight"][1]) == 3
    assert len(spec.nested) == 4
    other, _ = _permuted(model, spec)
    with torch.no_grad():
        torch.testing.assert_close(other(x).logits, model(x).logits, rtol=0, atol=1e-10)
    res = align_weights(model, other, spec=spec)
    assert all(torch.equal(res.state_dict[k], v) for k, v in model.state_dict().items())
