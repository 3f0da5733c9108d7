"""The evidence harness (issue 11 item 5): does a scaffold leave a better host than training without one?

    python benchmarks/ml_effect.py          # the full study: its section of docs/evidence.md, docs/ml_effect_curves.png
    python benchmarks/ml_effect.py --quick  # digits MLP only, 2 seeds, short runs (under a minute), to a temp dir
    python benchmarks/ml_effect.py --json   # also print the raw results as one JSON document on stdout

Three offline tasks (a digits MLP, a digits conv net with BatchNorm, a char-level transformer LM on
Python's own standard-library source), each trained from the same initialisation and batch order
per seed under every condition: the baseline without Kasmina, every built-in blueprint that fits
the task's hosts with its default policy (deployed through a real embedded Narset, which decides
the exit from the gates), and one "best guess" (full-rank LoRA folded at a set boundary by the
harness). Every condition runs at every learning rate of the same grid; the rate is chosen per
condition on the validation split, so the retuned comparison is like for like. The generated
document states the method in full; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from multiprocessing import get_context
from pathlib import Path

import evidence_doc  # benchmarks/evidence_doc.py, beside this script
import torch
import torch.nn.functional as F
from torch import nn

from kasmina_worker import BoundarySummary, KasminaWorker, blueprint_names
from narset.v1 import command_pb2, telemetry_pb2
from narset_demo.digits import DigitsMLP, digits_split

Batch = tuple[torch.Tensor, torch.Tensor]

REPO = Path(__file__).resolve().parent.parent
# Concatenated in this order; a fixed list so that the corpus is the same on every run of one Python.
LM_SOURCES = ("argparse.py", "difflib.py", "textwrap.py", "heapq.py", "fractions.py", "functools.py")
ENDED = ("SCAFFOLD_STAGE_FUSED", "SCAFFOLD_STAGE_PRUNED")
# docs/evidence.md holds one marked section per benchmark (benchmarks/decision_quality.py writes another).
START, END = "<!-- ml-effect:start -->", "<!-- ml-effect:end -->"
# Do no harm (issue 11's acceptance): vs the same-hyperparameter baseline, the 95% interval of the paired test
# accuracy difference lies above -0.3 pp, or that of the test-loss difference below +1% of the baseline's loss.
HARM_ACC_PP, HARM_LOSS_REL = -0.3, 0.01


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskConfig:
    name: str
    base_lr: float
    """Adam learning rate of the same-hyperparameter baseline; the grid is this times `lr_factors`."""
    batch: int
    steps_per_boundary: int
    intervals: int
    """Training intervals; boundary k (1-based) is at step (k - 1) * steps_per_boundary, the last one at the end."""
    hosts: tuple[str, ...]
    """The host modules every scaffolded condition deploys on (one region each)."""
    base_lr_seeds: int = 0
    """More seeds run at the base rate only: the same-hyperparameter comparison (the do-no-harm bound) pairs over
    the study's seeds and these. A scaffold that changes the training path moves a seed's test accuracy by about
    half a point either way, so a bound of -0.3 pp needs more pairs than the choice of a rate does; as many as
    the task's cost allows."""

    @property
    def last_boundary(self) -> int:
        return self.intervals + 1


@dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    name: str
    blueprint: str | None = None
    """None: the baseline, trained without Kasmina."""
    full_rank: bool = False
    """LoRA at rank min(in, out) of each host (the best guess)."""
    fold_at: int | None = None
    """The boundary at which the harness folds the scaffolds itself; None: Narset decides every exit."""

    @property
    def narset_decides(self) -> bool:
        return self.blueprint is not None and self.fold_at is None


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyConfig:
    tasks: tuple[TaskConfig, ...]
    seeds: tuple[int, ...]
    """Seeds run at every rate of the grid: the learning-rate choice and the retuned comparison."""
    lr_factors: tuple[float, ...] = (0.25, 1.0, 4.0)
    deploy_at: int = 2
    """Boundary 1 (step 0) attaches the job; a deploy submitted then is applied at boundary 2. Deploying before
    any training step would leave the step-time gate (G5) without its pre-deploy baseline, which Narset fails."""
    best_guess_fraction: float = 5 / 6
    """The best guess folds at this fraction of the run (step 500 of 600 on digits, docs/design.md, section 4)."""
    workers: int = 2
    quick: bool = False

    def best_guess_fold_at(self, task: TaskConfig) -> int:
        return 1 + round(task.intervals * self.best_guess_fraction)


