"""Exact folds, prune at alpha 0, rollback, on nn.Linear and the transposed GPT-2 Conv1D."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import GPT2MLP, MLP, deploy, max_rel_err, on, result_ok, schedule, train

from kasmina_worker import Conv1D, KasminaWorker
from kasmina_worker.seeds.hosts import linear_layout

FP32_FOLD_BOUND = 1e-5
BF16_FOLD_BOUND = 4 * 2**-8  # docs/kasmina.md: four bf16 roundings (2^-8) of the output scale; measured <= 9.1e-3


def _trained_scaffold(model_cls, module: str, blueprint: str, params: dict, alpha: float, dtype=torch.float32):
    """Deploy, force a random alpha, and train real steps so host and seed are both non-trivial."""
    torch.manual_seed(7)
    model = model_cls().to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="fold")
    train(worker, optimizer, steps=5)  # trained, not freshly initialised, host weights
    worker.submit(deploy(module, blueprint, blueprint_params=params, policy=schedule(isolated_ckpts=1, warmup_ckpts=1)))
    result_ok(worker.checkpoint(step=5))
    scaffold = worker.scaffolds["local-1"]
    for p in scaffold.seed.parameters():
        torch.nn.init.normal_(p, std=0.2)  # non-zero init: the fold has something to write
    with torch.no_grad():
        scaffold.alpha.fill_(alpha)
    for p in scaffold.host.parameters():
        p.requires_grad_(True)
    train(worker, optimizer, steps=8, start=5)
    return model, optimizer, worker, scaffold


def site_input(model, site, x_model: torch.Tensor) -> torch.Tensor:
    """The input the site module receives when the model runs on `x_model`."""
    seen = []
    handle = site.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x_model)
    handle.remove()
    return seen[0]


CASES = [
    (MLP, "fc1", "lora", {"rank": 3}),
    (MLP, "fc2", "lora", {"rank": 32}),  # above min(in, out) = 6: over-parameterised, still exact
    (MLP, "fc1", "expand", {"width_factor": 2}),
    (MLP, "fc2", "dense_delta", {}),
    (MLP, "fc1", "dense_delta", {"bias": 0}),
    (GPT2MLP, "c_fc", "lora", {"rank": 4, "scaling": 0.5}),
    (GPT2MLP, "c_proj", "lora", {"rank": 2}),
]


@pytest.mark.parametrize("model_cls,module,blueprint,params", CASES)
def test_fold_is_exact_at_random_alpha(model_cls, module, blueprint, params):
    """After training, at random alpha in (0, 1], the host-only output after the fold equals the blend before it."""
    alpha = random.Random(f"{module}{blueprint}{params}").uniform(1e-3, 1.0)
    model, optimizer, worker, scaffold = _trained_scaffold(model_cls, module, blueprint, params, alpha)
    host = scaffold.host
    assert linear_layout(host).transposed == isinstance(host, Conv1D)
    assert host.weight.shape[0] != host.weight.shape[1]
    x_model = torch.randn(16, 12)
    x = site_input(model, scaffold, x_model)
    with torch.no_grad():
        site_before, model_before, host_only = scaffold(x), model(x_model), host(x)
    assert max_rel_err(site_before, host_only) > 1e-3  # the scaffold really changes the output
    worker.submit(on("fold", scaffold_id="local-1"))
    summary = worker.checkpoint(step=20)
    result_ok(summary)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_FUSED"
    assert model.get_submodule(module) is host
    with torch.no_grad():
        assert max_rel_err(host(x), site_before) <= FP32_FOLD_BOUND
        assert max_rel_err(model(x_model), model_before) <= FP32_FOLD_BOUND


@pytest.mark.parametrize("model_cls,module,blueprint,params", [CASES[0], CASES[3], CASES[5]])
def test_bf16_fold_is_within_the_documented_bound(model_cls, module, blueprint, params):
    """In bf16 the fold (fp32 compute, one cast) stays within the documented bound of the blend."""
    model, optimizer, worker, scaffold = _trained_scaffold(model_cls, module, blueprint, params, 0.7, torch.bfloat16)
    x = site_input(model, scaffold, torch.randn(16, 12, dtype=torch.bfloat16))
    with torch.no_grad():
        before, host_only = scaffold(x), scaffold.host(x)
    assert max_rel_err(before, host_only) > 5e-2
    worker.submit(on("fold", scaffold_id="local-1"))
    result_ok(worker.checkpoint(step=20))
    assert scaffold.host.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert max_rel_err(scaffold.host(x), before) <= BF16_FOLD_BOUND


def test_prune_at_alpha_zero_is_bit_identical():
    """Pruning a scaffold whose alpha is 0 leaves outputs bit-identical."""
    model, optimizer, worker, scaffold = _trained_scaffold(MLP, "fc1", "lora", {"rank": 3}, 0.0)
    x = torch.randn(16, 12)
    with torch.no_grad():
        before = model(x)
        assert max_rel_err(scaffold.seed(x, scaffold.host(x), scaffold.host), scaffold.host(x)) > 1e-3
    worker.submit(on("prune", module="fc1"))
    summary = worker.checkpoint(step=20)
    result_ok(summary)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_PRUNED"
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_prune_at_nonzero_alpha_runs_a_sunset_then_exits_exactly():
    """A prune requested at alpha > 0 ramps alpha to 0 over the sunset, then removes the scaffold exactly."""
    torch.manual_seed(3)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="sunset")
    worker.submit(
        deploy("fc2", "residual_mlp", blueprint_params={"hidden": 4}, policy=schedule(warmup_ckpts=1, hold_ckpts=5))
    )
    worker.checkpoint(step=0)
    scaffold = worker.scaffolds["local-1"]
    torch.nn.init.normal_(scaffold.seed.fc_out.weight, std=0.3)
    worker.submit(on("prune", scaffold_id="local-1"))
    s1 = worker.checkpoint(step=1)
    assert s1.scaffold("local-1").stage == "SCAFFOLD_STAGE_SUNSET"
    assert s1.scaffold("local-1").alpha == pytest.approx(0.125)  # warm 0.25 -> 0 over 2 boundaries
    train(worker, optimizer, steps=2)
    x = torch.randn(4, 12)
    s2 = worker.checkpoint(step=2)
    assert s2.scaffold("local-1").stage == "SCAFFOLD_STAGE_PRUNED"
    assert "local-1" not in worker.scaffolds
    assert worker.model.fc2 is scaffold.host
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("model_cls,module,blueprint,params", [CASES[0], CASES[2], CASES[5]])
def test_rollback_restores_host_and_scaffold_bit_for_bit(model_cls, module, blueprint, params):
    """Rollback restores the pre-fold host tensors bit for bit and the scaffold as it was."""
    model, optimizer, worker, scaffold = _trained_scaffold(model_cls, module, blueprint, params, 0.4)
    host = scaffold.host
    pre_host = {k: v.clone() for k, v in host.state_dict().items()}
    pre_seed = {k: v.clone() for k, v in scaffold.seed.state_dict().items()}
    seed_state = {k: {n: t.clone() for n, t in optimizer.state[p].items()} for k, p in scaffold.seed.named_parameters()}
    x = torch.randn(8, 12)
    with torch.no_grad():
        pre_out = model(x)
    worker.submit(on("fold", scaffold_id="local-1"))
    worker.checkpoint(step=20)
    assert not torch.equal(host.weight, pre_host["weight"])
    worker.submit(on("rollback", scaffold_id="local-1"))
    summary = worker.checkpoint(step=21)
    result_ok(summary)
    restored = worker.scaffolds["local-1"]
    assert restored.host is host
    for k, v in host.state_dict().items():
        assert torch.equal(v, pre_host[k])
    for k, v in restored.seed.state_dict().items():
        assert torch.equal(v, pre_seed[k])
    for k, p in restored.seed.named_parameters():
        for n, t in seed_state[k].items():
            assert torch.equal(optimizer.state[p][n], t)
    assert float(restored.alpha) == pytest.approx(0.4)
    with torch.no_grad():
        assert torch.equal(model(x), pre_out)
    worker.submit(on("rollback", scaffold_id="local-1", command_id="again"))
    again = worker.checkpoint(step=22)
    assert "no fold of scaffold_id 'local-1'" in again.results[0].message


def test_only_the_last_two_folds_are_kept():
    """Fold diffs are kept for the last 2 folds: both roll back bit for bit; an older fold can no longer."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="keep")
    pre_fold = []
    for i, module in enumerate(["fc1", "fc2", "fc1"]):
        worker.submit(deploy(module, "lora", command_id=f"d{i}", blueprint_params={"rank": 2}))
        worker.checkpoint(step=2 * i)
        pre_fold.append(worker.model.get_submodule(module).host.weight.detach().clone())
        worker.submit(on("fold", command_id=f"f{i}", scaffold_id=f"d{i}"))
        result_ok(worker.checkpoint(step=2 * i + 1))
    worker.submit(on("rollback", command_id="r", scaffold_id="d0"))
    assert worker.checkpoint(step=9).results[0].message.startswith("rollback.scaffold.scaffold_id:")
    worker.submit(on("rollback", command_id="r2", scaffold_id="d2"))
    result_ok(worker.checkpoint(step=10))
    assert torch.equal(worker.model.get_submodule("fc1").host.weight, pre_fold[2])
    worker.submit(on("rollback", command_id="r1", scaffold_id="d1"))
    result_ok(worker.checkpoint(step=11))
    assert torch.equal(worker.model.get_submodule("fc2").host.weight, pre_fold[1])


