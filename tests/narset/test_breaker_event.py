"""A job's breaker trips and Narset shows it (issue 12): a real KasminaWorker on CPU, attached to a real
server, whose loss spikes; the report carrying the safety event was lost (UNKNOWN) before. The
SAFETY_EVENT appears in `narset watch` and the breaker's PRUNE in `narset decisions`."""

from __future__ import annotations

import torch
from torch import nn

from kasmina_worker import BreakerConfig, KasminaWorker, WorkerConfig
from narset.cli import main
from narset.v1 import command_pb2, job_pb2, telemetry_pb2


def _step(worker: KasminaWorker, optimizer: torch.optim.Optimizer, g: torch.Generator, scale: float = 1.0) -> None:
    x = torch.randn(8, 8, generator=g)
    loss = worker.step_loss(nn.functional.mse_loss(worker.model(x), scale * x[:, :4].sin()))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_a_tripped_breaker_shows_in_watch_and_decisions(server, client, capsys):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    config = WorkerConfig(breakers=BreakerConfig(spike_factor=5.0))
    with KasminaWorker(model, optimizer, job="spiky", narset=server.address, config=config) as worker:
        worker.checkpoint(step=0)
        deploy = command_pb2.DeployAction(module="0", blueprint="lora", blueprint_params={"rank": 2})
        client.submit(command_pb2.AdaptationCommand(job_id="spiky", command_id="sc", deploy=deploy))
        worker.checkpoint(step=1)
        assert list(worker.scaffolds) == ["sc"]
        for _ in range(6):
            _step(worker, optimizer, g)
        _step(worker, optimizer, g, scale=100.0)  # the loss jumps far above the window's mean
        summary = worker.checkpoint(step=8)
        assert [(e.scaffold_id, e.kind) for e in summary.events] == [("sc", "loss_spike")]
        assert not worker.scaffolds
    events = [e for e in client.watch("spiky", follow=False) if e.kind == job_pb2.EVENT_KIND_SAFETY_EVENT]
    assert [(e.attributes["scaffold_id"], e.attributes["kind"]) for e in events] == [("sc", "loss_spike")]
    [decision] = client.list_decisions("spiky")
    assert (decision.scaffold_id, decision.outcome) == ("sc", telemetry_pb2.DECISION_OUTCOME_PRUNE)
    [scaffold] = client.list_scaffolds("spiky", include_ended=True)
    assert scaffold.stage == telemetry_pb2.SCAFFOLD_STAGE_PRUNED
    assert main(["watch", "spiky", "--no-follow", "--server", server.address]) == 0
    watched = capsys.readouterr().out
    assert "SAFETY_EVENT" in watched and "loss_spike on scaffold sc" in watched
    assert main(["decisions", "spiky", "--server", server.address]) == 0
    decided = capsys.readouterr().out.splitlines()
    assert any("sc" in line and "PRUNE" in line and "loss_spike" in line for line in decided), decided
