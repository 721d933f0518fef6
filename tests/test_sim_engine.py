"""The event loop and the simulated endpoint: exact engine semantics on a toy profile, conservation, time
that never goes backwards, policy contract checks, snapshots, settings."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest

from fleet.types import (
    EndpointSpec,
    EndpointStatus,
    FleetSnapshot,
    LatencySlo,
    Precision,
    Priority,
    ServingProfile,
    ZoneSpec,
)
from policies.demand import DEFAULT_BUCKET_BOUNDS, BucketBounds
from policies.types import PlacementRequest, Plan
from sim.clock import EventQueue, SimClock, TimeWentBackwards
from sim.engine import PolicyContractError, SimConfig, SimError, SimFleet, SimResult, simulate
from sim.policy_adapter import FirstFit, Placement, Refusal
from sim.traces import Trace, TraceRequest


class ToyProfile:
    """A serving profile with round numbers: prefill 0.1 ms per prompt token, decode step
    ``10 + batch`` ms whatever the context; power idle 100 W, busy 500 W."""

    def __init__(self, kv_capacity_tokens: int = 100_000) -> None:
        self._kv = kv_capacity_tokens

    @property
    def fits(self) -> bool:
        return True

    @property
    def kv_capacity_tokens(self) -> int:
        return self._kv

    @property
    def idle_power_w(self) -> float:
        return 100.0

    @property
    def max_power_w(self) -> float:
        return 500.0

    @property
    def source(self) -> str:
        return "toy"

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        return 0.1 * (input_tokens + queued_prefill_tokens)

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        return 10.0 + max(1, batch)

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        return max(0, min(int(tpot_ms - 10.0), self._kv // max(1, context_tokens)))

    def power_w(self, utilization_ratio: float) -> float:
        return 100.0 + 400.0 * min(1.0, max(0.0, utilization_ratio))


def toy_spec(i: int, *, price: float = 3.6, reserved: bool = False) -> EndpointSpec:
    return EndpointSpec(
        endpoint_id=f"z1/toy/{i}",
        address=f"toy-{i}:8000",
        pool="toy",
        zone="z1",
        region="r1",
        instance_type="toy.xlarge",
        accelerator_kind="h100",
        model="m",
        tp_degree=1,
        precision=Precision.BF16,
        chips=1,
        price_usd_per_hour=price,
        max_context_tokens=100_000,
        reserved=reserved,
    )


def toy_fleet(n: int = 1, profile: ServingProfile | None = None, cap_w: float = 10_000.0) -> SimFleet:
    prof = profile if profile is not None else ToyProfile()
    return SimFleet(
        endpoints=tuple(toy_spec(i) for i in range(n)),
        zones=(ZoneSpec("z1", "r1", cap_w),),
        serving=lambda spec: prof,
        slo_for=lambda model, priority: LatencySlo(ttft_ms=1000.0, tpot_ms=50.0),
        source="toy",
    )


def toy_trace(rows: Sequence[tuple[float, int, int]], model: str = "m") -> Trace:
    return Trace(
        name="toy",
        source="test",
        requests=tuple(TraceRequest(t, n, o, model, Priority.STANDARD, "t") for t, n, o in rows),
    )


class Blind:
    """Places every request on one endpoint id, whatever it is (to test the engine's own checks)."""

    def __init__(self, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id
        self.completed: list[tuple[str, float | None]] = []

    name = "blind"
    uses_plan = False

    @property
    def buckets(self) -> BucketBounds:
        return DEFAULT_BUCKET_BOUNDS

    def set_plan(self, plan: Plan) -> None:
        pass

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot, now_s: float) -> Placement | Refusal:
        return Placement(self.endpoint_id, reason="blind")

    def complete(
        self, request_id: str, now_s: float, *, ttft_ms: float | None, tpot_ms: float | None
    ) -> None:
        self.completed.append((request_id, ttft_ms))


class Recording(FirstFit):
    """FirstFit that records the time and the snapshot of every call."""

    def __init__(self, fleet: SimFleet, max_outstanding: int = 1_000_000) -> None:
        super().__init__(fleet.serving, max_outstanding=max_outstanding)
        self.snapshots: list[FleetSnapshot] = []
        self.times: list[float] = []

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot, now_s: float) -> Placement | Refusal:
        self.snapshots.append(snapshot)
        self.times.append(now_s)
        return super().place(request, snapshot, now_s)

    def complete(
        self, request_id: str, now_s: float, *, ttft_ms: float | None, tpot_ms: float | None
    ) -> None:
        self.times.append(now_s)
        super().complete(request_id, now_s, ttft_ms=ttft_ms, tpot_ms=tpot_ms)


