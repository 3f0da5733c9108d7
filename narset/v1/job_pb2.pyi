import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from narset.v1 import command_pb2 as _command_pb2
from narset.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_ATTACHED: _ClassVar[JobState]
    JOB_STATE_DETACHED: _ClassVar[JobState]

class SizeClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_CLASS_UNSPECIFIED: _ClassVar[SizeClass]
    SIZE_CLASS_MICRO: _ClassVar[SizeClass]
    SIZE_CLASS_MESO: _ClassVar[SizeClass]
    SIZE_CLASS_MACRO: _ClassVar[SizeClass]

class FoldKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FOLD_KIND_UNSPECIFIED: _ClassVar[FoldKind]
    FOLD_KIND_LINEAR: _ClassVar[FoldKind]
    FOLD_KIND_LORA: _ClassVar[FoldKind]
    FOLD_KIND_ROUTER: _ClassVar[FoldKind]
    FOLD_KIND_TRANSFER: _ClassVar[FoldKind]
    FOLD_KIND_REPARAM: _ClassVar[FoldKind]

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_JOB_ATTACHED: _ClassVar[EventKind]
    EVENT_KIND_JOB_DETACHED: _ClassVar[EventKind]
    EVENT_KIND_COMMAND_SUBMITTED: _ClassVar[EventKind]
    EVENT_KIND_COMMAND_DELIVERED: _ClassVar[EventKind]
    EVENT_KIND_COMMAND_APPLIED: _ClassVar[EventKind]
    EVENT_KIND_COMMAND_REJECTED: _ClassVar[EventKind]
    EVENT_KIND_BOUNDARY_REPORTED: _ClassVar[EventKind]
    EVENT_KIND_DECISION_MADE: _ClassVar[EventKind]
    EVENT_KIND_POLICY_CHANGED: _ClassVar[EventKind]
    EVENT_KIND_SAFETY_EVENT: _ClassVar[EventKind]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_ATTACHED: JobState
JOB_STATE_DETACHED: JobState
SIZE_CLASS_UNSPECIFIED: SizeClass
SIZE_CLASS_MICRO: SizeClass
SIZE_CLASS_MESO: SizeClass
SIZE_CLASS_MACRO: SizeClass
FOLD_KIND_UNSPECIFIED: FoldKind
FOLD_KIND_LINEAR: FoldKind
FOLD_KIND_LORA: FoldKind
FOLD_KIND_ROUTER: FoldKind
FOLD_KIND_TRANSFER: FoldKind
FOLD_KIND_REPARAM: FoldKind
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_JOB_ATTACHED: EventKind
EVENT_KIND_JOB_DETACHED: EventKind
EVENT_KIND_COMMAND_SUBMITTED: EventKind
EVENT_KIND_COMMAND_DELIVERED: EventKind
EVENT_KIND_COMMAND_APPLIED: EventKind
EVENT_KIND_COMMAND_REJECTED: EventKind
EVENT_KIND_BOUNDARY_REPORTED: EventKind
EVENT_KIND_DECISION_MADE: EventKind
EVENT_KIND_POLICY_CHANGED: EventKind
EVENT_KIND_SAFETY_EVENT: EventKind

class ParameterInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype", "tied_to")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    TIED_TO_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    tied_to: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., tied_to: _Optional[_Iterable[str]] = ...) -> None: ...

class ModuleInfo(_message.Message):
    __slots__ = ("name", "type", "parameters", "in_features", "out_features", "traits", "conv")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    IN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    OUT_FEATURES_FIELD_NUMBER: _ClassVar[int]
    TRAITS_FIELD_NUMBER: _ClassVar[int]
    CONV_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    in_features: int
    out_features: int
    traits: _containers.RepeatedScalarFieldContainer[str]
    conv: ConvInfo
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., in_features: _Optional[int] = ..., out_features: _Optional[int] = ..., traits: _Optional[_Iterable[str]] = ..., conv: _Optional[_Union[ConvInfo, _Mapping]] = ...) -> None: ...

class ConvInfo(_message.Message):
    __slots__ = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode")
    IN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    OUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PADDING_FIELD_NUMBER: _ClassVar[int]
    DILATION_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PADDING_MODE_FIELD_NUMBER: _ClassVar[int]
    in_channels: int
    out_channels: int
    kernel_size: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    padding: _containers.RepeatedScalarFieldContainer[int]
    dilation: _containers.RepeatedScalarFieldContainer[int]
    groups: int
    padding_mode: str
    def __init__(self, in_channels: _Optional[int] = ..., out_channels: _Optional[int] = ..., kernel_size: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ..., padding: _Optional[_Iterable[int]] = ..., dilation: _Optional[_Iterable[int]] = ..., groups: _Optional[int] = ..., padding_mode: _Optional[str] = ...) -> None: ...

