"""Teaching losses added by `worker.step_loss`, keyed by scaffold.

Directions by stage (docs/design.md, section 4):
* TRAIN_ISOLATED: the host teaches the seed. Student: the seed output s; teacher: h, detached.
* DECAY (weaning): the seed teaches the host. Student: the host output h; teacher: the site's
  output, the blend at the current alpha `lerp(h, s, alpha)`, detached. The teacher moves with
  the student, so this is a push along the seed's contribution `alpha·(s − h)` on every step, with
  no fixed point while alpha > 0; it fades as alpha reaches the floor. Its cost is measured in
  docs/kasmina.md ("Teaching losses"): opt-in, since the task loss alone weans a jointly trained host,
  and no built-in policy sets a teaching weight.
* Other stages: no teaching.

Terms: site distillation `w · MSE(student, teacher)` (free: both are computed by the forward);
KD at the site `w · tau² · KL(softmax(t/tau) ‖ softmax(s/tau))` over the last dimension; user
probe losses `w · fn(student, teacher)`; and, while weaning, taps elsewhere in the model: feature
MSE and KD at a logits tap, comparing the tap's output in the training forward (teacher,
detached) with its output in an extra host-only forward of the same input (student). That extra
pass costs one more forward (and its backward) of the whole model on the steps where it runs,
every `cadence_steps` steps; it runs the unwrapped model eagerly with every scaffold swapped out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kasmina_worker.seeds.scaffold import Scaffold
from kasmina_worker.seeds.surgery import replace_module
from narset.v1 import command_pb2, telemetry_pb2

__all__ = ["ProbeLoss", "Teacher", "TeachingSite", "kd_loss"]

ProbeLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A user teaching criterion: `fn(student, teacher) -> scalar loss` at a scaffold site."""

