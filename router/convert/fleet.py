"""Conversions for the ``turnout.v1.Fleet`` service."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fleet.telemetry import TelemetryRejection
from fleet.types import DrainReason, EndpointState, EndpointStatus, FleetSnapshot, TelemetrySample
from policies.types import Plan
from router.convert.timestamps import seconds_from_timestamp, timestamp_from_seconds
from router.validation import DrainInput, violation
from turnout.v1 import common_pb2, fleet_pb2

MAX_ECHOED_CHARS = 256  # longest endpoint id echoed back in a rejection

# TelemetrySample field -> TelemetryReport field, where the names differ.
_REPORT_FIELD = {"observed_at_s": "observed_at", "power_w": "power_watts"}

_STATUS = {
    EndpointStatus.READY: fleet_pb2.ENDPOINT_STATUS_READY,
    EndpointStatus.STALE: fleet_pb2.ENDPOINT_STATUS_STALE,
    EndpointStatus.UNHEALTHY: fleet_pb2.ENDPOINT_STATUS_UNHEALTHY,
    EndpointStatus.DRAINED: fleet_pb2.ENDPOINT_STATUS_DRAINED,
}

_DRAIN_REASONS = {
    fleet_pb2.DRAIN_REASON_MAINTENANCE: DrainReason.MAINTENANCE,
    fleet_pb2.DRAIN_REASON_SPOT_INTERRUPTION: DrainReason.SPOT_INTERRUPTION,
}


def report_field(sample_field: str) -> str:
    """The ``TelemetryReport`` field name of a ``TelemetrySample`` field (for rejections and metrics)."""
    return _REPORT_FIELD.get(sample_field, sample_field)


def telemetry_sample_from_proto(msg: fleet_pb2.TelemetryReport) -> TelemetrySample:
    """The sample a report carries; absent optional fields stay ``None`` (the store keeps old values).

    Raises INVALID_ARGUMENT when ``observed_at`` is missing or not a valid timestamp; every other rule
    (known endpoint, ranges, finiteness, clock skew) is checked by the store, which owns that state.
    """
    if not msg.HasField("observed_at"):
        raise violation("observed_at", "is required")
    return TelemetrySample(
        endpoint_id=msg.endpoint_id,
        observed_at_s=seconds_from_timestamp(msg.observed_at, "observed_at"),
        running_requests=msg.running_requests if msg.HasField("running_requests") else None,
        waiting_requests=msg.waiting_requests if msg.HasField("waiting_requests") else None,
        kv_cache_usage_ratio=msg.kv_cache_usage_ratio if msg.HasField("kv_cache_usage_ratio") else None,
        power_w=msg.power_watts if msg.HasField("power_watts") else None,
        utilization_ratio=msg.utilization_ratio if msg.HasField("utilization_ratio") else None,
        observed_ttft_ms=msg.observed_ttft_ms if msg.HasField("observed_ttft_ms") else None,
        observed_tpot_ms=msg.observed_tpot_ms if msg.HasField("observed_tpot_ms") else None,
        healthy=msg.healthy if msg.HasField("healthy") else None,
    )


def telemetry_ack_to_proto(
    accepted: int, rejected: int, rejections: Sequence[TelemetryRejection]
) -> fleet_pb2.TelemetryAck:
    """The ack; ``rejections`` carry stream indexes and at most the first 100 are included."""
    return fleet_pb2.TelemetryAck(
        accepted=accepted,
        rejected=rejected,
        rejections=[
            fleet_pb2.TelemetryRejection(
                index=r.index,
                endpoint_id=r.endpoint_id[:MAX_ECHOED_CHARS],
                field=report_field(r.field),
                rule=r.rule,
            )
            for r in rejections[:100]
        ],
    )


def _endpoint_to_proto(state: EndpointState) -> fleet_pb2.EndpointState:
    spec, load = state.spec, state.load
    msg = fleet_pb2.EndpointState(
        endpoint=common_pb2.EndpointRef(
            endpoint_id=spec.endpoint_id,
            address=spec.address,
            pool=spec.pool,
            accelerator_kind=spec.accelerator_kind,
            instance_type=spec.instance_type,
            zone=spec.zone,
            region=spec.region,
            model=spec.model,
        ),
        status=_STATUS[state.status],
        load=fleet_pb2.EndpointLoad(
            running_requests=load.running_requests,
            waiting_requests=load.waiting_requests,
            kv_cache_usage_ratio=load.kv_cache_usage_ratio,
            power_watts=load.power_w or 0.0,
            utilization_ratio=load.utilization_ratio or 0.0,
            observed_ttft_ms=load.observed_ttft_ms or 0.0,
            observed_tpot_ms=load.observed_tpot_ms or 0.0,
        ),
        tp_degree=spec.tp_degree,
        precision=spec.precision.value,
        price_usd_per_hour=spec.price_usd_per_hour,
        max_context_tokens=spec.max_context_tokens,
        reserved=spec.reserved,
        max_batch_sequences=spec.max_batch_sequences,
        max_batched_tokens=spec.max_batched_tokens,
    )
    if load.received_at_s is not None:
        msg.load.last_telemetry_at.CopyFrom(timestamp_from_seconds(load.received_at_s))
    if state.drain is not None:
        msg.drain_reason = state.drain.reason.value
        if state.drain.deadline_s is not None:
            msg.drain_deadline.CopyFrom(timestamp_from_seconds(state.drain.deadline_s))
    return msg


def snapshot_to_proto(snapshot: FleetSnapshot, model: str | None = None) -> fleet_pb2.FleetSnapshot:
    """The snapshot, or only the endpoints serving ``model``; zones and the served models are whole."""
    endpoints: Iterable[EndpointState] = (
        snapshot.endpoints if model is None else snapshot.by_model.get(model, ())
    )
    return fleet_pb2.FleetSnapshot(
        version=snapshot.version,
        taken_at=timestamp_from_seconds(snapshot.taken_at_s),
        endpoints=[_endpoint_to_proto(e) for e in endpoints],
        zones=[
            fleet_pb2.Zone(
                name=z.name,
                region=z.region,
                power_cap_watts=z.power_cap_w,
                power_watts=snapshot.zone_power_w.get(z.name, 0.0),
            )
            for z in sorted(snapshot.zones.values(), key=lambda z: z.name)
        ],
        models=list(snapshot.models),
    )


def plan_to_proto(plan: Plan) -> fleet_pb2.Plan:
    """The plan as published; ``created_at`` is left unset for generation 0 (no plan yet)."""
    endpoint_ids = sorted(set(plan.share) | set(plan.active_endpoint_ids))
    msg = fleet_pb2.Plan(
        generation=plan.generation,
        status=plan.status,
        endpoints=[
            fleet_pb2.PlanEndpoint(
                endpoint_id=eid,
                active=eid in plan.active_endpoint_ids,
                class_share=dict(plan.share.get(eid, {})),
            )
            for eid in endpoint_ids
        ],
        pools=[
            fleet_pb2.PoolTarget(pool=pool, desired_replicas=n)
            for pool, n in sorted(plan.desired_replicas.items())
        ],
        predicted_cost_usd_per_hour=plan.predicted_cost_usd_per_hour,
        predicted_zone_power_watts=dict(plan.predicted_zone_power_w),
        solve_seconds=plan.solve_seconds,
        objective_usd_per_hour=plan.objective_usd_per_hour,
        lp_bound_usd_per_hour=plan.lp_bound_usd_per_hour,
        gap_to_lp_ratio=plan.gap_to_lp_ratio,
        unserved_requests_per_second=dict(plan.unserved_rate_per_s),
    )
    if plan.generation > 0:
        msg.created_at.CopyFrom(timestamp_from_seconds(plan.created_at_s))
    return msg


def drain_input_from_proto(msg: fleet_pb2.DrainRequest) -> DrainInput:
    """A drain request's fields; INVALID_ARGUMENT for a reason number the contract does not define or a
    deadline outside the timestamp range."""
    if msg.reason == fleet_pb2.DRAIN_REASON_UNSPECIFIED:
        reason: DrainReason | None = None
    elif msg.reason in _DRAIN_REASONS:
        reason = _DRAIN_REASONS[msg.reason]
    else:
        raise violation(
            "reason", f"must be DRAIN_REASON_MAINTENANCE or DRAIN_REASON_SPOT_INTERRUPTION, got {msg.reason}"
        )
    deadline_s = seconds_from_timestamp(msg.deadline, "deadline") if msg.HasField("deadline") else None
    return DrainInput(endpoint_id=msg.endpoint_id, pool=msg.pool, reason=reason, deadline_s=deadline_s)


def undrain_input_from_proto(msg: fleet_pb2.UndrainRequest) -> DrainInput:
    return DrainInput(endpoint_id=msg.endpoint_id, pool=msg.pool, reason=None, deadline_s=None)


def drain_response_to_proto(endpoint_ids: Sequence[str]) -> fleet_pb2.DrainResponse:
    return fleet_pb2.DrainResponse(endpoint_ids=list(endpoint_ids))
