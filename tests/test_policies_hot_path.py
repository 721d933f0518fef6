"""The per-request hot path's shortcuts give exactly what the plain computation gives.

* the spill order, produced lazily one tie group of reference cost at a time, is the stable sort by
  (reference cost, requests in flight), and endpoints after the last one examined are never looked up;
* a latency-only estimate carries the very figures of the whole estimate, and only for endpoints that
  miss the request's SLO;
* the memoised split of a model's endpoints into planned and unplanned ones follows the snapshot and plan;
* a rejection's detail given as a function is formatted only when read, once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from fakes import make_plan, make_request, make_snapshot, make_spec, make_state, serving
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.types import EndpointStatus, FleetSnapshot, Priority
from policies.config import PolicyConfig
from policies.decision import Placed, PolicyCore
from policies.demand import classify
from policies.fastpath import FastPath
from policies.framework import CycleContext, Rejection, RejectReason
from policies.ledger import Booking, ReservationLedger
from policies.predict import Estimate, Estimator, LatencyEstimate, Target, in_flight, predict
from policies.registry import build_policy
from policies.types import EMPTY_PLAN, PlacementRequest


class CountingLedger(ReservationLedger):
    """A real ledger that also counts the bookings read (which endpoints a decision looked at)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def booking(self, endpoint_id: str) -> Booking:
        self.read.append(endpoint_id)
        return super().booking(endpoint_id)


def fleet(rng: random.Random, n: int) -> FleetSnapshot:
    """``n`` endpoints on three prices of two kinds of silicon: many ties of reference cost."""
    states = []
    for i in range(n):
        slow = rng.random() < 0.5
        spec = make_spec(
            f"e{i:02d}",
            instance_type="fake.slow" if slow else "fake.fast",
            kind="inf2" if slow else "h100",
            price_usd_per_hour=rng.choice((2.0, 4.0, 10.0)),
        )
        states.append(make_state(spec, running=rng.randint(0, 6), waiting=rng.choice((0, 0, 1))))
    return make_snapshot(states)


def targets_of(snapshot: FleetSnapshot) -> list[Target]:
    return [Target(s, serving(s.spec), snapshot.zones.get(s.spec.zone)) for s in snapshot.endpoints]


def book_some(ledger: ReservationLedger, snapshot: FleetSnapshot, rng: random.Random) -> None:
    """Real leases from the "turnout" policy, so that the ledger's counts differ from the telemetry."""
    policy = build_policy(PolicyConfig(), serving)
    for i in range(rng.randint(0, 12)):
        request = make_request(f"book-{i}", input_tokens=rng.randint(100, 3000))
        decision = policy.place(request, snapshot, EMPTY_PLAN, ledger, 1.0)
        if isinstance(decision, Placed):
            ledger.reserve(policy.lease_for(decision, f"lease-{i}", 1.0))


# --------------------------------------------------------------------------------------------- spill order


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30), enough=st.integers(1, 12), shuffle=st.booleans())
def test_spill_order_is_the_stable_sort_by_reference_cost_then_load(
    seed: int, n: int, enough: int, shuffle: bool
) -> None:
    rng = random.Random(seed)
    snapshot = fleet(rng, n)
    ledger = ReservationLedger()
    book_some(ledger, snapshot, rng)
    targets = sorted(targets_of(snapshot), key=lambda t: (t.reference_cost_usd, t.endpoint_id))
    if shuffle:  # not the policy's order: the spill order still sorts by reference cost first
        rng.shuffle(targets)
    expected = sorted(
        targets, key=lambda t: (t.reference_cost_usd, in_flight(t, ledger.booking(t.endpoint_id)))
    )
    got = list(FastPath.spill_order(targets, ledger, enough))
    if enough >= len(targets):
        assert got == targets  # every target is ranked: the order does not matter and is kept
    else:
        assert [t.endpoint_id for t in got] == [t.endpoint_id for t in expected]


def test_spill_order_reads_the_ledger_only_for_the_tie_groups_it_reaches() -> None:
    cheap = [make_state(make_spec(f"a{i}", price_usd_per_hour=2.0), running=5 - i) for i in range(4)]
    dear = [make_state(make_spec(f"b{i}", price_usd_per_hour=10.0), running=i) for i in range(4)]
    snapshot = make_snapshot(cheap + dear)
    targets = sorted(targets_of(snapshot), key=lambda t: (t.reference_cost_usd, t.endpoint_id))
    ledger = CountingLedger()
    order = iter(FastPath.spill_order(targets, ledger, 2))
    assert isinstance(order, Iterator)
    first = [next(order).endpoint_id for _ in range(4)]
    assert first == ["a3", "a2", "a1", "a0"]  # least loaded first among equal reference cost
    assert sorted(ledger.read) == ["a0", "a1", "a2", "a3"]  # the dearer group was never looked at
    assert [t.endpoint_id for t in order] == ["b0", "b1", "b2", "b3"]


