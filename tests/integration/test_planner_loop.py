"""The planner loop inside the real service: it solves on start-up and every interval, early (rate-limited)
after a spill or a large fleet change, never for zero demand, publishes through GetPlan, /debug/plan and
the metrics, keeps the previous plan when a solve times out, and Place follows what it publishes. The
clock is injected: the loop's schedule moves only when a test advances it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from grpc import aio
from helpers import ManualClock, Running, metric_value, running_app, small_fleet, wait_until

from fleet.types import Priority
from policies.config import PolicyConfig
from policies.demand import classify
from policies.types import Plan
from turnout.v1 import common_pb2, fleet_pb2, router_pb2

MODEL = "llama-3.1-8b"


def with_static_demand(rate_per_s: float = 1.0, input_tokens: int = 1000, **planner: Any) -> dict[str, Any]:
    """The small fleet without telemetry sources (no endpoint turns stale as the test clock moves, which
    would be a fleet change of its own), planning for a static demand of one 8B class."""
    data = small_fleet()
    for pool in data["pools"]:
        pool["telemetry"] = "none"
    data["planner"] = {
        "demand": {
            "static": [
                {
                    "model": MODEL,
                    "priority": "standard",
                    "input_tokens": input_tokens,
                    "output_tokens": 200,
                    "rate_per_s": rate_per_s,
                }
            ]
        },
        **planner,
    }
    return data


def request(request_id: str, **changes: Any) -> router_pb2.PlaceRequest:
    req = router_pb2.PlaceRequest(
        request_id=request_id,
        model=MODEL,
        tenant="acme",
        priority=common_pb2.PRIORITY_STANDARD,
        input_tokens=1000,
        max_output_tokens=200,
    )
    for key, value in changes.items():
        setattr(req, key, value)
    return req


async def solves(served: Running, trigger: str, outcome: str) -> float:
    _, text = await served.get_text("/metrics")
    return metric_value(text, "turnout_plan_solves_total", trigger=trigger, outcome=outcome)


async def settle() -> None:
    """Long enough for several loop ticks (50 ms each in tests) to have looked at the clock."""
    await asyncio.sleep(0.3)


async def test_the_loop_publishes_a_plan_that_place_follows_and_replans_every_interval() -> None:
    clock = ManualClock()
    async with running_app(with_static_demand(), clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation == 1)
        plan = served.app.plan()
        assert plan.status == "optimal" and plan.created_at_s == clock.now_s
        assert plan.active_endpoint_ids and plan.predicted_cost_usd_per_hour > 0

        got = await served.fleet.GetPlan(fleet_pb2.GetPlanRequest())
        assert (got.generation, got.status) == (1, "optimal")
        assert {e.endpoint_id for e in got.endpoints if e.active} == set(plan.active_endpoint_ids)
        page = await served.get_json("/debug/plan")
        assert page["generation"] == 1 and set(page["active_endpoint_ids"]) == set(plan.active_endpoint_ids)
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_plan_generation") == 1
        assert metric_value(text, "turnout_plan_status", status="optimal") == 1
        assert metric_value(text, "turnout_plan_cost_usd_per_hour") == plan.predicted_cost_usd_per_hour
        assert metric_value(text, "turnout_plan_solves_total", trigger="interval", outcome="optimal") == 1
        assert metric_value(text, "turnout_plan_solve_seconds_count") == 1
        for pool, replicas in plan.desired_replicas.items():
            assert metric_value(text, "turnout_pool_desired_replicas", pool=pool) == replicas

        placed = await served.router.Place(request("follows"))
        assert placed.reason == "plan" and placed.plan_generation == 1
        assert placed.chosen.endpoint.endpoint_id in plan.active_endpoint_ids

        # Nothing happens until the interval has passed on the injected clock ...
        clock.advance(29.0)
        await settle()
        assert served.app.plan().generation == 1
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_plan_age_seconds") == pytest.approx(29.0)
        # ... then the loop re-plans, hinted with (and here equal to) the previous plan.
        clock.advance(1.0)
        await wait_until(lambda: served.app.plan().generation == 2)
        assert served.app.plan().active_endpoint_ids == plan.active_endpoint_ids
        assert await solves(served, "interval", "optimal") == 2


async def test_without_demand_there_is_no_plan_until_traffic_arrives() -> None:
    clock = ManualClock()
    async with running_app(small_fleet(), clock=clock) as served:
        await wait_until(lambda: solves(served, "interval", "no_demand"))
        assert served.app.plan().generation == 0
        first = await served.router.Place(request("first"))
        assert first.reason == "no_plan"  # routing never waits for a plan
        await settle()
        assert served.app.plan().generation == 0  # early runs wait min_replan_interval_s (5 s)
        clock.advance(5.0)
        await wait_until(lambda: served.app.plan().generation == 1)
        assert await solves(served, "first_demand", "optimal") == 1
        # The plan covers the class it saw, so the next request follows it.
        second = await served.router.Place(request("second"))
        assert second.reason == "plan" and second.plan_generation == 1


async def test_a_spill_asks_for_an_early_replan_at_most_every_min_replan_interval() -> None:
    clock = ManualClock()
    data = with_static_demand(rate_per_s=0.2, input_tokens=8000, min_replan_interval_s=5)
    data["planner"]["demand"]["half_life_s"] = 5.0  # a short memory: the burst dominates the estimate
    async with running_app(data, clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation == 1)
        assert len(served.app.plan().active_endpoint_ids) == 1
        reasons = []
        for i in range(200):  # far beyond what the fleet takes at once: refused ones are demand too
            try:
                p = await served.router.Place(request(f"b{i}", input_tokens=8000, max_output_tokens=256))
            except aio.AioRpcError as err:
                reasons.append(err.code().name)
            else:
                reasons.append(p.reason)
        assert "plan_spill" in reasons
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_replan_requests_total", reason="plan_spill") == reasons.count(
            "plan_spill"
        )
        await settle()
        assert served.app.plan().generation == 1  # rate-limited: the clock has not moved
        clock.advance(5.0)
        await wait_until(lambda: served.app.plan().generation == 2)
        assert await solves(served, "replan", "optimal") == 1
        # The burst is in the demand estimate now: the new plan provisions more than the static trickle.
        assert len(served.app.plan().active_endpoint_ids) >= 2


async def test_a_large_fleet_change_replans_early_without_the_drained_endpoints() -> None:
    clock = ManualClock()
    async with running_app(with_static_demand(rate_per_s=5.0), clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation == 1)
        before = served.app.plan()
        pools = {eid.split("/")[1] for eid in before.active_endpoint_ids}
        assert pools, before
        # Drain every pool the plan uses: well over 10 % of the 18 endpoints change eligibility.
        for pool in sorted(pools):
            await served.fleet.Drain(
                fleet_pb2.DrainRequest(pool=pool, reason=fleet_pb2.DRAIN_REASON_MAINTENANCE)
            )
        # A drained endpoint never receives work, plan or no plan.
        p = await served.router.Place(request("during"))
        assert p.chosen.endpoint.pool not in pools and p.reason == "plan_spill"
        clock.advance(5.0)
        await wait_until(lambda: served.app.plan().generation == 2)
        after = served.app.plan()
        assert not {eid.split("/")[1] for eid in after.active_endpoint_ids} & pools
        # The drained endpoints still draw power until they are gone: the metric shows it, the plan
        # counts it in its zones' power and stays within their caps.
        snap = served.app.store.snapshot()
        _, text = await served.get_text("/metrics")
        for zone, spec in snap.zones.items():
            held_w = snap.zone_ineligible_power_w[zone]
            drained_here = any(st.spec.zone == zone and st.spec.pool in pools for st in snap.endpoints)
            assert (held_w > 0.0) == drained_here, (zone, held_w)
            assert metric_value(text, "turnout_zone_ineligible_power_watts", zone=zone) == held_w
            assert after.predicted_zone_power_w.get(zone, 0.0) >= held_w
            assert after.predicted_zone_power_w.get(zone, 0.0) <= spec.power_cap_w + 1e-6
        assert (
            await solves(served, "fleet_change", "optimal") + await solves(served, "replan", "optimal") == 1
        )


async def test_a_solve_that_times_out_keeps_the_previous_plan_and_says_so() -> None:
    clock = ManualClock()
    async with running_app(with_static_demand(time_limit_s=1e-6), clock=clock) as served:
        await wait_until(lambda: solves(served, "interval", "timeout_kept_previous"))
        assert (served.app.plan().generation, served.app.plan().status) == (0, "timeout_kept_previous")
        assert (await served.router.Place(request("no-plan"))).reason == "no_plan"

        # A plan from elsewhere (an earlier, successful solve) ...
        eid = "test-az1/inf2-llama8b/3"
        cls = classify(MODEL, 1000, 200, Priority.STANDARD, PolicyConfig().buckets)
        served.app.publish_plan(
            Plan(
                generation=1,
                created_at_s=clock.now_s,
                status="optimal",
                active_endpoint_ids=frozenset({eid}),
                share={eid: {cls.name: 1.0}},
                desired_replicas={"inf2-llama8b": 1},
                predicted_cost_usd_per_hour=2.0,
            )
        )
        # ... survives the next solve, which times out again.
        clock.advance(30.0)
        await wait_until(lambda: served.app.plan().status == "timeout_kept_previous")
        kept = served.app.plan()
        assert (kept.generation, kept.active_endpoint_ids) == (1, frozenset({eid}))
        _, text = await served.get_text("/metrics")
        assert metric_value(text, "turnout_plan_status", status="timeout_kept_previous") == 1
        assert metric_value(text, "turnout_plan_generation") == 1
        assert (
            metric_value(
                text, "turnout_plan_solves_total", trigger="interval", outcome="timeout_kept_previous"
            )
            == 2
        )
        placed = await served.router.Place(request("kept"))
        assert placed.reason == "plan" and placed.chosen.endpoint.endpoint_id == eid


async def test_the_loop_stops_with_the_service() -> None:
    clock = ManualClock()
    async with running_app(with_static_demand(), clock=clock) as served:
        await wait_until(lambda: served.app.plan().generation == 1)
        target = served.grpc_target
        app = served.app
    # Stopped: the clock moving on starts no solve, and the port is closed.
    generation = app.plan().generation
    clock.advance(60.0)
    await asyncio.sleep(0.2)
    assert app.plan().generation == generation
    started = time.monotonic()
    async with aio.insecure_channel(target) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 0.5)
            raise AssertionError("the server still accepts connections")
        except TimeoutError:
            pass
    assert time.monotonic() - started < 5
