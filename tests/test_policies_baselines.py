"""The baselines: what each checks and how each picks."""

from __future__ import annotations

from collections import Counter

from fakes import make_request, make_snapshot, make_spec, make_state, serving

from fleet.types import EndpointStatus, FleetSnapshot, ZoneSpec
from policies.config import PolicyConfig
from policies.decision import Placed, PlacementReason, Policy, Refused
from policies.ledger import ReservationLedger
from policies.registry import build_policy
from policies.types import EMPTY_PLAN


def baseline(name: str) -> Policy:
    return build_policy(PolicyConfig(policy=name), serving)


def fleet() -> FleetSnapshot:
    """a, b, c ready (c the cheapest, a the busiest); d drained; e too short for long prompts."""
    return make_snapshot(
        [
            make_state(make_spec("a", price_usd_per_hour=30.0), running=9),
            make_state(make_spec("b", price_usd_per_hour=20.0), running=2),
            make_state(make_spec("c", price_usd_per_hour=5.0), running=5),
            make_state(make_spec("d", price_usd_per_hour=1.0), status=EndpointStatus.DRAINED),
            make_state(make_spec("e", price_usd_per_hour=1.0, max_context_tokens=2048), running=0),
        ]
    )


def run(policy: Policy, n: int, snapshot: FleetSnapshot, **request: object) -> list[str]:
    ledger = ReservationLedger()
    chosen = []
    for i in range(n):
        d = policy.place(make_request(f"r{i}", **request), snapshot, EMPTY_PLAN, ledger, float(i))  # type: ignore[arg-type]
        assert isinstance(d, Placed) and d.reason is PlacementReason.NO_PLAN and d.plan_generation == 0
        chosen.append(d.chosen.endpoint_id)
        lease = policy.lease_for(d, f"L{i}", float(i))
        ledger.reserve(lease)
        ledger.release(lease.lease_id)
    return chosen


def test_round_robin_walks_through_eligible_fitting_endpoints() -> None:
    assert run(baseline("round_robin"), 8, fleet()) == ["a", "b", "c", "e", "a", "b", "c", "e"]
    # e cannot hold 3000 + 500 tokens: it drops out; d (drained) never appears.
    assert run(baseline("round_robin"), 3, fleet(), input_tokens=3000, max_output_tokens=500) == [
        "a",
        "b",
        "c",
    ]


def test_least_loaded_picks_fewest_in_flight() -> None:
    assert run(baseline("least_loaded"), 1, fleet()) == ["e"]
    assert run(baseline("least_loaded"), 1, fleet(), input_tokens=3000, max_output_tokens=500) == ["b"]


def test_random_is_seeded_spread_and_reproducible() -> None:
    first = run(baseline("random"), 200, fleet())
    assert first == run(baseline("random"), 200, fleet())
    counts = Counter(first)
    assert set(counts) == {"a", "b", "c", "e"} and min(counts.values()) > 25
    other_seed = build_policy(PolicyConfig(policy="random", random_seed=7), serving)
    assert run(other_seed, 200, fleet()) != first


def test_cheapest_feasible_is_the_lowest_predicted_cost() -> None:
    d = baseline("cheapest_feasible").place(
        make_request(input_tokens=3000, max_output_tokens=500), fleet(), EMPTY_PLAN, ReservationLedger(), 0.0
    )
    assert isinstance(d, Placed) and d.chosen.endpoint_id == "c"
    # a costs more per hour than b but shares its decode steps with 9 others, b with 2: per token a is
    # cheaper at its operating point.
    assert [c.endpoint_id for c in d.fallbacks] == ["a", "b"]
    costs = [c.prediction.cost_usd for c in (d.chosen, *d.fallbacks)]
    assert costs == sorted(costs)


def test_only_cheapest_feasible_respects_slo_and_power() -> None:
    snapshot = make_snapshot(
        [make_state(make_spec("a"), running=30)],
        zones=[ZoneSpec("z1", "r1", 100.0)],
        zone_power_w={"z1": 150.0},
    )
    tight = make_request(tpot_ms=12.0)
    for name in ("round_robin", "least_loaded", "random"):
        d = baseline(name).place(tight, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
        assert isinstance(d, Placed), name  # ignores SLO and the power cap, as documented
        assert d.chosen.prediction.tpot_ms > 12.0
    d = baseline("cheapest_feasible").place(tight, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Refused)


def test_baselines_ignore_the_plan() -> None:
    from fakes import make_plan

    plan = make_plan({"a": {"m-8b/in1024/out512/standard": 1.0}})
    for name in ("round_robin", "least_loaded", "random", "cheapest_feasible"):
        d = baseline(name).place(make_request(), fleet(), plan, ReservationLedger(), 0.0)
        assert isinstance(d, Placed) and d.plan_generation == 0 and not d.replan_requested