def test_spill_profile_stops_consuming_the_order_after_enough_feasible() -> None:
    states = [make_state(make_spec(f"e{i}", price_usd_per_hour=2.0 + i)) for i in range(10)]
    snapshot = make_snapshot(states)
    policy = build_policy(PolicyConfig(), serving)
    assert isinstance(policy, FastPath)
    request = make_request()
    cls = classify(request.model, 1000, 200, request.priority, PolicyConfig().buckets)
    ctx = policy.context(request, cls, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    produced: list[str] = []

    def lazily() -> Iterator[Target]:
        for t in policy.eligible_by_reference_cost(snapshot, request.model):
            produced.append(t.endpoint_id)
            yield t

    result = policy.spill_profile.run(ctx, lazily(), 2, enough=3)
    assert result.feasible == 3 and len(result.ranked) == 2
    assert produced == ["e0", "e1", "e2"]


# ------------------------------------------------------------------------------------------ estimates


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    input_tokens=st.integers(1, 12_000),
    ttft_ms=st.sampled_from([50.0, 300.0, 2000.0]),
    tpot_ms=st.sampled_from([12.0, 20.0, 100.0]),
    data_region=st.sampled_from(["", "r1", "r2"]),
)
def test_latency_only_estimates_carry_the_figures_of_the_whole_estimate(
    seed: int, input_tokens: int, ttft_ms: float, tpot_ms: float, data_region: str
) -> None:
    rng = random.Random(seed)
    snapshot = fleet(rng, 8)
    ledger = ReservationLedger()
    book_some(ledger, snapshot, rng)
    config = PolicyConfig()
    request = make_request(
        input_tokens=input_tokens, ttft_ms=ttft_ms, tpot_ms=tpot_ms, data_region=data_region
    )
    cls = classify(
        request.model, input_tokens, request.expected_output_tokens, request.priority, config.buckets
    )
    estimator = Estimator(request, cls, config, {})
    for t in targets_of(snapshot):
        booking = ledger.booking(t.endpoint_id)
        whole = estimator.estimate(t, booking)
        assert whole == Estimator(request, cls, config, {}).estimate(t, booking)  # memos change nothing
        late = estimator.estimate(t, booking, True)
        misses = whole.ttft_ms > ttft_ms or whole.tpot_ms > tpot_ms
        if misses:
            assert late == LatencyEstimate(
                whole.ttft_ms, whole.tpot_ms, whole.decode_batch, whole.queued_prefill_tokens
            )
        else:
            assert late == whole
        assert predict(request, cls, t, booking, config) == CycleContext(
            request=request,
            traffic_class=cls,
            snapshot=snapshot,
            plan=EMPTY_PLAN,
            ledger=ledger,
            now_s=1.0,
            config=config,
            planned_share={},
            batch_limit={},
        ).prediction(t)


