"""The operations the graph analysis knows, by kind: layers traced as leaves, elementwise
operations, reductions, reshapes, creation ops, pools, and the ATen operators of exported graphs
with their torch-level equivalents."""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

F = nn.functional
GUIDE = "docs/guides/alignment.md"

NORM1D = (nn.LayerNorm, nn.RMSNorm)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
RNN = (nn.LSTM, nn.GRU, nn.RNN)
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Softmax, nn.LogSoftmax,
)
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
LEAVES = (nn.Linear, *CONV, nn.Embedding, *NORM1D, *BATCHNORM, nn.GroupNorm, *RNN,
           nn.Flatten, *ELEMENTWISE_MODULES, *POOL_MODULES)

ELEMENTWISE = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, operator.pow, operator.neg, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    operator.invert, torch.add, torch.sub, torch.mul, torch.div, torch.where, torch.maximum,
    torch.minimum, torch.pow, torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.tanh,
    torch.sigmoid, torch.relu, torch.erf, torch.abs, torch.clamp, torch.sin, torch.cos,
    torch.square, torch.masked_fill, torch.dropout, torch.lerp,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.softplus,
    F.hardtanh, F.hardswish, F.hardsigmoid, F.softsign, F.tanh, F.sigmoid, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d,
}
ELEMENTWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "pow", "exp", "log", "sqrt",
    "rsqrt", "tanh", "sigmoid", "relu", "abs", "clamp", "neg", "masked_fill", "masked_fill_",
    "square", "eq", "ne", "lt", "le", "gt", "ge", "sin", "cos", "where", "lerp",
}
SAME_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to",
                 "type", "type_as", "cpu", "cuda", "requires_grad_"}
SOFTMAX = {torch.softmax, torch.log_softmax, F.softmax, F.log_softmax, "softmax",
            "log_softmax"}
REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin",
           torch.max: "max", torch.min: "min", torch.var: "var", torch.std: "std",
           torch.logsumexp: "logsumexp", torch.norm: "norm", torch.prod: "prod"}
REDUCE_METHODS = {"mean", "sum", "amax", "amin", "max", "min", "var", "std", "logsumexp",
                   "norm", "prod"}
RESHAPE = {torch.reshape, torch.flatten, torch.unflatten, "view", "reshape", "flatten",
            "unflatten", "view_as", "reshape_as"}
CREATE = {torch.arange, torch.ones, torch.zeros, torch.full, torch.empty, torch.tensor,
           torch.ones_like, torch.zeros_like, torch.full_like, torch.tril, torch.triu,
           torch.eye, torch.randn, torch.rand}
POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                   F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                   F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                   F.adaptive_max_pool3d, F.interpolate}


def aten_table() -> dict[Any, Any]:
    """ATen operators (in graphs from `torch.export`) -> the torch-level equivalent handled."""
    aten = torch.ops.aten
    same = {
        "linear": F.linear, "add": torch.add, "sub": torch.sub, "mul": torch.mul,
        "div": torch.div, "rsub": torch.sub, "gelu": F.gelu, "relu": torch.relu,
        "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "pow": torch.pow,
        "rsqrt": torch.rsqrt, "sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log,
        "neg": operator.neg, "where": torch.where, "masked_fill": torch.masked_fill,
        "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "gt": operator.gt,
        "le": operator.le, "ge": operator.ge, "abs": torch.abs, "clamp": torch.clamp,
        "erf": torch.erf, "maximum": torch.maximum, "minimum": torch.minimum,
        "dropout": F.dropout, "softmax": torch.softmax, "_softmax": torch.softmax,
        "log_softmax": torch.log_softmax, "_log_softmax": torch.log_softmax,
        "mean": torch.mean, "sum": torch.sum, "amax": torch.amax, "amin": torch.amin,
        "var": torch.var, "view": torch.reshape, "reshape": torch.reshape,
        "_unsafe_view": torch.reshape, "flatten": torch.flatten, "unflatten": torch.unflatten,
        "permute": torch.permute, "transpose": torch.transpose, "t": torch.t,
        "unsqueeze": torch.unsqueeze, "squeeze": torch.squeeze, "expand": "expand",
        "split": torch.split, "split_with_sizes": torch.split, "chunk": torch.chunk,
        "unbind": torch.unbind, "cat": torch.cat, "stack": torch.stack,
        "matmul": torch.matmul, "bmm": torch.matmul, "mm": torch.matmul,
        "scaled_dot_product_attention": F.scaled_dot_product_attention,
        "layer_norm": F.layer_norm, "rms_norm": getattr(F, "rms_norm", None),
        "conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d,
        "contiguous": torch.clone, "clone": torch.clone, "detach": torch.detach,
        "alias": torch.clone, "_to_copy": torch.clone, "to": torch.clone,
        "lift_fresh_copy": torch.clone, "type_as": torch.clone,
        "arange": torch.arange, "zeros": torch.zeros, "ones": torch.ones, "full": torch.full,
        "empty": torch.empty, "scalar_tensor": torch.tensor, "zeros_like": torch.zeros_like,
        "ones_like": torch.ones_like, "full_like": torch.full_like, "tril": torch.tril,
        "triu": torch.triu, "new_ones": torch.ones, "new_zeros": torch.zeros,
        "new_full": torch.full, "new_empty": torch.empty,
        "max_pool2d": F.max_pool2d, "avg_pool2d": F.avg_pool2d,
        "adaptive_avg_pool2d": F.adaptive_avg_pool2d, "adaptive_avg_pool1d": F.adaptive_avg_pool1d,
        "embedding": "aten.embedding", "slice": "aten.slice", "select": "aten.select",
        "addmm": "aten.addmm",
    }
    table = {}
    for name, target in same.items():
        packet = getattr(aten, name, None)
        if packet is not None and target is not None:
            table[packet] = target
    return table


_ATEN: dict[Any, Any] = {}


def aten_target(packet: Any) -> Any:
    """The torch-level equivalent of an ATen operator packet, or None when not handled."""
    if not _ATEN:
        _ATEN.update(aten_table())
    return _ATEN.get(packet)
