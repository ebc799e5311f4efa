"""A tiny GPT-2-style language model and a synthetic sequence task it learns in seconds.

The model follows GPT-2 (Radford et al. 2019) as written in nanoGPT: token and positional
embeddings, pre-LayerNorm blocks of causal multi-head attention (one fused q|k|v projection) and
a GELU MLP, a final LayerNorm, and an output layer tied to the token embedding.

The task ("modular sum"): tokens x_1..x_T uniform on {0..V-1}; the target at position t is
(x_{t-1} + x_t) mod V (x_0 = 0), so the model must attend to the previous token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, n_heads: int, context: int):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        mask = torch.tril(torch.ones(context, context)).view(1, 1, context, context)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        k = k.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        v = v.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * k.size(-1) ** -0.5
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, width: int, n_heads: int, context: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, n_heads, context)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """GPT-2-style model: `forward(idx)` maps token ids (B, T) to logits (B, T, vocab)."""

    def __init__(self, vocab: int = 8, width: int = 32, n_layers: int = 2, n_heads: int = 4,
                 context: int = 8):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, n_heads, context) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input and output embeddings

    def forward(self, idx: Tensor) -> Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def tiny_gpt(vocab: int = 8, width: int = 32, n_layers: int = 2, n_heads: int = 4,
             context: int = 8, seed: int = 0) -> TinyGPT:
    """A `TinyGPT` with GPT-2's initialization (normal, std 0.02) from its own generator."""
    gen = torch.Generator().manual_seed(seed)
    model = TinyGPT(vocab, width, n_layers, n_heads, context)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif "ln" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.zero_()
    return model


def modular_sum_tensors(n: int = 2048, context: int = 8, vocab: int = 8,
                        seed: int = 0) -> tuple[Tensor, Tensor]:
    """(x, y): token ids (n, context) and targets y[:, t] = (x[:, t-1] + x[:, t]) mod vocab."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, context), generator=gen)
    prev = torch.cat([torch.zeros(n, 1, dtype=x.dtype), x[:, :-1]], dim=1)
    return x, (prev + x) % vocab


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over all positions: logits (B, T, V), targets (B, T)."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def trained_tiny_gpt(seed: int = 0, lr: float = 1e-3, epochs: int = 8, n: int = 2048,
                     width: int = 32, n_layers: int = 1, n_heads: int = 4) -> TinyGPT:
    """A `tiny_gpt(seed=seed)` trained with Adam (batches of 64, no shuffling) on
    `modular_sum_tensors(n, seed=0)`: models of different seeds differ by their initialization
    only. The defaults take a few seconds on one CPU core and reach a loss of about 0.1-0.5."""
    from .training import train

    x, y = modular_sum_tensors(n, seed=0)
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]
    model = tiny_gpt(width=width, n_layers=n_layers, n_heads=n_heads, seed=seed)
    return train(model, loader, epochs=epochs, lr=lr, optimizer="adam", seed=seed,
                 loss_fn=sequence_loss)