def run(rows: Sequence[tuple[float, int, int]], n: int = 1, **cfg: Any) -> SimResult:
    fleet = toy_fleet(n)
    return simulate(toy_trace(rows), fleet, FirstFit(fleet.serving), SimConfig(**cfg))


# ------------------------------------------------------------------------------------------ engine semantics


def test_a_lone_request_takes_its_prefill_then_its_decode_steps() -> None:
    r = run([(0.0, 1000, 11)])
    (o,) = r.outcomes
    assert o.outcome == "completed"
    assert o.ttft_ms == pytest.approx(100.0)  # 1000 tokens x 0.1 ms
    assert o.tpot_ms == pytest.approx(11.0)  # batch 1: 10 + 1 ms per step, 10 steps
    assert o.completed_s == pytest.approx(0.21)
    assert r.end_s == pytest.approx(0.21)


def test_an_arrival_mid_step_waits_for_the_step_then_is_prefilled_beside_the_decode() -> None:
    # A decodes from 0.100 in 11 ms steps; B arrives at 0.105, mid-way through A's first step. The step
    # ends at 0.111; the next step decodes A and prefills B's whole prompt (one chunk: 1000 tokens within
    # the 2048-token budget less A's one), 11 + 100 ms, so B's first token is out at 0.222. Then both decode
    # in 12 ms steps: B's 4 steps end at 0.270; A, with 6 of its 10 steps done, ends alone at 0.314.
    r = run([(0.0, 1000, 11), (0.105, 1000, 5)])
    a, b = r.outcomes
    assert b.ttft_ms == pytest.approx(117.0)
    assert b.completed_s == pytest.approx(0.270)
    assert b.tpot_ms == pytest.approx(12.0)
    assert a.completed_s == pytest.approx(0.314)
    assert a.tpot_ms == pytest.approx((0.314 - 0.100) / 10 * 1000)


def test_a_long_prompt_is_prefilled_in_chunks_and_the_decode_goes_on_meanwhile() -> None:
    # A (1000 tokens, 41 out) decodes in 11 ms steps from 0.100. B's 5000-token prompt arrives at 0.105:
    # budget 2048 less A's token leaves 2047 per step, so B takes 3 steps (2047 + 2047 + 906 tokens) of
    # 11 ms of decode plus its share of the 500 ms prefill each. A gets a token every step meanwhile: it is
    # slowed by B's chunks (at most 205 ms per step), never stopped for B's whole prompt.
    r = run([(0.0, 1000, 41), (0.105, 5000, 2)])
    a, b = r.outcomes
    assert b.ttft_ms == pytest.approx((0.111 + 3 * 0.011 + 0.5 - 0.105) * 1000)
    assert a.completed_s == pytest.approx(0.1 + 40 * 0.011 + 0.5 + 0.001)  # B's decode step: batch 2
    # With the budget at or below the batch limit the engine could never prefill: refused, naming the
    # endpoint whose pool setting the override does not suit.
    with pytest.raises(SimError, match=r"endpoint \S+: max_batched_tokens: must exceed max_batch \(4096\)"):
        run([(0.0, 10, 2)], max_batch=4096)


