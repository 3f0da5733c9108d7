"""What every trainer integration does with the worker, whatever the trainer's hooks are called."""

from __future__ import annotations

from typing import Any

import torch

from kasmina_worker.worker import KasminaWorker

__all__ = ["KasminaHooks"]


class KasminaHooks:
    """Builds the worker once the trainer's optimiser exists, sums each optimiser step's loss from its
    micro-batches' shares, records it after the step (so the breakers count optimiser steps and see only
    training losses), runs boundaries with `train_loss` / `val_loss` metrics, and saves and restores."""

    def __init__(self, job: str, boundary_steps: int | None, options: dict[str, Any]) -> None:
        if boundary_steps is not None and boundary_steps < 1:
            raise ValueError(f"boundary_steps must be >= 1, got {boundary_steps}")
        self.job, self.boundary_steps, self.options = job, boundary_steps, options
        self.worker: KasminaWorker | None = None
        self.metrics: dict[str, float] = {}
        """Reported at each boundary: `train_loss` (the mean step loss since the last one), `val_loss`."""
        self._saved: dict | None = None  # a checkpoint's state that arrived before the worker existed
        self._step: torch.Tensor | None = None  # this optimiser step's loss, summed over its micro-batches
        self._interval: list[torch.Tensor] = []

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Build the worker (once per fit: a resume restores it in a new one)."""
        if self.worker is not None:
            raise RuntimeError("a Kasmina callback serves one training run; make a new one (a resume restores it)")
        self.worker = KasminaWorker(model, optimizer, self.job, scheduler=scheduler, **self.options)
        if self._saved is not None:
            self.load_state_dict(self._saved)

    def micro_batch(self, loss: torch.Tensor, share: float, terms_scale: float) -> torch.Tensor:
        """Count `loss * share` (its part of the step's loss) and add the teaching terms times `terms_scale`."""
        part = loss.detach() * share
        self._step = part if self._step is None else self._step + part
        terms = self.worker.teaching_terms()
        return loss if terms is None else loss + terms * terms_scale

    def step_done(self, global_step: int, boundary: bool = False) -> None:
        """After optimiser step `global_step`: record its loss; a boundary when asked or due."""
        if self._step is not None:
            self.worker.end_step(self._step)  # detached, after the backward passes: judged at once
            self._interval.append(self._step)
            self._step = None
        if boundary or (self.boundary_steps and global_step % self.boundary_steps == 0):
            if self._interval:
                self.metrics["train_loss"] = float(torch.stack(self._interval).mean())
                self._interval = []
            self.worker.checkpoint(step=global_step, metrics=self.metrics)

    def close(self) -> None:
        """End of the run, finished or failed: detach from Narset and stop the link process (safe twice)."""
        if self.worker is not None:
            self.worker.close()

    def state_dict(self) -> dict[str, Any]:
        return {"worker": self.worker.state_dict(), "metrics": dict(self.metrics)} if self.worker else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.worker is None:
            self._saved = state or None
            return
        self.worker.load_state_dict(state["worker"])
        self.metrics = dict(state["metrics"])
