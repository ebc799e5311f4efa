"""`CurvatureCallback` for the Hugging Face `Trainer`: rows in `trainer.state.log_history` and in
the Trainer's reporting integrations (TensorBoard, wandb, ...).

Importing this module imports `transformers` (the Trainer needs `accelerate` too); `import
landscape` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._extras import require
from ..monitor import DEFAULT_MEASURES, CurvatureMonitor
from ..monitor.loggers import scalars

TrainerCallback = require("transformers", "transformers",
                          "landscape.integrations.transformers").TrainerCallback


def output_loss(model: Any, batch: Any) -> Any:
    """The default loss: `model(**batch).loss` (the batch a dict holding `labels`)."""
    return model(**batch).loss


class CurvatureCallback(TrainerCallback):
    """Measure curvature every `every` optimizer steps of `Trainer.train` and log it.

    Takes the `CurvatureMonitor` arguments except the model and the optimizer, which come from
    the Trainer (the unwrapped model and the optimizer inside accelerate's wrapper). The loss
    defaults to the model output's `.loss` on each batch dict of `data` (a list of collated
    batches, or a DataLoader drawn once). After each optimizer step (`on_step_end`) it measures
    when `state.global_step % every == 0`.

    Rows: with `trainer=` (give the callback the Trainer, e.g. `trainer.add_callback(
    CurvatureCallback(data=..., trainer=trainer))`) each row is logged with `trainer.log`, so it
    reaches `trainer.state.log_history` and every reporting integration (`report_to`), and the
    Trainer's own loss logging of that step is kept. Without it the row is appended to
    `state.log_history` only (a callback is not handed the Trainer, and editing `logs` in
    `on_log` reaches neither). Keys are `curvature/<key>`. Under DDP every rank measures its
    share and the sums are all-reduced.

    Example:
        >>> # not run: needs transformers
        >>> # trainer.add_callback(CurvatureCallback(data=batches, every=50, trainer=trainer))
    """

    def __init__(self, data: Any, loss_fn: Callable[[Any, Any], Any] | None = None, *,
                 batch_loss: Callable[[Any, Any], Any] | None = None, every: int = 100,
                 measures: Sequence[str] = DEFAULT_MEASURES, log_dir: Any = None,
                 loggers: Sequence[Any] = (), seed: int = 0, trainer: Any = None,
                 **options: Any):
        if loss_fn is None and batch_loss is None:
            batch_loss = output_loss
        self._kwargs = dict(loss_fn=loss_fn, batch_loss=batch_loss, every=every,
                            measures=measures, log_dir=log_dir, loggers=loggers, seed=seed,
                            **options)
        self._data = data
        self.trainer = trainer
        self.monitor: CurvatureMonitor | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        opts = dict(self._kwargs)
        loss_fn = opts.pop("loss_fn")
        self.monitor = CurvatureMonitor(model, self._data, loss_fn, optimizer=optimizer, **opts)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.monitor is None:
            return control
        row = self.monitor.step(int(state.global_step))
        if row is None:
            return control
        logs = scalars(row)
        if self.trainer is None:
            state.log_history.append({**logs, "step": state.global_step})
            return control
        # Trainer.log runs on_log, which clears should_log: keep the Trainer's own loss log
        should_log = control.should_log
        self.trainer.log(logs)
        control.should_log = should_log
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
