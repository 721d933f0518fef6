"""Place, PlaceStream and Complete on the real service (port 0, real gRPC channel): placements with their
predictions, idempotent replay, Complete and its attribution, lease expiry, drains, refusals without a
retry, the stream's per-request results, and the metrics they leave (checked by ``promtool``)."""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from helpers import (
    ManualClock,
    bad_request_fields,
    metric_samples,
    metric_value,
    rpc_error,
    running_app,
    small_fleet,
    status_details,
    wait_until,
)

from turnout.v1 import common_pb2, fleet_pb2, router_pb2

pytestmark = pytest.mark.tools  # promtool

MODEL = "llama-3.1-8b"


def place_request(request_id: str = "req-1", **changes: Any) -> router_pb2.PlaceRequest:
    req = router_pb2.PlaceRequest(
        request_id=request_id,
        model=MODEL,
        tenant="acme",
        priority=common_pb2.PRIORITY_STANDARD,
        input_tokens=1000,
        max_output_tokens=200,
    )
    for key, value in changes.items():
        if isinstance(value, list):
            getattr(req, key).extend(value)
        else:
            setattr(req, key, value)
    return req


def without_planner(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The small fleet (or ``data``) with the planner loop off: decisions follow no plan (``no_plan``)."""
    data = small_fleet() if data is None else data
    data.setdefault("planner", {})["enabled"] = False
    return data


def error_info(status: status_pb2.Status | None) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds or None) of a status's details."""
    assert status is not None
    reason, delay = "", None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
            assert info.domain == "turnout.v1"
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


def _finite_candidate(c: router_pb2.Candidate) -> None:
    for value in (
        c.predicted_ttft_ms,
        c.predicted_tpot_ms,
        c.predicted_cost_usd,
        c.cost_usd_per_million_tokens,
        c.predicted_energy_joules,
    ):
        assert math.isfinite(value) and value > 0, c


async def test_place_answers_the_cheapest_feasible_endpoint_with_predictions_and_fallbacks() -> None:
    clock = ManualClock()
    async with running_app(without_planner(), clock=clock) as served:
        placement = await served.router.Place(place_request())
        assert placement.request_id == "req-1" and placement.lease_id
        assert placement.reason == "no_plan" and placement.plan_generation == 0
        assert placement.snapshot_version == served.app.store.snapshot().version
        chosen = placement.chosen
        assert chosen.endpoint.model == MODEL and chosen.endpoint.zone == "test-az1"
        assert chosen.endpoint.region == "us-east-1" and chosen.endpoint.address.endswith(".test:8000")
        _finite_candidate(chosen)
        assert len(placement.fallbacks) == 3
        for fallback in placement.fallbacks:
            _finite_candidate(fallback)
            assert fallback.endpoint.endpoint_id != chosen.endpoint.endpoint_id
            assert fallback.predicted_cost_usd >= chosen.predicted_cost_usd  # spill ranks by cost
        # The cost per million tokens is the same cost over the request's tokens (1000 in + 200 out).
        assert chosen.cost_usd_per_million_tokens == pytest.approx(chosen.predicted_cost_usd / 1200 * 1e6)
        # Cheaper than any H100 of the fleet for this request: it picked the lowest cost.
        snap = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model=MODEL))
        assert {e.endpoint.endpoint_id for e in snap.endpoints} >= {chosen.endpoint.endpoint_id}
        assert placement.lease_expires_at.seconds >= int(clock.now_s) + 30  # grace plus the duration

        _, text = await served.get_text("/metrics")
        kind = chosen.endpoint.accelerator_kind
        assert (
            metric_value(
                text, "turnout_place_requests_total", model=MODEL, outcome="no_plan", accelerator=kind
            )
            == 1
        )
        assert (
            metric_value(text, "turnout_request_cost_usd_per_mtok_count", model=MODEL, accelerator=kind) == 1
        )
        assert metric_value(text, "turnout_place_decision_seconds_count") == 1
        assert metric_value(text, "turnout_leases") == 1
        # The booked request shows in how busy its silicon is, though no telemetry reports it.
        busy = metric_samples(text, "turnout_accelerator_utilization_ratio")
        assert busy[(("kind", kind), ("zone", "test-az1"))] > 0
        assert all(v == 0 for k, v in busy.items() if k != (("kind", kind), ("zone", "test-az1")))