def test_a_full_batch_queues_the_next_request() -> None:
    r = run([(0.0, 1000, 11), (0.05, 1000, 2)], max_batch=1)
    a, b = r.outcomes
    assert a.completed_s == pytest.approx(0.21)
    assert b.ttft_ms == pytest.approx((0.21 + 0.1 - 0.05) * 1000)  # waits for A, then its own prefill
    assert b.completed_s == pytest.approx(0.21 + 0.1 + 0.011)


def test_kv_memory_queues_until_a_completion_frees_it() -> None:
    fleet = toy_fleet(1, ToyProfile(kv_capacity_tokens=1500))
    trace = toy_trace([(0.0, 1000, 11), (0.05, 490, 2)])  # 1011 + 492 > 1500: B must wait for A
    r = simulate(trace, fleet, FirstFit(fleet.serving), SimConfig())
    a, b = r.outcomes
    assert b.ttft_ms == pytest.approx((0.21 + 0.049 - 0.05) * 1000)
    # With room for both, B's prompt is prefilled in the step after A's, beside A's first decode.
    fleet = toy_fleet(1, ToyProfile(kv_capacity_tokens=1503))
    a, b = simulate(trace, fleet, FirstFit(fleet.serving), SimConfig()).outcomes
    assert b.ttft_ms == pytest.approx((0.1 + 0.011 + 0.049 - 0.05) * 1000)  # beside A's first decode step
    assert a.completed_s == pytest.approx(0.1 + 0.060 + 0.012 + 8 * 0.011)


def test_a_request_that_can_never_fit_is_rejected_by_the_endpoint_and_its_placement_released() -> None:
    fleet = toy_fleet(1, ToyProfile(kv_capacity_tokens=1000))
    policy = Blind("z1/toy/0")
    r = simulate(toy_trace([(0.0, 900, 50), (1.0, 2000, 5)]), fleet, policy, SimConfig())
    assert [o.outcome for o in r.outcomes] == ["completed", "rejected"]
    assert r.outcomes[1].reason == "endpoint_kv_capacity"
    assert ("r1", None) in policy.completed  # the policy hears of the dropped request
    assert r.summary.rejected_by_reason == {"endpoint_kv_capacity": 1}


def test_one_token_requests_complete_at_their_first_token() -> None:
    r = run([(0.0, 100, 1)])
    (o,) = r.outcomes
    assert o.ttft_ms == pytest.approx(10.0) and o.tpot_ms == 0.0 and o.completed_s == pytest.approx(0.01)
    assert o.slo_met


def test_long_decodes_are_cut_into_segments_without_changing_the_result() -> None:
    rows = [(0.0, 500, 300), (0.2, 700, 150), (0.9, 100, 40)]
    coarse = run(rows, segment_steps=1000)
    fine = run(rows, segment_steps=1)
    for a, b in zip(coarse.outcomes, fine.outcomes, strict=True):
        assert a.completed_s == pytest.approx(b.completed_s, rel=1e-12)
        assert a.ttft_ms == pytest.approx(b.ttft_ms, rel=1e-12)
    assert fine.events > coarse.events


# ------------------------------------------------------------------------------------------ conservation


def burst(n: int, spacing_s: float = 0.01) -> list[tuple[float, int, int]]:
    return [(i * spacing_s, 200 + 37 * (i % 11), 5 + 13 * (i % 7)) for i in range(n)]


def test_conservation_run_to_completion() -> None:
    fleet = toy_fleet(2)
    r = simulate(toy_trace(burst(300)), fleet, FirstFit(fleet.serving, max_outstanding=20), SimConfig())
    s = r.summary
    assert s.requests == 300
    assert s.completed + s.rejected == 300 and s.running == 0
    assert s.rejected > 0 and s.completed > 0  # the outstanding limit refuses part of the burst
    assert {o.outcome for o in r.outcomes} == {"completed", "rejected"}
    assert all(o.completed_s is not None for o in r.outcomes if o.outcome == "completed")
    assert r.end_s == pytest.approx(max(o.completed_s or 0.0 for o in r.outcomes))


