"""The fleet running out, on the real service: a burst beyond the plan spills and then is refused with the
binding reason and a retry delay; sheddable work is refused before standard, standard before critical;
an expired lease gives its reservation back. The clock is injected and frozen, so queues do not drain
while a test fills them."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from helpers import ManualClock, Running, metric_value, running_app, small_fleet, status_details, wait_until

from turnout.v1 import common_pb2, router_pb2

MODEL = "llama-3.1-8b"


def request(
    request_id: str, priority: int = common_pb2.PRIORITY_STANDARD, **changes: Any
) -> router_pb2.PlaceRequest:
    req = router_pb2.PlaceRequest(
        request_id=request_id,
        model=MODEL,
        tenant="acme",
        priority=priority,
        input_tokens=1000,
        max_output_tokens=200,
    )
    for key, value in changes.items():
        setattr(req, key, value)
    return req


def refusal(status: status_pb2.Status | None) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo delay in seconds or None)."""
    assert status is not None
    reason, delay = "", None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, delay


async def place_until_refused(
    served: Running, make: Any, limit: int = 400
) -> tuple[list[router_pb2.Placement], aio.AioRpcError]:
    """Places ``make(i)`` for i = 0, 1, ... until a call fails; returns the placements and the error."""
    placed: list[router_pb2.Placement] = []
    for i in range(limit):
        try:
            placed.append(await served.router.Place(make(i)))
        except aio.AioRpcError as err:
            return placed, err
    raise AssertionError(f"no refusal within {limit} placements")


async def test_a_burst_beyond_the_plan_spills_then_is_refused_with_reason_and_retry_delay() -> None:
    # Long prompts: each queues 8,000 tokens of prefill on its endpoint, so a few per endpoint reach the
    # 2 s TTFT objective. The plan covers a trickle of this class with one endpoint.
    data = small_fleet()
    data["planner"] = {
        "demand": {
            "static": [
                {
                    "model": MODEL,
                    "priority": "standard",
                    "input_tokens": 8000,
                    "output_tokens": 256,
                    "rate_per_s": 0.2,
                }
            ]
        }
    }
    clock = ManualClock()
    async with running_app(data, clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation >= 1)
        plan = served.app.plan()
        assert plan.status == "optimal" and len(plan.active_endpoint_ids) == 1
        (planned,) = plan.active_endpoint_ids

        placed, err = await place_until_refused(
            served, lambda i: request(f"burst-{i}", input_tokens=8000, max_output_tokens=256)
        )
        reasons = [p.reason for p in placed]
        n_plan = reasons.count("plan")
        assert n_plan >= 1 and reasons[:n_plan] == ["plan"] * n_plan  # the plan first ...
        assert reasons[n_plan:] == ["plan_spill"] * (len(placed) - n_plan)  # ... then spill over
        assert len(placed) > n_plan
        assert {p.chosen.endpoint.endpoint_id for p in placed[:n_plan]} == {planned}
        assert planned not in {p.chosen.endpoint.endpoint_id for p in placed[n_plan:]}
        assert all(p.plan_generation == plan.generation for p in placed)
        # Spilled requests still meet their SLO by prediction.
        assert max(p.chosen.predicted_ttft_ms for p in placed) <= 2000

        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, delay = refusal(status_details(err))
        assert reason == "SLO"
        assert delay is not None and 0.05 <= delay <= 30.0
        assert "predicted TTFT" in (err.details() or "")

        _, text = await served.get_text("/metrics")
        count = lambda outcome, kind="h100": metric_value(  # noqa: E731
            text, "turnout_place_requests_total", model=MODEL, outcome=outcome, accelerator=kind
        )
        assert count("plan") + count("plan", "inf2") == n_plan
        assert count("plan_spill") + count("plan_spill", "inf2") == len(placed) - n_plan
        assert count("resource_exhausted", "") == 1
        assert (
            metric_value(text, "turnout_replan_requests_total", reason="plan_spill") == len(placed) - n_plan
        )
        assert metric_value(text, "turnout_replan_requests_total", reason="refused") == 1

        # The refusal is transient: once the first queued prompt has had its first token, there is room.
        # (The retry delay is the continuous drain estimate; the ledger retires a prompt's prefill whole at
        # its predicted first token, so the wait can be up to one prompt's prefill longer.)
        clock.advance(max(delay, placed[0].chosen.predicted_ttft_ms / 1000.0))
        retried = await served.router.Place(request("burst-retry", input_tokens=8000, max_output_tokens=256))
        assert retried.chosen.predicted_ttft_ms <= 2000


def _one_zone_h100(power_cap_w: float) -> dict[str, Any]:
    data = small_fleet()
    data["zones"] = [{"name": "test-az1", "region": "us-east-1", "power_cap_w": power_cap_w}]
    data["pools"] = [data["pools"][0]]  # 8 H100 replicas of Llama-3.1-8B
    data["planner"] = {"enabled": False}
    return data


async def _idle_power_w() -> float:
    async with running_app(_one_zone_h100(100_000), clock=ManualClock()) as served:
        return served.app.store.snapshot().zone_power_w["test-az1"]


