"""Models wrapped for parallel training: what a Probe measures through the wrapper.

* `DistributedDataParallel` and `DataParallel` hold a full replica of the model in `.module`;
  the probe measures that module (same parameters and buffers, so the same values), with its own
  data sharding and reductions (`landscape.distributed`). Going around the wrapper avoids its
  gradient hooks, which expect one backward per forward and do not support double backward.
* Sharded models (FSDP2's `fully_shard`, whose parameters are `DTensor` shards, and FSDP1's
  `FullyShardedDataParallel`) are refused with the fix named: a rank's parameters are only its
  shards, so flat vectors and products built from them would be wrong (a top eigenvalue of 0.0
  was measured before this check). Measure an unsharded copy instead.
"""

from __future__ import annotations

from torch import nn

from .errors import LandscapeError

SHARDED_FIX = (
    "Measure an unsharded copy: on every rank, gather the full weights "
    "(torch.distributed.checkpoint.state_dict.get_model_state_dict(model, "
    "options=StateDictOptions(full_state_dict=True))) into a model built without fully_shard, "
    "and give that to the Probe; under torchrun the probe then shards the data over the ranks "
    "and all-reduces its sums."
)


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """`model.module` for DistributedDataParallel / DataParallel wrappers (repeatedly)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def refuse_sharded(model: nn.Module) -> None:
    """Raise when `model` holds sharded parameters (FSDP2 DTensors or an FSDP1 wrapper).

    Raises:
        LandscapeError: the model (or a submodule) is sharded; the message names the fix.
    """
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "FullyShardedDataParallel" or kind.startswith("FSDP"):
            where = f"submodule {name!r}" if name else "the model"
            raise LandscapeError(
                f"{where} is sharded with FSDP ({kind}): each rank holds only a shard of the "
                f"parameters, which the probe cannot measure correctly. {SHARDED_FIX}"
            )
    for name, p in model.named_parameters():
        if type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor":
            raise LandscapeError(
                f"parameter {name!r} is a DTensor (sharded, e.g. by fully_shard or tensor "
                f"parallelism): the probe cannot measure sharded parameters. {SHARDED_FIX}"
            )
