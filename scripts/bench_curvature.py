"""PyHessian vs landscape: Hessian eigenvalues and trace on the digits MLP and CNN.

Run from the repository root: `python scripts/bench_curvature.py [--models mlp cnn]`.

Each model is trained briefly (landscape.data.training.train, 5 epochs), converted to float64
and probed on 1024 training samples in eval mode (the CNN's BatchNorm uses running statistics,
for PyHessian too). The reference is exact: the full Hessian, built once from batched HVPs and
diagonalized with numpy; its eigenvalues and diagonal are cached in
scripts/bench_curvature_reference.npz together with a fingerprint of the weights and data, and
recomputed when the fingerprint differs. Torch runs on one CPU thread for steadier timings.
Prints markdown tables (the README shows one run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import landscape
from landscape import Probe, hessian_eigenvalues, hessian_trace
from landscape.data import digits_cnn, digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train

CACHE = Path(__file__).with_name("bench_curvature_reference.npz")
N_SAMPLES = 1024
TOLS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7, 1e-8]


def build(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    image = name == "cnn"
    loader, _ = digits_loaders(batch_size=64, image=image, seed=0)
    model = digits_cnn(seed=0) if image else digits_mlp(seed=0)
    train(model, loader, epochs=5, lr=0.05, seed=0)
    model = model.double().eval()
    x, y = digits_tensors("train", image=image, dtype=torch.float64)
    return model, x[:N_SAMPLES], y[:N_SAMPLES]


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in [*model.state_dict().values(), x, y]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def exact_reference(name: str, model: nn.Module, x, y) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues (descending) and the diagonal of the exact Hessian, cached by fingerprint."""
    key = fingerprint(model, x, y)
    store = dict(np.load(CACHE)) if CACHE.exists() else {}
    if str(store.get(f"{name}_fingerprint", "")) == key:
        return store[f"{name}_eigenvalues"], store[f"{name}_diagonal"]
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params, create_graph=True)])
    n = g.numel()
    rows = []
    for s in range(0, n, 64):
        eye = torch.eye(n, dtype=g.dtype)[s : s + 64]
        out = torch.autograd.grad(g, params, grad_outputs=eye, retain_graph=True,
                                  is_grads_batched=True)
        rows.append(torch.cat([t.reshape(len(eye), -1) for t in out], 1))
    H = torch.cat(rows).numpy()
    H = 0.5 * (H + H.T)
    evals = np.linalg.eigvalsh(H)[::-1].copy()
    store.update({f"{name}_fingerprint": np.array(key), f"{name}_eigenvalues": evals,
                  f"{name}_diagonal": np.diag(H).copy()})
    np.savez(CACHE, **store)
    return evals, np.diag(H).copy()


class Counter:
    """Counts PyHessian's Hessian-vector products by wrapping its module-level function."""

    def __init__(self):
        import sys

        import pyhessian  # noqa: F401  (the package's `hessian` name shadows its submodule)

        ph = sys.modules["pyhessian.hessian"]
        self.module, self.original, self.n = ph, ph.hessian_vector_product, 0

        def counted(*args, **kwargs):
            self.n += 1
            return self.original(*args, **kwargs)

        ph.hessian_vector_product = counted

    def close(self):
        self.module.hessian_vector_product = self.original


@contextlib.contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def pyhessian_run(model, x, y, what: str, **kwargs):
    from pyhessian import hessian

    counter = Counter()
    try:
        with float64_default(), torch.random.fork_rng():
            torch.manual_seed(0)
            t0 = time.perf_counter()
            h = hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            out = getattr(h, what)(**kwargs)
            seconds = time.perf_counter() - t0
    finally:
        counter.close()
        model.eval()
    return out, counter.n, seconds


def rel_err(values, ref) -> float:
    values = np.sort(np.asarray(values, dtype=float))[::-1]
    return float(np.max(np.abs(values - ref[: len(values)]) / np.abs(ref[: len(values)])))


def fresh_probe(model, x, y) -> Probe:
    probe = Probe(model, (x, y), batch_size=N_SAMPLES)
    probe.loss()  # data checks outside the timings
    return probe


def lanczos_until(model, x, y, k: int, ref: np.ndarray, target: float):
    """The loosest tol in TOLS whose Lanczos eigenvalues are within `target` of the reference."""
    for tol in TOLS:
        res = hessian_eigenvalues(fresh_probe(model, x, y), k=k, tol=tol, max_iter=2000)
        if rel_err(res.eigenvalues, ref) <= target:
            return tol, res
    return tol, res