async def test_place_is_idempotent_on_request_id_while_the_lease_lives() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        first = await served.router.Place(place_request("same"))
        again = await served.router.Place(place_request("same"))
        assert again.reason == "idempotent_replay"
        assert (again.lease_id, again.chosen, list(again.fallbacks), again.lease_expires_at) == (
            first.lease_id,
            first.chosen,
            list(first.fallbacks),
            first.lease_expires_at,
        )
        # The same id for a different request is a client bug, named on the field.
        err = await rpc_error(served.router.Place(place_request("same", input_tokens=5)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "different live request" in bad_request_fields(status_details(err))["request_id"]
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_leases") == 1  # the replay booked nothing

        # Once completed, the id is free again and gets a new lease.
        await served.router.Complete(router_pb2.Completion(lease_id=first.lease_id, success=True))
        fresh = await served.router.Place(place_request("same"))
        assert fresh.reason == "no_plan" and fresh.lease_id != first.lease_id


async def test_complete_attributes_cost_per_tenant_counts_slo_misses_and_is_idempotent() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        a = await served.router.Place(place_request("a", tenant="acme"))
        b = await served.router.Place(
            place_request("b", tenant="globex", priority=common_pb2.PRIORITY_CRITICAL)
        )
        kind_a, kind_b = a.chosen.endpoint.accelerator_kind, b.chosen.endpoint.accelerator_kind

        done_a = await served.router.Complete(
            router_pb2.Completion(
                lease_id=a.lease_id,
                input_tokens=1000,
                output_tokens=100,
                ttft_ms=250,
                tpot_ms=20,
                success=True,
            )
        )
        assert not done_a.already_completed
        # The predicted per-token prices applied to what was processed: the full prompt, half the output.
        assert 0 < done_a.cost_usd < a.chosen.predicted_cost_usd
        # An observed TTFT over the critical SLO (1000 ms) and a TPOT over it (60 ms): two violations.
        done_b = await served.router.Complete(
            router_pb2.Completion(
                lease_id=b.lease_id,
                input_tokens=1000,
                output_tokens=200,
                ttft_ms=1500,
                tpot_ms=70,
                success=False,
            )
        )
        assert done_b.cost_usd == pytest.approx(b.chosen.predicted_cost_usd)

        _, text = await served.get_text("/metrics")
        cost = metric_samples(text, "turnout_cost_usd_total")
        assert cost == {
            (("accelerator", kind_a), ("model", MODEL), ("tenant", "acme")): pytest.approx(done_a.cost_usd),
            (("accelerator", kind_b), ("model", MODEL), ("tenant", "globex")): pytest.approx(done_b.cost_usd),
        }
        tokens = {"tenant": "acme", "model": MODEL, "accelerator": kind_a}
        assert metric_value(text, "turnout_tokens_total", kind="input", **tokens) == 1000
        assert metric_value(text, "turnout_tokens_total", kind="output", **tokens) == 100
        assert metric_value(text, "turnout_slo_violations_total", model=MODEL, kind="ttft") == 1
        assert metric_value(text, "turnout_slo_violations_total", model=MODEL, kind="tpot") == 1
        assert metric_value(text, "turnout_completions_total", model=MODEL, outcome="success") == 1
        assert metric_value(text, "turnout_completions_total", model=MODEL, outcome="failure") == 1
        assert metric_value(text, "turnout_leases") == 0

        # A second Complete changes nothing and says so.
        again = await served.router.Complete(
            router_pb2.Completion(lease_id=a.lease_id, input_tokens=5000, output_tokens=5000, success=True)
        )
        assert (again.already_completed, again.cost_usd) == (True, 0.0)
        _, after = await served.get_text("/metrics")
        assert metric_samples(after, "turnout_cost_usd_total") == cost
        assert metric_value(after, "turnout_tokens_total", kind="input", **tokens) == 1000
        assert metric_value(after, "turnout_completions_total", model=MODEL, outcome="already_completed") == 1

        err = await rpc_error(served.router.Complete(router_pb2.Completion(lease_id="never-issued")))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "never-issued" in (err.details() or "")


async def test_complete_corrects_the_endpoints_latency_estimate() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        first = await served.router.Place(place_request("p1"))
        eid = first.chosen.endpoint.endpoint_id
        # The endpoint turns out twice as slow as predicted.
        await served.router.Complete(
            router_pb2.Completion(
                lease_id=first.lease_id,
                input_tokens=1000,
                output_tokens=200,
                ttft_ms=2 * first.chosen.predicted_ttft_ms,
                tpot_ms=2 * first.chosen.predicted_tpot_ms,
                success=True,
            )
        )
        kind = first.chosen.endpoint.accelerator_kind
        # The correction is the endpoint's own: its pool mates keep their predictions. (The ranking by
        # cost at full use prices the silicon, not one replica's corrections: identical replicas tie and
        # the load decides.)
        other = await served.router.Place(place_request("p2", allowed_accelerator_kinds=[kind]))
        mates = [c for c in (other.chosen, *other.fallbacks) if c.endpoint.endpoint_id != eid]
        assert mates
        for mate in mates:
            assert mate.predicted_ttft_ms == pytest.approx(first.chosen.predicted_ttft_ms)
        await served.router.Complete(router_pb2.Completion(lease_id=other.lease_id, success=True))
        # With its pool mates drained, the corrected endpoint shows its learned, slower predictions.
        snap = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest(model=MODEL))
        for e in snap.endpoints:
            if e.endpoint.accelerator_kind == kind and e.endpoint.endpoint_id != eid:
                await served.fleet.Drain(
                    fleet_pb2.DrainRequest(
                        endpoint_id=e.endpoint.endpoint_id, reason=fleet_pb2.DRAIN_REASON_MAINTENANCE
                    )
                )
        again = await served.router.Place(place_request("p3", allowed_accelerator_kinds=[kind]))
        assert again.chosen.endpoint.endpoint_id == eid and not again.fallbacks
        # Moved toward the observation by the correction weight (0.02 of the way from 1x to 2x: one
        # request's observation is mostly noise; fifty of them move the estimate most of the way).
        expected_ttft_ms = 1.02 * first.chosen.predicted_ttft_ms
        assert again.chosen.predicted_ttft_ms == pytest.approx(expected_ttft_ms, rel=0.002)
        assert again.chosen.predicted_tpot_ms > 1.01 * first.chosen.predicted_tpot_ms


async def test_an_uncompleted_lease_expires_on_the_periodic_sweep_and_frees_its_reservation() -> None:
    clock = ManualClock()
    data = without_planner()
    data["planner"]["placement"] = {"lease_grace_s": 5, "lease_max_ttl_s": 20}
    data["planner"]["leases"] = {"expiry_sweep_s": 0.02}
    async with running_app(data, clock=clock) as served:
        placement = await served.router.Place(place_request("lost"))
        expires_at_s = placement.lease_expires_at.seconds + placement.lease_expires_at.nanos / 1e9
        assert clock.now_s + 5 < expires_at_s <= clock.now_s + 20
        eid = placement.chosen.endpoint.endpoint_id
        assert served.app.engine.ledger.booking(eid).outstanding == 1

        clock.advance(expires_at_s - clock.now_s - 0.5)  # not yet
        await asyncio.sleep(0.1)
        assert served.app.engine.ledger.booking(eid).outstanding == 1

        clock.advance(1.0)  # past the expiry; no request arrives: the sweep alone releases it

        async def released() -> bool:
            _, text = await served.get_text("/metrics")
            return metric_value(text, "turnout_leases") == 0

        await wait_until(released)
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_leases_expired_total") == 1
        booking = served.app.engine.ledger.booking(eid)
        assert (booking.outstanding, booking.kv_tokens, booking.queued_prefill_tokens) == (0, 0, 0)
        assert served.app.engine.ledger.reserved_power_w("test-az1") == 0
        # The frontend comes back late: the lease is gone, and says so without changing anything.
        late = await served.router.Complete(
            router_pb2.Completion(lease_id=placement.lease_id, input_tokens=1000, output_tokens=10)
        )
        assert (late.already_completed, late.cost_usd) == (True, 0.0)
        # The request id is free again.
        fresh = await served.router.Place(place_request("lost"))
        assert fresh.lease_id != placement.lease_id and fresh.reason == "no_plan"


async def test_a_drained_endpoint_stops_receiving_work_at_once() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        first = await served.router.Place(place_request("d0"))
        target = first.chosen.endpoint.endpoint_id
        await served.fleet.Drain(
            fleet_pb2.DrainRequest(endpoint_id=target, reason=fleet_pb2.DRAIN_REASON_MAINTENANCE)
        )
        for i in range(1, 40):
            p = await served.router.Place(place_request(f"d{i}"))
            assert target not in {c.endpoint.endpoint_id for c in (p.chosen, *p.fallbacks)}
        # A whole pool drained: the rest of the fleet takes the work.
        pool = first.chosen.endpoint.pool
        await served.fleet.Drain(
            fleet_pb2.DrainRequest(pool=pool, reason=fleet_pb2.DRAIN_REASON_SPOT_INTERRUPTION)
        )
        p = await served.router.Place(place_request("after-pool"))
        assert p.chosen.endpoint.pool != pool and all(f.endpoint.pool != pool for f in p.fallbacks)
        await served.fleet.Undrain(fleet_pb2.UndrainRequest(pool=pool))
        kind = first.chosen.endpoint.accelerator_kind
        back = await served.router.Place(place_request("undrained", allowed_accelerator_kinds=[kind]))
        assert back.chosen.endpoint.pool == pool  # eligible again at once


async def test_a_request_no_endpoint_can_ever_hold_is_failed_precondition_without_retry() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        # 8B serves a 131,072-token context: a longer request fits nowhere, whatever the load.
        err = await rpc_error(served.router.Place(place_request("huge", input_tokens=140_000)))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(status_details(err)) == ("CONTEXT", None)
        assert "context" in (err.details() or "")
        # Constraints that exclude every endpoint of the model: waiting cannot help either.
        err = await rpc_error(served.router.Place(place_request("kinds", allowed_accelerator_kinds=["trn2"])))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(status_details(err)) == ("CAPACITY", None)
        _, text = await served.get_text("/metrics")
        assert (
            metric_value(
                text,
                "turnout_place_requests_total",
                model=MODEL,
                outcome="failed_precondition",
                accelerator="",
            )
            == 2
        )
        assert metric_value(text, "turnout_leases") == 0


async def test_place_stream_answers_each_request_in_order_with_errors_inside() -> None:
    async with running_app(without_planner(), clock=ManualClock()) as served:
        requests = [
            place_request("s1"),
            place_request("s2", max_output_tokens=0),  # invalid
            place_request("s3", model="unknown-model"),  # not found
            place_request("s1"),  # replay of the first
            place_request("s4", input_tokens=140_000),  # fits no endpoint
            place_request("s5", priority=common_pb2.PRIORITY_CRITICAL),
            place_request("s1", input_tokens=7),  # the same id for another request
        ]
        results = [r async for r in served.router.PlaceStream(iter(requests))]
        assert [r.request_id for r in results] == ["s1", "s2", "s3", "s1", "s4", "s5", "s1"]
        kinds = [r.WhichOneof("result") for r in results]
        assert kinds == ["placement", "error", "error", "placement", "error", "placement", "error"]
        assert results[0].placement.reason == "no_plan"
        assert results[3].placement.reason == "idempotent_replay"
        assert results[3].placement.lease_id == results[0].placement.lease_id
        assert results[5].placement.lease_id not in ("", results[0].placement.lease_id)
        assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert bad_request_fields(results[1].error) == {"max_output_tokens": "must be >= 1"}
        assert results[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert results[4].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert error_info(results[4].error) == ("CONTEXT", None)
        assert results[6].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "request_id" in bad_request_fields(results[6].error)

        _, text = await served.get_text("/metrics")
        method = "turnout.v1.Router/PlaceStream"
        assert metric_value(text, "turnout_rpc_invalid_argument_total", method=method) == 2
        assert metric_value(text, "turnout_leases") == 2


async def test_promtool_accepts_metrics_after_placements_completions_and_a_plan() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus): run make setup")
    clock = ManualClock()
    data = small_fleet()
    data["planner"] = {
        "demand": {
            "static": [
                {
                    "model": MODEL,
                    "priority": "standard",
                    "input_tokens": 1000,
                    "output_tokens": 200,
                    "rate_per_s": 1,
                }
            ]
        }
    }
    async with running_app(data, clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation >= 1)
        placed = await served.router.Place(place_request("m1"))
        assert placed.reason == "plan"
        await served.router.Complete(
            router_pb2.Completion(
                lease_id=placed.lease_id,
                input_tokens=1000,
                output_tokens=200,
                ttft_ms=5000,
                tpot_ms=5,
                success=True,
            )
        )
        await rpc_error(served.router.Place(place_request("m2", input_tokens=140_000)))
        status, text = await served.get_text("/metrics")
        assert status == 200
        checked = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr
        for name in (
            "turnout_place_requests_total",
            "turnout_place_decision_seconds_bucket",
            "turnout_request_cost_usd_per_mtok_bucket",
            "turnout_cost_usd_total",
            "turnout_tokens_total",
            "turnout_slo_violations_total",
            "turnout_completions_total",
            "turnout_plan_solve_seconds_bucket",
            "turnout_plan_solves_total",
            "turnout_plan_generation",
            "turnout_plan_age_seconds",
            "turnout_plan_cost_usd_per_hour",
            "turnout_pool_desired_replicas",
            "turnout_leases",
            "turnout_leases_expired_total",
            "turnout_replan_requests_total",
        ):
            assert f"\n{name}" in text, name
