"""Kasmina in Hugging Face `Trainer`: a LoRA scaffold's life under gradient accumulation, evaluation and resume."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from hf_testing import Plan, gradient_errors, host_tensors, lm_batch, lm_rows, tiny_gpt2, weaning_plan
from kasmina_testing import deploy, on, schedule
from transformers import GPT2LMHeadModel, TrainerCallback, TrainingArguments, default_data_collator

from kasmina_worker.integrations.hf import KasminaCallback, KasminaTrainer
from narset.v1 import telemetry_pb2

SITE = "transformer.h.0.attn.c_attn"
STEPS, EVERY, ACCUMULATION = 12, 3, 2
COMMANDS = {
    1: [
        deploy(
            SITE, "lora", command_id="lora", blueprint_params={"rank": 2}, policy=schedule(warmup_ckpts=1, hold_ckpts=5)
        )
    ],
    3: [on("fold", command_id="fold", scaffold_id="lora")],
}


def _run(output_dir, resume_from=None) -> tuple[GPT2LMHeadModel, KasminaCallback, Plan, dict]:
    """Train the tiny GPT-2 for STEPS optimiser steps of 2 micro-batches, evaluating and saving every EVERY
    steps (each save a boundary) under the planned commands; at boundary 2 (the scaffold live) note what it holds."""
    model = tiny_gpt2()
    seen: dict = {}
    callback = KasminaCallback("hf", probe=[lm_batch(900)], transport=None)

    def watch(report) -> None:
        if report.boundary == 2:
            seen["step_losses"] = [float(v) for v in callback.worker.step_losses("lora")]
            seen["hosts"] = host_tensors(model)

    plan = Plan(COMMANDS, watch)
    callback.options["transport"] = plan
    args = TrainingArguments(
        output_dir=str(output_dir),
        use_cpu=True,
        max_steps=STEPS,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        warmup_steps=2,
        eval_strategy="steps",
        eval_steps=EVERY,
        save_steps=EVERY,
        logging_steps=1,
        report_to=[],
        seed=0,
        disable_tqdm=True,
    )
    trainer = KasminaTrainer(
        model=model, args=args, train_dataset=lm_rows(24), eval_dataset=lm_rows(8, seed=1), callbacks=[callback]
    )
    trainer.train(resume_from_checkpoint=resume_from)
    seen["log"] = trainer.state.log_history
    return model, callback, plan, seen


@pytest.mark.slow
def test_hf_trainer_lifecycle_resume_and_save_pretrained(tmp_path):
    """Boundaries at optimiser steps 3, 6, 9, 12; the breakers get each optimiser step's logged loss and no
    evaluation loss; the LoRA deploys and folds; a checkpoint written mid-life reloads with from_pretrained to
    the exact host; resumed from it, the run ends bit-identical to the uninterrupted one."""
    model, callback, plan, seen = _run(tmp_path / "a")
    assert [(r.boundary, r.step) for r in plan.reports] == [(1, 3), (2, 6), (3, 9), (4, 12)]
    results = [r for report in plan.reports for r in report.results]
    assert [(r.command_id, r.outcome) for r in results] == [
        ("lora", telemetry_pb2.COMMAND_OUTCOME_APPLIED),
        ("fold", telemetry_pb2.COMMAND_OUTCOME_APPLIED),
    ]
    assert not callback.worker.scaffolds and type(model.get_submodule(SITE)).__name__ == "Conv1D"
    train_losses = {e["step"]: e["loss"] for e in seen["log"] if "loss" in e}
    assert seen["step_losses"] == [pytest.approx(train_losses[s], rel=1e-6) for s in (4, 5, 6)]
    evals = [e["eval_loss"] for e in seen["log"] if "eval_loss" in e]
    assert len(evals) == 4 and not any(v == pytest.approx(e) for v in seen["step_losses"] for e in evals)
    assert plan.reports[1].metrics["val_loss"] == pytest.approx(evals[0])
    assert plan.reports[1].metrics["train_loss"] == pytest.approx(sum(train_losses[s] for s in (4, 5, 6)) / 3)

    checkpoint = tmp_path / "a" / "checkpoint-6"
    reloaded, info = GPT2LMHeadModel.from_pretrained(checkpoint, output_loading_info=True)
    assert not any(info.values()), info
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in seen["hosts"].items())

    shutil.copytree(checkpoint, tmp_path / "b" / "checkpoint-6")
    resumed, _, resumed_plan, resumed_seen = _run(tmp_path / "b", resume_from=str(tmp_path / "b" / "checkpoint-6"))
    assert [(r.boundary, r.step) for r in resumed_plan.reports] == [(3, 9), (4, 12)]
    final, resumed_final = model.state_dict(), resumed.state_dict()
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(final[k], resumed_final[k]) for k in final)
    tail = [e["loss"] for e in seen["log"] if "loss" in e and e["step"] > 6]
    assert tail == [e["loss"] for e in resumed_seen["log"] if "loss" in e and e["step"] > 6]


class _Gradients(TrainerCallback):
    """At optimiser step 4 (teaching on), the gradients Trainer accumulated over the step's two micro-batches
    against one plain forward and backward of their concatenation plus the worker's teaching terms."""

    def __init__(self, kasmina: KasminaCallback, batches: list) -> None:
        self.kasmina, self.batches, self.checked = kasmina, batches, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step != 3:
            return
        whole = {k: torch.cat([b[k] for b in self.batches[-ACCUMULATION:]]) for k in self.batches[-1]}

        def reference() -> torch.Tensor:
            loss = model(**whole).loss
            terms = self.kasmina.worker.teaching_terms()
            self.checked["terms"] = float(terms.detach())
            return loss + terms

        self.checked["errors"] = gradient_errors(model, reference)


