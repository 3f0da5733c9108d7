"""The one error type Narset's logic raises: a refusal carrying its gRPC status and the bad field."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from narset.contract.scaffold_policy import FieldError

__all__ = ["Refusal"]


class Refusal(Exception):
    """A request Narset refuses; changes nothing. The message names the field and the reason."""

    def __init__(self, code: grpc.StatusCode, field: str, reason: str) -> None:
        self.code = code
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    @classmethod
    def invalid(cls, field: str, reason: str) -> Refusal:
        return cls(grpc.StatusCode.INVALID_ARGUMENT, field, reason)

    @classmethod
    def not_found(cls, field: str, reason: str) -> Refusal:
        return cls(grpc.StatusCode.NOT_FOUND, field, reason)

    @classmethod
    def precondition(cls, field: str, reason: str) -> Refusal:
        return cls(grpc.StatusCode.FAILED_PRECONDITION, field, reason)

    @classmethod
    def exhausted(cls, field: str, reason: str) -> Refusal:
        return cls(grpc.StatusCode.RESOURCE_EXHAUSTED, field, reason)

    @classmethod
    def invalid_fields(cls, errors: Sequence[FieldError]) -> Refusal:
        """INVALID_ARGUMENT naming the first bad field, with every other one listed after it."""
        first, *rest = errors
        reason = "; ".join([first.reason, *(str(e) for e in rest)])
        return cls.invalid(first.field, reason)
