import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from narset.v1 import command_pb2 as _command_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScaffoldStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCAFFOLD_STAGE_UNSPECIFIED: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_PENDING: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_TRAIN_ISOLATED: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_GRAFTING: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_HOLD: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_DECAY: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_EVALUATING: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_SUNSET: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_FUSED: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_PRUNED: _ClassVar[ScaffoldStage]
    SCAFFOLD_STAGE_PERMANENT: _ClassVar[ScaffoldStage]

class CommandOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_OUTCOME_UNSPECIFIED: _ClassVar[CommandOutcome]
    COMMAND_OUTCOME_APPLIED: _ClassVar[CommandOutcome]
    COMMAND_OUTCOME_REJECTED: _ClassVar[CommandOutcome]

class DecisionOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_OUTCOME_UNSPECIFIED: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_FUSE: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_PRUNE: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_PERSIST: _ClassVar[DecisionOutcome]
    DECISION_OUTCOME_DEPLOY: _ClassVar[DecisionOutcome]
SCAFFOLD_STAGE_UNSPECIFIED: ScaffoldStage
SCAFFOLD_STAGE_PENDING: ScaffoldStage
SCAFFOLD_STAGE_TRAIN_ISOLATED: ScaffoldStage
SCAFFOLD_STAGE_GRAFTING: ScaffoldStage
SCAFFOLD_STAGE_HOLD: ScaffoldStage
SCAFFOLD_STAGE_DECAY: ScaffoldStage
SCAFFOLD_STAGE_EVALUATING: ScaffoldStage
SCAFFOLD_STAGE_SUNSET: ScaffoldStage
SCAFFOLD_STAGE_FUSED: ScaffoldStage
SCAFFOLD_STAGE_PRUNED: ScaffoldStage
SCAFFOLD_STAGE_PERMANENT: ScaffoldStage
COMMAND_OUTCOME_UNSPECIFIED: CommandOutcome
COMMAND_OUTCOME_APPLIED: CommandOutcome
COMMAND_OUTCOME_REJECTED: CommandOutcome
DECISION_OUTCOME_UNSPECIFIED: DecisionOutcome
DECISION_OUTCOME_FUSE: DecisionOutcome
DECISION_OUTCOME_PRUNE: DecisionOutcome
DECISION_OUTCOME_PERSIST: DecisionOutcome
DECISION_OUTCOME_DEPLOY: DecisionOutcome

class GateTelemetry(_message.Message):
    __slots__ = ("transfer_rel_delta", "probe_loss", "foldability", "svd_energy", "jitter_p95", "drift", "diversity", "step_time_ratio", "memory_fraction", "non_finite", "loss_spike", "isolation_leak", "host_diversity")
    TRANSFER_REL_DELTA_FIELD_NUMBER: _ClassVar[int]
    PROBE_LOSS_FIELD_NUMBER: _ClassVar[int]
    FOLDABILITY_FIELD_NUMBER: _ClassVar[int]
    SVD_ENERGY_FIELD_NUMBER: _ClassVar[int]
    JITTER_P95_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_RATIO_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    LOSS_SPIKE_FIELD_NUMBER: _ClassVar[int]
    ISOLATION_LEAK_FIELD_NUMBER: _ClassVar[int]
    HOST_DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    transfer_rel_delta: float
    probe_loss: float
    foldability: float
    svd_energy: float
    jitter_p95: float
    drift: float
    diversity: float
    step_time_ratio: float
    memory_fraction: float
    non_finite: bool
    loss_spike: bool
    isolation_leak: bool
    host_diversity: float
    def __init__(self, transfer_rel_delta: _Optional[float] = ..., probe_loss: _Optional[float] = ..., foldability: _Optional[float] = ..., svd_energy: _Optional[float] = ..., jitter_p95: _Optional[float] = ..., drift: _Optional[float] = ..., diversity: _Optional[float] = ..., step_time_ratio: _Optional[float] = ..., memory_fraction: _Optional[float] = ..., non_finite: _Optional[bool] = ..., loss_spike: _Optional[bool] = ..., isolation_leak: _Optional[bool] = ..., host_diversity: _Optional[float] = ...) -> None: ...

