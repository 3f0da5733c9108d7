"""A small training job with scaffolds, run whole or split at a boundary across two processes.

`python resume_job.py all OUT` trains uninterrupted; `first DIR` trains to SAVE_AT and saves the
model, optimiser and worker state; `second DIR OUT` loads them in a fresh process and finishes.
OUT receives the final parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from kasmina_testing import MLP, batch, deploy, on, schedule

from kasmina_worker import KasminaWorker
from narset.v1 import command_pb2

BOUNDARIES = 10
STEPS_PER_BOUNDARY = 3
SAVE_AT = 4


def _commands(boundary: int):
    """The operator's plan: what is submitted before each boundary's checkpoint call."""
    if boundary == 1:
        weaning = schedule(warmup_ckpts=1, hold_ckpts=1, decay_ckpts=4)
        weaning.teaching.site_distill_weight = 0.5
        # A frozen host at a scaled seed rate: the resume restores the host's flags and the seed group.
        frozen = schedule(warmup_ckpts=2, hold_ckpts=6)
        frozen.host_mode = command_pb2.HOST_MODE_FROZEN
        frozen.lr_scale = 0.5
        return [
            deploy("fc1", "lora", command_id="lora", blueprint_params={"rank": 3}, policy=frozen),
            deploy("fc2", "residual_mlp", command_id="mlp", blueprint_params={"hidden": 5}, policy=weaning),
        ]
    if boundary == 6:
        return [on("fold", command_id="fold-lora", scaffold_id="lora")]
    if boundary == 8:
        return [on("prune", command_id="prune-mlp", scaffold_id="mlp")]
    return []


def _job():
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    worker = KasminaWorker(model, optimizer, job="resume")
    return model, optimizer, worker


def _train(worker, optimizer, start: int, stop: int, save_dir: Path | None = None) -> None:
    for boundary in range(start, stop + 1):
        for step in range((boundary - 1) * STEPS_PER_BOUNDARY, boundary * STEPS_PER_BOUNDARY):
            x, y = batch(step, (8, 12), 6)
            loss = worker.step_loss(F.mse_loss(worker.model(x), y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for command in _commands(boundary):
            worker.submit(command)
        worker.checkpoint(step=boundary * STEPS_PER_BOUNDARY)
        if save_dir is not None and boundary == SAVE_AT:
            torch.save(worker._root.state_dict(), save_dir / "model.pt")
            torch.save(optimizer.state_dict(), save_dir / "optimizer.pt")
            torch.save(worker.state_dict(), save_dir / "worker.pt")
            return


def main(argv: list[str]) -> None:
    mode = argv[0]
    model, optimizer, worker = _job()
    if mode == "all":
        _train(worker, optimizer, 1, BOUNDARIES)
        out = Path(argv[1])
    elif mode == "first":
        _train(worker, optimizer, 1, BOUNDARIES, save_dir=Path(argv[1]))
        return
    else:
        directory, out = Path(argv[1]), Path(argv[2])
        # Save/load order: worker state first (rebuilds the tree), then model (strict), then optimiser.
        worker.load_state_dict(torch.load(directory / "worker.pt", weights_only=True))
        model.load_state_dict(torch.load(directory / "model.pt", weights_only=True), strict=True)
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        assert worker.boundary == SAVE_AT
        _train(worker, optimizer, SAVE_AT + 1, BOUNDARIES)
    assert worker.applied_command_ids == ("lora", "mlp", "fold-lora", "prune-mlp"), worker.applied_command_ids
    torch.save(model.state_dict(), out)


if __name__ == "__main__":
    main(sys.argv[1:])