STUDENT_SEED_STAGES = (telemetry_pb2.SCAFFOLD_STAGE_TRAIN_ISOLATED,)
STUDENT_HOST_STAGES = (telemetry_pb2.SCAFFOLD_STAGE_DECAY,)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """`tau² · KL(softmax(teacher/tau) ‖ softmax(student/tau))`, averaged over all leading dims."""
    s = F.log_softmax(student.float().flatten(0, -2) / tau, dim=-1)
    t = F.log_softmax(teacher.float().flatten(0, -2) / tau, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * tau * tau


@dataclass(frozen=True, slots=True)
class TeachingSite:
    """One live scaffold as teaching sees it for an interval (fixed at a boundary)."""

    module: Scaffold
    teaching: command_pb2.TeachingLosses
    stage: int

    @property
    def site_terms(self) -> bool:
        t = self.teaching
        directed = self.stage in STUDENT_SEED_STAGES + STUDENT_HOST_STAGES
        return directed and (
            t.site_distill_weight > 0 or (t.kd.weight > 0 and not t.kd.logits_tap) or t.probe_weight > 0
        )

    @property
    def tap_terms(self) -> bool:
        t = self.teaching
        weaning = self.stage in STUDENT_HOST_STAGES
        return weaning and (t.feature.weight > 0 or (t.kd.weight > 0 and bool(t.kd.logits_tap)))


class Teacher:
    """Computes the teaching terms of every live scaffold for `step_loss`."""

    def __init__(self, root: nn.Module, probe_losses: Sequence[ProbeLoss]) -> None:
        self.root = root
        self.probe_losses = tuple(probe_losses)
        self.sites: list[TeachingSite] = []
        # Fixed at `configure`, so the per-step `terms` reads no policy fields.
        self._with_site_terms: list[TeachingSite] = []
        self._with_tap_terms: list[TeachingSite] = []
        self._tap_modules: list[str] = []
        self._hooks: list = []
        self._inputs: tuple[tuple, dict] | None = None
        self._taps: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return bool(self.sites)

    def configure(self, sites: Sequence[TeachingSite]) -> None:
        """At a boundary: keep the sites with teaching this interval; set recording and hooks."""
        self._remove_hooks()
        self._inputs, self._taps = None, {}
        self.sites = [s for s in sites if s.site_terms or s.tap_terms]
        self._with_site_terms = [s for s in self.sites if s.site_terms]
        self._with_tap_terms = [s for s in self.sites if s.tap_terms]
        self._tap_modules = sorted({name for s in self._with_tap_terms for name in _tap_names(s.teaching)})
        for site in sites:
            site.module.record_site = site.site_terms
            site.module.site = None
        self._install_hooks()

    def _install_hooks(self) -> None:
        taps = self._tap_modules
        if taps:
            self._hooks.append(self.root.register_forward_pre_hook(self._keep_inputs, with_kwargs=True))
            self._hooks.extend(self.root.get_submodule(n).register_forward_hook(self._keep_tap(n)) for n in taps)

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _keep_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._inputs = (args, kwargs)

    def _keep_tap(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._taps[name] = output

        return hook

    def terms(self, step: int) -> torch.Tensor | None:
        """The sum of this step's teaching terms (None when there are none); no sync."""
        total: torch.Tensor | None = None
        for site in self._with_site_terms:
            for term in self._site_terms(site):
                total = term if total is None else total + term
        tap_sites = [s for s in self._with_tap_terms if step % s.teaching.feature.cadence_steps == 0]
        if tap_sites and self._inputs is not None:
            for term in self._tap_terms(tap_sites):
                total = term if total is None else total + term
        return total

    def _site_terms(self, site: TeachingSite) -> list[torch.Tensor]:
        recorded = site.module.site
        site.module.site = None
        if recorded is None:
            return []
        t = site.teaching
        if site.stage in STUDENT_SEED_STAGES:
            student, teacher = recorded.seed_out, recorded.host_out.detach()
        else:
            student = recorded.host_out
            teacher = torch.lerp(recorded.host_out, recorded.seed_out, site.module.alpha).detach()
        terms = []
        if t.site_distill_weight > 0:
            terms.append(t.site_distill_weight * F.mse_loss(student.float(), teacher.float()))
        if t.kd.weight > 0 and not t.kd.logits_tap:
            terms.append(t.kd.weight * kd_loss(student, teacher, t.kd.tau))
        if t.probe_weight > 0:
            terms.extend(t.probe_weight * fn(student, teacher) for fn in self.probe_losses)
        return terms

    def _tap_terms(self, sites: list[TeachingSite]) -> list[torch.Tensor]:
        teachers = {name: out.detach() for name, out in self._taps.items()}
        args, kwargs = self._inputs
        self._inputs = None
        students = self._host_only_pass(args, kwargs)
        terms = []
        for site in sites:
            t = site.teaching
            if t.feature.weight > 0:
                mses = [F.mse_loss(students[n].float(), teachers[n].float()) for n in t.feature.taps]
                terms.append(t.feature.weight * torch.stack(mses).mean())
            if t.kd.weight > 0 and t.kd.logits_tap:
                tap = t.kd.logits_tap
                terms.append(t.kd.weight * kd_loss(students[tap], teachers[tap], t.kd.tau))
        return terms

    def _host_only_pass(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """Run the model with every scaffold replaced by its host; returns the tap outputs."""
        scaffolds = [(name, m) for name, m in self.root.named_modules() if isinstance(m, Scaffold)]
        self._remove_hooks()
        for name, module in scaffolds:
            replace_module(self.root, name, module.host)
        students: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable:
            return lambda module, args, output: students.__setitem__(name, output)

        capture = [self.root.get_submodule(n).register_forward_hook(keep(n)) for n in self._tap_modules]
        try:
            self.root(*args, **kwargs)
        finally:
            for handle in capture:
                handle.remove()
            for name, module in scaffolds:
                replace_module(self.root, name, module)
            self._install_hooks()
        return students


def _tap_names(teaching: command_pb2.TeachingLosses) -> list[str]:
    names = list(teaching.feature.taps) if teaching.feature.weight > 0 else []
    if teaching.kd.weight > 0 and teaching.kd.logits_tap:
        names.append(teaching.kd.logits_tap)
    return names
