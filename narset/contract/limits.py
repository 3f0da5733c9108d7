"""The documented limits of every request field, checked the same way wherever a message is received.

Narset checks every request against them before any of its logic runs (`narset.server.guard`), so
no request reaches the store or the decision engine with a value the rest of the code was not
written for: an unknown enum value, a non-finite number, an unbounded string or list, a boundary
whose sums overflow 64 bits, an id whose derived ids would not fit.
"""

from __future__ import annotations

import hashlib
import math
import re

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from narset.contract.scaffold_policy import FieldError

__all__ = [
    "BASE_ID_MAX",
    "ID_MAX",
    "MAX_BOUNDARY",
    "MAX_COMMAND_BYTES",
    "MAX_ITEMS",
    "MAX_MESSAGE_BYTES",
    "MAX_TEXT",
    "RANGES",
    "SHOWN_CHARS",
    "SHOWN_MESSAGE_CHARS",
    "clip",
    "derived_id",
    "fit_to_ranges",
    "identifier_error",
    "limit_error",
    "message_size_options",
    "range_error",
    "shown",
]

ID_MAX = 128  # characters in a command or scaffold id
# Job ids are held to ID_MAX - 32 characters, so an id Narset builds from one (`auto.<job>.b<N>`,
# N <= MAX_BOUNDARY) fits the id limit. Ids derived from a scaffold id go through `derived_id`.
BASE_ID_MAX = ID_MAX - 32
_HASH_MARK = 9  # "@" and 8 hex digits of SHA-256 standing in for the cut end of a long base
# Boundaries stay exact as doubles (JSON readers) and leave room for every sum Narset makes with
# them (next boundary, embargo end) inside int64.
MAX_BOUNDARY = 2**53 - 1
MAX_ITEMS = 10_000  # entries in any repeated or map field of a request
# The largest message any party sends or receives: Narset (requests and answers), the worker's link
# and the CLI and Python client all use this one limit, so an answer one side may send the other can
# always receive. Answers that would exceed it are paged, split across boundaries, or refused before
# any change.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A command's encoded size: several always fit one ReportBoundary answer, so the commands due reach
# the job over the next boundaries, however large each is.
MAX_COMMAND_BYTES = 256 * 1024
MAX_TEXT = 4_096  # characters in any string of a request (names, reasons, messages, details)
SHOWN_CHARS = 200  # a refused value is echoed in messages and logs cut to this many characters
SHOWN_MESSAGE_CHARS = 1_000  # and a whole refusal message (which may echo several) to this many

# The documented range of numeric request fields beyond finiteness, by the field's full name (both ends
# inclusive; None: open). Measurements a worker reports that are ratios, norms, counts or durations
# cannot be negative; alpha is a blend weight. Fields whose sign carries meaning (a probe loss, G1's
# relative delta, G3's foldability) are only held finite.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "narset.v1.ScaffoldReport.alpha": (0.0, 1.0),
    "narset.v1.ScaffoldReport.age_ckpts": (0, None),
    "narset.v1.ScaffoldReport.ttl_ckpts": (0, None),
    "narset.v1.ScaffoldReport.extensions": (0, None),
    "narset.v1.ScaffoldReport.seed_parameters": (0, None),
    "narset.v1.GateTelemetry.svd_energy": (0.0, 1.0),
    "narset.v1.GateTelemetry.jitter_p95": (0.0, None),
    "narset.v1.GateTelemetry.drift": (0.0, None),
    "narset.v1.GateTelemetry.step_time_ratio": (0.0, None),
    "narset.v1.GateTelemetry.memory_fraction": (0.0, None),
    "narset.v1.ReportBoundaryRequest.step": (0, None),
    "narset.v1.ReportBoundaryRequest.step_time_ms": (0.0, None),
    "narset.v1.RegionSignal.grad_norm": (0.0, None),
    "narset.v1.RegionSignal.update_ratio": (0.0, None),
    "narset.v1.SafetyEvent.step": (0, None),
    "narset.v1.CommandResult.boundary": (0, MAX_BOUNDARY),
    "narset.v1.RankInfo.rank": (0, None),
    "narset.v1.RankInfo.pid": (0, None),
    "narset.v1.ModuleInfo.in_features": (0, None),
    "narset.v1.ModuleInfo.out_features": (0, None),
    "narset.v1.ParameterInfo.shape": (0, None),
    "narset.v1.ConvInfo.in_channels": (0, None),
    "narset.v1.ConvInfo.out_channels": (0, None),
    "narset.v1.ConvInfo.kernel_size": (0, None),
    "narset.v1.ConvInfo.stride": (0, None),
    "narset.v1.ConvInfo.padding": (0, None),
    "narset.v1.ConvInfo.dilation": (0, None),
    "narset.v1.ConvInfo.groups": (0, None),
}

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
_F = FieldDescriptor


