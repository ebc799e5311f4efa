"""`CurvatureCallback` for PyTorch Lightning: the monitor's rows logged through `pl_module.log`.

Importing this module imports `lightning` (about 8 s); `import landscape` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._extras import require
from ..monitor import DEFAULT_MEASURES, CurvatureMonitor
from ..monitor.loggers import scalars

Callback = require("lightning.pytorch", "lightning", "landscape.integrations.lightning").Callback


class CurvatureCallback(Callback):
    """Measure curvature every `every` optimizer steps of `Trainer.fit` and log it.

    Takes the `CurvatureMonitor` arguments except the model and the optimizer, which come from
    the trainer (the LightningModule and `trainer.optimizers[0]`). After each optimizer step
    (`on_train_batch_end`, once per step under gradient accumulation) the monitor measures when
    `trainer.global_step % every == 0` (global_step counts the steps taken, so the first
    measurement is after step `every`). The row goes, as `curvature/<key>`, to every logger of
    the trainer (CSV, TensorBoard, wandb, ...: `log_metrics` at the row's step, the weights
    after that many steps; Lightning logs a training step's own loss one step lower) and to
    `pl_module.log_dict(..., logger=False)`, so `trainer.callback_metrics` has it for
    `EarlyStopping` or `ModelCheckpoint(monitor="curvature/eos_ratio")`; besides the
    monitor's own `loggers` (none by default). Under DDP every rank measures its share of the
    measurement set and the sums are all-reduced (the Probe does it), so all ranks log the same
    values.

    `loss_fn` defaults to cross-entropy on `pl_module(inputs)`; for a module whose loss is
    computed elsewhere pass `batch_loss=lambda module, batch: ...`. The monitor is at
    `callback.monitor` (its `rows`) once training has started.

    Example:
        >>> # not run: needs lightning
        >>> # trainer = Trainer(callbacks=[CurvatureCallback(data=(x, y), every=50)])
    """

    def __init__(self, data: Any, loss_fn: Callable[[Any, Any], Any] | None = None, *,
                 batch_loss: Callable[[Any, Any], Any] | None = None, every: int = 100,
                 measures: Sequence[str] = DEFAULT_MEASURES, log_dir: Any = None,
                 loggers: Sequence[Any] = (), seed: int = 0, **options: Any):
        super().__init__()
        self._kwargs = dict(loss_fn=loss_fn, batch_loss=batch_loss, every=every,
                            measures=measures, log_dir=log_dir, loggers=loggers, seed=seed,
                            **options)
        self._data = data
        self.monitor: CurvatureMonitor | None = None
        self._last_step = -1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        kwargs = dict(self._kwargs)
        loss_fn = kwargs.pop("loss_fn")
        self.monitor = CurvatureMonitor(pl_module, self._data, loss_fn, optimizer=optimizer,
                                        **kwargs)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.monitor is None or step == self._last_step:  # accumulating: no step taken
            return
        self._last_step = step
        row = self.monitor.step(step)
        if row is None:
            return
        values = scalars(row)
        # callback_metrics (for EarlyStopping, ModelCheckpoint(monitor=...), the progress bar)
        pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False)
        # the loggers once, at the row's step: `self.log` from a callback reaches them one step
        # late and may repeat the first value at the next step
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
