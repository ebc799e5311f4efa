"""Counts the tensor memory a block of code holds at its peak, independently of the library.

`LiveTensors` is a `TorchDispatchMode`: every ATen operation run inside it (forward, backward
and double backward included) reports its outputs; an output whose storage is new (not an alias
of one of the operation's inputs, not seen before) is counted until the storage itself is freed
(a finalizer on the storage object, which PyTorch keeps as long as the storage lives, so a copy
autograd saves keeps it counted). `peak` is the largest total seen after an operation. Every 64
operations the total is recounted from the storages' current sizes (a storage resized to 0
counts 0 from then on). Storage made outside the block (the model, data, vectors made before)
is never counted; neither are scratch buffers a kernel allocates without an ATen call.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

RECOUNT = 64  # operations between exact recounts


class LiveTensors(TorchDispatchMode):
    """Peak bytes of tensor storage created and held inside the block (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self.total = 0
        self._ops = 0
        # storage address -> (weak reference to the storage object, bytes counted)
        self._live: dict[int, tuple[weakref.ref, int]] = {}

    def _freed(self, key: int, ref: weakref.ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] is ref:
            del self._live[key]
            self.total -= entry[1]

    def _recount(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            storage = ref()
            now = 0 if storage is None else storage.nbytes()
            self._live[key] = (ref, now)
            self.total += now - nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            key = _key(t)
            if key == 0 or key in inputs:
                continue
            entry = self._live.get(key)
            if entry is not None and entry[0]() is not None:
                continue
            storage = t.untyped_storage()
            ref = weakref.ref(storage)
            if entry is not None:
                self.total -= entry[1]
            self._live[key] = (ref, storage.nbytes())
            self.total += storage.nbytes()
            weakref.finalize(storage, self._freed, key, ref)
        self._ops += 1
        if self._ops % RECOUNT == 0:
            self._recount()
        self.peak = max(self.peak, self.total)
        return out


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()