def power_hvps_to(model, x, y, ref: float, target: float, max_iter: int) -> int | None:
    """HVPs power iteration needs before its Rayleigh quotient is within `target` of ref."""
    probe = fresh_probe(model, x, y)
    hvp, history = probe.hvp, []

    def recording(v, delta=None):
        hv = hvp(v, delta)
        history.append(float(v @ hv / (v @ v)))
        return hv

    probe.hvp = recording
    with np.errstate(all="ignore"), contextlib.suppress(Warning):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hessian_eigenvalues(probe, k=1, method="power", tol=1e-10, max_iter=max_iter)
    err = np.abs(np.asarray(history) - ref) / abs(ref)
    ok = np.nonzero(err <= target)[0]
    return int(ok[0]) + 1 if len(ok) else None


def bench(name: str, seeds: int, power_max: int) -> list[str]:
    model, x, y = build(name)
    evals, diag = exact_reference(name, model, x, y)
    trace = float(diag.sum())
    n = len(diag)
    lines = [f"### digits {name.upper()} ({n} parameters, {N_SAMPLES} samples, float64)", "",
             f"Exact: top-5 {np.array2string(evals[:5], precision=6)}, trace {trace:.6g}.", "",
             "| task | method | HVPs | seconds | rel. error |", "|---|---|---:|---:|---:|"]
    for k in (1, 5):
        (vals, _), n_py, t_py = pyhessian_run(model, x, y, "eigenvalues", top_n=k)
        e_py = rel_err(vals, evals)
        lines.append(f"| top-{k} | PyHessian (maxIter=100, tol=1e-3) | {n_py} | {t_py:.2f} | "
                     f"{e_py:.1e} |")
        tol, res = lanczos_until(model, x, y, k, evals, e_py)
        lines.append(f"| top-{k} | landscape Lanczos, same accuracy (tol={tol:g}) | {res.n_hvp} "
                     f"| {res.seconds:.2f} | {rel_err(res.eigenvalues, evals):.1e} |")
        res = hessian_eigenvalues(fresh_probe(model, x, y), k=k)
        lines.append(f"| top-{k} | landscape Lanczos (default tol=1e-4) | {res.n_hvp} | "
                     f"{res.seconds:.2f} | {rel_err(res.eigenvalues, evals):.1e} |")
    tol, res = lanczos_until(model, x, y, 5, evals, 1e-4)
    lines.append(f"| top-5 to 1e-4 | landscape Lanczos (tol={tol:g}) | {res.n_hvp} | "
                 f"{res.seconds:.2f} | {rel_err(res.eigenvalues, evals):.1e} |")
    tol, res = lanczos_until(model, x, y, 1, evals, 1e-6)
    lines.append(f"| top-1 to 1e-6 | landscape Lanczos (tol={tol:g}) | {res.n_hvp} | "
                 f"{res.seconds:.2f} | {rel_err(res.eigenvalues, evals):.1e} |")
    n_pow = power_hvps_to(model, x, y, evals[0], 1e-6, power_max)
    lines.append(f"| top-1 to 1e-6 | power iteration | {n_pow or f'> {power_max}'} | | "
                 f"{'<= 1e-6' if n_pow else '> 1e-6'} |")
    lines += ["", "| trace | method | HVPs | seconds | mean abs. rel. error | "
              "mean reported stderr / trace |", "|---|---|---:|---:|---:|---:|"]
    for method in ("hutchinson", "hutch++", "xtrace"):
        errs, stds, secs = [], [], []
        probe = fresh_probe(model, x, y)
        for seed in range(seeds):
            r = hessian_trace(probe, n_hvp=150, method=method, seed=seed)
            errs.append(abs(r.estimate - trace) / abs(trace))
            stds.append(r.stderr / abs(trace))
            secs.append(r.seconds)
        lines.append(f"| trace | landscape {method} ({seeds} seeds) | 150 | {np.mean(secs):.2f} | "
                     f"{np.mean(errs):.1e} | {np.mean(stds):.1e} |")
    tr_py, n_py, t_py = pyhessian_run(model, x, y, "trace")
    lines.append(f"| trace | PyHessian (maxIter=100, tol=1e-3) | {n_py} | {t_py:.2f} | "
                 f"{abs(np.mean(tr_py) - trace) / abs(trace):.1e} | none |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per trace method")
    parser.add_argument("--power-max", type=int, default=2000, help="power iteration budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"landscape {landscape.__version__}, torch {torch.__version__}, 1 CPU thread\n")
    for name in args.models:
        print("\n".join(bench(name, args.seeds, args.power_max)), flush=True)
        print()


if __name__ == "__main__":
    main()
