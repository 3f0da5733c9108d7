import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from narset.v1 import command_pb2 as _command_pb2
from narset.v1 import job_pb2 as _job_pb2
from narset.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListJobsRequest(_message.Message):
    __slots__ = ("page_token",)
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_token: str
    def __init__(self, page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "policy", "embargoes")
    JOB_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EMBARGOES_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    policy: _job_pb2.JobPolicy
    embargoes: _containers.RepeatedCompositeFieldContainer[_job_pb2.RegionEmbargo]
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., policy: _Optional[_Union[_job_pb2.JobPolicy, _Mapping]] = ..., embargoes: _Optional[_Iterable[_Union[_job_pb2.RegionEmbargo, _Mapping]]] = ...) -> None: ...

class ListModulesRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListModulesResponse(_message.Message):
    __slots__ = ("modules",)
    MODULES_FIELD_NUMBER: _ClassVar[int]
    modules: _containers.RepeatedCompositeFieldContainer[_job_pb2.ModuleInfo]
    def __init__(self, modules: _Optional[_Iterable[_Union[_job_pb2.ModuleInfo, _Mapping]]] = ...) -> None: ...

class ListBlueprintsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListBlueprintsResponse(_message.Message):
    __slots__ = ("blueprints",)
    BLUEPRINTS_FIELD_NUMBER: _ClassVar[int]
    blueprints: _containers.RepeatedCompositeFieldContainer[_job_pb2.Blueprint]
    def __init__(self, blueprints: _Optional[_Iterable[_Union[_job_pb2.Blueprint, _Mapping]]] = ...) -> None: ...

class SubmitCommandRequest(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: _command_pb2.AdaptationCommand
    def __init__(self, command: _Optional[_Union[_command_pb2.AdaptationCommand, _Mapping]] = ...) -> None: ...

class SubmitCommandResponse(_message.Message):
    __slots__ = ("record", "duplicate")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    record: _command_pb2.CommandRecord
    duplicate: bool
    def __init__(self, record: _Optional[_Union[_command_pb2.CommandRecord, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ListScaffoldsRequest(_message.Message):
    __slots__ = ("job_id", "include_ended")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ENDED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    include_ended: bool
    def __init__(self, job_id: _Optional[str] = ..., include_ended: _Optional[bool] = ...) -> None: ...

class ListScaffoldsResponse(_message.Message):
    __slots__ = ("scaffolds",)
    SCAFFOLDS_FIELD_NUMBER: _ClassVar[int]
    scaffolds: _containers.RepeatedCompositeFieldContainer[_job_pb2.Scaffold]
    def __init__(self, scaffolds: _Optional[_Iterable[_Union[_job_pb2.Scaffold, _Mapping]]] = ...) -> None: ...

class GetScaffoldRequest(_message.Message):
    __slots__ = ("job_id", "scaffold_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCAFFOLD_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    scaffold_id: str
    def __init__(self, job_id: _Optional[str] = ..., scaffold_id: _Optional[str] = ...) -> None: ...

class GetScaffoldResponse(_message.Message):
    __slots__ = ("scaffold",)
    SCAFFOLD_FIELD_NUMBER: _ClassVar[int]
    scaffold: _job_pb2.Scaffold
    def __init__(self, scaffold: _Optional[_Union[_job_pb2.Scaffold, _Mapping]] = ...) -> None: ...

class ListCommandsRequest(_message.Message):
    __slots__ = ("job_id", "states", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    states: _containers.RepeatedScalarFieldContainer[_command_pb2.CommandState]
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_command_pb2.CommandState, str]]] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCommandsResponse(_message.Message):
    __slots__ = ("commands", "next_page_token")
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[_command_pb2.CommandRecord]
    next_page_token: str
    def __init__(self, commands: _Optional[_Iterable[_Union[_command_pb2.CommandRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[_telemetry_pb2.Decision, _Mapping]]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: _job_pb2.JobPolicy
    def __init__(self, policy: _Optional[_Union[_job_pb2.JobPolicy, _Mapping]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("job_id", "policy")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    policy: _job_pb2.JobPolicy
    def __init__(self, job_id: _Optional[str] = ..., policy: _Optional[_Union[_job_pb2.JobPolicy, _Mapping]] = ...) -> None: ...

class SetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: _job_pb2.JobPolicy
    def __init__(self, policy: _Optional[_Union[_job_pb2.JobPolicy, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class WatchEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _job_pb2.Event
    def __init__(self, event: _Optional[_Union[_job_pb2.Event, _Mapping]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("sequence", "at", "principal", "role", "peer", "method", "job_id", "command_id", "outcome", "reason", "detail")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    at: _timestamp_pb2.Timestamp
    principal: str
    role: str
    peer: str
    method: str
    job_id: str
    command_id: str
    outcome: str
    reason: str
    detail: str
    def __init__(self, sequence: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ..., peer: _Optional[str] = ..., method: _Optional[str] = ..., job_id: _Optional[str] = ..., command_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class DetachJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DetachJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...