def test_teaching_terms_and_loss_reach_backward_at_the_step_scale(tmp_path):
    """Under accumulation 2 with a weaning scaffold teaching by site distillation, the gradients of an optimiser
    step equal those of one pass over the whole step's batch plus its teaching terms (1e-5 relative)."""
    plan = weaning_plan("transformer.h.0.mlp.c_fc")
    kasmina = KasminaCallback("teach", boundary_steps=1, transport=plan)
    batches: list = []

    def collate(rows):
        batches.append(default_data_collator(rows))
        return batches[-1]

    gradients = _Gradients(kasmina, batches)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=ACCUMULATION,
        max_grad_norm=0.0,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer = KasminaTrainer(
        model=tiny_gpt2(), args=args, train_dataset=lm_rows(32), data_collator=collate, callbacks=[kasmina, gradients]
    )
    trainer.train()
    assert plan.reports[2].scaffolds[0].stage == telemetry_pb2.SCAFFOLD_STAGE_DECAY
    assert gradients.checked["terms"] > 0
    assert max(gradients.checked["errors"]) <= 1e-5, max(gradients.checked["errors"])


def test_trainer_without_its_callback_or_with_a_bad_cadence_is_refused(tmp_path):
    """A KasminaTrainer without exactly one KasminaCallback stops when it builds its scheduler, naming the
    callback; boundary_steps < 1 is a ValueError naming the field."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=1, report_to=[], disable_tqdm=True)
    trainer = KasminaTrainer(model=tiny_gpt2(), args=args, train_dataset=lm_rows(4))
    with pytest.raises(ValueError, match="exactly one KasminaCallback, found 0"):
        trainer.train()
    with pytest.raises(ValueError, match="boundary_steps must be >= 1, got 0"):
        KasminaCallback("hf", boundary_steps=0)


def test_worker_core_loads_no_trainer_library():
    """Importing every module of kasmina_worker outside `integrations` loads neither transformers, lightning
    nor peft: they are optional extras."""
    code = (
        "import importlib, pkgutil, sys, kasmina_worker\n"
        "for m in pkgutil.walk_packages(kasmina_worker.__path__, 'kasmina_worker.'):\n"
        "    if '.integrations' not in m.name and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted({'transformers', 'lightning', 'peft'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
