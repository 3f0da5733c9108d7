"""A KasminaWorker attached to a real server in-process: what it sends is what Narset accepts."""

from __future__ import annotations

import torch
from torch import nn

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2, telemetry_pb2


def test_non_finite_values_are_left_unmeasured_not_refused(server, client):
    """A NaN probe loss and an Inf metric are dropped from the report, which Narset then accepts."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = [(torch.randn(8, 4), torch.randn(8, 2))]

    def nan_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).sum() * float("nan")

    with KasminaWorker(model, optimizer, job="nan-job", narset=server.address, probe=probe, loss_fn=nan_loss) as w:
        w.checkpoint(step=3, metrics={"val_loss": float("inf"), "lr": 0.1})
    job = client.get_job("nan-job").job
    assert (job.last_boundary, job.last_step) == (1, 3)
    assert not job.HasField("last_probe_loss")
    assert [m.name for m in client.list_modules("nan-job")] == []  # a bare Linear has no submodules


def test_attach_registers_the_host_tree_and_resumed_state(server, client):
    """Attach sends the host's module tree (a scaffold stands for its host) and the applied command ids."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with KasminaWorker(model, optimizer, job="tree", narset=server.address) as worker:
        worker.checkpoint(step=1)
        deploy = command_pb2.DeployAction(module="0", blueprint="lora", blueprint_params={"rank": 2})
        command = client.submit(command_pb2.AdaptationCommand(job_id="tree", deploy=deploy)).record.command
        worker.checkpoint(step=2)
        assert worker.applied_command_ids == (command.command_id,)
        worker.checkpoint(step=3)
    modules = {m.name: m for m in client.list_modules("tree")}
    assert list(modules) == ["0", "1", "2"]
    assert (modules["0"].type, modules["0"].in_features, modules["0"].out_features) == ("Linear", 8, 16)
    [scaffold] = client.list_scaffolds("tree")
    assert scaffold.scaffold_id == command.command_id
    assert scaffold.stage == telemetry_pb2.SCAFFOLD_STAGE_GRAFTING  # reported by the job, no longer PENDING


def _train(worker: KasminaWorker, optimizer: torch.optim.Optimizer, g: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(4, 8, generator=g)
        loss = worker.step_loss(nn.functional.mse_loss(worker.model(x), x[:, :4].sin()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_g4_is_judged_against_the_noise_the_job_reports(server, client):
    """The job reports its own step-loss noise every boundary and Narset's G4 limits come from it: a mini-batch
    job's exit decision carries a jitter limit far above the policy's 0.05, equal to what the reports give."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    probe = [(torch.randn(16, 8, generator=g), torch.zeros(16, 4))]
    short = command_pb2.ScaffoldPolicy(ttl_ckpts=2, schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=1))
    with KasminaWorker(model, optimizer, job="noisy", narset=server.address, probe=probe) as worker:
        for boundary in range(1, 8):
            worker.checkpoint(step=10 * (boundary - 1))
            if boundary == 2:
                deploy = command_pb2.DeployAction(module="2", blueprint="lora", policy=short)
                client.submit(command_pb2.AdaptationCommand(job_id="noisy", deploy=deploy))
            _train(worker, optimizer, g, 10)
    [decision] = client.list_decisions("noisy")
    jitter = next(v for v in decision.verdicts if v.gate == "G4.jitter")
    assert jitter.HasField("value") and jitter.threshold > 0.05


def test_a_scaffold_deployed_locally_is_adopted_with_the_policy_it_runs_under(server, client):
    """A scaffold Narset did not deploy (a local command) is adopted with its effective policy: the thresholds,
    schedule and TTL it runs under, never zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    local = command_pb2.ScaffoldPolicy(gates=command_pb2.GateThresholds(jitter_p95_max=0.3))
    with KasminaWorker(model, optimizer, job="local", narset=server.address) as worker:
        worker.checkpoint(step=0)
        worker.submit(
            command_pb2.AdaptationCommand(deploy=command_pb2.DeployAction(module="0", blueprint="lora", policy=local))
        )
        worker.checkpoint(step=1)
        worker.checkpoint(step=2)
    [adopted] = client.list_scaffolds("local")
    thresholds = adopted.policy.gates
    assert thresholds.jitter_p95_max == 0.3
    assert (thresholds.foldability_theta, thresholds.step_time_ratio_max) == (0.9, 1.5)  # the defaults beside it
    assert adopted.policy.schedule.hold_ckpts == 10 and adopted.policy.ttl_ckpts == 12  # lora's default schedule
