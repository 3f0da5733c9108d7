"""Conv2d hosts: lora, expand and conv_branch fold exactly over stride, padding, groups and dilation; BatchNorm
branches fold the eval-mode function; zero-shock entry, rollback bit for bit, gates on the simulated exit."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from kasmina_testing import IMAGE, ConvNet, batch, deploy, max_rel_err, on, result_ok, schedule, train
from torch import nn

from kasmina_worker import KasminaWorker
from kasmina_worker.measure.gate_formulas import diversity_index

FP32_FOLD_BOUND = 1e-5
# stride, padding, groups, dilation of the host conv (3×3, 8 -> 8 channels)
GRID = list(itertools.product([1, 2], [0, 1], [1, 4], [1, 2]))
BLUEPRINTS = [
    ("conv_branch", {"identity": 1}),  # a 1×1 and an identity branch, each with its BatchNorm
    ("conv_branch", {"identity": 1, "bn": 0}),
    ("lora", {"rank": 4}),
    ("expand", {"width_factor": 2}),
]


def _geometry(stride: int, padding: int, groups: int, dilation: int, **more) -> dict:
    return {"stride": stride, "padding": padding, "groups": groups, "dilation": dilation, **more}


def trained_conv_scaffold(geometry: dict, blueprint: str, params: dict, alpha: float):
    """A ConvNet trained a few steps, the scaffold deployed on `conv`, its seed set non-zero and trained at `alpha`
    (so BatchNorm running statistics have moved); returns the model, optimiser, worker and scaffold."""
    torch.manual_seed(7)
    model = ConvNet(**geometry)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="conv")
    train(worker, optimizer, steps=2, shape=IMAGE)  # trained, not freshly initialised, host weights
    worker.submit(deploy("conv", blueprint, blueprint_params=params, policy=schedule(warmup_ckpts=1, hold_ckpts=4)))
    result_ok(worker.checkpoint(step=2))
    scaffold = worker.scaffolds["local-1"]
    for p in scaffold.seed.parameters():
        nn.init.normal_(p, std=0.3)  # non-zero init: the fold has something to write
    with torch.no_grad():
        scaffold.alpha.fill_(alpha)
    train(worker, optimizer, steps=5, start=2, shape=IMAGE)
    return model, optimizer, worker, scaffold


def _site_input(model: nn.Module, x_model: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x_model)
    handle.remove()
    return seen[0]


def fold_parity(geometry: dict, blueprint: str, params: dict) -> tuple[float, float]:
    """Eval mode, trained seed at a random alpha: (max relative error of the site output after the fold against the
    blend before it, the same of the blend against the host alone)."""
    alpha = random.Random(f"{geometry}{blueprint}{params}").uniform(0.2, 1.0)
    model, optimizer, worker, scaffold = trained_conv_scaffold(geometry, blueprint, params, alpha)
    model.eval()
    x_model = torch.randn(IMAGE)
    x = _site_input(model, x_model)
    with torch.no_grad():
        site_before, model_before, host_only = scaffold(x), model(x_model), scaffold.host(x)
    worker.submit(on("fold", scaffold_id="local-1"))
    summary = worker.checkpoint(step=20)
    result_ok(summary)
    assert summary.scaffold("local-1").stage == "SCAFFOLD_STAGE_FUSED"
    assert model.conv is scaffold.host
    with torch.no_grad():
        assert max_rel_err(model(x_model), model_before) <= FP32_FOLD_BOUND
        return max_rel_err(model.conv(x), site_before), max_rel_err(site_before, host_only)


@pytest.mark.parametrize("blueprint,params", BLUEPRINTS, ids=[f"{b}{p}" for b, p in BLUEPRINTS])
@pytest.mark.parametrize("stride,padding,groups,dilation", GRID)
def test_conv_fold_is_exact_in_eval_mode(stride, padding, groups, dilation, blueprint, params):
    """On a trained 3×3 Conv2d host with a trained non-zero seed at random alpha, the eval-mode output after the fold
    equals the blend before it within 1e-5 relative (fp32), for stride 1/2, padding 0/1, groups 1/4, dilation 1/2."""
    error, effect = fold_parity(_geometry(stride, padding, groups, dilation), blueprint, params)
    assert effect > 1e-3  # the scaffold really changes the output
    assert error <= FP32_FOLD_BOUND


@pytest.mark.parametrize("blueprint,params", BLUEPRINTS, ids=[f"{b}{p}" for b, p in BLUEPRINTS])
@pytest.mark.parametrize(
    "geometry",
    [
        _geometry(2, 1, 4, 1, padding_mode="reflect"),
        _geometry(1, 2, 1, 2, padding_mode="circular"),
        _geometry(1, 3, 2, 1, padding_mode="replicate", kernel_size=(3, 5)),  # wider than the centre needs
    ],
    ids=["reflect", "circular", "replicate-3x5"],
)
def test_conv_fold_is_exact_with_the_host_padding_mode_and_kernel_shape(geometry, blueprint, params):
    """The seeds pad as their host does (reflect, circular, replicate) and follow a rectangular kernel padded beyond
    its centre: the fold stays within 1e-5 relative."""
    error, effect = fold_parity(geometry, blueprint, params)
    assert effect > 1e-3
    assert error <= FP32_FOLD_BOUND


def test_conv_branch_fold_is_exact_for_the_eval_mode_function_not_for_batch_statistics():
    """A BatchNorm branch in train mode normalises with the batch's statistics; the fold writes its eval-mode function
    (running statistics). After the fold the model computes, in train and eval mode alike, the eval-mode output of
    the scaffolded model (1e-5), which differs from its train-mode output (by more than 1e-2 here)."""
    geometry = _geometry(1, 1, 1, 1)
    model, optimizer, worker, scaffold = trained_conv_scaffold(geometry, "conv_branch", {"identity": 1}, 0.8)
    x = torch.randn(IMAGE)
    with torch.no_grad():
        model.train()
        train_before = model(x)
        model.eval()
        eval_before = model(x)
    assert max_rel_err(train_before, eval_before) > 1e-2
    worker.submit(on("fold", scaffold_id="local-1"))
    result_ok(worker.checkpoint(step=20))
    with torch.no_grad():
        for mode in (True, False):
            model.train(mode)
            assert max_rel_err(model(x), eval_before) <= FP32_FOLD_BOUND


@pytest.mark.parametrize("blueprint,params", BLUEPRINTS, ids=[f"{b}{p}" for b, p in BLUEPRINTS])
def test_conv_deploy_is_zero_shock_for_the_output_and_every_host_gradient(blueprint, params):
    """Right after a conv deploy (alpha > 0, seed output 0, BatchNorm in train mode included) the output and the
    gradient of every host parameter, upstream, at the site and downstream, equal the model's without the scaffold
    bit for bit, and so does the host after the optimiser step."""
    torch.manual_seed(0)
    model = ConvNet(stride=2, padding=1, groups=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    worker = KasminaWorker(model, optimizer, job="zero")
    train(worker, optimizer, steps=3, shape=IMAGE)
    plain = copy.deepcopy(model)
    plain_optimizer = torch.optim.SGD(plain.parameters(), lr=0.05)
    worker.submit(deploy("conv", blueprint, blueprint_params=params))
    result_ok(worker.checkpoint(step=3))
    scaffold = worker.scaffolds["local-1"]
    assert float(scaffold.alpha) > 0 and not scaffold.seed.delta_weight().any()
    x, y = batch(3, IMAGE, 6)
    outputs = []
    for net, loss_hook in ((worker.model, worker.step_loss), (plain, lambda loss: loss)):
        net.zero_grad(set_to_none=True)
        out = net(x)
        loss_hook(F.mse_loss(out, y)).backward()
        outputs.append(out.detach())
    assert torch.equal(*outputs)
    hosted = {n.replace(".host.", "."): p for n, p in model.named_parameters() if ".seed." not in n}
    for name, param in plain.named_parameters():
        assert param.grad.abs().sum() > 0, name
        assert torch.equal(hosted[name].grad, param.grad), name
    optimizer.step()
    plain_optimizer.step()
    assert all(torch.equal(hosted[name], param) for name, param in plain.named_parameters())


@pytest.mark.parametrize("blueprint,params", [BLUEPRINTS[0], BLUEPRINTS[2], BLUEPRINTS[3]])
def test_conv_rollback_restores_host_and_scaffold_bit_for_bit(blueprint, params):
    """Rollback of a conv fold restores the pre-fold host tensors, the seed's tensors (BatchNorm running statistics
    included) and its optimiser state bit for bit, and the model's outputs in train and eval mode."""
    model, optimizer, worker, scaffold = trained_conv_scaffold(_geometry(2, 1, 4, 2), blueprint, params, 0.6)
    host = scaffold.host
    pre_host = {k: v.clone() for k, v in host.state_dict().items()}
    pre_seed = {k: v.clone() for k, v in scaffold.seed.state_dict().items()}
    seed_state = {k: {n: t.clone() for n, t in optimizer.state[p].items()} for k, p in scaffold.seed.named_parameters()}
    x = torch.randn(IMAGE)
    with torch.no_grad():
        model.eval()
        pre_eval = model(x)
        model.train()
    worker.submit(on("fold", scaffold_id="local-1"))
    worker.checkpoint(step=20)
    assert not torch.equal(host.weight, pre_host["weight"])
    worker.submit(on("rollback", scaffold_id="local-1"))
    result_ok(worker.checkpoint(step=21))
    restored = worker.scaffolds["local-1"]
    assert restored.host is host
    assert all(torch.equal(v, pre_host[k]) for k, v in host.state_dict().items())
    assert restored.seed.state_dict().keys() == pre_seed.keys()
    assert all(torch.equal(v, pre_seed[k]) for k, v in restored.seed.state_dict().items())
    for k, p in restored.seed.named_parameters():
        assert all(torch.equal(optimizer.state[p][n], t) for n, t in seed_state[k].items())
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), pre_eval)