def test_conservation_at_a_horizon_counts_requests_still_running() -> None:
    fleet = toy_fleet(2)
    rows = burst(300, 0.05)
    r = simulate(toy_trace(rows), fleet, FirstFit(fleet.serving), SimConfig(horizon_s=7.5))
    s = r.summary
    arrived = sum(1 for t, _, _ in rows if t <= 7.5)
    assert s.requests == arrived
    assert s.running > 0 and s.completed > 0
    assert s.completed + s.rejected + s.running == arrived
    assert r.end_s == 7.5
    running = [o for o in r.outcomes if o.outcome == "running"]
    assert all(o.ttft_ms is None and not o.slo_met for o in running)


# ------------------------------------------------------------------------------------------ time


def test_simulated_time_never_goes_backwards() -> None:
    fleet = toy_fleet(3)
    policy = Recording(fleet)
    r = simulate(toy_trace(burst(400, 0.005)), fleet, policy, SimConfig(telemetry_interval_s=0.05))
    assert len(policy.times) == 400 + r.summary.completed
    assert all(b >= a for a, b in itertools.pairwise(policy.times))
    taken = [s.taken_at_s for s in policy.snapshots]
    assert all(b >= a for a, b in itertools.pairwise(taken))
    for o in r.outcomes:
        assert o.completed_s is not None and o.ttft_ms is not None
        assert o.arrival_s <= o.arrival_s + o.ttft_ms / 1000 <= o.completed_s + 1e-12


def test_the_clock_refuses_to_go_back() -> None:
    clock = SimClock(5.0)
    assert clock.advance(5.0) == 5.0 and clock.advance(7.5) == 7.5 and clock() == 7.5
    with pytest.raises(TimeWentBackwards, match=r"from 7\.5 s to 7\.4"):
        clock.advance(7.4)
    with pytest.raises(TimeWentBackwards):
        clock.advance(math.nan)
    assert clock.now_s == 7.5


def test_events_pop_by_time_then_rank_then_push_order() -> None:
    q = EventQueue()
    q.push(2.0, kind=9, rank=0, key=1)
    q.push(1.0, kind=9, rank=3, key=2)
    q.push(1.0, kind=9, rank=1, key=3)
    q.push(1.0, kind=9, rank=1, key=4)
    assert [q.pop().key for _ in range(4)] == [3, 4, 2, 1]
    with pytest.raises(ValueError):
        q.push(math.inf, kind=0)


# ------------------------------------------------------------------------------------------ contract checks


def test_placing_on_an_unknown_endpoint_is_a_policy_bug() -> None:
    with pytest.raises(PolicyContractError, match="not an endpoint serving m"):
        simulate(toy_trace([(0.0, 10, 2)]), toy_fleet(1), Blind("z1/toy/9"), SimConfig())


def test_placing_on_an_endpoint_that_is_off_is_a_policy_bug() -> None:
    cfg = SimConfig(scaling="plan", initial_active="reserved", planner_first_run_s=100.0)
    with pytest.raises(PolicyContractError, match="which is off"):
        simulate(toy_trace([(0.0, 10, 2)]), toy_fleet(1), Blind("z1/toy/0"), cfg)


def test_a_trace_model_no_pool_serves_is_refused_up_front() -> None:
    with pytest.raises(SimError, match=r"model llama-3\.1-70b is served by no pool"):
        simulate(toy_trace([(0.0, 10, 2)], model="llama-3.1-70b"), toy_fleet(1), Blind("z1/toy/0"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scaling", "elastic", "scaling: must be one of fixed, plan"),
        ("telemetry_interval_s", 0.0, "telemetry_interval_s: must be a finite number > 0"),
        ("provisioning_delay_s", -1.0, "provisioning_delay_s"),
        ("max_batch", 0, "max_batch: must be null or an integer >= 1"),
        ("expected_output_tokens", 0, "expected_output_tokens"),
        ("horizon_s", math.inf, "horizon_s"),
        ("initial_active", "some", "initial_active"),
    ],
)
def test_settings_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(SimError, match=message):
        dataclasses.replace(SimConfig(), **{field: value})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ snapshots


