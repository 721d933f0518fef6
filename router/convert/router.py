"""Conversions for the ``turnout.v1.Router`` service."""

from __future__ import annotations

from fleet.types import Priority
from router.errors import RpcError, to_status_proto
from router.validation import MAX_ID_CHARS, CompletionInput, PlaceRequestInput, violation
from turnout.v1 import common_pb2, router_pb2

_PRIORITIES = {
    common_pb2.PRIORITY_UNSPECIFIED: Priority.STANDARD,  # the contract: unspecified is standard
    common_pb2.PRIORITY_CRITICAL: Priority.CRITICAL,
    common_pb2.PRIORITY_STANDARD: Priority.STANDARD,
    common_pb2.PRIORITY_SHEDDABLE: Priority.SHEDDABLE,
}


def priority_from_proto(value: int, field: str = "priority") -> Priority:
    """A ``turnout.v1.Priority`` number as a domain priority; INVALID_ARGUMENT for numbers the contract
    does not define (proto3 enums are open, so any int32 can arrive)."""
    try:
        return _PRIORITIES[value]  # type: ignore[index]
    except KeyError:
        raise violation(
            field, f"must be PRIORITY_CRITICAL, PRIORITY_STANDARD or PRIORITY_SHEDDABLE, got {value}"
        ) from None


def place_input_from_proto(msg: router_pb2.PlaceRequest) -> PlaceRequestInput:
    """The request's fields as plain values (rules are checked by ``router.validation``)."""
    return PlaceRequestInput(
        request_id=msg.request_id,
        model=msg.model,
        tenant=msg.tenant,
        priority=priority_from_proto(msg.priority),
        input_tokens=msg.input_tokens,
        max_output_tokens=msg.max_output_tokens,
        expected_output_tokens=msg.expected_output_tokens,
        slo_ttft_ms=msg.slo.ttft_ms,
        slo_tpot_ms=msg.slo.tpot_ms,
        allowed_accelerator_kinds=tuple(msg.allowed_accelerator_kinds),
        region=msg.region,
        zone=msg.zone,
        data_region=msg.data_region,
    )


def completion_input_from_proto(msg: router_pb2.Completion) -> CompletionInput:
    return CompletionInput(
        lease_id=msg.lease_id,
        input_tokens=msg.input_tokens,
        output_tokens=msg.output_tokens,
        ttft_ms=msg.ttft_ms,
        tpot_ms=msg.tpot_ms,
        success=msg.success,
    )


def echo_request_id(request_id: str) -> str:
    """The request id to echo in a stream result: itself, or empty when it is too long to be valid
    (results stay in request order, so the client can still match them)."""
    return request_id if len(request_id) <= MAX_ID_CHARS else ""


def place_error_result(request_id: str, err: RpcError) -> router_pb2.PlaceResult:
    """A ``PlaceResult`` carrying the error ``Place`` would have answered, with the same details."""
    return router_pb2.PlaceResult(request_id=echo_request_id(request_id), error=to_status_proto(err))
