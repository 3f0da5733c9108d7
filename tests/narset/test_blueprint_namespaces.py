"""Blueprints per job (issue 12): a job's own blueprints are visible to it alone and the built-ins to every
job; one job's attach replaced another's blueprint of the same name, whose deploys then failed."""

from __future__ import annotations

import grpc
import pytest
from narset_testing import assert_refusal, attach_request, deploy, stored_blueprints

from narset.cli import main
from narset.client import NarsetError
from narset.contract import reasons
from narset.contract.catalogue import BUILTIN_BLUEPRINTS
from narset.v1 import command_pb2, job_pb2, operator_service_pb2

BUILTINS = sorted(b.name for b in BUILTIN_BLUEPRINTS)


def _with_mine(job_id: str, max_rank: int):
    """A registration with the job's own blueprint "mine" (a rank parameter in [1, max_rank])."""
    request = attach_request(job_id)
    rank = job_pb2.BlueprintParam(name="rank", min=1, max=max_rank, default_value=1, integer=True)
    policy = command_pb2.ScaffoldPolicy(ttl_ckpts=6)
    request.blueprints.add(
        name="mine", host_types=["Linear"], params=[rank], folds=[job_pb2.FOLD_KIND_LORA], default_policy=policy
    )
    return request


def _rank_max(client, job_id: str) -> float:
    [mine] = [b for b in client.list_blueprints(job_id) if b.name == "mine"]
    return mine.params[0].max


def test_each_job_deploys_its_own_blueprint_of_a_shared_name(client, worker_stub, db_path):
    worker_stub.Attach(_with_mine("run-a", 8))
    worker_stub.Attach(_with_mine("run-b", 4))  # replaced run-a's "mine" before
    worker_stub.Attach(attach_request("run-c"))
    assert (_rank_max(client, "run-a"), _rank_max(client, "run-b")) == (8, 4)
    assert client.submit(deploy("encoder.fc1", "mine", job="run-a", params={"rank": 6})).record.command.job_id
    with pytest.raises(NarsetError) as too_big:
        client.submit(deploy("encoder.fc1", "mine", job="run-b", params={"rank": 6}))
    assert (too_big.value.reason, too_big.value.field) == (
        reasons.BLUEPRINT_DOES_NOT_FIT,
        "deploy.blueprint_params.rank",
    )
    with pytest.raises(NarsetError) as unknown:
        client.submit(deploy("encoder.fc1", "mine", job="run-c"))
    assert unknown.value.reason == reasons.BLUEPRINT_NOT_FOUND
    assert unknown.value.details.endswith(f"(known: {', '.join(BUILTINS)})")  # no other job's "mine"
    assert [b.name for b in client.list_blueprints()] == BUILTINS  # no job named: the built-ins alone
    assert [b.name for b in client.list_blueprints("run-c")] == BUILTINS
    assert sorted(b.name for b in client.list_blueprints("run-a")) == sorted([*BUILTINS, "mine"])
    assert len(stored_blueprints(db_path, "mine")) == 2


def test_a_policy_may_name_only_blueprints_its_job_sees(client, operator_stub, worker_stub):
    worker_stub.Attach(_with_mine("run-a", 8))
    worker_stub.Attach(attach_request("run-c"))
    for job_id in ("run-a", "run-c"):
        policy = client.get_policy(job_id)
        policy.auto.enabled, policy.auto.blueprint = True, "mine"
        request = operator_service_pb2.SetPolicyRequest(job_id=job_id, policy=policy)
        if job_id == "run-a":
            assert operator_stub.SetPolicy(request).policy.auto.blueprint == "mine"
        else:
            with pytest.raises(grpc.RpcError) as error:
                operator_stub.SetPolicy(request)
            assert_refusal(
                error.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.INVALID_FIELD, "policy.auto.blueprint"
            )


def test_narset_blueprints_lists_a_jobs_own(server, worker_stub, capsys):
    worker_stub.Attach(_with_mine("run-a", 8))
    assert main(["blueprints", "run-a", "--server", server.address]) == 0
    assert "mine" in capsys.readouterr().out
    assert main(["blueprints", "--server", server.address]) == 0
    assert "mine" not in capsys.readouterr().out
    assert main(["blueprints", "no-such-job", "--server", server.address]) == 3  # refused: NOT_FOUND
