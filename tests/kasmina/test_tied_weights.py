"""Parameters shared between modules (GPT-2's lm_head tied to wte): marked at attach, never scaffolded."""

from __future__ import annotations

import torch
from kasmina_testing import deploy, result_ok
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from kasmina_worker import KasminaWorker
from kasmina_worker.link.registration import host_modules
from kasmina_worker.seeds.hosts import module_info, parameter_ties
from narset.contract import rules
from narset.v1 import telemetry_pb2

VOCAB = 40


def _gpt2() -> GPT2LMHeadModel:
    """A one-layer GPT-2 from its config (random init, no download); its head is tied to the input embedding."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def _train(worker: KasminaWorker, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for step in range(steps):
        ids = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(step))
        loss = worker.step_loss(worker.model(input_ids=ids, labels=ids).loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_attach_catalogue_marks_the_tie_on_both_modules():
    """The module catalogue sent at attach names each tied parameter's other names, and only those."""
    infos = {info.name: info for info in host_modules(_gpt2())}
    tied = {(name, p.name): list(p.tied_to) for name, info in infos.items() for p in info.parameters if p.tied_to}
    assert tied == {
        ("transformer.wte", "weight"): ["lm_head.weight"],
        ("lm_head", "weight"): ["transformer.wte.weight"],
    }


def test_worker_refuses_a_deploy_on_the_tied_head_and_the_embedding_keeps_training():
    """A deploy on lm_head is REJECTED naming the tie, with the rule Narset applies; the model is unchanged, the
    tie holds, a deploy elsewhere still applies, and wte trains."""
    model = _gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="tied")
    worker.submit(deploy("lm_head", "lora", "head", blueprint_params={"rank": 2}))
    worker.submit(deploy("transformer.h.0.mlp.c_fc", "lora", "mlp", blueprint_params={"rank": 2}))
    summary = worker.checkpoint(step=0)
    refused = summary.results[0]
    assert refused.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    expected = rules.tied_parameter_error("lm_head", [module_info("lm_head", model.lm_head, parameter_ties(model))])
    assert refused.message == str(expected)
    assert refused.message.startswith("deploy.module: ") and "transformer.wte.weight" in refused.message
    result_ok(summary, 1)
    assert type(model.lm_head).__name__ == "Linear" and model.lm_head.weight is model.transformer.wte.weight
    before = model.transformer.wte.weight.detach().clone()
    _train(worker, optimizer, steps=3)
    assert model.transformer.wte.weight.requires_grad
    assert not torch.equal(model.transformer.wte.weight, before)


class Readout(nn.Module):
    """A head block with known feature sizes whose projection is tied to the embedding outside it."""

    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.in_features, self.out_features = embed.embedding_dim, embed.num_embeddings
        self.proj = nn.Linear(self.in_features, self.out_features, bias=False)
        self.proj.weight = embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_worker_refuses_a_deploy_on_a_module_holding_a_tied_parameter_inside_it():
    """A residual_mlp on a block whose submodule's weight is the embedding's is REJECTED naming that parameter."""
    embed = nn.Embedding(10, 8)
    model = nn.Sequential(embed, nn.Linear(8, 8), Readout(embed))
    worker = KasminaWorker(model, torch.optim.SGD(model.parameters(), lr=0.1), job="inside")
    worker.submit(deploy("2", "residual_mlp", "block"))
    worker.submit(deploy("1", "residual_mlp", "free"))
    summary = worker.checkpoint(step=0)
    assert summary.results[0].outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    assert summary.results[0].message.startswith("deploy.module: ") and "2.proj.weight (also 0.weight)" in (
        summary.results[0].message
    )
    result_ok(summary, 1)
