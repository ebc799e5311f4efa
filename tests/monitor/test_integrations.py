"""The monitor inside Lightning and the Hugging Face Trainer (tiny models, CPU, a few steps)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

from landscape.monitor import CurvatureMonitor

pytestmark = pytest.mark.slow  # the whole module: see `make test-fast`

def _tiny_classification(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_lightning_callback_logs_through_the_trainer(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    from landscape.integrations.lightning import CurvatureCallback

    x, y = _tiny_classification()

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, inputs):
            return self.net(inputs)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    torch.manual_seed(0)
    module = Module()
    callback = CurvatureCallback(data=(x, y), every=2, budget=None,
                                 measures=("top_eigenvalue", "eos_ratio", "loss"))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = pl.Trainer(accelerator="cpu", max_steps=6, logger=CSVLogger(tmp_path, name="run"),
                         callbacks=[callback], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    trainer.fit(module, loader)
    rows = callback.monitor.rows
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert rows[-1]["eos_threshold"] == pytest.approx(3.8 / 0.1)  # (2 + 2 beta) / lr
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        logged = [r for r in csv.DictReader(f) if r.get("curvature/top_eigenvalue")]
    assert len(logged) == 3
    values = [float(r["curvature/top_eigenvalue"]) for r in logged]
    assert values == pytest.approx([r["top_eigenvalue"] for r in rows], rel=1e-6)
    assert float(logged[0]["curvature/eos_ratio"]) == pytest.approx(rows[0]["eos_ratio"])


def _gpt2(tmp_path, report_to):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 32, (32, 12), generator=g)
    train = [{"input_ids": ids[i], "labels": ids[i]} for i in range(24)]
    measure = [{"input_ids": ids[24:], "labels": ids[24:]}]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=6,
        per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=2, save_strategy="no",
        report_to=report_to, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train)
    return trainer, measure


def test_transformers_callback_reaches_log_history_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, measure = _gpt2(tmp_path, ["tensorboard"])
    from landscape.integrations.transformers import CurvatureCallback

    callback = CurvatureCallback(data=measure, every=3, trainer=trainer, budget=None,
                                 measures=("top_eigenvalue", "preconditioned_sharpness",
                                           "eos_ratio", "gradient_norm"))
    trainer.add_callback(callback)
    trainer.train()
    rows = callback.monitor.rows
    assert [r["step"] for r in rows] == [3, 6]
    assert all(math.isfinite(r["preconditioned_sharpness"]) for r in rows)  # AdamW's state
    history = trainer.state.log_history
    curvature = [h for h in history if "curvature/top_eigenvalue" in h]
    assert [h["step"] for h in curvature] == [3, 6]
    assert curvature[-1]["curvature/top_eigenvalue"] == pytest.approx(rows[-1]["top_eigenvalue"])
    # the Trainer's own loss logs (steps 2, 4, 6) are still there, step 6 included
    assert [h["step"] for h in history if "loss" in h and "train_runtime" not in h] == [2, 4, 6]
    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    tag = next(t for t in tags if t.endswith("curvature/top_eigenvalue"))
    assert [e.step for e in acc.Scalars(tag)] == [3, 6]


def test_transformers_callback_without_the_trainer_fills_log_history(tmp_path):
    trainer, measure = _gpt2(tmp_path, [])
    from landscape.integrations.transformers import CurvatureCallback

    callback = CurvatureCallback(data=measure, every=2, measures=("loss", "gradient_norm"),
                                 budget=None)
    trainer.add_callback(callback)
    trainer.train()
    history = [h for h in trainer.state.log_history if "curvature/loss" in h]
    assert [h["step"] for h in history] == [2, 4, 6]
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(**measure[0]).loss.item()
    assert history[-1]["curvature/loss"] == pytest.approx(expected, rel=1e-5)


def test_monitor_measures_the_same_under_wrapped_optimizers():
    """accelerate's AcceleratedOptimizer and Lightning's LightningOptimizer are unwrapped."""
    x, y = _tiny_classification()
    model = nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Wrapper:
        def __init__(self, optimizer):
            self.optimizer = optimizer

    monitor = CurvatureMonitor(model, (x, y), optimizer=Wrapper(opt))
    assert monitor.optimizer is opt
