"""Architectures that users bring, written from scratch (no downloads), at any size.

Each builder takes width and depth arguments, so the same code makes a model of a few thousand
parameters for exact checks in the tests and one of 25M-100M parameters for benchmarks:

* `gpt2_lm`: a GPT-2-style causal language model (pre-LN blocks, causal
  `scaled_dot_product_attention`, GELU MLP, input and output embeddings tied). Its loss needs no
  targets: pass `batch_loss=causal_lm_loss` to the Probe, with batches of token ids
  (`token_data`).
* `vit`: a Vision Transformer (patch embedding by a strided conv, class token, learned positional
  embedding, pre-LN blocks with `nn.MultiheadAttention`).
* `convnext`: a ConvNeXt (patchify stem, blocks of depthwise 7x7 conv, channels-last LayerNorm
  through `permute`, inverted MLP, layer scale; LayerNorm + strided conv between stages).
* `resnet`: a timm-style ResNet of basic blocks (ResNet-18/34) or bottleneck blocks
  (`bottleneck=True`: ResNet-50) with BatchNorm.
* `lstm_classifier`: an embedding, an LSTM and a linear head on the last hidden state.
* `lstm_lm`: an LSTM language model (embedding, LSTM, a linear head over the vocabulary at
  every position); its loss is `causal_lm_loss`, like GPT-2's.

Parameter counts (biases included; `sum(p.numel() for p in model.parameters())` prints them):
`gpt2_lm(vocab_size=32000, context=256, width=512, depth=8)` has 41.7M,
`vit(image_size=224, patch_size=16, width=768, depth=12, n_classes=1000)` 86.6M (ViT-B/16),
`convnext(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), n_classes=1000)` 28.6M (ConvNeXt-T),
`resnet(widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3), n_classes=1000)` 21.8M (ResNet-34),
the same with `bottleneck=True` 25.6M (ResNet-50),
`lstm_lm(vocab_size=10000, embed=512, hidden=512, layers=2)` 14.3M.

Every builder takes `seed` and builds under it without touching the global random state.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import LandscapeError
from .models import seeded

__all__ = ["gpt2_lm", "causal_lm_loss", "token_data", "vit", "convnext", "resnet",
           "lstm_classifier", "lstm_lm", "image_data"]


# ---------------------------------------------------------------------- GPT-2 style language model


class _CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        if width % heads:
            raise LandscapeError(f"width ({width}) must be a multiple of heads ({heads}).")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class _GPT2Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(width, heads, dropout)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT2LM(nn.Module):
    """GPT-2-style causal language model: `model(tokens)` -> logits of shape (B, T, vocab_size).

    The output projection `head.weight` is the token embedding `wte.weight` (tied: one parameter,
    listed once by `named_parameters`).
    """

    def __init__(self, vocab_size: int, context: int, width: int, depth: int, heads: int,
                 dropout: float):
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab_size, width)
        self.wpe = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([_GPT2Block(width, heads, dropout) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():  # GPT-2's initialization
            if name.endswith("weight") and p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.context:
            raise LandscapeError(f"sequences of {t} tokens exceed the context of {self.context}.")
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt2_lm(vocab_size: int = 64, context: int = 16, width: int = 32, depth: int = 2,
            heads: int = 4, *, dropout: float = 0.1, seed: int = 0) -> GPT2LM:
    """A GPT-2-style causal language model with tied input and output embeddings.

    Parameters: vocab_size * width + context * width + depth * (12 width^2 + 13 width) + 2 width
    (GPT-2 small is vocab_size=50257, context=1024, width=768, depth=12, heads=12: 124M).

    Args:
        vocab_size: number of token ids.
        context: longest sequence (positional embeddings).
        width: embedding size (a multiple of `heads`).
        depth: number of transformer blocks.
        heads: attention heads per block.
        dropout: dropout rate in training mode (the Probe measures in eval mode: no dropout).
        seed: seed of the initialization.
    """
    return seeded(seed, lambda: GPT2LM(vocab_size, context, width, depth, heads, dropout))


def causal_lm_loss(model: nn.Module, batch: Tensor | dict[str, Tensor]) -> Tensor:
    """Next-token cross-entropy, the mean over all predicted positions of a batch.

    `batch` is a (B, T) tensor of token ids or a dict with `"input_ids"`; position t predicts the
    token at t + 1, so no separate targets are needed. Use it as `Probe(..., batch_loss=...)`.
    """
    tokens = batch["input_ids"] if isinstance(batch, dict) else batch
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def token_data(n_samples: int, context: int, vocab_size: int, *, seed: int = 0) -> Tensor:
    """Random token ids of shape (n_samples, context), from their own generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_samples, context), generator=gen)


# ---------------------------------------------------------------------- Vision Transformer