@pytest.mark.parametrize("blueprint,params", BLUEPRINTS, ids=[f"{b}{p}" for b, p in BLUEPRINTS])
def test_conv_gates_measure_the_exact_simulated_exit(blueprint, params):
    """G1 and G3 on a live conv scaffold come from the fold's own code on a copy (eval mode): G3 within 1e-5 of 1,
    G1 equal to the probe loss change of the real fold; G4's diversity takes the site's channels as its features."""
    torch.manual_seed(2)
    model = ConvNet(stride=2, padding=1, groups=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = [batch(900 + i, IMAGE, 6) for i in range(2)]
    worker = KasminaWorker(model, optimizer, job="gates", probe=probe, loss_fn=F.mse_loss)
    train(worker, optimizer, steps=3, shape=IMAGE)
    policy = schedule(warmup_ckpts=1, hold_ckpts=4)
    policy.lr_scale = 10.0  # a sizeable seed in a few steps
    worker.submit(deploy("conv", blueprint, blueprint_params=params, policy=policy))
    result_ok(worker.checkpoint(step=3))
    train(worker, optimizer, steps=8, start=3, shape=IMAGE)
    summary = worker.checkpoint(step=11)
    gates = summary.gates["local-1"]
    assert abs(1.0 - gates.foldability) <= FP32_FOLD_BOUND
    with torch.no_grad():
        model.eval()  # a train-mode forward would move the BatchNorm running statistics the fold reads
        inputs = [_site_input(model, x) for x, _ in probe]
        outputs = [model.conv(x) for x in inputs]
        assert max_rel_err(outputs[0], model.conv.host(inputs[0])) > 1e-3
        model.train()
    assert gates.diversity == pytest.approx(diversity_index([o.movedim(1, -1) for o in outputs]), abs=1e-6)
    worker.submit(on("fold", scaffold_id="local-1"))
    folded = worker.checkpoint(step=11)
    result_ok(folded)
    assert abs(1.0 - folded.gates["local-1"].foldability) <= FP32_FOLD_BOUND  # the real fold's measured parity
    after = worker.probe_loss()
    assert gates.transfer_rel_delta == pytest.approx((after - summary.probe_loss) / abs(summary.probe_loss), abs=1e-6)
    assert abs(gates.transfer_rel_delta) <= FP32_FOLD_BOUND
