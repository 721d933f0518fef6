"""Rich gRPC errors: every refusal names the field and the rule (``google.rpc.BadRequest``).

Servicers raise :class:`RpcError` subclasses from validation code (which stays free of gRPC context
objects); :func:`to_status` turns one into a ``grpc.Status`` with details for ``context.abort_with_status``
or into a ``google.rpc.Status`` message for per-item errors inside a stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # dotted path in the request, e.g. "slo.ttft_ms"
    rule: str  # what the value must satisfy, e.g. "must be >= 1"


class RpcError(Exception):
    """A refusal with a gRPC code and machine-readable details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[any_pb2.Any]:
        return []


class InvalidArgument(RpcError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.rule}" for v in self.violations))

    def details(self) -> list[any_pb2.Any]:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.rule)
                for v in self.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        return [packed]


class NotFound(RpcError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RpcError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(RpcError):
    code = grpc.StatusCode.UNIMPLEMENTED


class AlreadyExists(RpcError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(RpcError):
    code = grpc.StatusCode.ABORTED


class Unavailable(RpcError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(RpcError):
    """Nothing can take the work now. ``reason`` is machine-readable ("slo", "capacity", "power")."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, reason: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason.upper(), domain="turnout.v1"))
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after_s * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return [info, retry]


def to_status_proto(err: RpcError) -> status_pb2.Status:
    """The error as a ``google.rpc.Status`` message (for results inside a stream)."""
    code_value: int = err.code.value[0]
    assert code_value in code_pb2.Code.values()
    return status_pb2.Status(code=code_value, message=err.message, details=err.details())


def to_status(err: RpcError) -> grpc.Status:
    """The error as a ``grpc.Status`` for ``context.abort_with_status`` (details in the trailers)."""
    status: grpc.Status = rpc_status.to_status(to_status_proto(err))
    return status
