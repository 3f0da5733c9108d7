import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlphaCurve(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALPHA_CURVE_UNSPECIFIED: _ClassVar[AlphaCurve]
    ALPHA_CURVE_LINEAR: _ClassVar[AlphaCurve]
    ALPHA_CURVE_COSINE: _ClassVar[AlphaCurve]

class ExitPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXIT_POLICY_UNSPECIFIED: _ClassVar[ExitPolicy]
    EXIT_POLICY_PREFER_FUSE: _ClassVar[ExitPolicy]
    EXIT_POLICY_PREFER_PRUNE: _ClassVar[ExitPolicy]
    EXIT_POLICY_PERSIST_IF_WINS: _ClassVar[ExitPolicy]

class HostMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_MODE_UNSPECIFIED: _ClassVar[HostMode]
    HOST_MODE_JOINT: _ClassVar[HostMode]
    HOST_MODE_FROZEN: _ClassVar[HostMode]

class CommandState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_STATE_UNSPECIFIED: _ClassVar[CommandState]
    COMMAND_STATE_PENDING: _ClassVar[CommandState]
    COMMAND_STATE_DELIVERED: _ClassVar[CommandState]
    COMMAND_STATE_APPLIED: _ClassVar[CommandState]
    COMMAND_STATE_REJECTED: _ClassVar[CommandState]
    COMMAND_STATE_SUPERSEDED: _ClassVar[CommandState]
ALPHA_CURVE_UNSPECIFIED: AlphaCurve
ALPHA_CURVE_LINEAR: AlphaCurve
ALPHA_CURVE_COSINE: AlphaCurve
EXIT_POLICY_UNSPECIFIED: ExitPolicy
EXIT_POLICY_PREFER_FUSE: ExitPolicy
EXIT_POLICY_PREFER_PRUNE: ExitPolicy
EXIT_POLICY_PERSIST_IF_WINS: ExitPolicy
HOST_MODE_UNSPECIFIED: HostMode
HOST_MODE_JOINT: HostMode
HOST_MODE_FROZEN: HostMode
COMMAND_STATE_UNSPECIFIED: CommandState
COMMAND_STATE_PENDING: CommandState
COMMAND_STATE_DELIVERED: CommandState
COMMAND_STATE_APPLIED: CommandState
COMMAND_STATE_REJECTED: CommandState
COMMAND_STATE_SUPERSEDED: CommandState

class AlphaSchedule(_message.Message):
    __slots__ = ("warmup_ckpts", "hold_ckpts", "decay_ckpts", "warm_level", "floor", "curve", "isolated_ckpts")
    WARMUP_CKPTS_FIELD_NUMBER: _ClassVar[int]
    HOLD_CKPTS_FIELD_NUMBER: _ClassVar[int]
    DECAY_CKPTS_FIELD_NUMBER: _ClassVar[int]
    WARM_LEVEL_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    CURVE_FIELD_NUMBER: _ClassVar[int]
    ISOLATED_CKPTS_FIELD_NUMBER: _ClassVar[int]
    warmup_ckpts: int
    hold_ckpts: int
    decay_ckpts: int
    warm_level: float
    floor: float
    curve: AlphaCurve
    isolated_ckpts: int
    def __init__(self, warmup_ckpts: _Optional[int] = ..., hold_ckpts: _Optional[int] = ..., decay_ckpts: _Optional[int] = ..., warm_level: _Optional[float] = ..., floor: _Optional[float] = ..., curve: _Optional[_Union[AlphaCurve, str]] = ..., isolated_ckpts: _Optional[int] = ...) -> None: ...

class KdLoss(_message.Message):
    __slots__ = ("weight", "tau", "logits_tap")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    LOGITS_TAP_FIELD_NUMBER: _ClassVar[int]
    weight: float
    tau: float
    logits_tap: str
    def __init__(self, weight: _Optional[float] = ..., tau: _Optional[float] = ..., logits_tap: _Optional[str] = ...) -> None: ...

class FeatureLoss(_message.Message):
    __slots__ = ("weight", "taps", "cadence_steps")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    CADENCE_STEPS_FIELD_NUMBER: _ClassVar[int]
    weight: float
    taps: _containers.RepeatedScalarFieldContainer[str]
    cadence_steps: int
    def __init__(self, weight: _Optional[float] = ..., taps: _Optional[_Iterable[str]] = ..., cadence_steps: _Optional[int] = ...) -> None: ...

class TeachingLosses(_message.Message):
    __slots__ = ("site_distill_weight", "kd", "feature", "probe_weight")
    SITE_DISTILL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KD_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PROBE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    site_distill_weight: float
    kd: KdLoss
    feature: FeatureLoss
    probe_weight: float
    def __init__(self, site_distill_weight: _Optional[float] = ..., kd: _Optional[_Union[KdLoss, _Mapping]] = ..., feature: _Optional[_Union[FeatureLoss, _Mapping]] = ..., probe_weight: _Optional[float] = ...) -> None: ...

class FoldOptions(_message.Message):
    __slots__ = ("foldable", "svd_rank", "sunset_ckpts")
    FOLDABLE_FIELD_NUMBER: _ClassVar[int]
    SVD_RANK_FIELD_NUMBER: _ClassVar[int]
    SUNSET_CKPTS_FIELD_NUMBER: _ClassVar[int]
    foldable: bool
    svd_rank: int
    sunset_ckpts: int
    def __init__(self, foldable: _Optional[bool] = ..., svd_rank: _Optional[int] = ..., sunset_ckpts: _Optional[int] = ...) -> None: ...

class GateThresholds(_message.Message):
    __slots__ = ("transfer_epsilon", "residual_gain_gamma", "foldability_theta", "jitter_p95_max", "drift_max", "diversity_min", "step_time_ratio_max", "memory_fraction_max")
    TRANSFER_EPSILON_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_GAIN_GAMMA_FIELD_NUMBER: _ClassVar[int]
    FOLDABILITY_THETA_FIELD_NUMBER: _ClassVar[int]
    JITTER_P95_MAX_FIELD_NUMBER: _ClassVar[int]
    DRIFT_MAX_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_MIN_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_RATIO_MAX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FRACTION_MAX_FIELD_NUMBER: _ClassVar[int]
    transfer_epsilon: float
    residual_gain_gamma: float
    foldability_theta: float
    jitter_p95_max: float
    drift_max: float
    diversity_min: float
    step_time_ratio_max: float
    memory_fraction_max: float
    def __init__(self, transfer_epsilon: _Optional[float] = ..., residual_gain_gamma: _Optional[float] = ..., foldability_theta: _Optional[float] = ..., jitter_p95_max: _Optional[float] = ..., drift_max: _Optional[float] = ..., diversity_min: _Optional[float] = ..., step_time_ratio_max: _Optional[float] = ..., memory_fraction_max: _Optional[float] = ...) -> None: ...

class ScaffoldPolicy(_message.Message):
    __slots__ = ("ttl_ckpts", "schedule", "teaching", "fold", "exit_policy", "gates", "host_mode", "lr_scale")
    TTL_CKPTS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    TEACHING_FIELD_NUMBER: _ClassVar[int]
    FOLD_FIELD_NUMBER: _ClassVar[int]
    EXIT_POLICY_FIELD_NUMBER: _ClassVar[int]
    GATES_FIELD_NUMBER: _ClassVar[int]
    HOST_MODE_FIELD_NUMBER: _ClassVar[int]
    LR_SCALE_FIELD_NUMBER: _ClassVar[int]
    ttl_ckpts: int
    schedule: AlphaSchedule
    teaching: TeachingLosses
    fold: FoldOptions
    exit_policy: ExitPolicy
    gates: GateThresholds
    host_mode: HostMode
    lr_scale: float
    def __init__(self, ttl_ckpts: _Optional[int] = ..., schedule: _Optional[_Union[AlphaSchedule, _Mapping]] = ..., teaching: _Optional[_Union[TeachingLosses, _Mapping]] = ..., fold: _Optional[_Union[FoldOptions, _Mapping]] = ..., exit_policy: _Optional[_Union[ExitPolicy, str]] = ..., gates: _Optional[_Union[GateThresholds, _Mapping]] = ..., host_mode: _Optional[_Union[HostMode, str]] = ..., lr_scale: _Optional[float] = ...) -> None: ...

class ScaffoldRef(_message.Message):
    __slots__ = ("scaffold_id", "module")
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    scaffold_id: str
    module: str
    def __init__(self, scaffold_id: _Optional[str] = ..., module: _Optional[str] = ...) -> None: ...

class DeployAction(_message.Message):
    __slots__ = ("module", "blueprint", "region", "as_scaffold", "policy", "blueprint_params", "learning_rate", "scaffold_id")
    class BlueprintParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODULE_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AS_SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BLUEPRINT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    module: str
    blueprint: str
    region: str
    as_scaffold: bool
    policy: ScaffoldPolicy
    blueprint_params: _containers.ScalarMap[str, float]
    learning_rate: float
    scaffold_id: str
    def __init__(self, module: _Optional[str] = ..., blueprint: _Optional[str] = ..., region: _Optional[str] = ..., as_scaffold: _Optional[bool] = ..., policy: _Optional[_Union[ScaffoldPolicy, _Mapping]] = ..., blueprint_params: _Optional[_Mapping[str, float]] = ..., learning_rate: _Optional[float] = ..., scaffold_id: _Optional[str] = ...) -> None: ...

class FoldAction(_message.Message):
    __slots__ = ("scaffold", "force")
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    force: bool
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ..., force: _Optional[bool] = ...) -> None: ...

