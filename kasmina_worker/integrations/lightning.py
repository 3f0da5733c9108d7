"""Kasmina in Lightning (`pip install narset-kasmina[lightning]`); docs/kasmina.md, "Lightning".

`KasminaCallback` builds the worker at `on_fit_start` (Lightning has created the optimiser and scheduler
and restored the callback's state, not yet the optimiser's, so a resumed run's seed groups exist in time),
adds the teaching terms to each training micro-batch's loss, records each optimiser step's loss (its
micro-batches' mean) for the breakers, runs a boundary every `boundary_steps` optimiser steps and rides in
Lightning's checkpoints (`state_dict`). Validation losses reach Narset as `val_loss` only.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from kasmina_worker.integrations._common import KasminaHooks

__all__ = ["KasminaCallback"]


class KasminaCallback(KasminaHooks, pl.Callback):
    """`KasminaCallback(job, boundary_steps=N, **KasminaWorker options)`: a boundary every N optimiser steps."""

    def __init__(self, job: str, *, boundary_steps: int, **worker_options: Any) -> None:
        super().__init__(job, boundary_steps, worker_options)
        self._global_step = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.bind(pl_module, trainer.optimizers[0], schedulers[0] if schedulers else None)
        training_step = pl_module.training_step

        def taught(*args: Any, **kwargs: Any) -> Any:
            output = training_step(*args, **kwargs)
            loss = output["loss"] if isinstance(output, dict) else output
            # Lightning divides each micro-batch's loss by the accumulation for backward, the terms with it.
            loss = self.micro_batch(loss, 1.0 / trainer.accumulate_grad_batches, 1.0)
            return {**output, "loss": loss} if isinstance(output, dict) else loss

        pl_module.training_step = taught  # this module's training step only, for this fit

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._global_step = trainer.global_step  # restored from a checkpoint by now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step != self._global_step:  # this micro-batch ended an optimiser step
            self._global_step = trainer.global_step
            self.step_done(trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.metrics["val_loss"] = float(trainer.callback_metrics["val_loss"])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._finish(pl_module)  # a failed fit calls no on_fit_end

    def _finish(self, pl_module: pl.LightningModule) -> None:
        pl_module.__dict__.pop("training_step", None)  # the class's own again
        self.close()
