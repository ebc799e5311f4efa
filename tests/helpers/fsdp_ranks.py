"""Run under torchrun (2 gloo ranks on CPU): measure a tiny float64 model sharded with FSDP2
(`fully_shard`) and write what each rank measured to `<out>.<rank>.json`.

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        tests/helpers/fsdp_ranks.py OUT

`model()`, `data()` and `measure()` are also the single-process reference's
(tests/test_sharded.py); each rank also records what the sharded probe refuses (`refusals`)."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from landscape import (
    Probe,
    first_order_flatness,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    sharpness,
)


def model() -> nn.Sequential:
    """Linear(5, 7) - tanh - Linear(7, 1): over 2 ranks its rows split 4/3 and 1/0 (an empty
    shard)."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.8)
    return net


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(36, 5, generator=g, dtype=torch.float64)
    return x, torch.sin(x.sum(1, keepdim=True))


def measure(probe: Probe) -> dict:
    """The numbers compared with one process's (batches of 6: 3 per rank)."""
    eig = hessian_eigenvalues(probe, k=2, tol=1e-10)
    hpp = hessian_trace(probe, method="hutch++", n_hvp=12, seed=3)
    hutch = hessian_trace(probe, method="hutchinson", n_hvp=9, seed=4)
    dens = hessian_density(probe, n_vectors=2, n_steps=8, seed=5)
    flat = first_order_flatness(probe, 0.05, steps=4, restarts=2, seed=6)
    sharp = sharpness(probe, 0.05, steps=4, restarts=2, seed=7)
    average = sharpness(probe, 0.05, kind="average", n_samples=4, seed=8)
    box = sharpness(probe, 0.01, norm="linf", adaptive=True, steps=3, restarts=2, seed=9)
    return {
        "eigenvalues": eig.eigenvalues.tolist(), "eig_converged": eig.converged,
        "hutchpp": [hpp.estimate, hpp.stderr], "hutchinson": [hutch.estimate, hutch.stderr],
        "density_nodes": dens.nodes.tolist(), "density_weights": dens.weights.tolist(),
        "density_trace": dens.trace, "loss": probe.loss(), "num_params": probe.num_params,
        "method": probe.hvp_method_used,
        "flatness": [flat.value, flat.grad_norm], "sharpness": sharp.value,
        "average_sharpness": [average.value, average.stderr], "linf_sharpness": box.value,
    }


def refusals(net: nn.Module, probe: Probe) -> dict:
    """What a sharded probe must refuse (with a LandscapeError on every rank), by case."""
    from landscape import LandscapeError, hessian_frobenius

    x, y = data()
    cases = {
        "exact_method": lambda: Probe(net, (x, y), loss_fn=nn.functional.mse_loss,
                                      batch_size=6, hvp_method="double_backward"),
        "uneven_batches": lambda: Probe(net, (x[:30], y[:30]), batch_size=6,
                                        loss_fn=nn.functional.mse_loss),
        "hvp_outside": lambda: probe.hvp(torch.zeros(probe.num_params, dtype=torch.float64)),
        "unsupported_estimator": lambda: hessian_frobenius(probe, n_hvp=4),
        "blocks": lambda: hessian_eigenvalues(probe, k=1, params=["0"]),
        "xtrace": lambda: hessian_trace(probe, method="xtrace", n_hvp=8),
    }
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_module

    mesh = net[0].weight.device_mesh
    columns = nn.Linear(4, 2).double()  # weight split by columns
    fully_shard(columns, mesh=mesh, shard_placement_fn=lambda p: Shard(p.ndim - 1))
    cases["shard_dim_1"] = lambda: Probe(columns, (x, y), loss_fn=nn.functional.mse_loss)
    cases["dtensor_without_fsdp"] = lambda: Probe(distribute_module(model(), mesh), (x, y),
                                                  loss_fn=nn.functional.mse_loss)
    out = {}
    for name, call in cases.items():
        try:
            call()
        except LandscapeError as e:
            out[name] = str(e)
        else:
            out[name] = "not refused"
    return out


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # a mismatch fails fast
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = model()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    fully_shard(net[0], mesh=mesh)
    fully_shard(net, mesh=mesh)
    x, y = data()
    nn.functional.mse_loss(net(x[:6]), y[:6]).backward()  # the user's gradients: kept
    before = {k: v.full_tensor() for k, v in net.state_dict().items()}
    grads = {n: q.grad.full_tensor() for n, q in net.named_parameters()}
    probe = Probe(net, data(), loss_fn=nn.functional.mse_loss, batch_size=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = measure(probe)
    after = {k: v.full_tensor() for k, v in net.state_dict().items()}
    result["unchanged"] = all(torch.equal(before[k], after[k]) for k in before) and all(
        torch.equal(grads[n], q.grad.full_tensor()) for n, q in net.named_parameters())
    result["training"] = net.training
    result["layout"] = list(probe.layout.pieces)
    result["refusals"] = refusals(net, probe)
    with open(f"{out}.{dist.get_rank()}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
