"""Probe and gates on dict batches with a user `batch_loss(model, batch)`, the `(x, y)` form unchanged."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hf_testing import lm_batch, lm_loss, tiny_gpt2
from kasmina_testing import MLP, batch, deploy, on, result_ok, schedule, train

from kasmina_worker import KasminaWorker
from kasmina_worker.worker import WorkerConfig

HOLD = schedule(warmup_ckpts=1, hold_ckpts=6)


def _pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch(900 + i, (16, 12), 6) for i in range(3)]


def _lifecycle(form: str) -> list:
    """Train an MLP, deploy a LoRA on fc1, measure, fold; the summaries of the three boundaries."""
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    clock = itertools.count(0.0, 0.25).__next__  # the same step times in both runs
    if form == "pair":
        config = WorkerConfig(clock=clock)
        worker = KasminaWorker(model, optimizer, job="probe", probe=_pairs(), loss_fn=F.mse_loss, config=config)
    else:
        probe = [{"inputs": x, "labels": y} for x, y in _pairs()]
        config = WorkerConfig(clock=clock, batch_loss=lambda m, b: F.mse_loss(m(b["inputs"]), b["labels"]))
        worker = KasminaWorker(model, optimizer, job="probe", probe=probe, config=config)
    train(worker, optimizer, 4)
    worker.submit(deploy("fc1", "lora", command_id="lora", blueprint_params={"rank": 2}, policy=HOLD))
    summaries = [worker.checkpoint(step=4)]
    train(worker, optimizer, 6, start=4)
    summaries.append(worker.checkpoint(step=10))
    worker.submit(on("fold", command_id="fold", scaffold_id="lora"))
    summaries.append(worker.checkpoint(step=10))
    result_ok(summaries[0])
    result_ok(summaries[2])
    return summaries


def _measured(summary) -> dict[str, bytes]:
    """The summary's gates without `memory_fraction` (the process's RSS, which moves between runs)."""
    gates = {}
    for sid, telemetry in summary.gates.items():
        copy = type(telemetry)()
        copy.CopyFrom(telemetry)
        copy.ClearField("memory_fraction")
        gates[sid] = copy.SerializeToString()
    return gates


def test_dict_batches_measure_exactly_what_pairs_measure():
    """The same data as dicts with `batch_loss` gives the same probe losses, gates and fold parity as `(x, y)` pairs."""
    pairs, dicts = _lifecycle("pair"), _lifecycle("dict")
    for a, b in zip(pairs, dicts, strict=True):
        assert a.probe_loss == b.probe_loss
        assert _measured(a) == _measured(b)
    measured = dicts[1].gates["lora"]
    assert all(measured.HasField(gate) for gate in ("probe_loss", "transfer_rel_delta", "foldability", "diversity"))
    assert dicts[2].gates["lora"].HasField("foldability")  # the fold's parity, from the dicts' site inputs
    assert dicts[2].results[0].message == pairs[2].results[0].message


def test_hf_batches_with_attention_mask_and_labels_drive_probe_gates_and_fold():
    """A GPT-2 probe of dict batches (padding masked) reports the model's own LM loss and measures G1/G3 at a
    LoRA on c_attn; the fold's parity is measured on the site inputs those batches give."""
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probe = [lm_batch(100 + i) for i in range(2)]
    worker = KasminaWorker(model, optimizer, job="hf", probe=probe, config=WorkerConfig(batch_loss=lm_loss))
    model.eval()
    with torch.no_grad():
        expected = float(torch.stack([model(**b).loss for b in probe]).mean())
    model.train()
    assert worker.probe_loss() == pytest.approx(expected, rel=1e-6)
    site = "transformer.h.0.attn.c_attn"
    worker.submit(deploy(site, "lora", command_id="lora", blueprint_params={"rank": 2}, policy=HOLD))
    result_ok(worker.checkpoint(step=0))
    for step in range(3):
        loss = worker.step_loss(lm_loss(worker.model, lm_batch(step)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    summary = worker.checkpoint(step=3)
    gates = summary.gates["lora"]
    assert gates.probe_loss == summary.probe_loss != expected  # measured on the model as trained, scaffold live
    assert abs(gates.transfer_rel_delta) < 1e-5 and gates.foldability > 1.0 - 1e-5  # a LoRA folds exactly
    worker.submit(on("fold", command_id="fold", scaffold_id="lora"))
    folded = worker.checkpoint(step=3)
    result_ok(folded)
    assert folded.gates["lora"].foldability > 1.0 - 1e-5


def test_dict_batches_without_batch_loss_are_refused_naming_the_batch():
    """A dict probe batch with the pair-only `loss_fn` (or none) is a ValueError naming the batch and the fix."""
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = [batch(0, (4, 12), 6), {"inputs": torch.zeros(4, 12)}]
    for loss_fn in (F.mse_loss, None):
        with pytest.raises(ValueError, match=r"probe batch 1 is a dict.*batch_loss"):
            KasminaWorker(model, optimizer, job="bad", probe=probe, loss_fn=loss_fn)


def test_loss_fn_and_batch_loss_together_are_refused():
    """Both a pair `loss_fn` and `config.batch_loss` is ambiguous: a ValueError naming both."""
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = WorkerConfig(batch_loss=lambda m, b: m(b[0]).sum())
    with pytest.raises(ValueError, match="loss_fn .* config.batch_loss"):
        KasminaWorker(model, optimizer, job="both", probe=_pairs(), loss_fn=F.mse_loss, config=config)