# One learning-rate grid for every task, 1e-3 / 4e-3 / 1.6e-2 (the rates of the simulation in docs/design.md
# section 4); it brackets the baselines' best rate on digits. The LM is sized to keep the study within 20 minutes.
FULL_TASKS = (
    TaskConfig(
        name="digits-mlp",
        base_lr=4e-3,
        batch=64,
        steps_per_boundary=20,
        intervals=30,
        hosts=("fc1", "fc2"),
        base_lr_seeds=15,
    ),
    TaskConfig(
        name="digits-conv",
        base_lr=4e-3,
        batch=64,
        steps_per_boundary=20,
        intervals=30,
        hosts=("conv1", "conv2"),
        base_lr_seeds=15,
    ),
    TaskConfig(
        name="char-lm",
        base_lr=4e-3,
        batch=16,
        steps_per_boundary=12,
        intervals=30,
        hosts=("blocks.0.fc1", "blocks.1.fc1"),
    ),
)
# The default policies need 22 intervals to exit in the worst case: deploy at boundary 2, end of life at 14,
# two PERSIST extensions of 3, a 2-boundary sunset.
QUICK_TASKS = (replace(FULL_TASKS[0], steps_per_boundary=4, intervals=24, base_lr_seeds=0),)


def study_config(quick: bool, workers: int) -> StudyConfig:
    if quick:
        return StudyConfig(tasks=QUICK_TASKS, seeds=(0, 1), workers=workers, quick=True)
    return StudyConfig(tasks=FULL_TASKS, seeds=tuple(range(5)), workers=workers)


def conditions(config: StudyConfig, task: TaskConfig, fits: dict[str, str]) -> list[Condition]:
    """The baseline, each fitting blueprint at its default policy, and the best guess when LoRA fits."""
    runnable = [Condition(name="baseline")]
    runnable += [Condition(name=name, blueprint=name) for name, refusal in fits.items() if not refusal]
    if not fits.get("lora"):
        runnable.append(
            Condition(name="best-guess", blueprint="lora", full_rank=True, fold_at=config.best_guess_fold_at(task))
        )
    return runnable


# ---- data and models -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskData:
    sample: Callable[[torch.Generator, int], Batch]
    """A training batch drawn with the run's own generator (so the batch order is the seed's)."""
    val: list[Batch]
    test: list[Batch]
    vocab: int = 0


def _classification(train: Batch, val: Batch, test: Batch) -> TaskData:
    train_x, train_y = train

    def sample(g: torch.Generator, batch: int) -> Batch:
        index = torch.randperm(len(train_x), generator=g)[:batch]
        return train_x[index], train_y[index]

    return TaskData(sample=sample, val=[val], test=[test])


def _windows(tokens: torch.Tensor, context: int, limit: int | None, batch: int) -> list[Batch]:
    """Non-overlapping (input, next-char target) windows, in order, grouped into batches."""
    count = (len(tokens) - 1) // context if limit is None else min(limit, (len(tokens) - 1) // context)
    starts = torch.arange(count) * context
    x = torch.stack([tokens[s : s + context] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1 : s + 1 + context] for s in starts.tolist()])
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, count, batch)]


def _char_lm(context: int = 64) -> TaskData:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "\n".join((stdlib / name).read_text(encoding="utf-8") for name in LM_SOURCES)
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    # Contiguous 80 / 10 / 10 split: no window of validation or test text was seen in training.
    a, b = int(0.8 * len(tokens)), int(0.9 * len(tokens))
    train = tokens[:a]

    def sample(g: torch.Generator, batch: int) -> Batch:
        starts = torch.randint(0, len(train) - context - 1, (batch,), generator=g)
        x = torch.stack([train[s : s + context] for s in starts.tolist()])
        y = torch.stack([train[s + 1 : s + 1 + context] for s in starts.tolist()])
        return x, y

    # 64 validation windows (4096 characters): also the worker's probe set, so kept small (it runs every boundary).
    val = _windows(tokens[a:b], context, limit=64, batch=64)
    return TaskData(sample=sample, val=val, test=_windows(tokens[b:], context, limit=None, batch=64), vocab=len(vocab))


@cache
def task_data(name: str) -> TaskData:
    if name == "char-lm":
        return _char_lm()
    train, val, test = digits_split()
    if name == "digits-conv":
        train, val, test = ((x.view(-1, 1, 8, 8), y) for x, y in (train, val, test))
    return _classification(train, val, test)


class DigitsConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(F.max_pool2d(x, 2))))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP; every projection an `nn.Linear` (scaffold hosts)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharLM(nn.Module):
    def __init__(self, vocab: int, width: int = 64, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position.weight[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def build_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the same host initialisation for every condition of a seed
    if name == "digits-mlp":
        return DigitsMLP()
    if name == "digits-conv":
        return DigitsConv()
    return CharLM(task_data(name).vocab)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for both a class per sample ([N, C]) and a char per position ([B, T, V])."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch]) -> tuple[float, float]:
    """(mean loss, accuracy) per sample (per character for the LM), in eval mode."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches:
        out = model(x)
        total_loss += float(loss_fn(out, y)) * y.numel()
        correct += int((out.argmax(-1) == y).sum())
        count += y.numel()
    model.train(was_training)
    return total_loss / count, correct / count


# ---- one training run ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class RunSpec:
    task: TaskConfig
    condition: Condition
    lr: float
    seed: int
    deploy_at: int
    narset: str | None

    @property
    def job(self) -> str:
        return f"{self.task.name}.{self.condition.name}.lr{self.lr:g}.s{self.seed}"


@dataclass(slots=True)
class ScaffoldLife:
    scaffold_id: str
    module: str
    deployed_at: int
    exit_at: int | None = None
    exit: str | None = None
    """FUSED or PRUNED; None while live."""


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    scaffold_id: str
    boundary: int
    outcome: str
    reason: str
    failed_gates: list[str]


@dataclass(slots=True)
class RunResult:
    task: str
    condition: str
    lr: float
    seed: int
    test_loss: float = math.nan
    test_acc: float = math.nan
    val_loss: float = math.nan
    """At the last boundary, after every exit: the learning-rate selection criterion for the LM."""
    val_acc: float = math.nan
    """At the last boundary: the selection criterion for the classifiers."""
    boundary_steps: list[int] = field(default_factory=list)
    val_curve: list[float] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)
    """Mean training loss (without teaching terms) of each interval."""
    interval_ms: list[float] = field(default_factory=list)
    """Wall clock of each interval's training steps (boundaries excluded), per step."""
    live: list[bool] = field(default_factory=list)
    """Whether a scaffold was live during each interval."""
    attach_s: float = 0.0
    """Boundary 1: where a Narset-attached job waits for its link process to start and attaches."""
    wall_s: float = 0.0
    """The run after boundary 1 to its end, boundaries (gates, Narset exchange, evaluation) included."""
    scaffolds: list[ScaffoldLife] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    safety_events: list[str] = field(default_factory=list)
    live_at_end: int = 0


def _rank(module: nn.Module) -> int:
    """Full rank of the host's weight as a matrix: min(in, out), a Conv2d's input being its k×k patches."""
    if isinstance(module, nn.Conv2d):
        patch = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return min(patch, module.out_channels)
    return min(module.in_features, module.out_features)


def _deploys(spec: RunSpec, model: nn.Module) -> list[command_pb2.AdaptationCommand]:
    condition = spec.condition
    commands = []
    for host in spec.task.hosts:
        # Scaffold ids unique across the study's jobs: Narset derives its decision ids from the scaffold id alone.
        deploy = command_pb2.DeployAction(module=host, blueprint=condition.blueprint, scaffold_id=f"{spec.job}:{host}")
        if condition.full_rank:
            deploy.blueprint_params["rank"] = _rank(model.get_submodule(host))
        if condition.fold_at is not None:
            ttl = condition.fold_at - spec.deploy_at
            # Alpha at the micro warm level (0.5) from the deploy on, held to the fold; seed lr = the host's.
            deploy.policy.CopyFrom(
                command_pb2.ScaffoldPolicy(
                    ttl_ckpts=ttl,
                    schedule=command_pb2.AlphaSchedule(warmup_ckpts=1, hold_ckpts=ttl - 1, decay_ckpts=0),
                    lr_scale=1.0,
                )
            )
        commands.append(
            command_pb2.AdaptationCommand(command_id=f"{spec.job}.deploy.{host}", job_id=spec.job, deploy=deploy)
        )
    return commands


def _fold(spec: RunSpec, host: str) -> command_pb2.AdaptationCommand:
    return command_pb2.AdaptationCommand(
        command_id=f"{spec.job}.fold.{host}", fold=command_pb2.FoldAction(scaffold=command_pb2.ScaffoldRef(module=host))
    )


def _record_boundary(result: RunResult, summary: BoundarySummary, lives: dict[str, ScaffoldLife]) -> None:
    for s in summary.scaffolds:
        life = lives.setdefault(s.scaffold_id, ScaffoldLife(s.scaffold_id, s.module, summary.boundary))
        if s.stage in ENDED:
            life.exit_at, life.exit = summary.boundary, s.stage.removeprefix("SCAFFOLD_STAGE_")
    result.rejected += [
        f"b{r.boundary} {r.command_id}: {r.message}"
        for r in summary.results
        if r.outcome == telemetry_pb2.COMMAND_OUTCOME_REJECTED
    ]
    result.safety_events += [f"{e.scaffold_id}: {e.kind} at step {e.step} ({e.detail})" for e in summary.events]


def _submit_to_narset(spec: RunSpec, commands: list[command_pb2.AdaptationCommand], result: RunResult) -> None:
    from narset.client import NarsetClient, NarsetError

    with NarsetClient(spec.narset) as client:
        for command in commands:
            try:
                client.submit(command)
            except NarsetError as error:
                result.rejected.append(f"narset refused {command.command_id}: {error}")


def _decisions(spec: RunSpec) -> list[DecisionRecord]:
    from narset.client import NarsetClient

    with NarsetClient(spec.narset) as client:
        return [
            DecisionRecord(
                scaffold_id=d.scaffold_id,
                boundary=d.boundary,
                outcome=telemetry_pb2.DecisionOutcome.Name(d.outcome).removeprefix("DECISION_OUTCOME_"),
                reason=d.reason,
                failed_gates=[v.gate for v in d.verdicts if not v.passed],
            )
            for d in client.list_decisions(spec.job)
        ]


def _train_interval(
    spec: RunSpec,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    worker: KasminaWorker | None,
    data: TaskData,
    g: torch.Generator,
) -> tuple[float, float]:
    """One interval of training steps; returns (ms per step, mean training loss)."""
    net = worker.model if worker is not None else model
    total = torch.zeros(())
    started = time.perf_counter()
    for _ in range(spec.task.steps_per_boundary):
        x, y = data.sample(g, spec.task.batch)
        loss = loss_fn(net(x), y)
        total += loss.detach()
        if worker is not None:
            loss = worker.step_loss(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed_ms = (time.perf_counter() - started) * 1e3
    return elapsed_ms / spec.task.steps_per_boundary, float(total) / spec.task.steps_per_boundary


def _submit_after(spec: RunSpec, k: int, worker: KasminaWorker, model: nn.Module, result: RunResult) -> None:
    """The commands due at boundary k + 1: the deploys (through Narset, or local), the best guess's folds."""
    if k == spec.deploy_at - 1:
        deploys = _deploys(spec, model)
        if spec.condition.narset_decides:
            _submit_to_narset(spec, deploys, result)
        else:
            for command in deploys:
                worker.submit(command)
    if k == (spec.condition.fold_at or 0) - 1:
        for host in spec.task.hosts:
            worker.submit(_fold(spec, host))


def _worker(spec: RunSpec, model: nn.Module, optimizer: torch.optim.Optimizer, data: TaskData) -> KasminaWorker | None:
    if spec.condition.blueprint is None:
        return None  # the baseline trains without Kasmina
    return KasminaWorker(
        model,
        optimizer,
        job=spec.job,
        narset=spec.narset if spec.condition.narset_decides else None,
        probe=data.val,
        loss_fn=loss_fn,
        regions={host: [host] for host in spec.task.hosts},
    )


def run(spec: RunSpec) -> RunResult:
    """Train one (task, condition, lr, seed) and evaluate the host on the test split at the end."""
    data = task_data(spec.task.name)
    model = build_model(spec.task.name, spec.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    batches = torch.Generator().manual_seed(spec.seed)  # the same batch order for every condition of a seed
    result = RunResult(task=spec.task.name, condition=spec.condition.name, lr=spec.lr, seed=spec.seed)
    worker = _worker(spec, model, optimizer, data)
    lives: dict[str, ScaffoldLife] = {}
    started = time.perf_counter()
    for k in range(1, spec.task.last_boundary + 1):
        if k == 2:
            # Boundary 1 is timed apart: there a Narset-attached job waits for its link process to start.
            result.attach_s, started = time.perf_counter() - started, time.perf_counter()
        step = (k - 1) * spec.task.steps_per_boundary
        val_loss, val_acc = evaluate(model, data.val)
        result.boundary_steps.append(step)
        result.val_curve.append(val_loss)
        if worker is not None:
            _record_boundary(result, worker.checkpoint(step=step, metrics={"val_loss": val_loss}), lives)
            _submit_after(spec, k, worker, model, result)
        if k == spec.task.last_boundary:
            result.val_loss, result.val_acc = val_loss, val_acc
            break
        result.live.append(bool(worker is not None and worker.scaffolds))
        ms, train_loss = _train_interval(spec, model, optimizer, worker, data, batches)
        result.interval_ms.append(ms)
        result.train_curve.append(train_loss)
    result.wall_s = time.perf_counter() - started
    result.test_loss, result.test_acc = evaluate(model, data.test)
    if worker is not None:
        result.live_at_end = len(worker.scaffolds)
        worker.close()
        result.scaffolds = list(lives.values())
        if spec.condition.narset_decides:
            result.decisions = _decisions(spec)
    return result


# ---- fit of the blueprints on each task's hosts ----------------------------------------------


def blueprint_fits(task: TaskConfig) -> dict[str, str]:
    """For every registered blueprint: '' when the worker accepts it on every host, else its refusal."""
    fits = {}
    for name in blueprint_names():
        model = build_model(task.name, 0)
        worker = KasminaWorker(model, torch.optim.Adam(model.parameters()), job=f"fit-{task.name}-{name}")
        for host in task.hosts:
            worker.submit(command_pb2.AdaptationCommand(deploy=command_pb2.DeployAction(module=host, blueprint=name)))
        refused = [
            r.message for r in worker.checkpoint(step=0).results if r.outcome != telemetry_pb2.COMMAND_OUTCOME_APPLIED
        ]
        fits[name] = refused[0] if refused else ""
    return fits


# ---- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """Mean of paired differences with its two-sided 95% t-interval."""

    mean: float
    low: float
    high: float
    n: int


def paired_interval(a: Sequence[float], b: Sequence[float]) -> Interval:
    from scipy.stats import t

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diffs)
    half = float(t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Interval(mean, mean - half, mean + half, len(diffs))


@dataclass(frozen=True, slots=True)
class Row:
    condition: str
    lr_chosen: float
    acc_base: list[float]
    """Test accuracy per seed at the base learning rate."""
    acc_chosen: list[float]
    loss_base: list[float]
    loss_chosen: list[float]
    d_acc_same: Interval | None = None
    d_acc_tuned: Interval | None = None
    d_loss_same: Interval | None = None
    d_loss_tuned: Interval | None = None
    step_ratio: float | None = None
    """Median over seeds (base lr) of ms/step while a scaffold was live over the baseline's in the same intervals."""
    wall_ratio: float | None = None
    """Median over seeds (base lr) of the run's wall clock after boundary 1 over the baseline's."""
    exits: dict[str, int] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    live_at_end: int = 0
    attach_s: float | None = None
    """Median over every run of the condition of boundary 1 (the attach)."""


def _decision_key(decision: DecisionRecord) -> str:
    """The outcome and the gates that failed; a decision without failed gates (a FUSE, a safety breaker's
    prune) by its reason."""
    return f"{decision.outcome} ({', '.join(decision.failed_gates) or decision.reason})"


def _by_seed(runs: Sequence[RunResult], condition: str, lr: float) -> list[RunResult]:
    return sorted((r for r in runs if r.condition == condition and r.lr == lr), key=lambda r: r.seed)


def choose_lr(runs: Sequence[RunResult], condition: str, grid: Sequence[float], lm: bool) -> float:
    """The grid rate with the best mean final validation score over seeds: accuracy for the classifiers (ties
    broken by the lower loss), loss for the LM. `runs`: the grid's seeds only, the same at every rate."""

    def score(lr: float) -> tuple[float, float]:
        picked = _by_seed(runs, condition, lr)
        loss = -statistics.fmean(r.val_loss for r in picked)
        return (loss, loss) if lm else (statistics.fmean(r.val_acc for r in picked), loss)

    return max(grid, key=score)


def _step_ratio(run: RunResult, base: RunResult) -> float | None:
    live = [i for i, on in enumerate(run.live) if on]
    if not live:
        return None
    return sum(run.interval_ms[i] for i in live) / sum(base.interval_ms[i] for i in live)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_task(
    runs: Sequence[RunResult], task: TaskConfig, grid: Sequence[float], names: Sequence[str], grid_seeds: Sequence[int]
) -> list[Row]:
    """Rows per condition: the same-HP comparison over every seed run at the base rate, the rate choice and the
    retuned comparison over `grid_seeds`."""
    lm = task.name == "char-lm"
    base_lr = task.base_lr
    on_grid = [r for r in runs if r.seed in grid_seeds]
    tuned = {name: choose_lr(on_grid, name, grid, lm) for name in names}
    baseline_base = _by_seed(runs, "baseline", base_lr)
    baseline_tuned = _by_seed(on_grid, "baseline", tuned["baseline"])
    rows = []
    for name in names:
        at_base, at_tuned = _by_seed(runs, name, base_lr), _by_seed(on_grid, name, tuned[name])
        row = Row(
            condition=name,
            lr_chosen=tuned[name],
            acc_base=[r.test_acc for r in at_base],
            acc_chosen=[r.test_acc for r in at_tuned],
            loss_base=[r.test_loss for r in at_base],
            loss_chosen=[r.test_loss for r in at_tuned],
        )
        if name != "baseline":
            every = [r for r in runs if r.condition == name]
            row = replace(
                row,
                d_acc_same=paired_interval(row.acc_base, [r.test_acc for r in baseline_base]),
                d_acc_tuned=paired_interval(row.acc_chosen, [r.test_acc for r in baseline_tuned]),
                d_loss_same=paired_interval(row.loss_base, [r.test_loss for r in baseline_base]),
                d_loss_tuned=paired_interval(row.loss_chosen, [r.test_loss for r in baseline_tuned]),
                step_ratio=_median([_step_ratio(r, b) for r, b in zip(at_base, baseline_base, strict=True)]),
                wall_ratio=statistics.median(r.wall_s / b.wall_s for r, b in zip(at_base, baseline_base, strict=True)),
                exits=dict(Counter(life.exit or "still live" for r in every for life in r.scaffolds)),
                decisions=dict(Counter(_decision_key(d) for r in every for d in r.decisions)),
                live_at_end=sum(r.live_at_end for r in every),
                attach_s=statistics.median(r.attach_s for r in every),
            )
        rows.append(row)
    return rows


# ---- the study -------------------------------------------------------------------------------


def _init_process() -> None:
    from narset.server.logs import configure_logging

    torch.set_num_threads(1)  # two processes on two cores; more threads per process only contend
    # Warnings stay visible (a failed exchange with Narset, a breaker trip); the harness records the rest itself.
    configure_logging("warning", "console")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _specs(config: StudyConfig, plans: dict[str, list[Condition]], narset: str | None) -> list[RunSpec]:
    # The conditions of one (rate, seed) run next to one another, so that the load of a shared machine, which
    # drifts over the study, weighs alike on a scaffolded run and the baseline its step time is divided by.
    return [
        RunSpec(task=task, condition=c, lr=task.base_lr * f, seed=s, deploy_at=config.deploy_at, narset=narset)
        for task in config.tasks
        for f in config.lr_factors
        for s in config.seeds + (_base_lr_seeds(config, task) if f == 1.0 else ())
        for c in plans[task.name]
    ]


def _base_lr_seeds(config: StudyConfig, task: TaskConfig) -> tuple[int, ...]:
    first = max(config.seeds) + 1
    return tuple(range(first, first + task.base_lr_seeds))


def _run_all(config: StudyConfig, specs: list[RunSpec]) -> list[RunResult]:
    results = []
    with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn"), initializer=_init_process) as pool:
        futures = [pool.submit(run, spec) for spec in specs]
        for done, future in enumerate(as_completed(futures), 1):
            result = future.result()
            _say(
                f"[{done}/{len(specs)}] {result.task} {result.condition} lr={result.lr:g} seed={result.seed}: "
                f"test acc {result.test_acc:.4f}, loss {result.test_loss:.4f} ({result.wall_s:.1f} s)"
            )
            results.append(result)
    return results


def _git_revision() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() or "unknown"


def run_study(config: StudyConfig) -> dict:
    from narset.server.launch import ServeProcess

    _init_process()
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    fits = {task.name: blueprint_fits(task) for task in config.tasks}
    plans = {task.name: conditions(config, task, fits[task.name]) for task in config.tasks}
    with tempfile.TemporaryDirectory(prefix="ml-effect-") as tmp:
        # One Narset for every job of the study, as a real `narset serve` child process.
        server = ServeProcess(Path(tmp) / "narset.db", log_level="error")
        try:
            results = _run_all(config, _specs(config, plans, server.address))
        finally:
            server.terminate()
    # Every process of the study has been waited for by now (pool workers with their link processes, the server).
    cpu = os.times()
    summary = {
        task.name: summarize_task(
            [r for r in results if r.task == task.name],
            task,
            [task.base_lr * f for f in config.lr_factors],
            [c.name for c in plans[task.name]],
            config.seeds,
        )
        for task in config.tasks
    }
    return {
        "config": asdict(config),
        "environment": {
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "revision": _git_revision(),
        },
        "runtime_s": time.perf_counter() - started,
        "cpu_s": cpu.user + cpu.system + cpu.children_user + cpu.children_system,
        "load_average": [load_at_start, os.getloadavg()[0]],
        "fits": fits,
        "summary": {name: [asdict(row) for row in rows] for name, rows in summary.items()},
        "runs": [asdict(r) for r in sorted(results, key=lambda r: (r.task, r.condition, r.lr, r.seed))],
    }


# ---- the report ------------------------------------------------------------------------------


def _ci(interval: dict | None, scale: float, digits: int) -> str:
    if interval is None:
        return "–"
    mean, low, high = (interval[k] * scale for k in ("mean", "low", "high"))
    mark = " ↑" if low > 0 else " ↓" if high < 0 else ""
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]{mark}"


def _mean_sd(values: Sequence[float], scale: float, digits: int) -> str:
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {sd:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _counts(counts: dict[str, int]) -> str:
    return "; ".join(f"{k} ×{v}" for k, v in sorted(counts.items())) or "–"


def _task_table(name: str, rows: list[dict], fits: dict[str, str], grid: Sequence[float]) -> list[str]:
    lm = name == "char-lm"
    head = "| condition | lr (val-chosen) | test acc % @ base lr | test acc % @ chosen lr "
    head += "| Δacc pp vs same-HP baseline [95% CI] | Δacc pp vs retuned baseline [95% CI] "
    head += "| Δloss vs same-HP [95% CI] | Δloss vs retuned [95% CI] " if lm else ""
    head += "| step-time ratio (live) | run wall ratio |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cells = [
            row["condition"],
            f"{row['lr_chosen']:g}" + (" (grid edge)" if row["lr_chosen"] in (min(grid), max(grid)) else ""),
            _mean_sd(row["acc_base"], 100, 2),
            _mean_sd(row["acc_chosen"], 100, 2),
            _ci(row["d_acc_same"], 100, 2),
            _ci(row["d_acc_tuned"], 100, 2),
        ]
        if lm:
            cells += [_ci(row["d_loss_same"], 1, 4), _ci(row["d_loss_tuned"], 1, 4)]
        cells += [_ratio(row["step_ratio"]), _ratio(row["wall_ratio"])]
        lines.append("| " + " | ".join(cells) + " |")
    for blueprint, refusal in fits.items():
        if refusal:
            lines.append(f"| {blueprint} | not supported on these hosts: {refusal} |" + " |" * (head.count("|") - 3))
    if all(fits.values()):
        lines += ["", "No built-in blueprint accepts this task's hosts: scaffolds here are not supported yet."]
    return lines


def _verdict_line(rows: list[dict]) -> str:
    """Which conditions' retuned 95% interval excludes 0, either way: the table's reading in one line."""
    better = [r["condition"] for r in rows[1:] if r["d_acc_tuned"]["low"] > 0]
    worse = [r["condition"] for r in rows[1:] if r["d_acc_tuned"]["high"] < 0]
    if not rows[1:]:
        return "Only the baseline ran on this task."
    return (
        "Test accuracy vs the retuned baseline, 95% interval excluding 0: "
        f"better: {', '.join(better) or 'none'}; worse: {', '.join(worse) or 'none'}; "
        "every other condition: no difference detected at this sample size."
    )


def _harm_line(rows: list[dict]) -> str:
    """Each Narset-decided condition against the do-no-harm bound; and what beats the same-HP baseline."""
    if not rows[1:]:
        return ""
    base_loss = statistics.fmean(rows[0]["loss_base"])
    held, broken = [], []
    for row in rows[1:]:
        if row["condition"] == "best-guess":
            continue
        acc_low, loss_high = row["d_acc_same"]["low"] * 100, row["d_loss_same"]["high"] / base_loss * 100
        verdict = f"{row['condition']} (acc low {acc_low:+.2f} pp, loss high {loss_high:+.2f}%)"
        (held if acc_low > HARM_ACC_PP or loss_high < HARM_LOSS_REL * 100 else broken).append(verdict)
    beats = [r["condition"] for r in rows[1:] if r["d_acc_same"]["low"] > 0 or r["d_loss_same"]["high"] < 0]
    return (
        f"Do no harm vs the same-HP baseline (accuracy interval above {HARM_ACC_PP} pp, or test-loss interval below "
        f"+{HARM_LOSS_REL:.0%} of the baseline's loss): held by {', '.join(held) or 'none'}; "
        f"not held by {', '.join(broken) or 'none'}. Better than the same-HP baseline (accuracy interval above 0 or "
        f"loss interval below 0): {', '.join(beats) or 'none'}."
    )


def _exit_lines(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows[1:]:
        text = f"- **{row['condition']}**: boundary 1 (attach) {row['attach_s']:.2f} s; exits {_counts(row['exits'])}"
        if row["decisions"]:
            text += f"; Narset decisions {_counts(row['decisions'])}"
        if row["live_at_end"]:
            text += f"; **{row['live_at_end']} scaffold(s) still live at the end of training**"
        lines.append(text)
    return lines


def render_markdown(results: dict, command: str, figure: str) -> str:
    config = results["config"]
    env = results["environment"]
    seeds = len(config["seeds"])
    factors = ", ".join(f"{f:g}" for f in config["lr_factors"])
    lines = [
        START,
        "## ML effect: does a scaffold leave a better host?",
        "",
        "Generated by `benchmarks/ml_effect.py` (docs/design.md section 4, issue 11 item 5); every number below is",
        "measured by that script, nothing is edited by hand.",
        "",
        "### Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Measured at revision `{env['revision']}`, torch {env['torch']}, Python {env['python']}, "
        f"{env['cpus']} CPUs, {config['workers']} processes of 1 thread each. The study took "
        f"{results['runtime_s'] / 60:.1f} min of wall clock and {results['cpu_s'] / 60:.1f} min of CPU over all its "
        f"processes (on {env['cpus']} idle cores: about {results['cpu_s'] / 60 / env['cpus']:.1f} min); the machine is "
        f"shared, its 1-minute load average was {results['load_average'][0]:.1f} at the start and "
        f"{results['load_average'][1]:.1f} at the end.",
        "",
        "### Method",
        "",
        "- **Tasks** (all offline):",
        "  - `digits-mlp`: scikit-learn's digits, 64→16→10 MLP (ReLU); hosts `fc1`, `fc2`.",
        "  - `digits-conv`: the same digits as 1×8×8 images; conv(1→16)+BatchNorm, max-pool, conv(16→32)+BatchNorm,"
        " global average pool, linear head; hosts `conv1`, `conv2`.",
        "  - `char-lm`: a character-level transformer (2 pre-norm blocks, width 64, 4 heads, context 64) on "
        f"{', '.join(LM_SOURCES)} of this Python's standard library, concatenated; contiguous 80/10/10 "
        "train/validation/test split; hosts the MLP expansions `blocks.0.fc1`, `blocks.1.fc1`.",
        "  - Digits: one fixed random split (1000 train, 300 validation, 497 test), the same for every seed.",
        "- **Training**: Adam, mini-batches drawn by a generator seeded with the run's seed, so a seed has the same "
        "host initialisation and the same batch order under every condition and rate. Boundary 1 is at step 0 "
        "(the job attaches to Narset); boundaries then every `steps_per_boundary` steps, the last one at the end.",
        "",
        "| task | batch | steps per boundary | intervals | steps | base lr | seeds at the base lr |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['name']} | {t['batch']} | {t['steps_per_boundary']} | {t['intervals']} | "
        f"{t['steps_per_boundary'] * t['intervals']} | {t['base_lr']:g} | {seeds + t['base_lr_seeds']} |"
        for t in config["tasks"]
    ]
    lines += [
        "",
        "- **Conditions**:",
        "  - `baseline`: the model trained without Kasmina.",
        "  - one condition per built-in blueprint the worker accepts on every host of the task, with its default "
        "policy: deployed on every host (one region each) by an operator command to a real embedded Narset "
        "(`narset serve`, one server for the whole study) right after boundary 1, applied at boundary "
        f"{config['deploy_at']}; Narset decides every exit from the gates (FUSE / PRUNE / PERSIST) and the worker "
        "applies it. Blueprints the worker refuses are listed as not supported yet, with the refusal.",
        "  - `best-guess`: LoRA at full rank (min(in, out) of each host; min(in·k·k, out) for a k×k Conv2d), "
        "alpha at the micro warm level 0.5 from "
        f"the deploy at boundary {config['deploy_at']}, seed learning rate = the host's (`lr_scale` 1), folded by "
        f"the harness (local command) at {config['best_guess_fraction']:.3g} of the run (the simulation of "
        "docs/design.md section 4).",
        "- **Learning rates**: every condition runs at base lr × "
        f"{{{factors}}}. The **same selection procedure for every condition**: the rate with the best mean over "
        "seeds of the final validation score (accuracy for digits, loss for the LM), measured at the last "
        "boundary, after every scaffold has left. The retuned comparison pairs each condition at its chosen rate "
        "with the baseline at its own chosen rate; the same-HP comparison pairs both at the base rate.",
        f"- **Statistics**: {seeds} seeds at every rate, more at the base rate where a task is cheap (table "
        "above). Test metrics of the host "
        "at the end of training (after every exit). "
        "Per seed the difference condition − baseline; mean and two-sided 95% t-interval "
        f"(t with n − 1 degrees of freedom: n = the task's seeds at the base rate vs the same-HP baseline, {seeds} "
        "vs the retuned one)."
        " ↑ / ↓ mark an interval that excludes 0. Accuracy in percentage "
        "points (pp); LM loss in nats per character (negative is better).",
        "- **Time**: step-time ratio = ms per training step over the intervals in which a scaffold was live, "
        "divided by the baseline's ms per step over the same intervals (same seed, base lr), median over seeds; "
        "boundaries are excluded. Run wall ratio = the run from boundary 2 to its end including boundaries (gate "
        "measurement, the exchange with Narset, the harness's own validation pass, equal in every run), median "
        "over seeds; boundary 1, where an attached job waits for its link process, is reported apart. Two runs "
        "share the 2 cores at any time, so both ratios carry machine noise.",
        "",
        "### Results",
        "",
    ]
    for task in config["tasks"]:
        name = task["name"]
        rows = results["summary"][name]
        lines += [f"#### {name}", ""]
        grid = [task["base_lr"] * f for f in config["lr_factors"]]
        lines += _task_table(name, rows, results["fits"][name], grid)
        lines += ["", _verdict_line(rows), "", _harm_line(rows)]
        lines += ["", "Exits (all rates and seeds):", ""]
        lines += _exit_lines(rows) or ["- no scaffolded condition ran on this task"]
        lines.append("")
    lines += [
        "### Curves",
        "",
        f"![validation loss per boundary, first seed, base lr; deploy ▲, fold ●, prune ✕]({figure})",
        "",
        "Validation loss at every boundary of the first seed at the base learning rate; ▲ marks a deploy, ● a "
        "fold and ✕ a prune (each on the scaffold's own condition curve).",
        "",
        "Raw results (every run, every boundary): `python benchmarks/ml_effect.py --json`.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path) -> None:
    """Replace this harness's marked section of `path` (append it when absent); the rest is left alone."""
    evidence_doc.write_section(text, path, START, END)


def plot_curves(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["config"]["tasks"]
    seed = results["config"]["seeds"][0]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    markers = {"FUSED": "o", "PRUNED": "x"}
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = [r for r in results["runs"] if r["task"] == task["name"] and r["seed"] == seed]
        for r in (r for r in runs if r["lr"] == task["base_lr"]):
            (line,) = ax.plot(r["boundary_steps"], r["val_curve"], label=r["condition"], lw=1.2)
            for life in r["scaffolds"]:
                deploy_index = life["deployed_at"] - 1
                ax.plot(r["boundary_steps"][deploy_index], r["val_curve"][deploy_index], "^", color=line.get_color())
                if life["exit"] is not None:
                    i = life["exit_at"] - 1
                    ax.plot(r["boundary_steps"][i], r["val_curve"][i], markers[life["exit"]], color=line.get_color())
        ax.set_title(f"{task['name']} (seed {seed}, lr {task['base_lr']:g})")
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/ml_effect.py"]
    if args.quick:
        parts.append("--quick")
    if args.workers != 2:
        parts.append(f"--workers {args.workers}")
    return " ".join(parts)


def _jsonable(value):
    """JSON without NaN/Infinity tokens (not JSON): a non-finite number becomes null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits MLP only, 2 seeds, short runs (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON on stdout")
    parser.add_argument("--workers", type=int, default=2, help="training processes in parallel (1 thread each)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where evidence.md (its section) and ml_effect_curves.png go (default: docs/; with --quick a temp dir)",
    )
    args = parser.parse_args(argv)
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="ml-effect-quick-")) if args.quick else REPO / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _jsonable(run_study(study_config(args.quick, args.workers)))
    figure = out_dir / "ml_effect_curves.png"
    plot_curves(results, figure)
    markdown = out_dir / "evidence.md"
    write_section(render_markdown(results, _command_line(args), figure.name), markdown)
    _say(f"wrote the ml-effect section of {markdown} and {figure} in {results['runtime_s']:.0f} s")
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