async def test_sheddable_is_refused_before_standard_and_standard_before_critical() -> None:
    # The zone idles at 78 % of its cap: sheddable work may take it to 80 %, standard to 90 %,
    # critical to 100 %.
    idle_w = await _idle_power_w()
    async with running_app(_one_zone_h100(idle_w / 0.78), clock=ManualClock()) as served:
        seq = iter(range(10_000))
        _, shed_err = await place_until_refused(
            served, lambda i: request(f"s{next(seq)}", common_pb2.PRIORITY_SHEDDABLE)
        )
        assert shed_err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refusal(status_details(shed_err))[0] == "SHED"
        assert "sheddable work may use 80%" in (shed_err.details() or "")
        # Room is left, for higher priorities only.
        std_placed, std_err = await place_until_refused(
            served, lambda i: request(f"s{next(seq)}", common_pb2.PRIORITY_STANDARD), limit=2000
        )
        assert len(std_placed) > 0
        assert refusal(status_details(std_err))[0] == "SHED"
        err = await _refused(served, request("shed-again", common_pb2.PRIORITY_SHEDDABLE))
        assert refusal(status_details(err))[0] == "SHED"  # still no room for sheddable work
        crit_placed, crit_err = await place_until_refused(
            served, lambda i: request(f"s{next(seq)}", common_pb2.PRIORITY_CRITICAL), limit=2000
        )
        assert len(crit_placed) > 0
        assert crit_err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, delay = refusal(status_details(crit_err))
        assert reason == "POWER" and delay is not None and delay > 0
        # Nothing ever pushed the zone over its cap.
        ledger = served.app.engine.ledger
        assert idle_w + ledger.reserved_power_w("test-az1") <= idle_w / 0.78 + 1e-6

        _, text = await served.get_text("/metrics")
        assert (
            metric_value(
                text,
                "turnout_place_requests_total",
                model=MODEL,
                outcome="resource_exhausted",
                accelerator="",
            )
            == 4
        )


async def _refused(served: Running, req: router_pb2.PlaceRequest) -> aio.AioRpcError:
    try:
        await served.router.Place(req)
    except aio.AioRpcError as err:
        return err
    raise AssertionError("placed; a refusal was expected")


async def test_an_expired_lease_gives_its_power_back() -> None:
    idle_w = await _idle_power_w()
    data = _one_zone_h100(idle_w / 0.97)
    data["planner"]["placement"] = {"lease_grace_s": 5, "lease_max_ttl_s": 15}
    data["planner"]["leases"] = {"expiry_sweep_s": 0.02}
    clock = ManualClock()
    async with running_app(data, clock=clock) as served:
        placed, err = await place_until_refused(
            served, lambda i: request(f"c{i}", common_pb2.PRIORITY_CRITICAL), limit=2000
        )
        assert refusal(status_details(err))[0] == "POWER" and placed
        assert served.app.engine.ledger.reserved_power_w("test-az1") > 0
        last = max(p.lease_expires_at.seconds + p.lease_expires_at.nanos / 1e9 for p in placed)
        # Every frontend crashed: no Complete ever comes. Past the leases' expiry the sweep frees them.
        clock.advance(last - clock.now_s + 0.1)

        async def all_expired() -> bool:
            _, text = await served.get_text("/metrics")
            return metric_value(text, "turnout_leases_expired_total") == len(placed)

        await wait_until(all_expired)
        assert served.app.engine.ledger.reserved_power_w("test-az1") == 0
        again = await served.router.Place(request("after-expiry", common_pb2.PRIORITY_CRITICAL))
        assert again.reason == "no_plan"


async def test_power_booked_for_a_burst_drops_once_telemetry_shows_it() -> None:
    """A burst onto an endpoint that reports its draw books the gap to its full power once; a report
    sampled after the requests' predicted first tokens shows them, and the booking goes."""
    from router.convert.timestamps import timestamp_from_seconds
    from turnout.v1 import fleet_pb2

    data = _one_zone_h100(100_000)
    clock = ManualClock()
    async with running_app(data, clock=clock) as served:
        eid = "test-az1/h100-llama8b/0"
        await served.fleet.ReportTelemetry(
            iter(
                [
                    fleet_pb2.TelemetryReport(
                        endpoint_id=other,
                        observed_at=timestamp_from_seconds(clock.now_s),
                        running_requests=0 if other == eid else 50,
                        power_watts=200.0 if other == eid else 700.0,
                        healthy=True,
                    )
                    for other in (f"test-az1/h100-llama8b/{i}" for i in range(8))
                ]
            )
        )
        ledger = served.app.engine.ledger
        placed = [await served.router.Place(request(f"b{i}")) for i in range(5)]
        assert {p.chosen.endpoint.endpoint_id for p in placed} == {eid}  # the idle one, least loaded
        booked_w = ledger.reserved_power_w("test-az1")
        leases = [ledger.lease_for_request(f"b{i}") for i in range(5)]
        assert [lease.power_mw for lease in leases[1:] if lease] == [0, 0, 0, 0]  # once, not five times
        # The gap between one H100's full draw (its 700 W TDP) and the 200 W it reported.
        assert booked_w == pytest.approx(700.0 - 200.0, abs=1.0)
        first_token_s = max(clock.now_s + p.chosen.predicted_ttft_ms / 1000.0 for p in placed)
        clock.advance(first_token_s - clock.now_s + 0.5)
        await served.fleet.ReportTelemetry(
            iter(
                [
                    fleet_pb2.TelemetryReport(
                        endpoint_id=eid,
                        observed_at=timestamp_from_seconds(clock.now_s),
                        running_requests=5,
                        power_watts=650.0,
                        healthy=True,
                    )
                ]
            )
        )
        await served.router.Place(request("after-report"))  # a decision syncs the ledger first
        assert ledger.lease_for_request("b0") is not None  # the leases themselves live on
        assert ledger.reserved_power_w("test-az1") < booked_w
        assert all(not ledger.is_power_pending(ledger.lease_for_request(f"b{i}").lease_id) for i in range(5))
