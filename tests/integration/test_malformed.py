"""A flood of malformed input against the real service: 10,000 bad PlaceStream requests of mixed kinds,
a ReportTelemetry stream of bad samples, and bad unary calls to every service. Every refusal names the
field (INVALID_ARGUMENT, google.rpc.BadRequest) or is NOT_FOUND; nothing is UNKNOWN or INTERNAL; the
counts in the metrics match; no state is changed or leaked; and the service still answers correctly."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import Running, bad_request_fields, metric_samples, metric_value, rpc_error, status_details

from router.convert.timestamps import timestamp_from_seconds
from turnout.v1 import common_pb2, fleet_pb2, jobs_pb2, router_pb2

N_PLACE = 10_000
N_TELEMETRY = 2_000
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _base(i: int) -> router_pb2.PlaceRequest:
    return router_pb2.PlaceRequest(
        request_id=f"bad-{i}",
        model="llama-3.1-8b",
        tenant="tenant-a",
        priority=common_pb2.PRIORITY_SHEDDABLE,
        input_tokens=300,
        max_output_tokens=100,
    )


def _missing_request_id(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.request_id = ""
    return "request_id"


def _negative_tokens(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.input_tokens = -rng.randrange(1, 2**62)
    return "input_tokens"


def _nan_slo(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.slo.ttft_ms = math.nan
    return "slo.ttft_ms"


def _inf_slo(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.slo.tpot_ms = -math.inf
    return "slo.tpot_ms"


def _huge_request_id(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.request_id = "r" * rng.randrange(129, 20_000)
    return "request_id"


def _huge_model(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.model = "m" * rng.randrange(129, 50_000)
    return "model"


def _unknown_model(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.model = f"model-{rng.randrange(10**9)}"  # every one different: metric labels must not grow
    return ""  # NOT_FOUND


def _bad_priority(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.priority = rng.randrange(4, 2**31 - 1)  # type: ignore[assignment]
    return "priority"


def _expected_above_max(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.expected_output_tokens = r.max_output_tokens + rng.randrange(1, 1000)
    return "expected_output_tokens"


def _unknown_kind(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.allowed_accelerator_kinds.append(f"tpu-v{rng.randrange(100)}")
    return "allowed_accelerator_kinds[0]"


def _bad_zone(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.zone = f"mars-{rng.randrange(100)}"
    return "zone"


def _control_chars(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.tenant = "ten\x00ant\x1b"
    return "tenant"


def _zero_output(r: router_pb2.PlaceRequest, rng: random.Random) -> str:
    r.max_output_tokens = 0
    return "max_output_tokens"


KINDS: list[Callable[[router_pb2.PlaceRequest, random.Random], str]] = [
    _missing_request_id,
    _negative_tokens,
    _nan_slo,
    _inf_slo,
    _huge_request_id,
    _huge_model,
    _unknown_model,
    _bad_priority,
    _expected_above_max,
    _unknown_kind,
    _bad_zone,
    _control_chars,
    _zero_output,
]


def malformed_place_requests() -> list[tuple[router_pb2.PlaceRequest, str]]:
    """N_PLACE requests, each broken one way (kinds interleaved), with the field expected at fault
    ("" for an unknown model, which is NOT_FOUND)."""
    rng = random.Random(20261121)
    out = []
    for i in range(N_PLACE):
        r = _base(i)
        field = KINDS[i % len(KINDS)](r, rng)
        out.append((r, field))
    return out


def malformed_reports(endpoint_ids: list[str], now_s: float) -> list[tuple[fleet_pb2.TelemetryReport, str]]:
    rng = random.Random(7)
    out: list[tuple[fleet_pb2.TelemetryReport, str]] = []
    for i in range(N_TELEMETRY):
        eid = endpoint_ids[i % len(endpoint_ids)]
        r = fleet_pb2.TelemetryReport(endpoint_id=eid, observed_at=timestamp_from_seconds(now_s))
        kind = i % 8
        if kind == 0:
            r.endpoint_id = "x" * rng.randrange(1, 10_000)
            field = "endpoint_id"
        elif kind == 1:
            r.kv_cache_usage_ratio = math.nan
            field = "kv_cache_usage_ratio"
        elif kind == 2:
            r.running_requests = -rng.randrange(1, 2**62)
            field = "running_requests"
        elif kind == 3:
            r.observed_at.CopyFrom(timestamp_from_seconds(now_s + 3600 + rng.random()))
            field = "observed_at"
        elif kind == 4:
            r.ClearField("observed_at")
            field = "observed_at"
        elif kind == 5:
            r.utilization_ratio = 1.0 + rng.random() + 1e-9
            field = "utilization_ratio"
        elif kind == 6:
            r.power_watts = -math.inf
            field = "power_watts"
        else:
            r.observed_at.nanos = -1
            field = "observed_at"
        out.append((r, field))
    return out


async def test_ten_thousand_malformed_requests_leave_the_service_correct(served: Running) -> None:
    loop_tasks_before = len(asyncio.all_tasks())
    snap_before = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
    endpoint_ids = [e.endpoint.endpoint_id for e in snap_before.endpoints]

    # --- 10,000 malformed PlaceStream requests in one stream
    cases = malformed_place_requests()
    results = [r async for r in served.router.PlaceStream(iter([req for req, _ in cases]))]
    assert len(results) == N_PLACE
    codes: Counter[int] = Counter()
    for (req, field), result in zip(cases, results, strict=True):
        assert result.WhichOneof("result") == "error"
        assert result.request_id == (req.request_id if len(req.request_id) <= 128 else "")
        codes[result.error.code] += 1
        if field:
            assert result.error.code == INVALID.value[0], (field, result.error.message)
            assert field in bad_request_fields(result.error), (field, result.error.message)
        else:
            assert result.error.code == NOT_FOUND.value[0]
            assert "served models: llama-3.1-70b, llama-3.1-8b" in result.error.message
    n_not_found = sum(1 for _, field in cases if not field)
    assert codes == {INVALID.value[0]: N_PLACE - n_not_found, NOT_FOUND.value[0]: n_not_found}

    # --- a telemetry stream of bad samples
    reports = malformed_reports(endpoint_ids, now_s=snap_before.taken_at.seconds + 1.0)
    ack = await served.fleet.ReportTelemetry(iter([r for r, _ in reports]))
    assert (ack.accepted, ack.rejected, len(ack.rejections)) == (0, N_TELEMETRY, 100)
    for rejection in ack.rejections:
        assert rejection.field == reports[rejection.index][1]
        assert len(rejection.endpoint_id) <= 256

    # --- bad unary calls to every service, concurrently
    unary: list[tuple[str, object, grpc.StatusCode]] = []
    for i in range(60):
        unary.append(
            (
                "turnout.v1.Router/Place",
                served.router.Place(cases[i][0]),
                INVALID if cases[i][1] else NOT_FOUND,
            )
        )
        unary.append(
            (
                "turnout.v1.Router/Complete",
                served.router.Complete(router_pb2.Completion(output_tokens=-i)),
                INVALID,
            )
        )
        unary.append(
            (
                "turnout.v1.Fleet/GetSnapshot",
                served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model="z" * (200 + i))),
                INVALID,
            )
        )
        unary.append(
            (
                "turnout.v1.Fleet/Drain",
                served.fleet.Drain(fleet_pb2.DrainRequest(endpoint_id=endpoint_ids[0], pool="h100-llama8b")),
                INVALID,
            )
        )
        unary.append(("turnout.v1.Fleet/Undrain", served.fleet.Undrain(fleet_pb2.UndrainRequest()), INVALID))
        unary.append(
            (
                "turnout.v1.Jobs/Submit",
                served.jobs.Submit(
                    jobs_pb2.SubmitJobRequest(idempotency_key="", spec=jobs_pb2.TrainingJobSpec())
                ),
                INVALID,
            )
        )
    errors = await asyncio.gather(*(rpc_error(call) for _, call, _ in unary))
    invalid_by_method: Counter[str] = Counter()
    for (method, _, expected), err in zip(unary, errors, strict=True):
        assert err.code() == expected, (method, err.code(), err.details())
        if expected == INVALID:
            assert bad_request_fields(status_details(err)), method
            invalid_by_method[method] += 1

    # --- the metrics count exactly what happened, with bounded label sets
    _, text = await served.get_text("/metrics")
    invalid_metric = metric_samples(text, "turnout_rpc_invalid_argument_total")
    assert invalid_metric == {
        (("method", "turnout.v1.Router/PlaceStream"),): N_PLACE - n_not_found,
        **{(("method", m),): float(n) for m, n in invalid_by_method.items()},
    }
    place = metric_samples(text, "turnout_place_requests_total")
    assert sum(place.values()) == N_PLACE + 60
    assert len(place) <= 4, place  # unknown models all count under one label value
    assert metric_value(
        text, "turnout_place_requests_total", model="_other", outcome="not_found", accelerator=""
    ) == (n_not_found + sum(1 for i in range(60) if not cases[i][1]))
    rejected = metric_samples(text, "turnout_telemetry_rejected_total")
    assert sum(rejected.values()) == N_TELEMETRY
    assert metric_value(text, "turnout_telemetry_rejected_total", field="endpoint_id") == N_TELEMETRY // 8
    assert metric_value(text, "turnout_telemetry_accepted_total") == 0

    # --- no state changed or leaked
    snap_after = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
    assert snap_after.version == snap_before.version
    assert list(snap_after.endpoints) == list(snap_before.endpoints)
    listed = await served.jobs.List(jobs_pb2.ListJobsRequest())
    assert list(listed.jobs) == []
    await asyncio.sleep(0.1)  # let finished calls' tasks be collected
    assert len(asyncio.all_tasks()) <= loop_tasks_before + 1

    # --- and the service still answers correctly
    health = health_pb2_grpc.HealthStub(served.channel)
    assert (
        await health.Check(health_pb2.HealthCheckRequest())
    ).status == health_pb2.HealthCheckResponse.SERVING
    placed = await served.router.Place(_base(0))
    assert placed.lease_id and placed.chosen.endpoint.model == _base(0).model
    good = fleet_pb2.TelemetryReport(
        endpoint_id=endpoint_ids[0], observed_at=snap_before.taken_at, running_requests=2
    )
    ack = await served.fleet.ReportTelemetry(iter([good]))
    assert (ack.accepted, ack.rejected) == (1, 0)
    snap = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
    assert snap.version == snap_before.version + 1
    assert snap.endpoints[0].load.running_requests == 2
    assert (await served.get_json("/readyz"))["status"] == "ready"
