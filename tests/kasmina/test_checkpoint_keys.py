"""Checkpoints any loader reads: while a scaffold is live the model's state_dict is the host's, under its own names."""

from __future__ import annotations

import itertools

import structlog
import torch
from hf_testing import host_tensors, lm_batch, lm_loss, tiny_gpt2
from kasmina_testing import MLP, deploy, result_ok, schedule, train
from transformers import GPT2LMHeadModel

from kasmina_worker import KasminaWorker

LIVE = schedule(warmup_ckpts=1, hold_ckpts=6)


def _scaffolded_mlp() -> tuple[MLP, KasminaWorker, torch.optim.Optimizer]:
    """An MLP with a live LoRA on fc1 and a live residual MLP on fc2, both trained (seeds non-zero)."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="keys")
    worker.submit(deploy("fc1", "lora", command_id="lora", blueprint_params={"rank": 2}, policy=LIVE))
    worker.submit(deploy("fc2", "residual_mlp", command_id="mlp", blueprint_params={"hidden": 4}, policy=LIVE))
    summary = worker.checkpoint(step=0)
    result_ok(summary, 0)
    result_ok(summary, 1)
    train(worker, optimizer, 4)
    worker.checkpoint(step=4)
    assert all(p.abs().sum() > 0 for s in worker.scaffolds.values() for p in s.seed.parameters())
    return model, worker, optimizer


def test_live_state_dict_is_the_hosts_under_the_plain_names():
    """With two live scaffolds the keys are the plain model's, the values the hosts' own tensors, and a strict
    load into the plain architecture gives the model with its seeds removed; a warning names each scaffold, once
    (trainers call state_dict() every step)."""
    model, worker, _ = _scaffolded_mlp()
    with structlog.testing.capture_logs() as logs:
        state = model.state_dict()
        model.state_dict()
    plain = MLP()
    assert list(state) == list(plain.state_dict())
    assert all(torch.equal(state[k], v) for k, v in host_tensors(model).items())
    plain.load_state_dict(state, strict=True)
    warned = [e["scaffold_id"] for e in logs if e["event"] == "live_scaffold_not_in_state_dict"]
    assert sorted(warned) == ["lora", "mlp"]
    for scaffold in worker.scaffolds.values():
        scaffold.alpha.zero_()  # the scaffolded model with its seeds switched off is the host alone
    x = torch.randn(5, 12)
    assert torch.equal(plain(x), model(x))


def test_strict_load_of_a_plain_state_into_a_scaffolded_model_leaves_the_seeds():
    """A plain model's state loads strictly into a scaffolded model: the hosts take it, seeds and alpha stay."""
    model, worker, _ = _scaffolded_mlp()
    seeds = {sid: {k: v.clone() for k, v in s.seed.state_dict().items()} for sid, s in worker.scaffolds.items()}
    alphas = {sid: float(s.alpha) for sid, s in worker.scaffolds.items()}
    torch.manual_seed(7)
    plain = MLP()
    model.load_state_dict(plain.state_dict(), strict=True)
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in host_tensors(model).items())
    for sid, scaffold in worker.scaffolds.items():
        assert float(scaffold.alpha) == alphas[sid]
        assert all(torch.equal(v, seeds[sid][k]) for k, v in scaffold.seed.state_dict().items())


def test_resume_from_host_only_model_state_and_the_worker_state_is_exact():
    """A fresh job restores the seeds from the worker's state and the hosts from the model's (either order):
    every tensor, alpha included, equals the saved job's."""
    model, worker, optimizer = _scaffolded_mlp()
    expected = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    model_state, worker_state = model.state_dict(), worker.state_dict()
    for model_first in (True, False):
        fresh = MLP()
        fresh_worker = KasminaWorker(fresh, torch.optim.Adam(fresh.parameters(), lr=1e-2), job="keys")
        if model_first:
            fresh.load_state_dict(model_state, strict=True)
        fresh_worker.load_state_dict(worker_state)
        if not model_first:
            fresh.load_state_dict(model_state, strict=True)
        restored = dict(itertools.chain(fresh.named_parameters(), fresh.named_buffers()))
        assert restored.keys() == expected.keys()
        assert all(torch.equal(restored[k], v) for k, v in expected.items())


def test_checkpoint_with_the_scaffold_tree_loads_as_before():
    """A state written with the scaffold's own keys (`fc1.host.weight`, `fc1.seed.*`, `fc1.alpha`) still loads
    strictly into a scaffolded model, seeds included."""
    model, worker, _ = _scaffolded_mlp()
    tree = {k: v.detach().clone() for k, v in itertools.chain(model.named_parameters(), model.named_buffers())}
    assert "fc1.host.weight" in tree and "fc1.alpha" in tree
    fresh = MLP()
    fresh_worker = KasminaWorker(fresh, torch.optim.Adam(fresh.parameters(), lr=1e-2), job="keys")
    fresh_worker.load_state_dict(
        {
            **worker.state_dict(),
            "scaffolds": [
                {k: v for k, v in entry.items() if k != "seed_state"} for entry in worker.state_dict()["scaffolds"]
            ],
        }
    )
    fresh.load_state_dict(tree, strict=True)
    restored = dict(itertools.chain(fresh.named_parameters(), fresh.named_buffers()))
    assert all(torch.equal(restored[k], v) for k, v in tree.items())


def test_save_pretrained_during_a_scaffold_life_reloads_the_exact_host(tmp_path):
    """Tiny GPT-2 with live LoRAs on c_attn and c_fc: save_pretrained, then from_pretrained reports no missing,
    unexpected or mismatched key and holds exactly the hosts' tensors (the model with its seeds removed)."""
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="hf-keys")
    for i, site in enumerate(("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc")):
        worker.submit(deploy(site, "lora", command_id=f"lora{i}", blueprint_params={"rank": 2}, policy=LIVE))
    worker.checkpoint(step=0)
    for step in range(3):
        loss = worker.step_loss(lm_loss(worker.model, lm_batch(step)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    worker.checkpoint(step=3)
    assert len(worker.scaffolds) == 2
    model.save_pretrained(tmp_path)
    reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    hosts = host_tensors(model)
    state = reloaded.state_dict()
    assert state.keys() == hosts.keys() and "transformer.h.0.attn.c_attn.weight" in state
    assert all(torch.equal(state[k], v) for k, v in hosts.items())
