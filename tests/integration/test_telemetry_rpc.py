"""Live telemetry through the real service: pushed over gRPC, scraped over HTTP from a local exporter
serving vLLM and DCGM text, staleness, and drain / undrain."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from helpers import (
    FIXTURES,
    ManualClock,
    Running,
    bad_request_fields,
    metric_value,
    rpc_error,
    running_app,
    small_fleet,
    status_details,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from router.convert.timestamps import timestamp_from_seconds
from turnout.v1 import fleet_pb2

READY = fleet_pb2.ENDPOINT_STATUS_READY
STALE = fleet_pb2.ENDPOINT_STATUS_STALE
UNHEALTHY = fleet_pb2.ENDPOINT_STATUS_UNHEALTHY
DRAINED = fleet_pb2.ENDPOINT_STATUS_DRAINED


def report(endpoint_id: str, at_s: float, **fields: Any) -> fleet_pb2.TelemetryReport:
    return fleet_pb2.TelemetryReport(
        endpoint_id=endpoint_id, observed_at=timestamp_from_seconds(at_s), **fields
    )


async def snapshot(running: Running) -> dict[str, fleet_pb2.EndpointState]:
    snap = await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
    return {e.endpoint.endpoint_id: e for e in snap.endpoints}


def pool_ids(states: dict[str, fleet_pb2.EndpointState], pool: str) -> list[str]:
    return sorted(eid for eid, e in states.items() if e.endpoint.pool == pool)


async def test_pushed_telemetry_reaches_snapshot_debug_page_and_metrics() -> None:
    clock = ManualClock()
    async with running_app(clock=clock) as running:
        states = await snapshot(running)
        h100 = pool_ids(states, "h100-llama8b")
        assert h100[0] == "test-az1/h100-llama8b/0"
        before = (await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())).version
        zone_before = {
            z.name: z.power_watts
            for z in (await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())).zones
        }

        ack = await running.fleet.ReportTelemetry(
            iter(
                [
                    report(
                        h100[0],
                        clock.now_s - 0.5,
                        running_requests=3,
                        waiting_requests=1,
                        kv_cache_usage_ratio=0.5,
                        power_watts=650.0,
                        utilization_ratio=0.7,
                        observed_ttft_ms=120.0,
                        observed_tpot_ms=15.0,
                        healthy=True,
                    ),
                    report(h100[1], clock.now_s, healthy=False),
                ]
            )
        )
        assert (ack.accepted, ack.rejected, list(ack.rejections)) == (2, 0, [])

        snap = await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
        assert snap.version > before
        by_id = {e.endpoint.endpoint_id: e for e in snap.endpoints}
        load = by_id[h100[0]].load
        assert (load.running_requests, load.waiting_requests) == (3, 1)
        assert (load.kv_cache_usage_ratio, load.power_watts, load.utilization_ratio) == (0.5, 650.0, 0.7)
        assert (load.observed_ttft_ms, load.observed_tpot_ms) == (120.0, 15.0)
        assert load.last_telemetry_at.ToNanoseconds() == timestamp_from_seconds(clock.now_s).ToNanoseconds()
        assert by_id[h100[0]].status == READY
        assert by_id[h100[1]].status == UNHEALTHY
        # The reported 650 W replaced the modelled idle draw of that endpoint in its zone's total.
        zone_after = {z.name: z.power_watts for z in snap.zones}
        assert zone_after["test-az2"] == zone_before["test-az2"]
        assert zone_after["test-az1"] != zone_before["test-az1"]

        page = await running.get_json("/debug/fleet")
        entry = {e["endpoint_id"]: e for e in page["endpoints"]}
        assert entry[h100[0]]["load"]["running_requests"] == 3
        assert entry[h100[0]]["load"]["power_w"] == 650.0
        assert entry[h100[1]]["status"] == "unhealthy" and entry[h100[1]]["reasons"] == ["reported unhealthy"]
        assert page["counts"]["unhealthy"] == 1

        _, text = await running.get_text("/metrics")
        assert metric_value(text, "turnout_telemetry_accepted_total") == 2
        assert metric_value(text, "turnout_endpoints", status="unhealthy") == 1
        assert metric_value(text, "turnout_snapshot_version") == snap.version
        util = metric_value(text, "turnout_accelerator_utilization_ratio", kind="h100", zone="test-az1")
        assert util == pytest.approx(0.7 / 8)  # one of eight H100 replicas at 0.7, the rest idle


async def test_bad_reports_are_rejected_counted_and_never_stored() -> None:
    clock = ManualClock()
    async with running_app(clock=clock) as running:
        states = await snapshot(running)
        eid = pool_ids(states, "h100-llama8b")[0]
        other = pool_ids(states, "h200-llama70b")[0]
        now = clock.now_s
        bad_ts = fleet_pb2.TelemetryReport(endpoint_id=eid)
        bad_ts.observed_at.seconds = 10**12  # beyond year 9999
        reports = [
            report("no/such/endpoint", now, running_requests=1),  # 0
            report(eid, now, kv_cache_usage_ratio=math.nan),  # 1
            report(eid, now, running_requests=-4),  # 2
            report(eid, now + 3600, running_requests=1),  # 3 from the future
            fleet_pb2.TelemetryReport(endpoint_id=eid, running_requests=1),  # 4 no observed_at
            report(eid, now, utilization_ratio=1.5),  # 5
            report(other, now, running_requests=7, power_watts=1234.5),  # 6 good
            bad_ts,  # 7
            report(eid, now, power_watts=-1.0),  # 8
            report(eid, now, observed_tpot_ms=math.inf),  # 9
        ]
        version = (await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())).version
        ack = await running.fleet.ReportTelemetry(iter(reports))
        assert (ack.accepted, ack.rejected) == (1, 9)
        got = {(r.index, r.endpoint_id, r.field) for r in ack.rejections}
        assert got == {
            (0, "no/such/endpoint", "endpoint_id"),
            (1, eid, "kv_cache_usage_ratio"),
            (2, eid, "running_requests"),
            (3, eid, "observed_at"),
            (4, eid, "observed_at"),
            (5, eid, "utilization_ratio"),
            (7, eid, "observed_at"),
            (8, eid, "power_watts"),
            (9, eid, "observed_tpot_ms"),
        }
        rules = {r.index: r.rule for r in ack.rejections}
        assert rules[0] == "unknown endpoint"
        assert "in the future" in rules[3] and rules[4] == "is required" and "valid timestamp" in rules[7]

        after = await snapshot(running)
        assert after[eid] == states[eid]  # nothing of the bad samples was stored
        assert after[other].load.running_requests == 7
        assert (await running.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())).version == version + 1

        _, text = await running.get_text("/metrics")
        assert metric_value(text, "turnout_telemetry_accepted_total") == 1
        expected = {
            "endpoint_id": 1,
            "kv_cache_usage_ratio": 1,
            "running_requests": 1,
            "observed_at": 3,
            "utilization_ratio": 1,
            "power_watts": 1,
            "observed_tpot_ms": 1,
        }
        for field, n in expected.items():
            assert metric_value(text, "turnout_telemetry_rejected_total", field=field) == n, field


async def test_ack_keeps_the_first_100_rejections_but_counts_all(served: Running) -> None:
    reports = [report(f"ghost-{i}", 1.0) for i in range(250)]
    ack = await served.fleet.ReportTelemetry(iter(reports))
    assert (ack.accepted, ack.rejected, len(ack.rejections)) == (0, 250, 100)
    assert [r.index for r in ack.rejections] == list(range(100))
    _, text = await served.get_text("/metrics")
    assert metric_value(text, "turnout_telemetry_rejected_total", field="endpoint_id") == 250


async def test_slow_agent_reports_apply_before_the_stream_ends() -> None:
    clock = ManualClock()
    async with running_app(clock=clock) as running:
        eid = pool_ids(await snapshot(running), "h100-llama8b")[2]

        async def agent() -> AsyncIterator[fleet_pb2.TelemetryReport]:
            for n in (5, 9):
                yield report(eid, clock.now_s, running_requests=n)

                async def applied(n: int = n) -> bool:
                    return (await snapshot(running))[eid].load.running_requests == n

                await wait_until(applied, timeout_s=5)  # applied while the stream is still open

        ack = await running.fleet.ReportTelemetry(agent())
        assert (ack.accepted, ack.rejected) == (2, 0)


async def test_endpoints_without_reports_turn_stale_and_recover() -> None:
    clock = ManualClock()
    data = small_fleet()
    data["telemetry"]["stale_after_s"] = 2
    async with running_app(data, clock=clock) as running:
        states = await snapshot(running)
        assert all(e.status == READY for e in states.values())
        clock.advance(2.5)

        async def stale_count() -> int:
            return sum(e.status == STALE for e in (await snapshot(running)).values())

        await wait_until(lambda: stale_count(), timeout_s=5)
        states = await snapshot(running)
        expects = {eid for eid, e in states.items() if e.endpoint.pool != "inf2-llama8b"}
        assert {eid for eid, e in states.items() if e.status == STALE} == expects  # 8 h100 + 4 h200
        assert all(states[eid].status == READY for eid in pool_ids(states, "inf2-llama8b"))  # telemetry: none

        page = await running.get_json("/debug/fleet")
        stale = [e for e in page["endpoints"] if e["status"] == "stale"]
        assert len(stale) == 12 and all("no telemetry since start" in e["reasons"][0] for e in stale)
        assert all(not e["eligible"] for e in stale)
        _, text = await running.get_text("/metrics")
        assert metric_value(text, "turnout_endpoints", status="stale") == 12
        assert metric_value(text, "turnout_endpoints", status="ready") == 6

        eid = pool_ids(states, "h200-llama70b")[0]
        ack = await running.fleet.ReportTelemetry(iter([report(eid, clock.now_s, running_requests=1)]))
        assert ack.accepted == 1
        assert (await snapshot(running))[eid].status == READY
        clock.advance(2.5)

        async def stale_again() -> bool:
            return (await snapshot(running))[eid].status == STALE

        await wait_until(stale_again, timeout_s=5)
        page = await running.get_json("/debug/fleet")
        entry = next(e for e in page["endpoints"] if e["endpoint_id"] == eid)
        assert "telemetry is 2.5 s old" in entry["reasons"][0]


async def test_drain_and_undrain_by_endpoint_and_pool() -> None:
    clock = ManualClock()
    async with running_app(clock=clock) as running:
        states = await snapshot(running)
        eid = pool_ids(states, "h100-llama8b")[0]
        h200 = pool_ids(states, "h200-llama70b")

        reply = await running.fleet.Drain(
            fleet_pb2.DrainRequest(endpoint_id=eid, reason=fleet_pb2.DRAIN_REASON_MAINTENANCE)
        )
        assert list(reply.endpoint_ids) == [eid]
        again = await running.fleet.Drain(
            fleet_pb2.DrainRequest(endpoint_id=eid, reason=fleet_pb2.DRAIN_REASON_MAINTENANCE)
        )
        assert list(again.endpoint_ids) == []  # already drained that way: nothing changed
        deadline = timestamp_from_seconds(clock.now_s + 120)
        reply = await running.fleet.Drain(
            fleet_pb2.DrainRequest(
                pool="h200-llama70b", reason=fleet_pb2.DRAIN_REASON_SPOT_INTERRUPTION, deadline=deadline
            )
        )
        assert sorted(reply.endpoint_ids) == h200

        states = await snapshot(running)
        assert states[eid].status == DRAINED and states[eid].drain_reason == "maintenance"
        assert all(states[e].status == DRAINED for e in h200)
        assert states[h200[0]].drain_reason == "spot_interruption"
        assert states[h200[0]].drain_deadline.seconds == deadline.seconds
        page = await running.get_json("/debug/fleet")
        assert page["counts"]["drained"] == 5
        entry = next(e for e in page["endpoints"] if e["endpoint_id"] == h200[0])
        assert entry["drain"]["reason"] == "spot_interruption"
        assert entry["reasons"][0].startswith("drained (spot_interruption) until")
        _, text = await running.get_text("/metrics")
        assert metric_value(text, "turnout_endpoints", status="drained") == 5

        reply = await running.fleet.Undrain(fleet_pb2.UndrainRequest(pool="h200-llama70b"))
        assert sorted(reply.endpoint_ids) == h200
        reply = await running.fleet.Undrain(fleet_pb2.UndrainRequest(endpoint_id=eid))
        assert list(reply.endpoint_ids) == [eid]
        assert all(e.status == READY for e in (await snapshot(running)).values())


@pytest.mark.parametrize(
    ("request_fields", "code", "field"),
    [
        ({"reason": fleet_pb2.DRAIN_REASON_MAINTENANCE}, grpc.StatusCode.INVALID_ARGUMENT, "endpoint_id"),
        (
            {"endpoint_id": "test-az1/h100-llama8b/0", "pool": "h100-llama8b", "reason": 1},
            grpc.StatusCode.INVALID_ARGUMENT,
            "endpoint_id",
        ),
        ({"endpoint_id": "test-az1/h100-llama8b/0"}, grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        ({"endpoint_id": "test-az1/h100-llama8b/0", "reason": 9}, grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        ({"endpoint_id": "nope/nope/0", "reason": 1}, grpc.StatusCode.NOT_FOUND, None),
        ({"pool": "nope", "reason": 2}, grpc.StatusCode.NOT_FOUND, None),
    ],
)
async def test_drain_refusals(
    served: Running, request_fields: dict[str, Any], code: grpc.StatusCode, field: str | None
) -> None:
    before = await snapshot(served)
    err = await rpc_error(served.fleet.Drain(fleet_pb2.DrainRequest(**request_fields)))
    assert err.code() == code, err.details()
    if field is not None:
        assert field in bad_request_fields(status_details(err))
    else:
        assert "nope" in (err.details() or "")
    assert await snapshot(served) == before


async def test_drain_deadline_in_the_past_is_refused(served: Running) -> None:
    err = await rpc_error(
        served.fleet.Drain(
            fleet_pb2.DrainRequest(
                endpoint_id="test-az1/h100-llama8b/0",
                reason=fleet_pb2.DRAIN_REASON_SPOT_INTERRUPTION,
                deadline=timestamp_from_seconds(1000.0),
            )
        )
    )
    assert bad_request_fields(status_details(err)) == {"deadline": "must be in the future"}
    err = await rpc_error(served.fleet.Undrain(fleet_pb2.UndrainRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- scraping a local exporter


def _fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def _dcgm_for_pod(pod: str) -> str:
    """The DCGM node page cut down to one pod's GPUs, as a per-pod exporter would serve it."""
    return "\n".join(
        line
        for line in _fixture("dcgm_p5_node.txt").splitlines()
        if line.startswith("#") or f'pod="{pod}"' in line
    )


