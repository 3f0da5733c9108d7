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
