"""Benchmark: how large a worst-case sharpness each ascent finds on the digits MLP, and its cost.

Methods, all in the scaled coordinates u = delta / c (c = 1 plain, c = |w| adaptive):
* SAM step: one gradient, u = rho grad_u / ||grad_u|| (Foret et al.; ASAM's step when adaptive;
  for linf u = rho sign(grad_u)).
* PGD 20, step 2.5 rho / 20: 20 projected normalized-gradient (linf: sign) steps of constant
  size (Madry et al.'s rule of thumb), no momentum, no schedule, best point kept.
* PGD 20, step 2 rho: the same with APGD's initial step 2 rho kept constant.
* ours (APGD 20): `landscape.sharpness`, 20 steps with APGD's momentum and step halving.
* reference: `landscape.sharpness` with 100 steps and 4 restarts (not a contender; it shows how
  far the 20-step values are from a much longer search).

Every value is a lower bound of the maximum: the largest of the four contenders is in bold.
Seconds are the fastest of 3 runs (the reference: one run). Run:
    python scripts/bench_sharpness.py
"""

from __future__ import annotations

import time

import torch

from landscape import Probe, sharpness
from landscape.data import digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train
from landscape.sharpness import ascent, scaling

# (scaling name, adaptive, norm, radii)
CONFIGS = [
    ("plain", False, "l2", (0.05, 0.2, 0.5, 1.0)),
    ("adaptive abs(w)", True, "l2", (0.05, 0.2, 0.5)),
    ("plain", False, "linf", (0.002, 0.01)),
]
STEPS = 20
REPEATS = 3  # seconds: the fastest of 3 runs (the machine is shared)


def timed(fn, *args, **kwargs):
    """(result, fastest wall-clock of REPEATS runs)."""
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return out, min(times)


def sam_step(probe: Probe, rho: float, c: torch.Tensor, norm: str) -> float:
    """One step to the boundary along the scaled gradient (SAM/ASAM l2; FGSM-like for linf)."""
    loss, g = probe.loss_and_gradient()
    gu = c * g
    u = rho * gu.sign() if norm == "linf" else rho * gu / gu.norm()
    return probe.loss(c * u) - loss


def plain_pgd(probe: Probe, rho: float, c: torch.Tensor, norm: str, step: float) -> float:
    """STEPS projected steps of constant size step * rho, no momentum, no schedule."""
    loss = probe.loss()

    def objective(delta, need_grad):
        return probe.loss_and_gradient(delta) if need_grad else (probe.loss(delta), None)

    best, _ = ascent(objective, c, rho, norm, steps=STEPS, restarts=1,
                     gen=torch.Generator().manual_seed(0), value0=loss,
                     initial_step=step, momentum=1.0, schedule=False)
    return best - loss


def main() -> None:
    train_loader, _ = digits_loaders(batch_size=64, seed=0)
    model = train(digits_mlp(seed=0), train_loader, epochs=5, lr=0.05, seed=0)
    probe = Probe(model, digits_tensors("train"))
    ev = probe.evaluate()
    print(f"digits MLP ({probe.num_params} parameters), {ev.n_samples} training samples: "
          f"loss {ev.loss:.4f}, accuracy {ev.accuracy:.3f}, |grad| "
          f"{float(probe.gradient().norm()):.3g}\n")
    print("| scaling | norm | rho | method | sharpness | forward | backward | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, adaptive, norm, rhos in CONFIGS:
        c = scaling(probe, adaptive)
        for rho in rhos:
            rows = []
            value, sec = timed(sam_step, probe, rho, c, norm)
            rows.append(("SAM step", value, 2, 1, sec))
            for label, step in ((f"2.5 rho / {STEPS}", 2.5 / STEPS), ("2 rho", 2.0)):
                value, sec = timed(plain_pgd, probe, rho, c, norm, step)
                rows.append((f"PGD {STEPS}, step {label}", value, STEPS + 2, STEPS, sec))
            r, sec = timed(sharpness, probe, rho, norm=norm, adaptive=adaptive, steps=STEPS)
            rows.append((f"ours (APGD {STEPS})", r.value, r.n_forward, r.n_backward, sec))
            best = max(row[1] for row in rows)
            ref = sharpness(probe, rho, norm=norm, adaptive=adaptive, steps=100, restarts=4)
            rows.append(("reference: ours, 100 steps x 4 restarts", ref.value, ref.n_forward,
                         ref.n_backward, ref.seconds))
            for method, value, n_fwd, n_bwd, seconds in rows:
                mark = "**" if value == best else ""
                print(f"| {name} | {norm} | {rho:g} | {method} | {mark}{value:.6g}{mark} | "
                      f"{n_fwd} | {n_bwd} | {seconds:.3f} |")

if __name__ == "__main__":
    main()
