"""A tiny GPT-2 built from its config (random init, no download) and Hugging Face style batches."""

from __future__ import annotations

import torch
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
    return GPT2LMHeadModel(config)


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
