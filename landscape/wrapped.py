"""Models wrapped for parallel training: what a Probe measures through the wrapper.

* `DistributedDataParallel` and `DataParallel` hold a full replica of the model in `.module`;
  the probe measures that module (same parameters and buffers, so the same values), with its own
  data sharding and reductions (`landscape.distributed`). Going around the wrapper avoids its
  gradient hooks, which expect one backward per forward and do not support double backward.
* FSDP2 models (`fully_shard`, whose parameters are `DTensor` shards) are measured sharded by
  `landscape.sharded.ShardedProbe`, which `Probe(model, ...)` builds for them (`is_fsdp2`).
* FSDP1's `FullyShardedDataParallel` and DTensor parameters outside FSDP2 (tensor parallelism)
  are refused with the fix named: a rank's parameters are only its shards, so flat vectors and
  products built from them would be wrong (a top eigenvalue of 0.0 was measured before this
  check). Measure an unsharded copy instead.
"""

from __future__ import annotations

from torch import nn

from .errors import LandscapeError

SHARDED_FIX = (
    "Shard it with FSDP2 (torch.distributed.fsdp.fully_shard), which the probe measures sharded, "
    "or measure an unsharded copy: on every rank, gather the full weights "
    "(torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
    "options=StateDictOptions(full_state_dict=True))) into a model built without sharding, "
    "and give that to the Probe; under torchrun the probe then shards the data over the ranks "
    "and all-reduces its sums."
)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """`model.module` for DistributedDataParallel / DataParallel wrappers (repeatedly)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def is_dtensor(p: object) -> bool:
    """True for a `DTensor` parameter (or one whose `.data` is a DTensor)."""
    return type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor"


def is_fsdp2(model: object) -> bool:
    """True when `model` (an nn.Module) holds a module sharded with FSDP2's `fully_shard`
    (torch.distributed.fsdp, 1.4 s to import, is imported only for a model with DTensors)."""
    if not isinstance(model, nn.Module) or not any(map(is_dtensor, model.parameters())):
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def sharded_probe_class() -> type:
    """`landscape.sharded.ShardedProbe` (imported on use: it builds on the Probe)."""
    from .sharded import ShardedProbe

    return ShardedProbe


def refuse_sharded(model: nn.Module) -> None:
    """Raise when `model` holds sharded parameters the probe cannot measure: an FSDP1 wrapper,
    or DTensor parameters without FSDP2 (FSDP2 models go to `landscape.sharded`).

    Raises:
        LandscapeError: the model (or a submodule) is sharded; the message names the fix.
    """
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "FullyShardedDataParallel":
            where = f"submodule {name!r}" if name else "the model"
            raise LandscapeError(
                f"{where} is sharded with FSDP1 ({kind}): each rank holds only a shard of the "
                f"parameters, which the probe cannot measure correctly. {SHARDED_FIX}"
            )
    if is_fsdp2(model):
        return
    refuse_dtensors(model.named_parameters())


def refuse_dtensors(named) -> None:
    """Raise when any of the (name, parameter) pairs is a DTensor."""
    for name, p in named:
        if is_dtensor(p):
            raise LandscapeError(
                f"parameter {name!r} is a DTensor (sharded, e.g. by tensor parallelism): the "
                f"probe measures DTensor parameters only when FSDP2 shards them. {SHARDED_FIX}"
            )