def test_policies_see_fleet_snapshots_built_from_telemetry() -> None:
    fleet = toy_fleet(2)
    policy = Recording(fleet, max_outstanding=1000)
    simulate(toy_trace(burst(200, 0.002)), fleet, policy, SimConfig(telemetry_interval_s=0.1, max_batch=4))
    snaps = policy.snapshots
    assert all(isinstance(s, FleetSnapshot) for s in snaps)
    versions = [s.version for s in snaps]
    assert versions == sorted(versions) and versions[-1] > versions[0]
    first = snaps[0]
    assert [e.endpoint_id for e in first.endpoints] == ["z1/toy/0", "z1/toy/1"]
    assert set(first.by_model) == {"m"} and first.zones["z1"].power_cap_w == 10_000.0
    assert all(e.status is EndpointStatus.READY for s in snaps for e in s.endpoints)
    # FirstFit sends everything to endpoint 0 (max batch 4): telemetry shows its queue and its power.
    busiest = max(snaps, key=lambda s: s.by_id["z1/toy/0"].load.waiting_requests)
    load0 = busiest.by_id["z1/toy/0"].load
    assert load0.waiting_requests > 0 and load0.running_requests == 4
    assert load0.utilization_ratio == pytest.approx(1.0)
    assert busiest.zone_power_w["z1"] == pytest.approx(500.0 + 100.0)  # busy + idle endpoint
    assert load0.kv_cache_usage_ratio > 0.0


def test_arrivals_and_completions_reach_the_policy_in_order() -> None:
    fleet = toy_fleet(1)
    policy = FirstFit(fleet.serving)
    simulate(toy_trace([(0.0, 1000, 11), (0.105, 1000, 5)]), fleet, policy, SimConfig())
    assert [kind for kind, _ in policy.calls] == ["place", "place", "complete", "complete"]
    assert [t for _, t in policy.calls] == pytest.approx([0.0, 0.105, 0.270, 0.314])


# ------------------------------------------------------------------------------------ plan-driven scaling


class ScriptedPlanner:
    """A planner (``PlannerLike``) that turns on the endpoints its script names for the time of the solve
    and records the total demand rate it was given."""

    def __init__(self, script: Sequence[tuple[float, frozenset[str]]]) -> None:
        self.script = script
        self.demand_rates: list[tuple[float, float]] = []

    def solve(
        self, snapshot: Any, demand: Any, profiles: Any, previous: Plan, now_s: float, *a: Any, **k: Any
    ) -> Plan:
        self.demand_rates.append((now_s, math.fsum(d.rate_per_s for d in demand.values())))
        active = next(ids for since_s, ids in reversed(self.script) if now_s >= since_s)
        return dataclasses.replace(
            previous,
            generation=previous.generation + 1,
            created_at_s=now_s,
            status="optimal",
            active_endpoint_ids=active,
        )


def _scaled(make_before_break: bool, demand_warmup: bool = True) -> tuple[SimResult, ScriptedPlanner]:
    fleet = toy_fleet(2)
    planner = ScriptedPlanner([(0.0, frozenset({"z1/toy/0"})), (40.0, frozenset({"z1/toy/1"}))])
    rows = [(float(t), 100, 2) for t in range(100)]  # one short request a second
    config = SimConfig(
        scaling="plan",
        planner_interval_s=20.0,
        provisioning_delay_s=30.0,
        make_before_break=make_before_break,
        demand_warmup=demand_warmup,
    )
    return simulate(toy_trace(rows), fleet, FirstFit(fleet.serving), config, planner=planner), planner