class ScaffoldReport(_message.Message):
    __slots__ = ("scaffold_id", "module", "blueprint", "stage", "alpha", "age_ckpts", "ttl_ckpts", "extensions", "paused", "gates", "region", "seed_parameters", "policy")
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    AGE_CKPTS_FIELD_NUMBER: _ClassVar[int]
    TTL_CKPTS_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SEED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    scaffold_id: str
    module: str
    blueprint: str
    stage: ScaffoldStage
    alpha: float
    age_ckpts: int
    ttl_ckpts: int
    extensions: int
    paused: bool
    gates: GateTelemetry
    region: str
    seed_parameters: int
    policy: _command_pb2.ScaffoldPolicy
    def __init__(self, scaffold_id: _Optional[str] = ..., module: _Optional[str] = ..., blueprint: _Optional[str] = ..., stage: _Optional[_Union[ScaffoldStage, str]] = ..., alpha: _Optional[float] = ..., age_ckpts: _Optional[int] = ..., ttl_ckpts: _Optional[int] = ..., extensions: _Optional[int] = ..., paused: _Optional[bool] = ..., gates: _Optional[_Union[GateTelemetry, _Mapping]] = ..., region: _Optional[str] = ..., seed_parameters: _Optional[int] = ..., policy: _Optional[_Union[_command_pb2.ScaffoldPolicy, _Mapping]] = ...) -> None: ...

class CommandResult(_message.Message):
    __slots__ = ("command_id", "outcome", "message", "boundary", "scaffold_id", "reason")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    outcome: CommandOutcome
    message: str
    boundary: int
    scaffold_id: str
    reason: str
    def __init__(self, command_id: _Optional[str] = ..., outcome: _Optional[_Union[CommandOutcome, str]] = ..., message: _Optional[str] = ..., boundary: _Optional[int] = ..., scaffold_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SafetyEvent(_message.Message):
    __slots__ = ("scaffold_id", "kind", "step", "detail")
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    scaffold_id: str
    kind: str
    step: int
    detail: str
    def __init__(self, scaffold_id: _Optional[str] = ..., kind: _Optional[str] = ..., step: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class RegionSignal(_message.Message):
    __slots__ = ("region", "grad_norm", "update_ratio")
    REGION_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    UPDATE_RATIO_FIELD_NUMBER: _ClassVar[int]
    region: str
    grad_norm: float
    update_ratio: float
    def __init__(self, region: _Optional[str] = ..., grad_norm: _Optional[float] = ..., update_ratio: _Optional[float] = ...) -> None: ...

class GateVerdict(_message.Message):
    __slots__ = ("gate", "value", "threshold", "passed", "hard", "samples")
    GATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    gate: str
    value: float
    threshold: float
    passed: bool
    hard: bool
    samples: int
    def __init__(self, gate: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., passed: _Optional[bool] = ..., hard: _Optional[bool] = ..., samples: _Optional[int] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "job_id", "scaffold_id", "boundary", "outcome", "reason", "inputs", "thresholds", "verdicts", "command_id", "issued_by", "forced", "created_at")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    job_id: str
    scaffold_id: str
    boundary: int
    outcome: DecisionOutcome
    reason: str
    inputs: GateTelemetry
    thresholds: _command_pb2.GateThresholds
    verdicts: _containers.RepeatedCompositeFieldContainer[GateVerdict]
    command_id: str
    issued_by: str
    forced: bool
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., job_id: _Optional[str] = ..., scaffold_id: _Optional[str] = ..., boundary: _Optional[int] = ..., outcome: _Optional[_Union[DecisionOutcome, str]] = ..., reason: _Optional[str] = ..., inputs: _Optional[_Union[GateTelemetry, _Mapping]] = ..., thresholds: _Optional[_Union[_command_pb2.GateThresholds, _Mapping]] = ..., verdicts: _Optional[_Iterable[_Union[GateVerdict, _Mapping]]] = ..., command_id: _Optional[str] = ..., issued_by: _Optional[str] = ..., forced: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