class PruneAction(_message.Message):
    __slots__ = ("scaffold", "force", "immediate")
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    IMMEDIATE_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    force: bool
    immediate: bool
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ..., force: _Optional[bool] = ..., immediate: _Optional[bool] = ...) -> None: ...

class PersistAction(_message.Message):
    __slots__ = ("scaffold", "extra_ckpts")
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    EXTRA_CKPTS_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    extra_ckpts: int
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ..., extra_ckpts: _Optional[int] = ...) -> None: ...

class RollbackAction(_message.Message):
    __slots__ = ("scaffold",)
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ...) -> None: ...

class PauseAction(_message.Message):
    __slots__ = ("scaffold",)
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ...) -> None: ...

class ResumeAction(_message.Message):
    __slots__ = ("scaffold",)
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    scaffold: ScaffoldRef
    def __init__(self, scaffold: _Optional[_Union[ScaffoldRef, _Mapping]] = ...) -> None: ...

class AdaptationCommand(_message.Message):
    __slots__ = ("command_id", "job_id", "issued_by", "reason", "created_at", "deploy", "fold", "prune", "persist", "rollback", "pause", "resume")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEPLOY_FIELD_NUMBER: _ClassVar[int]
    FOLD_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    job_id: str
    issued_by: str
    reason: str
    created_at: _timestamp_pb2.Timestamp
    deploy: DeployAction
    fold: FoldAction
    prune: PruneAction
    persist: PersistAction
    rollback: RollbackAction
    pause: PauseAction
    resume: ResumeAction
    def __init__(self, command_id: _Optional[str] = ..., job_id: _Optional[str] = ..., issued_by: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deploy: _Optional[_Union[DeployAction, _Mapping]] = ..., fold: _Optional[_Union[FoldAction, _Mapping]] = ..., prune: _Optional[_Union[PruneAction, _Mapping]] = ..., persist: _Optional[_Union[PersistAction, _Mapping]] = ..., rollback: _Optional[_Union[RollbackAction, _Mapping]] = ..., pause: _Optional[_Union[PauseAction, _Mapping]] = ..., resume: _Optional[_Union[ResumeAction, _Mapping]] = ...) -> None: ...

class CommandRecord(_message.Message):
    __slots__ = ("command", "state", "delivered_boundary", "applied_boundary", "result_message", "scaffold_id", "updated_at", "forced")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    RESULT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    command: AdaptationCommand
    state: CommandState
    delivered_boundary: int
    applied_boundary: int
    result_message: str
    scaffold_id: str
    updated_at: _timestamp_pb2.Timestamp
    forced: bool
    def __init__(self, command: _Optional[_Union[AdaptationCommand, _Mapping]] = ..., state: _Optional[_Union[CommandState, str]] = ..., delivered_boundary: _Optional[int] = ..., applied_boundary: _Optional[int] = ..., result_message: _Optional[str] = ..., scaffold_id: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., forced: _Optional[bool] = ...) -> None: ...
