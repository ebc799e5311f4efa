"""The built-in demo: train on the bundled digits data and measure the minimum found."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .data import digits_loaders, digits_mlp, digits_tensors
from .data.training import train
from .probe import Probe


def run_demo(out: str = "demo-output", seed: int = 0, progress: bool = False,
             echo: Callable[[str], None] | None = None) -> dict:
    """Train the digits MLP briefly, probe its minimum, write `out/demo.json`; return numbers."""
    say = echo or (lambda _msg: None)
    train_loader, _ = digits_loaders(batch_size=64, seed=seed)
    model = train(digits_mlp(seed=seed), train_loader, epochs=5, lr=0.05, seed=seed)
    probe = Probe(model, digits_tensors("train"))
    meter = probe.meter()
    ev = probe.evaluate()
    grad_norm = float(probe.gradient().norm())
    result = {"loss": ev.loss, "accuracy": ev.accuracy, "grad_norm": grad_norm,
              "n_samples": ev.n_samples, "cost": meter.cost().to_dict()}
    say(f"digits MLP: loss {ev.loss:.4f}, accuracy {ev.accuracy:.3f}, |grad| {grad_norm:.2e}")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "demo.json").write_text(json.dumps(result, indent=2))
    say(f"wrote {Path(out) / 'demo.json'}")
    return result
