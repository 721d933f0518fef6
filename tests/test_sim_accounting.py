"""Accounting: cost is the integral of the prices of the endpoints that are on, energy the integral of
power; both checked against hand computations, through plan-driven autoscaling (provisioning delay,
draining) driven by a scripted planner with the real planner's interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest
from test_sim_engine import ToyProfile, toy_spec, toy_trace

from fleet.types import EndpointSpec, FleetSnapshot, LatencySlo, ServingProfile, ZoneSpec
from policies.demand import ClassDemand
from policies.planner import PlannerConfig
from policies.types import Plan, TrafficClass
from sim.accounting import FleetMeter, Percentiles, StepIntegral, nearest_rank
from sim.engine import SimConfig, SimFleet, SimResult, simulate
from sim.policy_adapter import FirstFit


class ScriptedPlanner:
    """Publishes a fixed active set per time window: ``script`` is [(from_s, active ids), ...]."""

    def __init__(self, script: Sequence[tuple[float, frozenset[str]]]) -> None:
        self.script = list(script)
        self.calls: list[tuple[float, int]] = []  # (now_s, endpoints in the snapshot that are READY)

    def solve(
        self,
        snapshot: FleetSnapshot,
        demand: Mapping[TrafficClass, ClassDemand],
        profiles: Callable[[EndpointSpec], ServingProfile],
        previous: Plan,
        now_s: float,
        time_limit_s: float,
        config: PlannerConfig | None = None,
    ) -> Plan:
        self.calls.append((now_s, sum(1 for e in snapshot.endpoints if e.eligible)))
        active: frozenset[str] = frozenset()
        for start, ids in self.script:
            if now_s >= start:
                active = ids
        return Plan(
            generation=previous.generation + 1,
            created_at_s=now_s,
            status="optimal",
            active_endpoint_ids=active,
            share={},
            desired_replicas={},
            predicted_cost_usd_per_hour=0.0,
        )


E0, E1 = "z1/toy/0", "z1/toy/1"
PRICE = 7.2  # USD/h per endpoint: 0.002 USD/s
IDLE_W, BUSY_W = 100.0, 500.0


def autoscaled_run(cap_w: float = 10_000.0) -> tuple[SimResult, ScriptedPlanner]:
    """Two endpoints, both on at 0. Plans: at 10 s only E0 (E1 is idle: off at once); at 20 s both (E1
    provisions for 5 s: on at 25); at 40 s only E1 (E0 drains its long request, then goes off).
    Requests: A at 35 s (lands on E0, 1000-token prompt, 2001 tokens out: busy until about 57 s),
    B at 45 s (E0 is draining: lands on E1)."""
    profile = ToyProfile()
    fleet = SimFleet(
        endpoints=(toy_spec(0, price=PRICE), toy_spec(1, price=PRICE)),
        zones=(ZoneSpec("z1", "r1", cap_w),),
        serving=lambda spec: profile,
        slo_for=lambda m, p: LatencySlo(1000.0, 50.0),
    )
    planner = ScriptedPlanner([(10.0, frozenset({E0})), (20.0, frozenset({E0, E1})), (40.0, frozenset({E1}))])
    cfg = SimConfig(
        scaling="plan",
        planner_interval_s=10.0,
        planner_first_run_s=10.0,
        provisioning_delay_s=5.0,
        telemetry_interval_s=0.5,
    )
    trace = toy_trace([(35.0, 1000, 2001), (45.0, 500, 101)])
    result = simulate(trace, fleet, FirstFit(fleet.serving), cfg, planner=planner)
    return result, planner


def test_cost_is_the_integral_of_the_prices_of_endpoints_on() -> None:
    r, planner = autoscaled_run()
    a, b = r.outcomes
    assert a.endpoint_id == E0 and b.endpoint_id == E1
    # A: prefill 0.1 s, 2000 decode steps at batch 1 (11 ms): done at 35 + 0.1 + 22 = 57.1 s.
    assert a.completed_s == pytest.approx(57.1)
    # B: prefill 0.05 s, 100 steps of 11 ms: done at 46.15 s. The run ends with A.
    assert b.completed_s == pytest.approx(46.15)
    assert r.end_s == pytest.approx(57.1)
    # By hand: E0 on [0, 57.1] (drained at 40 but busy until A completes); E1 on [0, 10] and [25, 57.1].
    on_s = 57.1 + 10.0 + (57.1 - 25.0)
    assert r.summary.total_usd == pytest.approx(PRICE / 3600 * on_s, rel=1e-12)
    assert r.summary.usd_per_hour == pytest.approx(PRICE / 3600 * on_s / 57.1 * 3600, rel=1e-12)
    # The cost time series integrates the same rate: its last cumulative point is the total.
    assert r.summary.timeseries.cumulative_usd[-1] == pytest.approx(r.summary.total_usd, rel=1e-12)
    assert sum(p.usd for p in r.summary.pools) == pytest.approx(r.summary.total_usd, rel=1e-12)
    # The planner saw every endpoint as eligible (it may turn any on), whatever its lifecycle.
    assert planner.calls[:4] == [(10.0, 2), (20.0, 2), (30.0, 2), (40.0, 2)]
    assert r.summary.pools[0].mean_active_endpoints == pytest.approx(on_s / 57.1)


def test_energy_is_the_integral_of_power() -> None:
    r, _ = autoscaled_run()
    s = r.summary
    # Busy: E0 from 35 s to 57.1 s, E1 from 45 s to 46.15 s; idle the rest of the time they are on.
    busy = {E0: 22.1, E1: 1.15}
    on = {E0: 57.1, E1: 10.0 + 32.1}
    joules = sum(IDLE_W * (on[e] - busy[e]) + BUSY_W * busy[e] for e in (E0, E1))
    assert s.energy_kwh == pytest.approx(joules / 3.6e6, rel=1e-12)
    (zone,) = s.zones
    assert zone.energy_kwh == pytest.approx(joules / 3.6e6, rel=1e-12)  # integrated a second way
    assert zone.mean_w == pytest.approx(joules / 57.1, rel=1e-12)
    assert zone.peak_w == pytest.approx(2 * BUSY_W)  # both busy from 45 s to 46.15 s
    tokens = 1000 + 2001 + 500 + 101
    assert s.joules_per_token == pytest.approx(joules / tokens, rel=1e-12)
    # Fleet power per time bin integrates back to the energy.
    ts = s.timeseries
    edges = [0.0, *ts.bin_end_s]
    binned = sum(w * (b - a) for w, a, b in zip(ts.fleet_power_w, edges, edges[1:], strict=False))
    assert binned == pytest.approx(joules, rel=1e-9)
    # Utilisation per pool is busy seconds over on seconds.
    assert s.pools[0].utilization_ratio == pytest.approx((22.1 + 1.15) / (on[E0] + on[E1]))


def test_time_over_the_zone_cap_is_exact() -> None:
    # Cap between "both idle" (200 W) and "one busy" (600 W): over the cap exactly while anything is busy.
    r, _ = autoscaled_run(cap_w=250.0)
    (zone,) = r.summary.zones
    assert zone.time_over_cap_s == pytest.approx(57.1 - 35.0)
    assert zone.cap_w == 250.0


def test_cost_split_by_prefill_and_decode_adds_up() -> None:
    r, _ = autoscaled_run()
    s = r.summary
    price_s = PRICE / 3600
    assert s.prefill_usd == pytest.approx(price_s * (0.1 + 0.05))
    assert s.decode_usd == pytest.approx(price_s * (22.0 + 1.1))
    assert s.prefill_usd + s.decode_usd + s.idle_usd == pytest.approx(s.total_usd)
    assert s.usd_per_million_input_tokens is not None and s.usd_per_million_output_tokens is not None
    input_usd = s.usd_per_million_input_tokens * s.input_tokens / 1e6
    output_usd = s.usd_per_million_output_tokens * s.output_tokens / 1e6
    assert input_usd + output_usd == pytest.approx(s.total_usd)
    share = s.prefill_usd / (s.prefill_usd + s.decode_usd)
    assert input_usd == pytest.approx(s.prefill_usd + s.idle_usd * share)
    assert s.usd_per_million_tokens == pytest.approx(s.total_usd / 3602 * 1e6)


def test_an_endpoint_turned_off_while_provisioning_never_costs() -> None:
    profile = ToyProfile()
    fleet = SimFleet(
        endpoints=(toy_spec(0, price=PRICE), toy_spec(1, price=PRICE)),
        zones=(ZoneSpec("z1", "r1", 1e4),),
        serving=lambda spec: profile,
        slo_for=lambda m, p: LatencySlo(1000.0, 50.0),
    )
    # E1 starts off; turned on at 10 s (provisioning 8 s) and off again at 15 s, before it is ready.
    planner = ScriptedPlanner([(0.0, frozenset({E0})), (10.0, frozenset({E0, E1})), (15.0, frozenset({E0}))])
    cfg = SimConfig(scaling="plan", planner_interval_s=5.0, planner_first_run_s=0.0, provisioning_delay_s=8.0)
    r = simulate(
        toy_trace([(0.5, 100, 2), (30.0, 100, 2)]), fleet, FirstFit(fleet.serving), cfg, planner=planner
    )
    end = r.end_s
    assert end == pytest.approx(30.0 + 0.01 + 0.011)
    # E0 on all along; E1 on from 0 until the first plan switches it off at 0 s (it is idle): 0 s.
    assert r.summary.total_usd == pytest.approx(PRICE / 3600 * end, rel=1e-12)


# ------------------------------------------------------------------------------------------ building blocks


def test_step_integral_by_hand() -> None:
    f = StepIntegral(0.0, 2.0, threshold=3.0)
    f.set(1.0, 5.0)  # 2 W for 1 s
    f.add(3.0, -4.0)  # 5 W for 2 s, then 1 W
    f.set(3.0, 4.0)  # same instant: no time passes
    assert f.integral_to(6.0) == pytest.approx(2.0 + 10.0 + 4.0 * 3.0)
    assert f.peak == 5.0
    assert f.over_to(6.0) == pytest.approx(2.0 + 3.0)


def test_fleet_meter_cost_and_energy_by_hand() -> None:
    meter = FleetMeter(0.0, {"z": 1000.0})
    a = meter.add_endpoint("a", "z", 3.6, 10.0, 50.0)  # 0.001 USD/s
    b = meter.add_endpoint("b", "z", 7.2, 20.0, 80.0)
    a.switch_on(0.0)
    a.set_busy(1.0, True)
    b.switch_on(2.0)
    a.set_busy(4.0, False)
    b.set_busy(5.0, True)
    b.set_busy(6.0, False)
    b.switch_off(8.0)
    with pytest.raises(AssertionError, match="busy while off"):
        b.set_busy(9.0, True)
    t = 10.0
    assert a.usd(t) + b.usd(t) == pytest.approx(0.001 * 10 + 0.002 * 6)
    assert meter.cost_rate.integral_to(t) == pytest.approx(0.001 * 10 + 0.002 * 6)
    energy = (10 * 7 + 50 * 3) + (20 * 5 + 80 * 1)
    assert a.energy_j(t) + b.energy_j(t) == pytest.approx(energy)
    assert meter.zones["z"].integral_to(t) == pytest.approx(energy)
    assert meter.zones["z"].peak == pytest.approx(max(50.0 + 20.0, 10.0 + 80.0))


def test_nearest_rank_percentiles() -> None:
    xs = [float(x) for x in range(1, 101)]
    assert nearest_rank(xs, 50) == 50.0 and nearest_rank(xs, 99) == 99.0 and nearest_rank(xs, 100) == 100.0
    p = Percentiles.of([3.0, 1.0, 2.0])
    assert (p.count, p.mean, p.p50, p.p90, p.p99, p.max) == (3, 2.0, 2.0, 3.0, 3.0, 3.0)
    assert Percentiles.of([]).p50 is None
