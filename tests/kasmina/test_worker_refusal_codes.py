"""A command the worker refuses carries the stable reason code Narset gives the same refusal (CommandResult.reason)."""

from __future__ import annotations

import pytest
import torch
from kasmina_testing import MLP, deploy, on, schedule

from kasmina_worker import KasminaWorker
from narset.contract import reasons
from narset.contract.rules import MAX_EXTENSIONS, persist_error
from narset.v1 import command_pb2, telemetry_pb2


def test_worker_refusals_carry_reason_codes():
    """Each refusal is REJECTED with its code (a known one) and a message naming the field; an applied
    command has no reason."""
    torch.manual_seed(0)
    model = MLP()
    worker = KasminaWorker(model, torch.optim.SGD(model.parameters(), lr=0.1), job="reasons")
    live = schedule(warmup_ckpts=1, hold_ckpts=4)
    commands = [
        (deploy("fc1", "lora", "ok", blueprint_params={"rank": 2}, policy=live), ""),
        (deploy("fc1", "lora", "occupied", blueprint_params={"rank": 2}), reasons.MODULE_OCCUPIED),
        (deploy("nothing", "lora", "unknown-module"), reasons.MODULE_NOT_FOUND),
        (deploy("fc2", "no-such-blueprint", "unknown-blueprint"), reasons.BLUEPRINT_NOT_FOUND),
        (deploy("fc2", "moe_expert", "misfit"), reasons.BLUEPRINT_DOES_NOT_FIT),
        (deploy("fc2", "lora", "same-id", blueprint_params={"rank": 2}, scaffold_id="ok"), reasons.SCAFFOLD_EXISTS),
        (on("prune", "unknown-scaffold", scaffold_id="nobody"), reasons.SCAFFOLD_NOT_FOUND),
        (on("persist", "zero-extension", scaffold_id="ok", extra_ckpts=0), reasons.INVALID_FIELD),
        (on("persist", "past-the-ttl-limit", scaffold_id="ok", extra_ckpts=10_000), reasons.EXTENSION_LIMIT),
        (on("rollback", "no-fold", module="fc2"), reasons.ROLLBACK_UNAVAILABLE),
        (command_pb2.AdaptationCommand(command_id="no-action"), reasons.INVALID_FIELD),
    ]
    for command, _ in commands:
        worker.submit(command)
    results = worker.checkpoint(step=0).results
    assert [(r.command_id, r.reason) for r in results] == [(c.command_id, code) for c, code in commands]
    assert results[0].outcome == telemetry_pb2.COMMAND_OUTCOME_APPLIED
    for result in results[1:]:
        assert result.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED and result.reason in reasons.REASONS
        assert ": " in result.message  # "field: why"
    assert results[2].message.startswith("deploy.module: unknown module 'nothing'")


@pytest.mark.parametrize(
    ("extensions", "ttl", "extra", "code", "field"),
    [
        (0, 4, 0, reasons.INVALID_FIELD, "persist.extra_ckpts"),
        (0, 4, 5, reasons.EXTENSION_LIMIT, "persist.extra_ckpts"),
        (MAX_EXTENSIONS, 4, 1, reasons.EXTENSION_LIMIT, "persist.scaffold"),
    ],
)
def test_the_persist_refusal_code_is_written_twice(extensions, ttl, extra, code, field):
    """The one persist rule gives the reason code with the refused field (TTL 4 of at most 8), so Narset's
    ledger and Kasmina's applier refuse a persist under the same code without deciding it each."""
    error = persist_error(extensions, ttl, 4, extra)
    assert (error.code, error.field) == (code, field)
    assert persist_error(extensions - 1 if extensions else 0, ttl, 4, 1) is None