def _sum(text: str, name: str) -> tuple[float, int]:
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return sum(values), len(values)


async def test_scraped_vllm_and_dcgm_text_reaches_the_snapshot() -> None:
    pages: dict[str, str] = {}

    async def serve_page(request: web.Request) -> web.Response:
        text = pages.get(request.path)
        if text is None:
            raise web.HTTPNotFound()
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    exporter = web.Application()
    exporter.router.add_get("/{tail:.*}", serve_page)
    runner = web.AppRunner(exporter)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        dcgm = _dcgm_for_pod("h100-llama8b-3")
        pages["/h100-llama8b/0/metrics"] = _fixture("vllm_v1_scrape1.txt") + "\n" + dcgm + "\n"
        power_w, gpus = _sum(dcgm, "DCGM_FI_DEV_POWER_USAGE")
        util_pct, _ = _sum(dcgm, "DCGM_FI_DEV_GPU_UTIL")
        assert gpus == 1

        data = small_fleet()
        data["telemetry"].update({"scrape_interval_s": 0.2, "scrape_timeout_s": 0.2})
        data["pools"][0]["metrics_url_template"] = f"http://127.0.0.1:{port}/{{pool}}/{{index}}/metrics"
        async with running_app(data) as running:
            eid = "test-az1/h100-llama8b/0"

            async def scraped() -> bool:
                return (await snapshot(running))[eid].load.running_requests == 12

            await wait_until(scraped, timeout_s=10)
            load = (await snapshot(running))[eid].load
            assert (load.running_requests, load.waiting_requests) == (12, 3)
            assert load.kv_cache_usage_ratio == pytest.approx(0.4375)
            assert load.observed_ttft_ms == pytest.approx(6.5 / 40 * 1000)  # cumulative mean on first sight
            assert load.observed_tpot_ms == pytest.approx(90 / 5000 * 1000)
            assert load.power_watts == pytest.approx(power_w)
            assert load.utilization_ratio == pytest.approx(util_pct / 100)

            # The page changes: the next scrapes bring the new load and the recent latency means.
            pages["/h100-llama8b/0/metrics"] = _fixture("vllm_v1_scrape2.txt") + "\n" + dcgm + "\n"

            async def rescraped() -> bool:
                return (await snapshot(running))[eid].load.running_requests == 20

            await wait_until(rescraped, timeout_s=10)
            load = (await snapshot(running))[eid].load
            assert load.observed_ttft_ms == pytest.approx(3.0 / 10 * 1000)
            assert load.observed_tpot_ms == pytest.approx(22.0 / 1000 * 1000)

            page = await running.get_json("/debug/fleet")
            entry = next(e for e in page["endpoints"] if e["endpoint_id"] == eid)
            assert entry["metrics_url"] == f"http://127.0.0.1:{port}/h100-llama8b/0/metrics"
            assert entry["load"]["running_requests"] == 20 and entry["status"] == "ready"
            _, text = await running.get_text("/metrics")
            assert metric_value(text, "turnout_scrapes_total", outcome="ok") >= 2
            assert metric_value(text, "turnout_scrapes_total", outcome="error") >= 7  # the other seven 404
    finally:
        await runner.cleanup()