class _ViTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision Transformer: `model(images)` with images (B, channels, size, size) -> logits."""

    def __init__(self, image_size: int, patch_size: int, channels: int, width: int, depth: int,
                 heads: int, mlp_ratio: int, n_classes: int):
        super().__init__()
        if image_size % patch_size:
            raise LandscapeError(f"image_size ({image_size}) must be a multiple of patch_size "
                             f"({patch_size}).")
        n_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(channels, width, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[_ViTBlock(width, heads, mlp_ratio) for _ in range(depth)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)  # (B, patches, width)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


def vit(image_size: int = 16, patch_size: int = 4, channels: int = 3, width: int = 32,
        depth: int = 2, heads: int = 4, mlp_ratio: int = 4, n_classes: int = 10, *,
        seed: int = 0) -> ViT:
    """A Vision Transformer classifier (pre-LN blocks, class token, learned positions).

    Parameters: about depth * 12 width^2 for the blocks, plus channels * patch_size^2 * width
    for the patch embedding and width * n_classes for the head.
    """
    return seeded(seed, lambda: ViT(image_size, patch_size, channels, width, depth, heads,
                                     mlp_ratio, n_classes))


def image_data(n_samples: int, image_size: int = 16, channels: int = 3, n_classes: int = 10, *,
               seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random images (n_samples, channels, image_size, image_size) and labels, own generator."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, channels, image_size, image_size, generator=gen)
    return x, torch.randint(0, n_classes, (n_samples,), generator=gen)


# ---------------------------------------------------------------------- ConvNeXt


class _ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor, through channels-last."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dwconv(x).permute(0, 2, 3, 1)  # channels last for LayerNorm and the MLP
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt classifier: `model(images)` with images (B, channels, H, W) -> logits."""

    def __init__(self, channels: int, dims: tuple[int, ...], depths: tuple[int, ...],
                 n_classes: int, layer_scale: float):
        super().__init__()
        if len(dims) != len(depths):
            raise LandscapeError(f"dims {dims} and depths {depths} must have the same length.")
        stages: list[nn.Module] = [nn.Sequential(nn.Conv2d(channels, dims[0], 4, stride=4),
                                                 _ChannelsFirstLayerNorm(dims[0]))]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                stages.append(nn.Sequential(_ChannelsFirstLayerNorm(dims[i - 1]),
                                            nn.Conv2d(dims[i - 1], dim, 2, stride=2)))
            stages.append(nn.Sequential(*[_ConvNeXtBlock(dim, layer_scale)
                                          for _ in range(depth)]))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.norm(self.stages(images).mean(dim=(2, 3))))


def convnext(channels: int = 3, dims: tuple[int, ...] = (16, 32), depths: tuple[int, ...] = (1, 1),
             n_classes: int = 10, *, layer_scale: float = 1e-6, seed: int = 0) -> ConvNeXt:
    """A ConvNeXt: 4x4 patchify stem, then stages of blocks (dims[i] channels, depths[i] blocks)
    with a 2x downsampling between stages, so images need a side divisible by 4 * 2^(stages-1).

    `layer_scale` is the initial value of each block's per-channel scale (ConvNeXt's 1e-6).
    """
    return seeded(seed, lambda: ConvNeXt(channels, tuple(dims), tuple(depths), n_classes,
                                          layer_scale))


# ---------------------------------------------------------------------- ResNet


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """The projected skip connection where a block changes the shape (None: identity)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(c_out))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class _Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand to 4 x width channels; a projected skip
    where the shape changes (torchvision's ResNet-50 "v1.5" layout)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    """ResNet of basic or bottleneck blocks: `model(images)` with images (B, channels, H, W) ->
    logits."""

    def __init__(self, channels: int, widths: tuple[int, ...], blocks: tuple[int, ...],
                 n_classes: int, bottleneck: bool = False):
        super().__init__()
        if len(widths) != len(blocks):
            raise LandscapeError(f"widths {widths} and blocks {blocks} must have the same length.")
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        c_in = widths[0]
        block = _Bottleneck if bottleneck else _BasicBlock
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(block(c_in, width, 2 if i and not j else 1))
                c_in = width * (_Bottleneck.expansion if bottleneck else 1)
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(images)).mean(dim=(2, 3)))


def resnet(channels: int = 3, widths: tuple[int, ...] = (16, 32), blocks: tuple[int, ...] = (1, 1),
           n_classes: int = 10, *, bottleneck: bool = False, seed: int = 0) -> ResNet:
    """A ResNet with BatchNorm: a 3x3 stem, then stages of basic blocks (widths[i] channels,
    blocks[i] blocks, stride 2 at the start of every stage but the first), or with
    `bottleneck=True` of bottleneck blocks (widths[i] inner channels, 4 widths[i] out:
    widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3) is ResNet-50)."""
    return seeded(seed, lambda: ResNet(channels, tuple(widths), tuple(blocks), n_classes,
                                        bottleneck))


# ---------------------------------------------------------------------- LSTM


class LSTMClassifier(nn.Module):
    """`model(tokens)` with tokens (B, T) -> logits (B, n_classes) from the last hidden state."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int, n_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out[:, -1])


def lstm_classifier(vocab_size: int = 50, embed: int = 16, hidden: int = 16, layers: int = 1,
                    n_classes: int = 4, *, seed: int = 0) -> LSTMClassifier:
    """An LSTM sequence classifier: embedding, `nn.LSTM` (batch first), linear head.

    Parameters: vocab_size * embed + 4 hidden (embed + hidden + 2) for the first layer
    (4 hidden (2 hidden + 2) for each further one) + (hidden + 1) n_classes.
    """
    return seeded(seed, lambda: LSTMClassifier(vocab_size, embed, hidden, layers, n_classes))


class LSTMLM(nn.Module):
    """`model(tokens)` with tokens (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def lstm_lm(vocab_size: int = 50, embed: int = 16, hidden: int = 16, layers: int = 2, *,
            seed: int = 0) -> LSTMLM:
    """An LSTM language model: embedding, `nn.LSTM` (batch first), a linear head over the
    vocabulary at every position. Use `Probe(..., batch_loss=causal_lm_loss)` with token
    batches (`token_data`).

    Parameters: vocab_size * embed + 4 hidden (embed + hidden + 2) for the first layer
    (4 hidden (2 hidden + 2) for each further one) + (hidden + 1) vocab_size.
    """
    return seeded(seed, lambda: LSTMLM(vocab_size, embed, hidden, layers))
