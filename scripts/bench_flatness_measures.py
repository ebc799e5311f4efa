"""Benchmark: PAC-Bayes flatness, local entropy and quadratic-model agreement on the digits MLP.

What each costs (probe passes, seconds) and what it reports on a trained 2-layer MLP, float32,
all 1438 training samples. lambda_max and tr(H) for the agreement table come from
`hessian_eigenvalues` (Lanczos) and `hessian_trace` (Hutch++, 99 HVPs). Run:
    python scripts/bench_flatness_measures.py
"""

from __future__ import annotations

import time

from landscape import (
    Probe,
    hessian_eigenvalues,
    hessian_trace,
    local_entropy,
    pac_bayes_flatness,
    quadratic_agreement,
)
from landscape.data import digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train


def main() -> None:
    train_loader, _ = digits_loaders(batch_size=64, seed=0)
    model = train(digits_mlp(seed=0), train_loader, epochs=5, lr=0.05, seed=0)
    probe = Probe(model, digits_tensors("train"))
    ev = probe.evaluate()
    print(f"digits MLP ({probe.num_params} parameters), {ev.n_samples} training samples: "
          f"loss {ev.loss:.4f}, accuracy {ev.accuracy:.3f}\n")

    print("| PAC-Bayes | sigma | stderr | 1/sigma^2 | increase | KL | forward | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for criterion, noise, target in (("error", "isotropic", 0.1), ("error", "magnitude", 0.1),
                                     ("loss", "isotropic", 0.1)):
        r = pac_bayes_flatness(probe, criterion=criterion, noise=noise, target=target,
                               n_samples=20)
        print(f"| {criterion}, {noise}, +{target} | {r.value:.4g} | {r.stderr:.2g} | "
              f"{r.flatness:.4g} | {r.increase:.3f} +- {r.increase_stderr:.3f} | {r.kl:.4g} | "
              f"{r.cost.n_forward} | {r.cost.seconds:.1f} |")

    print("\n| local entropy, gamma | Phi | stderr | free-energy gap | local energy | "
          "grad norm | acceptance |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    r = local_entropy(probe, [10.0, 100.0], gamma_max=3000.0, n_steps=100, burn_in=30)
    for row in r.rows():
        print(f"| {row['gamma']:g} | {row['value']:.2f} | {row['stderr']:.2f} | "
              f"{row['free_energy_gap']:.4f} | {row['local_energy']:.4f} +- "
              f"{row['local_energy_stderr']:.4f} | {row['gradient_norm']:.3g} | "
              f"{row['acceptance']:.2f} |")
    print(f"T = {r.temperature:.3g}, {len(r.nodes)} grid nodes, {r.cost.n_gradient} gradients, "
          f"{r.cost.seconds:.1f} s")

    t0 = time.perf_counter()
    lam = float(hessian_eigenvalues(probe, k=1, tol=1e-4).eigenvalues[0])
    trace = hessian_trace(probe, n_hvp=99, method="hutch++")
    tr, tr_se = trace.estimate, trace.stderr
    print(f"\nlambda_max {lam:.4g} (Lanczos), tr(H) {tr:.4g} +- {tr_se:.2g} (Hutch++, 99 HVPs): "
          f"{time.perf_counter() - t0:.1f} s")
    a = quadratic_agreement(probe, [0.01, 0.03, 0.1, 0.3, 1.0], top_eigenvalue=lam, trace=tr,
                            trace_stderr=tr_se)
    print("\n| rho | worst: predicted | measured | ratio | rho ||g|| | average: predicted | "
          "measured | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in a.rows():
        print(f"| {row['rho']:g} | {row['predicted_worst']:.3g} | {row['measured_worst']:.3g} | "
              f"{row['ratio_worst']:.2f} | {row['gradient_term']:.2g} | "
              f"{row['predicted_average']:.3g} | {row['measured_average']:.3g} | "
              f"{row['ratio_average']:.2f} +- {row['ratio_average_stderr']:.2f} |")
    print(f"departure: worst {a.departure_worst}, average {a.departure_average}; "
          f"{a.cost.n_gradient} gradients, {a.cost.n_forward} forwards, {a.cost.seconds:.1f} s")


if __name__ == "__main__":
    main()
