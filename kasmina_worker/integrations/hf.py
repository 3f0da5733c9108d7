"""Kasmina in Hugging Face `Trainer` (`pip install narset-kasmina[hf]`); docs/kasmina.md, "Hugging Face".

`KasminaCallback` runs a boundary at each of Trainer's saves (and every `boundary_steps` optimiser steps)
and writes the worker's state into each checkpoint folder. `KasminaTrainerMixin` (or `KasminaTrainer`)
does what a callback cannot: it builds the worker once Trainer has created its optimiser and scheduler,
restores it before Trainer loads a checkpoint's optimiser (whose seed groups must exist by then), and
hands over each training micro-batch's loss (evaluation losses never reach the worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from kasmina_worker.integrations._common import KasminaHooks
from kasmina_worker.worker import WorkerConfig

__all__ = ["MANIFEST", "KasminaCallback", "KasminaTrainer", "KasminaTrainerMixin", "model_loss"]

MANIFEST = "kasmina_worker.pt"


def model_loss(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """A probe batch's loss as the model computes it (`labels` in the batch): the default `batch_loss`."""
    return model(**batch).loss


class KasminaCallback(KasminaHooks, TrainerCallback):
    """`KasminaCallback(job, boundary_steps=None, **KasminaWorker options)`."""

    def __init__(self, job: str, *, boundary_steps: int | None = None, **worker_options: Any) -> None:
        super().__init__(job, boundary_steps, {"config": WorkerConfig(batch_loss=model_loss)} | worker_options)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.step_done(state.global_step, boundary=control.should_save)  # before Trainer saves this step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        if metrics and "eval_loss" in metrics:
            self.metrics["val_loss"] = float(metrics["eval_loss"])

    def on_save(self, args, state, control, **kwargs) -> None:
        torch.save(self.state_dict(), Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / MANIFEST)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        self.close()


class KasminaTrainerMixin:
    """Put before `Trainer` (or a subclass of it) in the bases; needs one `KasminaCallback` in `callbacks`."""

    @property
    def kasmina(self) -> KasminaCallback:
        found = [c for c in self.callback_handler.callbacks if isinstance(c, KasminaCallback)]
        if len(found) != 1:
            raise ValueError(f"callbacks must hold exactly one KasminaCallback, found {len(found)}")
        return found[0]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        # Trainer calls no callback when training raises: the worker's link process must not outlive it.
        try:
            return super().train(*args, **kwargs)
        finally:
            self.kasmina.close()

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        # The worker and the scheduler drive the torch optimiser inside accelerate's wrapper.
        inner = getattr(self.optimizer, "optimizer", self.optimizer) if optimizer is None else optimizer
        scheduler = super().create_scheduler(num_training_steps, optimizer=inner)
        self.kasmina.bind(self.model, inner, scheduler)
        return scheduler

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is not None:
            self.kasmina.load_state_dict(torch.load(Path(checkpoint) / MANIFEST, weights_only=True))
        super()._load_optimizer_and_scheduler(checkpoint)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            return result  # evaluation
        # As Trainer.training_step decides: a loss over the step's items is already its share of the step;
        # any other Trainer divides by the accumulation steps after this call (the terms with it).
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or bool(self.compute_loss_func)
        per_step = 1.0 / self.current_gradient_accumulation_steps
        loss = result[0] if return_outputs else result
        loss = self.kasmina.micro_batch(loss, 1.0 if scaled else per_step, per_step if scaled else 1.0)
        return (loss, *result[1:]) if return_outputs else loss


class KasminaTrainer(KasminaTrainerMixin, Trainer):
    """`Trainer` with Kasmina; pass a `KasminaCallback` in `callbacks`."""
