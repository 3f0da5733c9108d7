"""Alpha schedules: the lifecycle (docs/design.md, section 4), counted in checkpoint boundaries.

Pure Python and deterministic: the state is a few numbers (`to_dict` / `from_dict`), and alpha,
whether the host is frozen and stage are functions of it. Timeline, with the deploy applied at
boundary k (position 0) and `I, W, H, D` the isolated / warmup / hold / decay lengths:

* positions [0, I): TRAIN_ISOLATED, alpha 0 (for seeds that learn at alpha 0, from teaching);
* [I, I+W): GRAFTING, alpha = warm · curve((p - I + 1) / W);
* [I+W, I+W+H): HOLD at warm;
* [I+W+H, I+W+H+D): DECAY, alpha = warm + (floor - warm) · curve((p - I - W - H + 1) / D)
  (weaning);
* after the phases and before the TTL, the last phase holds its final alpha;
* position >= TTL: EVALUATING, alpha held until an exit decision arrives.

The position does not move while paused. A sunset ramps alpha linearly from where it is to the
exit's exact level over `sunset` boundaries, the first step at the boundary that starts it; the
exit is taken at the boundary where the ramp arrives. Non-scaffold growth ramps 0 -> 1 over W,
then stays PERMANENT at 1.

The host trains jointly in every stage. With `freeze_host` (policy `host_mode: frozen`) its
parameters are frozen while grafting and holding, and in an EVALUATING or SUNSET that follows them;
never while weaning, which needs the host to learn, nor for permanent growth.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from narset.contract.reasons import EXTENSION_LIMIT
from narset.contract.rules import CodedFieldError, persist_error
from narset.v1 import command_pb2, telemetry_pb2

__all__ = ["AlphaSchedule", "ScheduleConfig", "ScheduleState"]

S = telemetry_pb2


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduleConfig:
    """The fixed shape of one scaffold's schedule (from its effective policy)."""

    isolated: int
    """TRAIN_ISOLATED boundaries (alpha 0) before grafting."""
    warmup: int
    """GRAFTING boundaries: 0 -> warm level."""
    hold: int
    """HOLD boundaries at the warm level."""
    decay: int
    """DECAY boundaries: warm level -> floor, host weaning."""
    warm_level: float
    """Alpha at the end of grafting, in [0, 1]."""
    floor: float
    """Alpha at the end of decay, in [0, warm_level]."""
    cosine: bool
    """Cosine ramps when True, linear otherwise."""
    ttl: int
    """Boundaries from deploy to EVALUATING, >= isolated + warmup + hold + decay."""
    sunset: int
    """Boundaries of the alpha ramp before a non-exact exit; 0 exits at once."""
    as_scaffold: bool = True
    """False: permanent growth (alpha ramps to 1 and stays, no TTL)."""
    freeze_host: bool = False
    """True (policy `host_mode: frozen`): the host's parameters are frozen while grafting and holding."""

    def __post_init__(self) -> None:
        for name in ("isolated", "warmup", "hold", "decay", "sunset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.warm_level <= 1.0:
            raise ValueError(f"warm_level must be in [0, 1], got {self.warm_level}")
        if not 0.0 <= self.floor <= self.warm_level:
            raise ValueError(f"floor must be in [0, warm_level={self.warm_level}], got {self.floor}")
        if self.ttl < max(1, self.length):
            raise ValueError(f"ttl must be >= max(1, phase length {self.length}), got {self.ttl}")

    @property
    def length(self) -> int:
        return self.isolated + self.warmup + self.hold + self.decay

    @classmethod
    def from_policy(cls, policy: command_pb2.ScaffoldPolicy, as_scaffold: bool) -> ScheduleConfig:
        """The schedule of an effective (fully filled) policy."""
        schedule = policy.schedule
        return cls(
            isolated=schedule.isolated_ckpts,
            warmup=schedule.warmup_ckpts,
            hold=schedule.hold_ckpts,
            decay=schedule.decay_ckpts,
            warm_level=schedule.warm_level,
            floor=schedule.floor,
            cosine=schedule.curve == command_pb2.ALPHA_CURVE_COSINE,
            ttl=policy.ttl_ckpts,
            sunset=policy.fold.sunset_ckpts,
            as_scaffold=as_scaffold,
            freeze_host=policy.host_mode == command_pb2.HOST_MODE_FROZEN,
        )


@dataclass(kw_only=True, slots=True)
class ScheduleState:
    """Where one schedule stands; primitives only."""

    position: int = 0
    age: int = 0
    paused: bool = False
    extensions: int = 0
    ttl: int = 0
    sunset_from: float = 0.0
    sunset_to: float = 0.0
    sunset_steps: int = 0
    sunset_done: int = 0
    sunset_frozen: bool = False


class AlphaSchedule:
    """One scaffold's schedule: a config and a state, alpha/stage/host freezing derived from them."""

    def __init__(self, config: ScheduleConfig, state: ScheduleState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else ScheduleState(ttl=config.ttl)

    def _curve(self, t: float) -> float:
        t = min(max(t, 0.0), 1.0)
        return (1.0 - math.cos(math.pi * t)) / 2.0 if self.config.cosine else t

    @property
    def in_sunset(self) -> bool:
        return self.state.sunset_steps > 0

    def _phase_alpha(self, p: int) -> tuple[int, float, bool]:
        """(stage, alpha, host frozen) at schedule position p, ignoring sunset."""
        c = self.config
        if not c.as_scaffold:
            if p < c.warmup:
                return S.SCAFFOLD_STAGE_GRAFTING, self._curve((p + 1) / c.warmup), False
            return S.SCAFFOLD_STAGE_PERMANENT, 1.0, False
        graft_end = c.isolated + c.warmup
        hold_end = graft_end + c.hold
        frozen = c.freeze_host
        if p < c.isolated:
            return S.SCAFFOLD_STAGE_TRAIN_ISOLATED, 0.0, False
        if p < graft_end:
            return S.SCAFFOLD_STAGE_GRAFTING, c.warm_level * self._curve((p - c.isolated + 1) / c.warmup), frozen
        if p < hold_end:
            return S.SCAFFOLD_STAGE_HOLD, c.warm_level, frozen
        if p < c.length:
            ramp = self._curve((p - hold_end + 1) / c.decay)
            return S.SCAFFOLD_STAGE_DECAY, c.warm_level + (c.floor - c.warm_level) * ramp, False
        if c.decay:
            return S.SCAFFOLD_STAGE_DECAY, c.floor, False
        if c.warmup or c.hold or not c.isolated:
            return S.SCAFFOLD_STAGE_HOLD, c.warm_level, frozen
        return S.SCAFFOLD_STAGE_TRAIN_ISOLATED, 0.0, False

    def _current(self) -> tuple[int, float, bool]:
        st = self.state
        if self.in_sunset:
            ramp = min(st.sunset_done / st.sunset_steps, 1.0)
            return S.SCAFFOLD_STAGE_SUNSET, st.sunset_from + (st.sunset_to - st.sunset_from) * ramp, st.sunset_frozen
        stage, alpha, frozen = self._phase_alpha(st.position)
        if self.config.as_scaffold and st.position >= st.ttl:
            return S.SCAFFOLD_STAGE_EVALUATING, alpha, frozen
        return stage, alpha, frozen

    def stage(self) -> int:
        """The lifecycle stage, a `telemetry_pb2.ScaffoldStage`."""
        return self._current()[0]

    def alpha(self) -> float:
        return self._current()[1]

    def host_frozen(self) -> bool:
        """True while the host's parameters are frozen (only under `freeze_host`)."""
        return self._current()[2]

    def advance(self) -> None:
        """One boundary passes: the sunset steps, or the position moves unless paused."""
        st = self.state
        st.age += 1
        if self.in_sunset:
            st.sunset_done = min(st.sunset_done + 1, st.sunset_steps)
        elif not st.paused:
            st.position += 1

    def weaned(self) -> bool:
        """True once the whole DECAY has run: the host was taught the blend down to the floor."""
        return self.config.decay > 0 and self.state.position >= self.config.length

    def start_sunset(self, target: float) -> None:
        """Ramp alpha from where it is to `target`; the first step is taken now."""
        _, alpha, frozen = self._current()
        st = self.state
        st.sunset_from, st.sunset_to = alpha, target
        st.sunset_steps, st.sunset_done = max(self.config.sunset, 1), 1
        st.sunset_frozen = frozen

    def sunset_arrived(self) -> bool:
        """True when a sunset has reached its target: the exit can be taken exactly now."""
        return self.in_sunset and self.state.sunset_done >= self.state.sunset_steps

    def pause(self) -> None:
        self.state.paused = True

    def resume(self) -> None:
        self.state.paused = False

    def persist_error(self, extra: int) -> CodedFieldError | None:
        """Why a PERSIST of `extra` boundaries is refused, or None when allowed."""
        c, st = self.config, self.state
        if not c.as_scaffold:
            return CodedFieldError(
                "persist.scaffold", "a permanent (as_scaffold=false) deploy has no TTL to extend", EXTENSION_LIMIT
            )
        return persist_error(st.extensions, st.ttl, c.ttl, extra)

    def persist(self, extra: int) -> None:
        """Extend the TTL by `extra` boundaries (check `persist_error` first)."""
        self.state.ttl += extra
        self.state.extensions += 1

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "state": asdict(self.state)}

    @classmethod
    def from_dict(cls, data: dict) -> AlphaSchedule:
        return cls(ScheduleConfig(**data["config"]), ScheduleState(**data["state"]))
