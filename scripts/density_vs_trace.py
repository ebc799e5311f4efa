"""Does the spectral density's trace (n times its mean) agree with Hutch++ on trained networks?

Issue 19 saw n * mean(density) with the opposite sign to the Hutch++ trace on ViT, ResNet-50
and GPT-2 audits. This script trains a ViT, a ResNet and a GPT-2-style model (from
landscape.data.architectures, at modest widths) for 40 Adam steps on synthetic data
with a learnable rule, then on each:

* the Hutch++ trace (99 products) with its standard error;
* the density's trace at the quick audit's settings (1 vector, 30 steps) for 6 seeds: how often
  its sign differs from Hutch++, and each |difference| / combined standard error (z);
* the density with 3 vectors of 40 steps: trace, stderr, z;
* the same density with the three-term recurrence (no reorthogonalization): its trace;
* z^T H z for 4 Rademacher vectors summed in float32 (torch `@`) against float64: the
  relative error of a float32 reduction.

Run (about 6 minutes on one CPU thread; `--models GPT-2` for one of them):
    OMP_NUM_THREADS=1 python scripts/density_vs_trace.py
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch
from torch import nn

from landscape import Probe, hessian_density, hessian_trace
from landscape._random import generator, rademacher
from landscape._reduce import fdot
from landscape.data.architectures import causal_lm_loss, gpt2_lm, resnet, vit

SAMPLES = 64  # the probe's samples
QUICK = 6  # seeds of the quick audit's density


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose label is the argmax of a fixed random linear map (learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    teacher = torch.randn(3 * 16 * 16, 10, generator=torch.Generator().manual_seed(99))
    return x, (x.reshape(n, -1) @ teacher).argmax(1)


def _tokens(n: int, seed: int, vocab: int = 128, context: int = 24) -> torch.Tensor:
    """Sequences t_{i+1} = (5 t_i + 3) mod vocab, with 10% of tokens replaced at random."""
    g = torch.Generator().manual_seed(seed)
    t = torch.empty(n, context, dtype=torch.long)
    t[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(1, context):
        t[:, i] = (5 * t[:, i - 1] + 3) % vocab
    noise = torch.rand(n, context, generator=g) < 0.1
    t[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=g)
    return t


def _train(model: nn.Module, loss_of, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        opt.zero_grad()
        loss = loss_of(model, step)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss)


def _models(steps: int, names: list[str]):
    """(name, trained model, probe) for the architectures named."""
    ce = nn.functional.cross_entropy
    for name, model in (("ViT", vit(width=64, depth=2, heads=4, seed=0)),
                        ("ResNet", resnet(widths=(16, 32, 64), blocks=(1, 1, 1), seed=0))):
        if name not in names:
            continue
        x, y = _images(2048, seed=1)
        loss = _train(model, lambda m, s, x=x, y=y: ce(m(x[64 * (s % 32):64 * (s % 32 + 1)]),
                                                       y[64 * (s % 32):64 * (s % 32 + 1)]),
                      steps)
        xp, yp = _images(SAMPLES, seed=2)
        yield name, model, loss, Probe(model, (xp, yp))
    if "GPT-2" not in names:
        return
    model = gpt2_lm(vocab_size=128, context=24, width=64, depth=2, heads=4, dropout=0.0, seed=0)
    tokens = _tokens(2048, seed=1)
    loss = _train(model, lambda m, s: causal_lm_loss(m, tokens[64 * (s % 32):64 * (s % 32 + 1)]),
                  steps)
    yield "GPT-2", model, loss, Probe(model, [_tokens(SAMPLES, seed=2)], batch_loss=causal_lm_loss)


def _float32_error(probe: Probe, n_vectors: int = 4) -> tuple[float, float]:
    """(max relative error of z^T H z summed in float32, mean of z^T H z)."""
    gen = generator(123)
    errs, terms = [], []
    for _ in range(n_vectors):
        z = rademacher((probe.num_params,), gen, probe.device, probe.dtype)
        hz = probe.hvp(z)
        q64, q32 = fdot(z, hz), float(z @ hz)
        errs.append(abs(q32 - q64) / max(abs(q64), 1e-300))
        terms.append(q64)
    return max(errs), float(np.mean(terms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="Adam steps of training")
    parser.add_argument("--models", nargs="+", default=["ViT", "ResNet", "GPT-2"],
                        help="which of ViT, ResNet, GPT-2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, float32 models, "
          f"{args.steps} Adam steps, probe of {SAMPLES} samples")
    for name, _model, loss, probe in _models(args.steps, args.models):
        t0 = time.perf_counter()
        hpp = hessian_trace(probe, n_hvp=99, method="hutch++", seed=0)
        quick = [hessian_density(probe, n_vectors=1, n_steps=30, seed=s) for s in range(QUICK)]
        std = hessian_density(probe, n_vectors=3, n_steps=40, seed=0)
        rec = hessian_density(probe, n_vectors=3, n_steps=40, seed=0, max_vectors=4)
        f32, term_mean = _float32_error(probe)

        def z(d, hpp=hpp) -> float:
            return (d.trace - hpp.estimate) / math.hypot(d.trace_stderr, hpp.stderr)

        zq = [z(d) for d in quick]
        opposite = sum(np.sign(d.trace) != np.sign(hpp.estimate) for d in quick)
        print(f"\n{name}: {probe.num_params} parameters, training loss {loss:.3f} "
              f"({time.perf_counter() - t0:.0f} s of measurements)")
        print(f"  Hutch++ (99 products)        tr(H) = {hpp.estimate:10.4g} +- {hpp.stderr:.3g}")
        print(f"  density 3 x 40 (reorth.)    n*mean = {std.trace:10.4g} +- "
              f"{std.trace_stderr:.3g}   z = {z(std):+.2f}")
        print(f"  density 3 x 40 (recurrence) n*mean = {rec.trace:10.4g} +- "
              f"{rec.trace_stderr:.3g}   (same start vectors)")
        print(f"  density 1 x 30, {QUICK} seeds: n*mean from {min(d.trace for d in quick):.4g} to "
              f"{max(d.trace for d in quick):.4g}, stderr (one-vector bound) about "
              f"{np.median([d.trace_stderr for d in quick]):.3g}; opposite sign to Hutch++ in "
              f"{opposite}/{QUICK}; |z| max {max(abs(v) for v in zq):.2f}")
        print(f"  z^T H z, 4 Rademacher z: mean {term_mean:.4g}; "
              f"float32 sum vs float64: max relative error {f32:.2g}")


if __name__ == "__main__":
    main()
