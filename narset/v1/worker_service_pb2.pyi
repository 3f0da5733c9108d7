from narset.v1 import command_pb2 as _command_pb2
from narset.v1 import job_pb2 as _job_pb2
from narset.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RestoredState(_message.Message):
    __slots__ = ("boundary", "applied_command_ids", "scaffolds")
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_COMMAND_IDS_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLDS_FIELD_NUMBER: _ClassVar[int]
    boundary: int
    applied_command_ids: _containers.RepeatedScalarFieldContainer[str]
    scaffolds: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.ScaffoldReport]
    def __init__(self, boundary: _Optional[int] = ..., applied_command_ids: _Optional[_Iterable[str]] = ..., scaffolds: _Optional[_Iterable[_Union[_telemetry_pb2.ScaffoldReport, _Mapping]]] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("job_id", "world_size", "ranks", "modules", "regions", "capabilities", "restored", "blueprints", "session_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    world_size: int
    ranks: _containers.RepeatedCompositeFieldContainer[_job_pb2.RankInfo]
    modules: _containers.RepeatedCompositeFieldContainer[_job_pb2.ModuleInfo]
    regions: _containers.RepeatedCompositeFieldContainer[_job_pb2.Region]
    capabilities: _job_pb2.WorkerCapabilities
    restored: RestoredState
    blueprints: _containers.RepeatedCompositeFieldContainer[_job_pb2.Blueprint]
    session_id: str
    def __init__(self, job_id: _Optional[str] = ..., world_size: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[_job_pb2.RankInfo, _Mapping]]] = ..., modules: _Optional[_Iterable[_Union[_job_pb2.ModuleInfo, _Mapping]]] = ..., regions: _Optional[_Iterable[_Union[_job_pb2.Region, _Mapping]]] = ..., capabilities: _Optional[_Union[_job_pb2.WorkerCapabilities, _Mapping]] = ..., restored: _Optional[_Union[RestoredState, _Mapping]] = ..., blueprints: _Optional[_Iterable[_Union[_job_pb2.Blueprint, _Mapping]]] = ..., session_id: _Optional[str] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("session_id", "next_boundary", "policy", "redeliver_command_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REDELIVER_COMMAND_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    next_boundary: int
    policy: _job_pb2.JobPolicy
    redeliver_command_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., next_boundary: _Optional[int] = ..., policy: _Optional[_Union[_job_pb2.JobPolicy, _Mapping]] = ..., redeliver_command_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportBoundaryRequest(_message.Message):
    __slots__ = ("job_id", "session_id", "boundary", "step", "metrics", "probe_loss", "scaffolds", "results", "region_signals", "safety_events", "step_time_ms", "loss_noise", "loss_mean")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROBE_LOSS_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLDS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REGION_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    SAFETY_EVENTS_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LOSS_NOISE_FIELD_NUMBER: _ClassVar[int]
    LOSS_MEAN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    session_id: str
    boundary: int
    step: int
    metrics: _containers.ScalarMap[str, float]
    probe_loss: float
    scaffolds: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.ScaffoldReport]
    results: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.CommandResult]
    region_signals: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.RegionSignal]
    safety_events: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.SafetyEvent]
    step_time_ms: float
    loss_noise: float
    loss_mean: float
    def __init__(self, job_id: _Optional[str] = ..., session_id: _Optional[str] = ..., boundary: _Optional[int] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., probe_loss: _Optional[float] = ..., scaffolds: _Optional[_Iterable[_Union[_telemetry_pb2.ScaffoldReport, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[_telemetry_pb2.CommandResult, _Mapping]]] = ..., region_signals: _Optional[_Iterable[_Union[_telemetry_pb2.RegionSignal, _Mapping]]] = ..., safety_events: _Optional[_Iterable[_Union[_telemetry_pb2.SafetyEvent, _Mapping]]] = ..., step_time_ms: _Optional[float] = ..., loss_noise: _Optional[float] = ..., loss_mean: _Optional[float] = ...) -> None: ...

class ReportBoundaryResponse(_message.Message):
    __slots__ = ("commands", "decisions")
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[_command_pb2.AdaptationCommand]
    decisions: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.Decision]
    def __init__(self, commands: _Optional[_Iterable[_Union[_command_pb2.AdaptationCommand, _Mapping]]] = ..., decisions: _Optional[_Iterable[_Union[_telemetry_pb2.Decision, _Mapping]]] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("job_id", "session_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    session_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
