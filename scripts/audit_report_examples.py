"""Prints the two report excerpts quoted in docs/guides/audit.md: a quick audit's summary on a
digits CNN trained 2 epochs, and a starved top-5 row.

Run: `python scripts/audit_report_examples.py` (about a minute on a 2-core CPU).
"""
import warnings

import torch

import landscape
from landscape.data import digits_cnn, digits_loaders, digits_mlp, digits_tensors
from landscape.data.training import train
from landscape.measures import EFFORT

torch.set_num_threads(1)
warnings.simplefilter("ignore")
train_loader, _ = digits_loaders(batch_size=64, image=True)
model = train(digits_cnn(seed=0), train_loader, epochs=2, lr=0.05)
probe = landscape.Probe(model, digits_tensors("train", image=True))
report = landscape.audit(probe, budget="quick", seed=0)
print(report.summary())
EFFORT["quick"] = {**EFFORT["quick"], "eig_max_iter": 16}
x, y = digits_tensors("train")
probe = landscape.Probe(digits_mlp(hidden=16, seed=0), (x[:200], y[:200]))
starved = landscape.audit(probe, budget="quick", measures=["hessian_eigenvalues"])
print([l for l in starved.to_markdown().splitlines() if "hessian_eigenvalues" in l][0])