class Region(_message.Message):
    __slots__ = ("name", "patterns", "protected")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    name: str
    patterns: _containers.RepeatedScalarFieldContainer[str]
    protected: bool
    def __init__(self, name: _Optional[str] = ..., patterns: _Optional[_Iterable[str]] = ..., protected: _Optional[bool] = ...) -> None: ...

class RankInfo(_message.Message):
    __slots__ = ("rank", "hostname", "pid", "device")
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    hostname: str
    pid: int
    device: str
    def __init__(self, rank: _Optional[int] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class WorkerCapabilities(_message.Message):
    __slots__ = ("protocol_version", "blueprints", "wrapper", "compiled", "amp_dtype", "kasmina_version")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINTS_FIELD_NUMBER: _ClassVar[int]
    WRAPPER_FIELD_NUMBER: _ClassVar[int]
    COMPILED_FIELD_NUMBER: _ClassVar[int]
    AMP_DTYPE_FIELD_NUMBER: _ClassVar[int]
    KASMINA_VERSION_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    blueprints: _containers.RepeatedScalarFieldContainer[str]
    wrapper: str
    compiled: bool
    amp_dtype: str
    kasmina_version: str
    def __init__(self, protocol_version: _Optional[int] = ..., blueprints: _Optional[_Iterable[str]] = ..., wrapper: _Optional[str] = ..., compiled: _Optional[bool] = ..., amp_dtype: _Optional[str] = ..., kasmina_version: _Optional[str] = ...) -> None: ...

class BlueprintParam(_message.Message):
    __slots__ = ("name", "default_value", "min", "max", "integer", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_value: float
    min: float
    max: float
    integer: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., default_value: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., integer: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Blueprint(_message.Message):
    __slots__ = ("name", "description", "host_types", "required_traits", "size_class", "folds", "default_policy", "params", "default_learning_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HOST_TYPES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_TRAITS_FIELD_NUMBER: _ClassVar[int]
    SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_POLICY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    host_types: _containers.RepeatedScalarFieldContainer[str]
    required_traits: _containers.RepeatedScalarFieldContainer[str]
    size_class: SizeClass
    folds: _containers.RepeatedScalarFieldContainer[FoldKind]
    default_policy: _command_pb2.ScaffoldPolicy
    params: _containers.RepeatedCompositeFieldContainer[BlueprintParam]
    default_learning_rate: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., host_types: _Optional[_Iterable[str]] = ..., required_traits: _Optional[_Iterable[str]] = ..., size_class: _Optional[_Union[SizeClass, str]] = ..., folds: _Optional[_Iterable[_Union[FoldKind, str]]] = ..., default_policy: _Optional[_Union[_command_pb2.ScaffoldPolicy, _Mapping]] = ..., params: _Optional[_Iterable[_Union[BlueprintParam, _Mapping]]] = ..., default_learning_rate: _Optional[float] = ...) -> None: ...

class JobPolicy(_message.Message):
    __slots__ = ("max_live_scaffolds", "max_scaffolds_per_region", "max_folds_per_boundary", "max_prunes_per_boundary", "protected_regions", "embargo_ckpts", "auto")
    MAX_LIVE_SCAFFOLDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SCAFFOLDS_PER_REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_FOLDS_PER_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    MAX_PRUNES_PER_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    EMBARGO_CKPTS_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    max_live_scaffolds: int
    max_scaffolds_per_region: int
    max_folds_per_boundary: int
    max_prunes_per_boundary: int
    protected_regions: _containers.RepeatedScalarFieldContainer[str]
    embargo_ckpts: int
    auto: AutoPolicy
    def __init__(self, max_live_scaffolds: _Optional[int] = ..., max_scaffolds_per_region: _Optional[int] = ..., max_folds_per_boundary: _Optional[int] = ..., max_prunes_per_boundary: _Optional[int] = ..., protected_regions: _Optional[_Iterable[str]] = ..., embargo_ckpts: _Optional[int] = ..., auto: _Optional[_Union[AutoPolicy, _Mapping]] = ...) -> None: ...

class AutoPolicy(_message.Message):
    __slots__ = ("enabled", "blueprint", "plateau_window", "plateau_rel_delta", "scaffold_policy", "blueprint_params", "warm_start")
    class BlueprintParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    PLATEAU_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PLATEAU_REL_DELTA_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_POLICY_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    WARM_START_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    blueprint: str
    plateau_window: int
    plateau_rel_delta: float
    scaffold_policy: _command_pb2.ScaffoldPolicy
    blueprint_params: _containers.ScalarMap[str, float]
    warm_start: WarmStart
    def __init__(self, enabled: _Optional[bool] = ..., blueprint: _Optional[str] = ..., plateau_window: _Optional[int] = ..., plateau_rel_delta: _Optional[float] = ..., scaffold_policy: _Optional[_Union[_command_pb2.ScaffoldPolicy, _Mapping]] = ..., blueprint_params: _Optional[_Mapping[str, float]] = ..., warm_start: _Optional[_Union[WarmStart, _Mapping]] = ...) -> None: ...

class WarmStart(_message.Message):
    __slots__ = ("sites", "exit_boundary")
    SITES_FIELD_NUMBER: _ClassVar[int]
    EXIT_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[WarmStartSite]
    exit_boundary: int
    def __init__(self, sites: _Optional[_Iterable[_Union[WarmStartSite, _Mapping]]] = ..., exit_boundary: _Optional[int] = ...) -> None: ...

class WarmStartSite(_message.Message):
    __slots__ = ("region", "blueprint", "blueprint_params", "scaffold_policy")
    class BlueprintParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REGION_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_POLICY_FIELD_NUMBER: _ClassVar[int]
    region: str
    blueprint: str
    blueprint_params: _containers.ScalarMap[str, float]
    scaffold_policy: _command_pb2.ScaffoldPolicy
    def __init__(self, region: _Optional[str] = ..., blueprint: _Optional[str] = ..., blueprint_params: _Optional[_Mapping[str, float]] = ..., scaffold_policy: _Optional[_Union[_command_pb2.ScaffoldPolicy, _Mapping]] = ...) -> None: ...

class RegionEmbargo(_message.Message):
    __slots__ = ("region", "until_boundary", "failures")
    REGION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    region: str
    until_boundary: int
    failures: int
    def __init__(self, region: _Optional[str] = ..., until_boundary: _Optional[int] = ..., failures: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "world_size", "ranks", "regions", "capabilities", "last_boundary", "last_step", "last_probe_loss", "attached_at", "last_seen_at", "live_scaffolds", "module_count", "session_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_PROBE_LOSS_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    LIVE_SCAFFOLDS_FIELD_NUMBER: _ClassVar[int]
    MODULE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    world_size: int
    ranks: _containers.RepeatedCompositeFieldContainer[RankInfo]
    regions: _containers.RepeatedCompositeFieldContainer[Region]
    capabilities: WorkerCapabilities
    last_boundary: int
    last_step: int
    last_probe_loss: float
    attached_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    live_scaffolds: int
    module_count: int
    session_id: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., world_size: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[RankInfo, _Mapping]]] = ..., regions: _Optional[_Iterable[_Union[Region, _Mapping]]] = ..., capabilities: _Optional[_Union[WorkerCapabilities, _Mapping]] = ..., last_boundary: _Optional[int] = ..., last_step: _Optional[int] = ..., last_probe_loss: _Optional[float] = ..., attached_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., live_scaffolds: _Optional[int] = ..., module_count: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class Scaffold(_message.Message):
    __slots__ = ("scaffold_id", "job_id", "module", "blueprint", "region", "stage", "alpha", "policy", "deploy_command_id", "age_ckpts", "ttl_ckpts", "extensions", "deployed_boundary", "history", "gates")
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    AGE_CKPTS_FIELD_NUMBER: _ClassVar[int]
    TTL_CKPTS_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    scaffold_id: str
    job_id: str
    module: str
    blueprint: str
    region: str
    stage: _telemetry_pb2.ScaffoldStage
    alpha: float
    policy: _command_pb2.ScaffoldPolicy
    deploy_command_id: str
    age_ckpts: int
    ttl_ckpts: int
    extensions: int
    deployed_boundary: int
    history: _containers.RepeatedCompositeFieldContainer[ScaffoldBoundary]
    gates: _telemetry_pb2.GateTelemetry
    def __init__(self, scaffold_id: _Optional[str] = ..., job_id: _Optional[str] = ..., module: _Optional[str] = ..., blueprint: _Optional[str] = ..., region: _Optional[str] = ..., stage: _Optional[_Union[_telemetry_pb2.ScaffoldStage, str]] = ..., alpha: _Optional[float] = ..., policy: _Optional[_Union[_command_pb2.ScaffoldPolicy, _Mapping]] = ..., deploy_command_id: _Optional[str] = ..., age_ckpts: _Optional[int] = ..., ttl_ckpts: _Optional[int] = ..., extensions: _Optional[int] = ..., deployed_boundary: _Optional[int] = ..., history: _Optional[_Iterable[_Union[ScaffoldBoundary, _Mapping]]] = ..., gates: _Optional[_Union[_telemetry_pb2.GateTelemetry, _Mapping]] = ...) -> None: ...

class ScaffoldBoundary(_message.Message):
    __slots__ = ("boundary", "stage", "alpha", "gates")
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    boundary: int
    stage: _telemetry_pb2.ScaffoldStage
    alpha: float
    gates: _telemetry_pb2.GateTelemetry
    def __init__(self, boundary: _Optional[int] = ..., stage: _Optional[_Union[_telemetry_pb2.ScaffoldStage, str]] = ..., alpha: _Optional[float] = ..., gates: _Optional[_Union[_telemetry_pb2.GateTelemetry, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "job_id", "kind", "message", "attributes", "created_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    job_id: str
    kind: EventKind
    message: str
    attributes: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., job_id: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., message: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
