"""`narset demo`: the whole loop on one machine, no setup.

Starts an embedded Narset (`narset serve` as a child process on a free loopback port, temporary
database), trains a real model on scikit-learn's bundled digits (8x8 images, 10 classes) with a
KasminaWorker attached, turns the tactical policy on so that Narset deploys a scaffold by itself at
a plateau, shows every boundary, and ends with the comparison against a baseline trained without
Kasmina: test accuracy and probe loss, fold parity at the exit, per-step overhead while the
scaffold lived. torch, scikit-learn and kasmina_worker are imported only when the demo runs.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoConfig:
    steps_per_boundary: int = 20
    """Full-batch training steps between two checkpoint boundaries."""
    max_boundaries: int = 40
    """Stop here even if no scaffold has left yet."""
    after_exit: int = 3
    """Boundaries to keep training after the scaffold's exit."""
    hidden: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps_per_boundary", "max_boundaries", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(slots=True)
class Row:
    boundary: int
    step: int
    train_loss: float
    probe_loss: float | None
    scaffolds: list[dict] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    step_ms: float = 0.0


def _data(seed: int):
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    return (x[:1100], y[:1100]), (x[1100:1400], y[1100:1400]), (x[1400:], y[1400:])


def _model(hidden: int, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _evaluate(model, x, y) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        logits = model(x)
        return float(torch.nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def _train_baseline(config: DemoConfig, steps: int, data) -> object:
    """The same model, data and optimiser for the same steps, without Kasmina."""
    import torch

    (train_x, train_y), _, _ = data
    model = _model(config.hidden, config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def _auto_policy(address: str, job: str) -> None:
    from narset.client import NarsetClient
    from narset.v1 import command_pb2

    with NarsetClient(address) as client:
        policy = client.get_policy(job)
        auto = policy.auto
        auto.enabled = True
        auto.blueprint = "lora"
        auto.plateau_window = 3
        auto.plateau_rel_delta = 0.02
        auto.blueprint_params["rank"] = 16
        auto.scaffold_policy.CopyFrom(
            command_pb2.ScaffoldPolicy(
                ttl_ckpts=8, schedule=command_pb2.AlphaSchedule(warmup_ckpts=2, hold_ckpts=6, decay_ckpts=0)
            )
        )
        client.set_policy(job, policy)


def _decisions(address: str, job: str) -> list[dict]:
    from narset.cli.render import to_dict
    from narset.client import NarsetClient

    with NarsetClient(address) as client:
        return [to_dict(d) for d in client.list_decisions(job)]


def run_demo(config: DemoConfig, as_json: bool = False) -> dict:
    import torch
    from torch import nn

    from kasmina_worker import KasminaWorker
    from narset.server.launch import ServeProcess
    from narset.server.logs import configure_logging
    from narset.v1.telemetry_pb2 import CommandOutcome

    configure_logging("warning", "console")  # progress is the demo's own output; logs only for trouble

    say = (lambda *_: None) if as_json else (lambda text: print(text, flush=True))
    data = _data(config.seed)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = data
    job = "digits-demo"
    with tempfile.TemporaryDirectory(prefix="narset-demo-") as tmp:
        server = ServeProcess(Path(tmp) / "narset.db", log_level="warning")
        say(f"Narset listening on {server.address} (database in {tmp})")
        try:
            model = _model(config.hidden, config.seed)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            probe = [(val_x, val_y)]
            worker = KasminaWorker(
                model,
                optimizer,
                job=job,
                narset=server.address,
                probe=probe,
                loss_fn=nn.functional.cross_entropy,
                regions={"input": ["0"], "hidden": ["2"], "output": ["4"]},
            )
            rows, exit_at, parity, deploy_at = [], None, None, None
            step, live_ms, idle_ms = 0, [], []
            worker.checkpoint(step=0)  # attach and report the starting point
            _auto_policy(server.address, job)
            say(f"{'BOUNDARY':>8} {'STEP':>5} {'TRAIN':>7} {'PROBE':>7}  SCAFFOLDS / DECISIONS")
            for _ in range(config.max_boundaries):
                started = time.perf_counter()
                for _ in range(config.steps_per_boundary):
                    loss = worker.step_loss(nn.functional.cross_entropy(worker.model(train_x), train_y))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                step_ms = (time.perf_counter() - started) * 1000 / config.steps_per_boundary
                (live_ms if worker.scaffolds else idle_ms).append(step_ms)
                summary = worker.checkpoint(step=step, metrics={"val_loss": _evaluate(model, val_x, val_y)[0]})
                row = Row(summary.boundary, step, float(loss), summary.probe_loss, step_ms=step_ms)
                for s in summary.scaffolds:
                    gates = summary.gates.get(s.scaffold_id)
                    measured = {f.name: round(v, 5) for f, v in gates.ListFields()} if gates is not None else {}
                    stage = s.stage.removeprefix("SCAFFOLD_STAGE_")
                    row.scaffolds.append(
                        {
                            "id": s.scaffold_id,
                            "module": s.module,
                            "stage": stage,
                            "alpha": round(s.alpha, 4),
                            "gates": measured,
                        }
                    )
                    if stage in ("FUSED", "PRUNED") and exit_at is None:
                        exit_at = summary.boundary
                        # The worker measured the fold itself; nothing extra runs between steps,
                        # so the job's own step-time gate (G5) sees only training.
                        if stage == "FUSED" and gates is not None and gates.HasField("foldability"):
                            parity = 1.0 - gates.foldability
                    if deploy_at is None and stage not in ("FUSED", "PRUNED"):
                        deploy_at = summary.boundary
                row.decisions = [
                    f"{r.command_id}: {CommandOutcome.Name(r.outcome).removeprefix('COMMAND_OUTCOME_')} {r.message}"
                    for r in summary.results
                ]
                rows.append(row)
                say(_progress(row))
                if exit_at is not None and summary.boundary >= exit_at + config.after_exit:
                    break
            worker.close()
            decisions = _decisions(server.address, job)
        finally:
            server.terminate()
    baseline = _train_baseline(config, step, data)
    result = _result(config, rows, decisions, model, baseline, data, parity, live_ms, idle_ms, deploy_at, exit_at)
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_result(result)
    return result


def _progress(row: Row) -> str:
    probe = f"{row.probe_loss:7.4f}" if row.probe_loss is not None else "      -"
    parts = [f"{s['module']}:{s['stage']}@{s['alpha']:.3f}" for s in row.scaffolds]
    gates = [
        " ".join(f"{k}={v}" for k, v in s["gates"].items() if k != "probe_loss") for s in row.scaffolds if s["gates"]
    ]
    text = f"{row.boundary:>8} {row.step:>5} {row.train_loss:7.4f} {probe}  {' '.join(parts)}"
    if gates:
        text += f"\n{'':>31}gates: {'; '.join(gates)}"
    for decision in row.decisions:
        text += f"\n{'':>31}{decision}"
    return text


def _result(config, rows, decisions, model, baseline, data, parity, live_ms, idle_ms, deploy_at, exit_at) -> dict:
    _, (val_x, val_y), (test_x, test_y) = data
    with_loss, with_acc = _evaluate(model, test_x, test_y)
    base_loss, base_acc = _evaluate(baseline, test_x, test_y)
    return {
        "config": asdict(config),
        "deployed_at_boundary": deploy_at,
        "exit_at_boundary": exit_at,
        "boundaries": [asdict(r) for r in rows],
        "decisions": decisions,
        "comparison": {
            "baseline": {
                "test_accuracy": base_acc,
                "test_loss": base_loss,
                "probe_loss": _evaluate(baseline, val_x, val_y)[0],
            },
            "with_scaffold": {
                "test_accuracy": with_acc,
                "test_loss": with_loss,
                "probe_loss": _evaluate(model, val_x, val_y)[0],
            },
            "fold_parity_rel_change": parity,
            "step_ms_idle": statistics.median(idle_ms) if idle_ms else None,
            "step_ms_scaffold_live": statistics.median(live_ms) if live_ms else None,
        },
    }


def _print_result(result: dict) -> None:
    from narset.cli.render import print_table

    print()
    for decision in result["decisions"]:
        outcome = decision["outcome"].removeprefix("DECISION_OUTCOME_")
        who = f"{decision['scaffold_id']} ({decision['issued_by']})"
        print(f"decision at boundary {decision['boundary']}: {outcome} {who}: {decision['reason']}")
    c = result["comparison"]
    rows = [
        [
            "baseline host (no Kasmina)",
            f"{c['baseline']['test_accuracy']:.4f}",
            f"{c['baseline']['test_loss']:.4f}",
            f"{c['baseline']['probe_loss']:.4f}",
        ],
        [
            "host after the scaffold's exit",
            f"{c['with_scaffold']['test_accuracy']:.4f}",
            f"{c['with_scaffold']['test_loss']:.4f}",
            f"{c['with_scaffold']['probe_loss']:.4f}",
        ],
    ]
    print()
    print_table(["MODEL", "TEST ACCURACY", "TEST LOSS", "PROBE LOSS"], rows)
    print()
    parity = c["fold_parity_rel_change"]
    idle, live = c["step_ms_idle"], c["step_ms_scaffold_live"]
    print(f"fold parity (relative change of the site output at the fold): {'-' if parity is None else f'{parity:.2e}'}")
    if idle and live:
        print(f"median step time: {idle:.2f} ms idle, {live:.2f} ms with the scaffold live ({live / idle:.3f}x)")
