"""Conversions for the ``turnout.v1.Router`` service: requests in, placements and refusals out."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import error_details_pb2

from fleet.types import EndpointSpec, Priority
from policies.decision import Placed, Refused
from policies.framework import Candidate
from router.convert.timestamps import timestamp_from_seconds
from router.errors import FailedPrecondition, ResourceExhausted, RpcError, to_status_proto
from router.validation import MAX_ID_CHARS, CompletionInput, PlaceRequestInput, violation
from turnout.v1 import common_pb2, router_pb2

ERROR_DOMAIN = "turnout.v1"

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


# --------------------------------------------------------------------------------------------- answers


class Unplaceable(FailedPrecondition):
    """Nothing can take the request and waiting will not change that (the request does not fit any
    endpoint's context, its own constraints exclude every endpoint, or its prompt alone misses its TTFT
    objective on an idle endpoint). FAILED_PRECONDITION with a ``google.rpc.ErrorInfo`` naming the binding
    reason and no ``RetryInfo``: a client (or a gRPC retry policy) must change the request, not retry it.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason.upper(), domain=ERROR_DOMAIN))
        return [info]


def refusal_error(refused: Refused) -> RpcError:
    """The error answering a refusal: RESOURCE_EXHAUSTED with ``ErrorInfo`` (the binding reason, upper
    case: SLO, CAPACITY, POWER, CONTEXT, SHED) and ``RetryInfo`` (the expected drain time) when waiting
    can help; :class:`Unplaceable` (FAILED_PRECONDITION, ``ErrorInfo`` only) when it cannot."""
    if refused.retry_after_s is None:
        return Unplaceable(refused.message, reason=refused.reason.value)
    return ResourceExhausted(
        refused.message, reason=refused.reason.value, retry_after_s=refused.retry_after_s
    )


class PlacementEncoder:
    """Builds ``Placement`` messages. Endpoint references are built once per endpoint spec and copied into
    each answer; candidates are filled in place, field by field, rather than built as messages of their own
    and then copied into the placement (a third to a half less CPU for a four-candidate answer)."""

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[str, tuple[EndpointSpec, common_pb2.EndpointRef]] = {}

    def _ref(self, spec: EndpointSpec) -> common_pb2.EndpointRef:
        hit = self._refs.get(spec.endpoint_id)
        if hit is not None and hit[0] is spec:
            return hit[1]
        ref = common_pb2.EndpointRef(
            endpoint_id=spec.endpoint_id,
            address=spec.address,
            pool=spec.pool,
            accelerator_kind=spec.accelerator_kind,
            instance_type=spec.instance_type,
            zone=spec.zone,
            region=spec.region,
            model=spec.model,
        )
        self._refs[spec.endpoint_id] = (spec, ref)
        return ref

    def _fill(self, out: router_pb2.Candidate, c: Candidate) -> None:
        p = c.prediction
        out.endpoint.CopyFrom(self._ref(c.endpoint.spec))
        out.predicted_ttft_ms = p.ttft_ms
        out.predicted_tpot_ms = p.tpot_ms
        out.predicted_cost_usd = p.cost_usd
        out.cost_usd_per_million_tokens = p.cost_usd_per_million_tokens
        out.predicted_energy_joules = p.energy_joules

    def placement(
        self, placed: Placed, lease_expires_at_s: float, out: router_pb2.Placement | None = None
    ) -> router_pb2.Placement:
        """The answer to a granted ``Place``: ``placed`` must carry its lease id. Fills ``out`` (an empty
        message, e.g. the ``placement`` field of a ``PlaceResult``, which saves a copy) when given."""
        p = router_pb2.Placement() if out is None else out
        p.lease_id = placed.lease_id
        p.request_id = placed.request.request_id
        self._fill(p.chosen, placed.chosen)
        add = p.fallbacks.add
        for f in placed.fallbacks:
            self._fill(add(), f)
        p.plan_generation = placed.plan_generation
        p.reason = placed.reason.value
        p.lease_expires_at.CopyFrom(timestamp_from_seconds(lease_expires_at_s))
        p.snapshot_version = placed.snapshot_version
        return p


def complete_response_to_proto(*, already_completed: bool, cost_usd: float) -> router_pb2.CompleteResponse:
    return router_pb2.CompleteResponse(already_completed=already_completed, cost_usd=cost_usd)
