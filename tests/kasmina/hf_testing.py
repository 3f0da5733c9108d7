"""A tiny GPT-2 built from its config (random init, no download) and Hugging Face style batches."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from kasmina_testing import deploy, schedule
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB = 97
SEQ = 12


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2 with 2 layers of width 32 and a 97-token vocabulary, dropout off (runs compare bit for bit)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    # GPT-2's class name does not tell transformers its loss is the causal-LM one (which it uses anyway); named,
    # Trainer also counts the shifted labels that loss averages over.
    model.loss_type = "ForCausalLM"
    return model


def lm_batch(index: int, rows: int = 4, pad: int = 3) -> dict[str, torch.Tensor]:
    """A deterministic causal-LM batch: the last `pad` positions of odd rows are padding (mask 0, label -100)."""
    g = torch.Generator().manual_seed(5000 + index)
    ids = torch.randint(1, VOCAB, (rows, SEQ), generator=g)
    mask = torch.ones(rows, SEQ, dtype=torch.long)
    mask[1::2, SEQ - pad :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own causal-LM loss on a batch (padding ignored through `labels` -100)."""
    return model(**batch).loss


def lm_rows(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """A dataset of `count` LM rows (one dict each), padding on odd rows: what a trainer's loader batches."""
    batch = lm_batch(seed, rows=count)
    return [{key: value[i] for key, value in batch.items()} for i in range(count)]


def host_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the model holds with every seed removed: each host's tensors (copies) under the site's own name."""
    state = itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers())
    return {
        name.replace(".host.", "."): t.detach().clone()
        for name, t in state
        if ".seed." not in name and not name.endswith("alpha")
    }


class Plan:
    """A command source that answers each boundary with the commands planned for it (the same after a resume),
    and calls `watch(report)` first."""

    def __init__(self, commands: dict[int, list], watch: Callable[[object], None] = lambda report: None) -> None:
        self.commands, self.watch = commands, watch
        self.reports: list = []
        self.closed = False

    def exchange(self, report) -> list:
        self.reports.append(report)
        self.watch(report)
        return list(self.commands.get(report.boundary, []))

    def close(self) -> None:
        """What a Narset link does at the end of a run: detach (here: noted)."""
        self.closed = True


def gradient_errors(model: torch.nn.Module, reference: Callable[[], torch.Tensor]) -> list[float]:
    """Each accumulated gradient's largest error relative to the gradient of `reference()` (a loss computed now,
    at the same parameters); the accumulated gradients are put back for the trainer's step."""
    params = [p for p in model.parameters() if p.grad is not None]
    accumulated = [p.grad.clone() for p in params]
    model.zero_grad()
    reference().backward()
    errors = [float((a - p.grad).abs().max() / p.grad.abs().max()) for a, p in zip(accumulated, params, strict=True)]
    for p, grad in zip(params, accumulated, strict=True):
        p.grad = grad
    return errors


def weaning_plan(site: str) -> Plan:
    """A residual MLP deployed on `site` at boundary 1, weaning from boundary 2 on with strong site distillation."""
    weaning = schedule(warmup_ckpts=1, decay_ckpts=6)
    weaning.teaching.site_distill_weight = 100.0  # teaching that moves the gradients visibly
    return Plan({1: [deploy(site, "residual_mlp", "mlp", blueprint_params={"hidden": 8}, policy=weaning)]})
