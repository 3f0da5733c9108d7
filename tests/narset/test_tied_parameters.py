"""Narset refuses a deploy on a module whose parameters another module shares, by its own reason code."""

from __future__ import annotations

import grpc
import pytest
from narset_testing import assert_refusal, attach_request, deploy
from torch import nn

from kasmina_worker.link.registration import host_modules
from narset.client import NarsetError
from narset.contract import reasons
from narset.v1 import operator_service_pb2


class Readout(nn.Module):
    """A block with known feature sizes around a head."""

    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.in_features, self.out_features = width, vocab
        self.head = nn.Linear(width, vocab, bias=False)


class TiedLM(nn.Module):
    """An embedding, a hidden layer and a head whose weight is the embedding's (tied, as in GPT-2)."""

    def __init__(self, vocab: int = 10, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.out = Readout(width, vocab)
        self.out.head.weight = self.embed.weight


def test_deploy_on_a_tied_module_is_refused_and_an_untied_one_accepted(worker_stub, operator_stub, client):
    """With the catalogue the worker sends at attach, a deploy on the tied head is refused as PARAMETER_TIED
    naming deploy.module and the embedding's name, as is a residual_mlp on the block holding the head; the untied
    hidden layer takes the same deploy."""
    request = attach_request("tied")
    del request.modules[:], request.regions[:]
    request.modules.extend(host_modules(TiedLM()))
    worker_stub.Attach(request)
    command = deploy("out.head", job="tied")
    with pytest.raises(NarsetError) as refused:
        client.submit(command)
    assert (refused.value.reason, refused.value.field) == (reasons.PARAMETER_TIED, "deploy.module")
    assert "embed.weight" in refused.value.details
    with pytest.raises(grpc.RpcError) as raw:
        operator_stub.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=command))
    assert_refusal(raw.value, grpc.StatusCode.INVALID_ARGUMENT, reasons.PARAMETER_TIED, "deploy.module")
    with pytest.raises(NarsetError) as refused:
        client.submit(deploy("out", "residual_mlp", job="tied"))
    assert refused.value.reason == reasons.PARAMETER_TIED and "out.head.weight (also embed.weight)" in (
        refused.value.details
    )
    assert client.submit(deploy("hidden", job="tied")).record.command.deploy.module == "hidden"