def test_context_latency_then_estimate_gives_the_same_figures() -> None:
    busy = make_state(make_spec("busy"), running=60, waiting=4)
    idle = make_state(make_spec("idle"))
    snapshot = make_snapshot([busy, idle])
    request = make_request(ttft_ms=400.0, tpot_ms=20.0)
    core = PolicyCore("test", PolicyConfig(), serving)
    cls = core.classify(request)
    ctx = core.context(request, cls, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    busy_t, idle_t = (Target(s, serving(s.spec), snapshot.zones["z1"]) for s in (busy, idle))

    late = ctx.latency(busy_t)
    assert isinstance(late, LatencyEstimate) and late.tpot_ms > 20.0
    assert ctx.latency(busy_t) is late  # memoised
    whole = ctx.estimate(busy_t)  # a plugin may still ask for everything
    assert isinstance(whole, Estimate)
    assert (whole.ttft_ms, whole.tpot_ms, whole.decode_batch, whole.queued_prefill_tokens) == late
    assert ctx.latency(busy_t) is whole

    fine = ctx.latency(idle_t)
    assert isinstance(fine, Estimate) and ctx.estimate(idle_t) is fine


# ------------------------------------------------------------------------------------- plan split memo


def request_of_class(model: str = "m-8b") -> tuple[PlacementRequest, str]:
    request = make_request(model=model)
    cfg = PolicyConfig()
    return request, classify(model, 1000, 200, request.priority, cfg.buckets).name


def test_split_by_plan_follows_the_snapshot_and_the_plan() -> None:
    states = [make_state(make_spec(f"e{i}", price_usd_per_hour=12.0 - i)) for i in range(6)]
    snapshot = make_snapshot(states)
    policy = build_policy(PolicyConfig(), serving)
    assert isinstance(policy, FastPath)
    _, cls = request_of_class()
    plan = make_plan({"e1": {cls: 0.5}, "e4": {cls: 0.5}})
    shares = policy.class_shares(plan, cls)

    planned, others = policy.split_by_plan(snapshot, "m-8b", cls, shares)
    assert [t.endpoint_id for t in planned] == ["e1", "e4"]
    assert [t.endpoint_id for t in others] == ["e5", "e3", "e2", "e0"]  # cheapest reference cost first
    assert policy.split_by_plan(snapshot, "m-8b", cls, shares) == (planned, others)

    drained = make_snapshot(
        [*states[:4], make_state(states[4].spec, status=EndpointStatus.DRAINED), states[5]]
    )
    planned2, others2 = policy.split_by_plan(drained, "m-8b", cls, shares)
    assert [t.endpoint_id for t in planned2] == ["e1"]
    assert [t.endpoint_id for t in others2] == ["e5", "e3", "e2", "e0"]

    plan2 = make_plan({"e0": {cls: 1.0}})
    planned3, others3 = policy.split_by_plan(drained, "m-8b", cls, policy.class_shares(plan2, cls))
    assert [t.endpoint_id for t in planned3] == ["e0"]
    assert [t.endpoint_id for t in others3] == ["e5", "e3", "e2", "e1"]


@pytest.mark.parametrize("priority", list(Priority))
def test_plan_decisions_with_the_memo_equal_those_of_a_fresh_policy(priority: Priority) -> None:
    rng = random.Random(7)
    snapshot = fleet(rng, 12)
    _, cls = request_of_class()
    plan = make_plan({"e01": {cls: 0.3}, "e05": {cls: 0.7}, "e09": {cls: 0.2}})
    warm = build_policy(PolicyConfig(max_fallbacks=4), serving)
    ledger = ReservationLedger()
    for i in range(30):
        r = make_request(f"r{i}", priority=priority, input_tokens=rng.randint(500, 1500))
        fresh = build_policy(PolicyConfig(max_fallbacks=4), serving)
        a = warm.place(r, snapshot, plan, ledger, 1.0)
        b = fresh.place(r, snapshot, plan, ledger, 1.0)
        assert a == b
        if isinstance(a, Placed):
            ledger.reserve(warm.lease_for(a, f"lease-{i}", 1.0))


# ----------------------------------------------------------------------------------------- rejections


def test_rejection_detail_is_formatted_once_and_only_when_read() -> None:
    calls: list[int] = []

    def detail() -> str:
        calls.append(1)
        return "e1: predicted TPOT 80.0 ms > 50 ms at batch 9"

    lazy = Rejection(RejectReason.SLO_TPOT, detail, "latency")
    assert calls == []
    assert lazy.reason is RejectReason.SLO_TPOT and lazy.plugin == "latency"
    assert lazy.detail == "e1: predicted TPOT 80.0 ms > 50 ms at batch 9"
    assert lazy.detail == lazy.detail and calls == [1]
    eager = Rejection(RejectReason.SLO_TPOT, "e1: predicted TPOT 80.0 ms > 50 ms at batch 9", "latency")
    assert lazy == eager and hash(lazy) == hash(eager)
    assert lazy != Rejection(RejectReason.SLO_TTFT, eager.detail, "latency")
    assert repr(lazy) == (
        "Rejection(reason=<RejectReason.SLO_TPOT: 'slo_tpot'>, "
        "detail='e1: predicted TPOT 80.0 ms > 50 ms at batch 9', plugin='latency')"
    )


def test_refusal_reads_the_details_of_lazily_formatting_filters() -> None:
    full = make_state(make_spec("e1"), running=200, waiting=30)
    snapshot = make_snapshot([full])
    policy = build_policy(PolicyConfig(), serving)
    decision = policy.place(make_request(tpot_ms=20.0), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert not isinstance(decision, Placed)
    assert decision.detail.startswith("e1: predicted T")
    assert decision.detail in decision.message