def message_size_options(limit: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """gRPC channel and server options holding both directions to `limit` bytes."""
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, its full length noted, so that no echo of a value grows a log line."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: str) -> str:
    """`value` quoted for a message or a log, cut to SHOWN_CHARS characters."""
    if len(value) <= SHOWN_CHARS:
        return repr(value)
    return f"{value[:SHOWN_CHARS]!r}... ({len(value)} characters)"


def derived_id(base: str, suffix: str) -> str:
    """The id Narset derives from `base` (a scaffold id, say) for its own command: `base + suffix`.

    When that would exceed ID_MAX, the base is cut and marked "@" + 8 hex digits of its SHA-256, so
    the derived id fits and distinct bases still give distinct ids.
    """
    if len(base) + len(suffix) <= ID_MAX:
        return base + suffix
    mark = "@" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return base[: ID_MAX - len(suffix) - _HASH_MARK] + mark + suffix


def identifier_error(field: str, value: str, limit: int = ID_MAX) -> FieldError | None:
    """Why `value` is not an id of at most `limit` characters, or None."""
    if len(value) <= limit and _ID_PATTERN.fullmatch(value):
        return None
    return FieldError(
        field,
        f"must be 1-{limit} characters of letters, digits and . _ : @ / - (starting alphanumeric), got {shown(value)}",
    )


def limit_error(message: Message, prefix: str = "") -> FieldError | None:
    """The first field of `message` (recursively) over a documented limit, or None.

    Every enum value must be a known one, every number finite and within its RANGES entry, every
    string at most MAX_TEXT characters and every repeated or map field at most MAX_ITEMS entries.
    Counts are checked before the entries, so a huge list is refused without walking it.
    """
    for field, value in message.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            error = _map_error(field, value, path)
        elif field.is_repeated:
            error = _items_error(field, value, path)
        else:
            error = _value_error(field, value, path)
        if error is not None:
            return error
    return None


def _count_error(path: str, count: int) -> FieldError | None:
    if count > MAX_ITEMS:
        return FieldError(path, f"has {count} entries; at most {MAX_ITEMS}")
    return None


def _items_error(field: FieldDescriptor, items, path: str) -> FieldError | None:
    error = _count_error(path, len(items))
    for i, item in enumerate(items if error is None else ()):
        error = _value_error(field, item, f"{path}[{i}]")
        if error is not None:
            break
    return error


def _map_error(field: FieldDescriptor, entries, path: str) -> FieldError | None:
    error = _count_error(path, len(entries))
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    for key in entries if error is None else ():
        entry_path = f"{path}[{key[:SHOWN_CHARS] if isinstance(key, str) else key}]"
        error = _value_error(key_field, key, entry_path) or _value_error(value_field, entries[key], entry_path)
        if error is not None:
            break
    return error


def _value_error(field: FieldDescriptor, value: object, path: str) -> FieldError | None:
    if field.type == _F.TYPE_MESSAGE:
        return limit_error(value, path)
    if field.type == _F.TYPE_ENUM and field.enum_type.values_by_number.get(value) is None:
        known = ", ".join(v.name for v in field.enum_type.values)
        return FieldError(path, f"unknown {field.enum_type.name} value {value} (known: {known})")
    if field.type == _F.TYPE_STRING and len(value) > MAX_TEXT:
        return FieldError(path, f"is {len(value)} characters long; at most {MAX_TEXT}")
    if field.type in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT) and not math.isfinite(value):
        return FieldError(path, f"must be finite, got {value}")
    bounds = RANGES.get(field.full_name)
    return None if bounds is None else range_error(path, value, *bounds)


def range_error(field: str, value: float, low: float | None, high: float | None) -> FieldError | None:
    """Why `value` of `field` is outside [low, high] (None: open at that end), or None."""
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if high is None:
        return FieldError(field, f"must be >= {_number(low)}, got {_number(value)}")
    if low is None:
        return FieldError(field, f"must be <= {_number(high)}, got {_number(value)}")
    return FieldError(field, f"must be in [{_number(low)}, {_number(high)}], got {_number(value)}")


def fit_to_ranges(message: Message, prefix: str = "") -> list[str]:
    """Bring every finite number of `message` (recursively) inside its RANGES entry, as a sender does
    before Narset would refuse the whole message: an optional field is cleared (read as unmeasured),
    any other clamped to the nearer end. Returns the paths of the fields changed."""
    changed: list[str] = []
    for field, value in message.ListFields():
        path = f"{prefix}.{field.name}" if prefix else field.name
        if field.type == _F.TYPE_MESSAGE:
            if not field.message_type.GetOptions().map_entry:
                items = enumerate(value) if field.is_repeated else ((None, value),)
                for i, item in items:
                    changed += fit_to_ranges(item, path if i is None else f"{path}[{i}]")
            continue
        bounds = RANGES.get(field.full_name)
        if bounds is None:
            continue
        for i, item in enumerate(value) if field.is_repeated else ((None, value),):
            fitted = _clamped(item, *bounds)
            if fitted == item or not math.isfinite(item):
                continue
            if i is not None:
                value[i] = fitted
            elif field.has_presence:
                message.ClearField(field.name)
            else:
                setattr(message, field.name, fitted)
            changed.append(path if i is None else f"{path}[{i}]")
    return changed


def _clamped(value: float, low: float | None, high: float | None) -> float:
    if low is not None and value < low:
        return type(value)(low)
    if high is not None and value > high:
        return type(value)(high)
    return value


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
