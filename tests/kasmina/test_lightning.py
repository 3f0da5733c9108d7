"""Kasmina in Lightning: a LoRA scaffold's life under gradient accumulation, validation and resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hf_testing import Plan, gradient_errors, host_tensors, lm_batch, lm_rows, tiny_gpt2, weaning_plan
from kasmina_testing import deploy, on, schedule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from transformers import GPT2LMHeadModel

from kasmina_worker.integrations.lightning import KasminaCallback
from kasmina_worker.worker import WorkerConfig
from narset.v1 import telemetry_pb2

SITE = "model.transformer.h.0.attn.c_attn"
STEPS, EVERY = 12, 3  # 6 batches of 2 per epoch, 2 per optimiser step: a boundary and a checkpoint each epoch
COMMANDS = {
    1: [
        deploy(
            SITE, "lora", command_id="lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=1, hold_ckpts=5)
        )
    ],
    3: [on("fold", command_id="fold", scaffold_id="lora")],
}


class TinyLM(pl.LightningModule):
    """The tiny GPT-2 with AdamW and a linear warmup schedule stepped per optimiser step."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_gpt2()
        self.losses: list[float] = []

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        loss = self(**batch).loss
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self(**batch).loss)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(root, resume_from=None) -> tuple[TinyLM, Plan, dict]:
    """Fit for STEPS optimiser steps under the planned commands; at boundary 2 (the scaffold live) note the
    step losses the breakers hold and save_pretrained the model."""
    torch.manual_seed(0)
    module = TinyLM()
    seen: dict = {}
    config = WorkerConfig(batch_loss=lambda m, b: m(**b).loss)
    callback = KasminaCallback("lightning", boundary_steps=EVERY, probe=[lm_batch(900)], config=config)

    def watch(report) -> None:
        if report.boundary == 2:
            seen["step_losses"] = [float(v) for v in callback.worker.step_losses("lora")]
            seen["hosts"] = host_tensors(module.model)
            module.model.save_pretrained(root / "live")

    plan = Plan(COMMANDS, watch)
    callback.options["transport"] = plan
    checkpoints = ModelCheckpoint(dirpath=root, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accumulate_grad_batches=2,
        accelerator="cpu",
        callbacks=[callback, checkpoints],
        logger=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    train, val = DataLoader(lm_rows(12), batch_size=2), DataLoader(lm_rows(4, seed=1), batch_size=2)
    trainer.fit(module, train, val, ckpt_path=resume_from)
    return module, plan, seen


@pytest.mark.slow
def test_lightning_lifecycle_resume_and_save_pretrained(tmp_path):
    """Boundaries at optimiser steps 3, 6, 9, 12; the breakers get each optimiser step's loss (the mean of its
    two micro-batches) and no validation loss; the LoRA deploys and folds; the model saved mid-life reloads to
    the exact host and the Lightning checkpoint loads strictly into the plain module; resumed from it, the run
    ends bit-identical to the uninterrupted one."""
    module, plan, seen = _fit(tmp_path / "a")
    assert [(r.boundary, r.step) for r in plan.reports] == [(1, 3), (2, 6), (3, 9), (4, 12)]
    results = [(r.command_id, r.outcome) for report in plan.reports for r in report.results]
    assert results == [("lora", telemetry_pb2.COMMAND_OUTCOME_APPLIED), ("fold", telemetry_pb2.COMMAND_OUTCOME_APPLIED)]
    assert type(module.get_submodule(SITE)).__name__ == "Conv1D"
    micro = module.losses[6:12]  # optimiser steps 4, 5, 6
    assert seen["step_losses"] == [
        pytest.approx((a + b) / 2, rel=1e-6) for a, b in zip(micro[::2], micro[1::2], strict=True)
    ]
    assert "val_loss" in plan.reports[1].metrics and plan.reports[1].metrics["val_loss"] not in seen["step_losses"]

    reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path / "a" / "live", output_loading_info=True)
    assert not any(info.values()), info
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in seen["hosts"].items())
    checkpoint = tmp_path / "a" / "epoch=1-step=6.ckpt"
    TinyLM().load_state_dict(torch.load(checkpoint, weights_only=False)["state_dict"], strict=True)

    resumed, resumed_plan, _ = _fit(tmp_path / "b", resume_from=str(checkpoint))
    assert [(r.boundary, r.step) for r in resumed_plan.reports] == [(3, 9), (4, 12)]
    final, resumed_final = module.state_dict(), resumed.state_dict()
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(final[k], resumed_final[k]) for k in final)
    assert module.losses[12:] == resumed.losses


class _Gradients(pl.Callback):
    """At optimiser step 4 (teaching on), the gradients Lightning accumulated over the step's two micro-batches
    against the mean of their plain losses plus teaching terms, each from its own forward."""

    def __init__(self, kasmina: KasminaCallback, batches: list) -> None:
        self.kasmina, self.batches, self.checked = kasmina, batches, {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if trainer.global_step != 3:
            return

        def reference() -> torch.Tensor:
            total, terms = 0.0, []
            for batch in self.batches[-2:]:
                total = total + pl_module.model(**batch).loss
                terms.append(self.kasmina.worker.teaching_terms())
            self.checked["terms"] = float(sum(t.detach() for t in terms))
            return (total + sum(terms)) / 2

        self.checked["errors"] = gradient_errors(pl_module, reference)


def test_lightning_teaching_terms_and_loss_reach_backward_at_the_step_scale():
    """Under accumulation 2 with a weaning scaffold teaching by site distillation, an optimiser step's gradients
    equal those of its micro-batches' mean loss plus mean teaching terms (1e-5 relative)."""
    torch.manual_seed(0)
    module = TinyLM()
    batches: list = []
    training_step = module.training_step
    module.training_step = lambda batch, batch_idx: batches.append(batch) or training_step(batch, batch_idx)
    plan = weaning_plan("model.transformer.h.0.mlp.c_fc")
    config = WorkerConfig(batch_loss=lambda m, b: m(**b).loss)
    kasmina = KasminaCallback("teach", boundary_steps=1, transport=plan, probe=[lm_batch(900)], config=config)
    gradients = _Gradients(kasmina, batches)
    trainer = pl.Trainer(
        max_steps=4,
        accumulate_grad_batches=2,
        accelerator="cpu",
        callbacks=[kasmina, gradients],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(lm_rows(16), batch_size=2))
    assert plan.reports[2].scaffolds[0].stage == telemetry_pb2.SCAFFOLD_STAGE_DECAY
    assert gradients.checked["terms"] > 0
    assert max(gradients.checked["errors"]) <= 1e-5, max(gradients.checked["errors"])


class FailingLM(TinyLM):
    """Raises in its fourth training step."""

    def training_step(self, batch, batch_idx):
        if batch_idx == 3:
            raise RuntimeError("the job's own failure")
        return super().training_step(batch, batch_idx)


def test_a_failed_fit_still_closes_the_worker_and_restores_the_training_step():
    """When training raises (Lightning then calls no on_fit_end) the callback still closes the worker, so a link
    process to Narset never outlives the run, and the module's training step is its class's own again."""
    torch.manual_seed(0)
    module = FailingLM()
    plan = Plan({})
    config = WorkerConfig(batch_loss=lambda m, b: m(**b).loss)
    callback = KasminaCallback("failing", boundary_steps=EVERY, probe=[lm_batch(900)], config=config, transport=plan)
    trainer = pl.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.raises(RuntimeError, match="the job's own failure"):
        trainer.fit(module, DataLoader(lm_rows(12), batch_size=2))
    assert plan.closed
    assert "training_step" not in vars(module)
