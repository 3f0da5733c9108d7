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
    "MAX_ITEMS",
    "MAX_TEXT",
    "SHOWN_CHARS",
    "SHOWN_MESSAGE_CHARS",
    "clip",
    "derived_id",
    "identifier_error",
    "limit_error",
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
MAX_TEXT = 4_096  # characters in any string of a request (names, reasons, messages, details)
SHOWN_CHARS = 200  # a refused value is echoed in messages and logs cut to this many characters
SHOWN_MESSAGE_CHARS = 1_000  # and a whole refusal message (which may echo several) to this many

_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]*")
_F = FieldDescriptor


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

    Every enum value must be a known one, every number finite, every string at most MAX_TEXT
    characters and every repeated or map field at most MAX_ITEMS entries. Counts are checked before
    the entries, so a huge list is refused without walking it.
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
    return None