def test_fold_refuses_non_finite_values_and_leaves_host_untouched():
    """A fold whose result is not finite writes nothing into the host and is reported."""
    model, optimizer, worker, scaffold = _trained_scaffold(MLP, "fc1", "dense_delta", {}, 0.5)
    before = scaffold.host.weight.detach().clone()
    with torch.no_grad():
        scaffold.seed.d[0, 0] = float("inf")
    worker.submit(on("fold", scaffold_id="local-1"))
    summary = worker.checkpoint(step=20)
    assert "non-finite" in summary.results[0].message
    assert torch.equal(scaffold.host.weight, before)


def test_transformer_block_attention_projection_takes_a_lora():
    """A LoRA on the attention output projection of a transformer block trains and folds exactly."""
    from kasmina_testing import Block

    torch.manual_seed(1)
    model = Block()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="block")
    worker.submit(deploy("mlp.2", "lora", blueprint_params={"rank": 4}, policy=schedule(warmup_ckpts=1, hold_ckpts=4)))
    result_ok(worker.checkpoint(step=0))
    losses = train(worker, optimizer, steps=10, d_in=16, d_out=5, seq=4)
    assert all(torch.isfinite(torch.tensor(losses)))
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        before = model(x)
    assert worker.scaffolds["local-1"].seed.b.abs().sum() > 0
    worker.submit(on("fold", module="mlp.2"))
    result_ok(worker.checkpoint(step=1))
    with torch.no_grad():
        assert max_rel_err(model(x), before) <= FP32_FOLD_BOUND
    assert F.mse_loss(model(x), before) < 1e-10