def test_make_before_break_keeps_an_endpoint_until_its_replacement_serves() -> None:
    # At 40 s the plan swaps toy/0 for toy/1, which serves from 70 s. Draining toy/0 at once leaves nothing
    # READY for 30 s; make-before-break keeps it until toy/1 is up, then drains it.
    broken, _ = _scaled(make_before_break=False)
    kept, _ = _scaled(make_before_break=True)
    assert broken.summary.rejected == 30  # the arrivals at 40, 41, ..., 69 s
    assert kept.summary.rejected == 0
    on_s = {p.pool: p.mean_active_endpoints for p in kept.summary.pools}["toy"] * kept.end_s
    # toy/0 on 0-70 s, toy/1 on 0-20 s (initially all on) and 70 s to the end: 30 s more than broken's.
    broken_on_s = {p.pool: p.mean_active_endpoints for p in broken.summary.pools}["toy"] * broken.end_s
    assert on_s - broken_on_s == pytest.approx(30.0, abs=0.5)


def test_the_first_plan_sees_the_true_rate_with_the_start_up_correction() -> None:
    # One request a second from t = 0; the first plan runs at 20 s with a 60 s half-life.
    _, corrected = _scaled(make_before_break=True, demand_warmup=True)
    _, plain = _scaled(make_before_break=True, demand_warmup=False)
    assert corrected.demand_rates[0][0] == plain.demand_rates[0][0] == 20.0
    assert corrected.demand_rates[0][1] == pytest.approx(1.0, rel=0.05)
    # The plain EWMA has seen 1 - 2 ** (-20 / 60) = 21 % of its window.
    assert plain.demand_rates[0][1] == pytest.approx(0.21, rel=0.1)
    # Later plans: the corrected estimate stays on the true rate while the plain one is still rising.
    for (_, c), (_, p) in zip(corrected.demand_rates, plain.demand_rates, strict=True):
        assert c == pytest.approx(1.0, rel=0.05) and p < c


class PlanFollowing(FirstFit):
    """FirstFit that asks for the planner (``uses_plan``), as the router's policy does."""

    @property
    def uses_plan(self) -> bool:
        return True


class ReservedRecorder(ScriptedPlanner):
    """Records, at every solve, which endpoints the snapshot marks reserved."""

    def __init__(self) -> None:
        super().__init__([(0.0, frozenset({"z1/toy/0", "z1/toy/1"}))])
        self.reserved: list[frozenset[str]] = []

    def solve(
        self, snapshot: Any, demand: Any, profiles: Any, previous: Plan, now_s: float, *a: Any, **k: Any
    ) -> Plan:
        self.reserved.append(frozenset(s.spec.endpoint_id for s in snapshot.endpoints if s.spec.reserved))
        return super().solve(snapshot, demand, profiles, previous, now_s, *a, **k)


@pytest.mark.parametrize("scaling", ["fixed", "plan"])
def test_a_fixed_fleet_is_reserved_to_the_planner(scaling: str) -> None:
    # With fixed scaling nothing the plan says turns an endpoint off, and its price is paid anyway: the
    # planner must see every endpoint as reserved, or it plans the traffic onto the fewest replicas.
    fleet = toy_fleet(2)
    planner = ReservedRecorder()
    rows = [(float(t), 100, 2) for t in range(60)]
    config = SimConfig(scaling=scaling, planner_interval_s=20.0)
    simulate(toy_trace(rows), fleet, PlanFollowing(fleet.serving), config, planner=planner)
    assert len(planner.reserved) >= 2
    expected = frozenset({"z1/toy/0", "z1/toy/1"}) if scaling == "fixed" else frozenset()
    assert all(r == expected for r in planner.reserved)
    assert not any(spec.reserved for spec in fleet.endpoints)  # the fleet itself is unchanged
