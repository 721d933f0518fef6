"""Each scorer on its own, and how the framework combines, clamps and ranks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from fakes import make_request, make_snapshot, make_spec, make_state
from test_policies_filters import ctx_for, target

from fleet.types import EndpointState
from policies.config import PolicyConfig
from policies.framework import CycleContext, Profile
from policies.ledger import ReservationLedger
from policies.pickers import MaxScorePicker
from policies.predict import Target
from policies.scorers.cost import CostScorer
from policies.scorers.load import LoadScorer
from policies.scorers.plan_affinity import PlanAffinityScorer


def setup(
    states: list[EndpointState], ledger: ReservationLedger | None = None
) -> tuple[CycleContext, list[Target]]:
    snap = make_snapshot(states)
    ctx = ctx_for(make_request(), snap, ledger)
    return ctx, [target(s, snap) for s in snap.endpoints]


def test_cost_scores_cheapest_one_and_others_by_ratio() -> None:
    ctx, ts = setup(
        [make_state(make_spec(f"e{i}", price_usd_per_hour=p)) for i, p in enumerate((10.0, 20.0, 40.0))]
    )
    assert CostScorer().score(ctx, ts) == pytest.approx([1.0, 0.5, 0.25])


def test_cost_with_a_free_endpoint() -> None:
    ctx, ts = setup([make_state(make_spec("a", price_usd_per_hour=0.0)), make_state(make_spec("b"))])
    assert CostScorer().score(ctx, ts) == [1.0, 0.0]


def test_load_scores_fewest_in_flight_highest() -> None:
    ctx, ts = setup([make_state(make_spec("a"), running=1), make_state(make_spec("b"), running=3, waiting=1)])
    assert LoadScorer().score(ctx, ts) == pytest.approx([1.0, 2 / 5])


def test_plan_affinity_follows_the_deficit() -> None:
    from test_policies_ledger import lease

    ledger = ReservationLedger(affinity_memory_placements=1)  # remembers only the last placement
    ctx, ts = setup([make_state(make_spec("a")), make_state(make_spec("b"))], ledger)
    ctx.planned_share = {"a": 0.75, "b": 0.25}
    assert PlanAffinityScorer().score(ctx, ts) == pytest.approx([0.875, 0.625])  # nothing placed yet
    ledger.reserve(lease("x", endpoint_id="a", class_name=ctx.traffic_class.name))
    assert PlanAffinityScorer().score(ctx, ts) == pytest.approx([0.375, 0.625])


class _Fixed:
    def __init__(self, name: str, values: Sequence[float]) -> None:
        self.name = name
        self.values = values

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]:
        return self.values


def test_framework_clamps_and_weights_scores() -> None:
    ctx, ts = setup([make_state(make_spec("a")), make_state(make_spec("b")), make_state(make_spec("c"))])
    profile = Profile(
        "p",
        [],
        [(_Fixed("wild", [7.0, -3.0, float("nan")]), 3.0), (_Fixed("mild", [0.0, 1.0, 0.5]), 1.0)],
        MaxScorePicker(),
    )
    result = profile.run(ctx, ts, 3)
    scores = {c.endpoint_id: c.score for c in result.ranked}
    assert scores == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.125})
    assert [c.endpoint_id for c in result.ranked] == ["a", "b", "c"]


def test_ties_break_by_endpoint_id_and_bad_plugins_are_caught() -> None:
    ctx, ts = setup([make_state(make_spec(e)) for e in ("c", "a", "b")])
    result = Profile("p", [], [(_Fixed("flat", [0.5, 0.5, 0.5]), 1.0)], MaxScorePicker()).run(ctx, ts, 2)
    assert [c.endpoint_id for c in result.ranked] == ["a", "b"]
    with pytest.raises(RuntimeError, match="returned 1 scores for 3"):
        Profile("p", [], [(_Fixed("short", [1.0]), 1.0)], MaxScorePicker()).run(ctx, ts, 2)
    with pytest.raises(ValueError, match="must be > 0"):
        Profile("p", [], [(_Fixed("zero", [1.0]), 0.0)], MaxScorePicker())
    assert PolicyConfig().plan_profile.scorers[0].name == "plan_affinity"
