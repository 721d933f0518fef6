"""The "turnout" fast path: plan following, spill, refusals, replay, data gravity, shedding, leases."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import pytest
from fakes import (
    FAST,
    SLOW,
    FakePerformanceModel,
    make_plan,
    make_request,
    make_snapshot,
    make_spec,
    make_state,
    serving,
)

from fleet.types import EndpointStatus, FleetSnapshot, Priority, ZoneSpec
from policies.config import DataGravity, PolicyConfig
from policies.decision import (
    BindingReason,
    Placed,
    PlacementReason,
    Policy,
    Refused,
    RequestIdConflict,
    UnknownModelError,
    serving_lookup,
)
from policies.demand import classify
from policies.fastpath import FastPath
from policies.framework import RejectReason
from policies.ledger import ReservationLedger
from policies.predict import Estimate
from policies.registry import build_policy
from policies.types import EMPTY_PLAN, PlacementRequest, Plan


def turnout(**overrides: object) -> Policy:
    return build_policy(dataclasses.replace(PolicyConfig(), **overrides), serving)  # type: ignore[arg-type]


def three_endpoints(**power: float) -> FleetSnapshot:
    """e1 fast $10/h, e2 slow $2/h (cheapest per token), e3 fast $12/h; all in z1."""
    return make_snapshot(
        [
            make_state(make_spec("e1", price_usd_per_hour=10.0)),
            make_state(make_spec("e2", instance_type="fake.slow", kind="inf2", price_usd_per_hour=2.0)),
            make_state(make_spec("e3", price_usd_per_hour=12.0)),
        ],
        zone_power_w=power,
    )


def place_and_reserve(
    policy: Policy,
    ledger: ReservationLedger,
    request: PlacementRequest,
    snapshot: FleetSnapshot,
    plan: Plan,
    now_s: float,
) -> Placed | Refused:
    ledger.expire(now_s)
    decision = policy.place(request, snapshot, plan, ledger, now_s)
    if isinstance(decision, Placed) and not decision.lease_id:
        ledger.reserve(policy.lease_for(decision, f"lease-{request.request_id}", now_s))
    return decision


def class_name(request: PlacementRequest) -> str:
    cfg = PolicyConfig()
    return classify(
        request.model, request.input_tokens, request.expected_output_tokens, request.priority, cfg.buckets
    ).name


# ------------------------------------------------------------------------------------------- plan modes


def test_no_plan_picks_cheapest_feasible_with_ranked_fallbacks() -> None:
    d = turnout().place(make_request(), three_endpoints(), EMPTY_PLAN, ReservationLedger(), 5.0)
    assert isinstance(d, Placed)
    assert d.reason is PlacementReason.NO_PLAN and d.plan_generation == 0 and not d.replan_requested
    assert d.chosen.endpoint_id == "e2"
    assert [c.endpoint_id for c in d.fallbacks] == ["e1", "e3"]
    costs = [c.prediction.cost_usd_per_million_tokens for c in (d.chosen, *d.fallbacks)]
    assert costs == sorted(costs)
    assert d.snapshot_version == 1


def test_stale_plan_degrades_to_cheapest_feasible() -> None:
    req = make_request()
    plan = make_plan({"e1": {class_name(req): 1.0}}, generation=7, created_at_s=0.0)
    fresh = turnout(max_plan_age_s=60.0).place(req, three_endpoints(), plan, ReservationLedger(), 60.0)
    assert isinstance(fresh, Placed) and fresh.reason is PlacementReason.PLAN
    assert fresh.chosen.endpoint_id == "e1" and fresh.plan_generation == 7
    stale = turnout(max_plan_age_s=60.0).place(req, three_endpoints(), plan, ReservationLedger(), 60.5)
    assert isinstance(stale, Placed) and stale.reason is PlacementReason.STALE_PLAN
    assert stale.chosen.endpoint_id == "e2" and stale.plan_generation == 0


def test_plan_split_is_followed() -> None:
    policy = turnout()
    ledger = ReservationLedger()
    snapshot = three_endpoints()
    cls = class_name(make_request())
    plan = make_plan({"e1": {cls: 0.6}, "e3": {cls: 0.2}, "e2": {"other/class": 1.0}}, generation=3)
    counts: Counter[str] = Counter()
    for i in range(400):
        d = place_and_reserve(policy, ledger, make_request(f"r{i}"), snapshot, plan, i / 10)
        assert isinstance(d, Placed) and d.reason is PlacementReason.PLAN and d.plan_generation == 3
        counts[d.chosen.endpoint_id] += 1
        # Fallbacks: the other planned endpoint, then the cheapest unplanned one.
        assert [c.endpoint_id for c in d.fallbacks] == [*sorted({"e1", "e3"} - {d.chosen.endpoint_id}), "e2"]
        ledger.release(f"lease-r{i}")  # completes at once: load stays flat
    assert counts["e2"] == 0
    # Planned: 0.6 / (0.6 + 0.2) = 3/4 on e1. The cost scorer nudges toward the cheaper e1 by about
    # w_cost x (1 - 10/12) / w_affinity = 1.7 points (policies/config.py).
    assert counts["e1"] / 400 == pytest.approx(0.75 + 0.1 * (1 - 10 / 12), abs=0.01)
    assert counts["e1"] + counts["e3"] == 400


def test_burst_spills_then_refuses_with_reason_and_retry() -> None:
    policy = turnout()
    ledger = ReservationLedger()
    snapshot = three_endpoints()
    req = make_request(input_tokens=2000, ttft_ms=500.0)
    plan = make_plan({"e1": {class_name(req): 1.0}})
    outcomes: list[str] = []
    for i in range(12):
        d = place_and_reserve(
            policy, ledger, dataclasses.replace(req, request_id=f"b{i}"), snapshot, plan, 1.0
        )
        if isinstance(d, Placed):
            assert d.chosen.prediction.ttft_ms <= 500.0 and d.chosen.prediction.tpot_ms <= 100.0
            outcomes.append(d.reason.value)
            assert d.replan_requested == (d.reason is PlacementReason.PLAN_SPILL)
        else:
            outcomes.append(f"refused:{d.reason.value}")
            assert d.reason is BindingReason.SLO
            assert d.retry_after_s is not None and d.retry_after_s > 0
            assert d.replan_requested and d.plan_generation == 1
            assert "slo_ttft=3" in d.message
    # FAST: 110 ms own prefill + 100 ms per queued 2000-token prompt: 4 fit in 500 ms on e1 (planned).
    # Then spill to the cheapest feasible unplanned endpoint: e2 (420 ms alone) once, e3 four times.
    assert outcomes[:4] == ["plan"] * 4
    assert outcomes[4:9] == ["plan_spill"] * 5
    assert outcomes[9:] == ["refused:slo"] * 3


def test_retry_delay_is_the_queue_drain_time() -> None:
    policy = turnout(retry=dataclasses.replace(PolicyConfig().retry, min_s=0.001))
    ledger = ReservationLedger()
    snapshot = make_snapshot([make_state(make_spec("e1"))])
    req = make_request(input_tokens=2000, ttft_ms=500.0)
    for i in range(4):
        assert isinstance(
            place_and_reserve(
                policy, ledger, dataclasses.replace(req, request_id=f"b{i}"), snapshot, EMPTY_PLAN, 0.0
            ),
            Placed,
        )
    d = policy.place(dataclasses.replace(req, request_id="late"), snapshot, EMPTY_PLAN, ledger, 0.0)
    assert isinstance(d, Refused)
    # 8000 queued tokens: TTFT 10 + (2000 + 8000) / 20 = 510 ms, plus half the decode step in progress and
    # one beside each of the ceil(10000 / (2048 - 4)) = 5 chunks of prefill (batch 5, context 2100: a step
    # of 10 + 5 * 0.71 = 13.55 ms; 5.5 x 13.55 = 74.525 ms): 84.525 ms over, that much must drain.
    assert d.retry_after_s == pytest.approx(0.084525)


def test_class_missing_from_plan_spills_and_asks_for_replan() -> None:
    plan = make_plan({"e1": {"m-8b/in99/out99/standard": 1.0}})
    d = turnout().place(make_request(), three_endpoints(), plan, ReservationLedger(), 0.0)
    assert isinstance(d, Placed) and d.reason is PlacementReason.PLAN_SPILL and d.replan_requested
    assert d.chosen.endpoint_id == "e2"


def test_fallbacks_are_distinct_and_at_most_three() -> None:
    snapshot = make_snapshot([make_state(make_spec(f"e{i}", price_usd_per_hour=5.0 + i)) for i in range(8)])
    d = turnout().place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Placed)
    ids = [d.chosen.endpoint_id, *(c.endpoint_id for c in d.fallbacks)]
    assert ids == ["e0", "e1", "e2", "e3"]
    d0 = turnout(max_fallbacks=0).place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d0, Placed) and d0.fallbacks == ()


# ---------------------------------------------------------------------------------------- idempotency


def test_retried_request_id_replays_its_live_lease() -> None:
    policy = turnout()
    ledger = ReservationLedger()
    snapshot = three_endpoints()
    req = make_request("same")
    first = place_and_reserve(policy, ledger, req, snapshot, EMPTY_PLAN, 0.0)
    assert isinstance(first, Placed)
    outstanding = ledger.booking(first.chosen.endpoint_id).outstanding
    again = policy.place(req, snapshot, EMPTY_PLAN, ledger, 1.0)
    assert isinstance(again, Placed) and again.reason is PlacementReason.IDEMPOTENT_REPLAY
    assert (
        again.lease_id == "lease-same" and again.chosen == first.chosen and again.fallbacks == first.fallbacks
    )
    assert ledger.booking(first.chosen.endpoint_id).outstanding == outstanding
    with pytest.raises(RequestIdConflict, match="same"):
        policy.place(dataclasses.replace(req, input_tokens=7), snapshot, EMPTY_PLAN, ledger, 1.0)
    ledger.release("lease-same")
    fresh = policy.place(req, snapshot, EMPTY_PLAN, ledger, 2.0)
    assert isinstance(fresh, Placed) and fresh.reason is PlacementReason.NO_PLAN and fresh.lease_id == ""


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="known models: m-8b"):
        turnout().place(make_request(model="nope"), three_endpoints(), EMPTY_PLAN, ReservationLedger(), 0.0)


# ------------------------------------------------------------------------------------------- refusals


def test_drained_endpoint_stops_receiving_work_at_once() -> None:
    policy = turnout()
    ledger = ReservationLedger()
    v1 = three_endpoints()
    first = place_and_reserve(policy, ledger, make_request("a"), v1, EMPTY_PLAN, 0.0)
    assert isinstance(first, Placed) and first.chosen.endpoint_id == "e2"
    drained = make_state(v1.by_id["e2"].spec, status=EndpointStatus.DRAINED)
    v2 = make_snapshot([v1.by_id["e1"], drained, v1.by_id["e3"]], version=2)
    for i in range(5):
        d = place_and_reserve(policy, ledger, make_request(f"b{i}"), v2, EMPTY_PLAN, 1.0)
        assert isinstance(d, Placed) and d.chosen.endpoint_id != "e2"
        assert all(c.endpoint_id != "e2" for c in d.fallbacks)


def test_every_endpoint_ineligible_refuses_capacity_with_a_telemetry_round_retry() -> None:
    s = [make_spec("e1"), make_spec("e2"), make_spec("e3")]
    snapshot = make_snapshot(
        [
            make_state(s[0], status=EndpointStatus.STALE),
            make_state(s[1], status=EndpointStatus.UNHEALTHY),
            make_state(s[2], status=EndpointStatus.DRAINED),
        ]
    )
    d = turnout().place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Refused) and d.reason is BindingReason.CAPACITY
    assert d.retry_after_s == PolicyConfig().retry.ineligible_s
    assert d.rejections == ((RejectReason.NOT_ELIGIBLE, 3),)
    assert "drained (maintenance)" in d.message or "stale" in d.message


def test_too_long_for_every_context_is_not_retryable() -> None:
    d = turnout().place(
        make_request(input_tokens=16_000, max_output_tokens=1000),
        three_endpoints(),
        EMPTY_PLAN,
        ReservationLedger(),
        0.0,
    )
    assert isinstance(d, Refused) and d.reason is BindingReason.CONTEXT and d.retry_after_s is None


def test_constraints_excluding_everything_refuse_without_retry() -> None:
    d = turnout().place(
        make_request(allowed_accelerator_kinds=frozenset({"trn2"})),
        three_endpoints(),
        EMPTY_PLAN,
        ReservationLedger(),
        0.0,
    )
    assert isinstance(d, Refused) and d.reason is BindingReason.CAPACITY and d.retry_after_s is None
    assert d.rejections == ((RejectReason.NOT_ALLOWED, 3),)


def test_allowed_kinds_region_zone_are_respected() -> None:
    snapshot = make_snapshot(
        [
            make_state(make_spec("a", kind="inf2", instance_type="fake.slow", price_usd_per_hour=1.0)),
            make_state(make_spec("b", zone="z2", region="r2", price_usd_per_hour=9.0)),
            make_state(make_spec("c", price_usd_per_hour=10.0)),
        ],
        zones=[ZoneSpec("z1", "r1", 1e6), ZoneSpec("z2", "r2", 1e6)],
    )
    cases = {
        "a": make_request(),
        "c": make_request(allowed_accelerator_kinds=frozenset({"h100"}), region="r1"),
        "b": make_request(zone="z2"),
    }
    for want, req in cases.items():
        d = turnout().place(req, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
        assert isinstance(d, Placed) and d.chosen.endpoint_id == want


def test_kv_memory_exhausted_refuses_capacity() -> None:
    snapshot = make_snapshot([make_state(make_spec("e1"), kv_usage_ratio=0.999, running=5)])
    d = turnout().place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Refused) and d.reason is BindingReason.CAPACITY
    assert d.retry_after_s is not None and d.retry_after_s > 0


def test_power_cap_refuses_power() -> None:
    snapshot = make_snapshot(
        [make_state(make_spec("e1"))], zones=[ZoneSpec("z1", "r1", 1000.0)], zone_power_w={"z1": 999.0}
    )
    d = turnout().place(
        make_request(priority=Priority.CRITICAL), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0
    )
    assert isinstance(d, Refused) and d.reason is BindingReason.POWER and d.retry_after_s is not None


@pytest.mark.parametrize(
    ("drawn_w", "placed"),
    [
        (700.0, {"critical", "standard", "sheddable"}),
        (850.0, {"critical", "standard"}),
        (897.0, {"critical"}),
        (999.0, set()),
    ],
)
def test_shedding_refuses_sheddable_then_standard_then_critical(drawn_w: float, placed: set[str]) -> None:
    snapshot = make_snapshot(
        [make_state(make_spec("e1"))], zones=[ZoneSpec("z1", "r1", 1000.0)], zone_power_w={"z1": drawn_w}
    )
    got = set()
    for p in Priority:
        d = turnout().place(make_request(priority=p), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
        if isinstance(d, Placed):
            got.add(p.value)
        else:
            # Over the cap itself it is a power refusal for every priority; below it, shedding.
            expect = BindingReason.POWER if p is Priority.CRITICAL or drawn_w > 990 else BindingReason.SHED
            assert d.reason is expect, d.message
    assert got == placed


# --------------------------------------------------------------------------------------- data gravity


def gravity_fleet(remote_price: float) -> FleetSnapshot:
    return make_snapshot(
        [
            make_state(make_spec("local", region="r1", price_usd_per_hour=10.0)),
            make_state(make_spec("remote", zone="z2", region="r2", price_usd_per_hour=remote_price)),
        ],
        zones=[ZoneSpec("z1", "r1", 1e6), ZoneSpec("z2", "r2", 1e6)],
    )


def test_remote_endpoint_wins_only_when_cheaper_including_egress() -> None:
    # 1200 tokens x 1 MB/token x $0.02/GB = $0.024 of egress: far more than a $1/h price difference saves.
    heavy = DataGravity(bytes_per_token=1e6)
    req = make_request(data_region="r1")
    d = turnout(gravity=heavy).place(req, gravity_fleet(9.0), EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Placed) and d.chosen.endpoint_id == "local"
    remote = d.fallbacks[0].prediction
    assert remote.egress_cost_usd == pytest.approx(0.02 * 1200 * 1e6 / 1e9)
    assert remote.network_latency_ms == 70.0
    assert remote.ttft_ms == pytest.approx(d.chosen.prediction.ttft_ms + 70.0)
    # Text-sized payloads (4 bytes/token): the egress is tiny, the cheaper remote endpoint wins.
    d2 = turnout().place(req, gravity_fleet(9.0), EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d2, Placed) and d2.chosen.endpoint_id == "remote"
    # No data region: no gravity terms at all.
    d3 = turnout(gravity=heavy).place(
        make_request(), gravity_fleet(9.0), EMPTY_PLAN, ReservationLedger(), 0.0
    )
    assert isinstance(d3, Placed) and d3.chosen.endpoint_id == "remote"
    assert d3.chosen.prediction.egress_cost_usd == 0.0 and d3.chosen.prediction.network_latency_ms == 0.0


def test_network_latency_counts_against_the_ttft_slo() -> None:
    req = make_request(data_region="r1", ttft_ms=100.0)  # own prefill 60 ms + 70 ms away > 100 ms
    d = turnout().place(req, gravity_fleet(1.0), EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Placed) and d.chosen.endpoint_id == "local" and d.fallbacks == ()


# ---------------------------------------------------------------------------------- leases, learning


def test_lease_ttl_booking_and_power_visibility() -> None:
    policy = turnout(lease_grace_s=30.0, lease_max_ttl_s=3600.0, power_visible_after_s=10.0)
    snapshot = make_snapshot(
        [
            make_state(make_spec("t", price_usd_per_hour=1.0)),
            make_state(make_spec("n", expects_telemetry=False)),
        ]
    )
    d = policy.place(make_request(max_output_tokens=500), snapshot, EMPTY_PLAN, ReservationLedger(), 100.0)
    assert isinstance(d, Placed) and d.chosen.endpoint_id == "t"
    lease = policy.lease_for(d, "L1", 100.0)
    p = d.chosen.prediction
    assert lease.expires_at_s == pytest.approx(100.0 + 30.0 + (p.ttft_ms + 500 * p.tpot_ms) / 1000.0)
    assert lease.prefill_done_at_s == pytest.approx(100.0 + p.ttft_ms / 1000.0)
    assert lease.power_visible_at_s == 110.0
    assert (lease.kv_tokens, lease.prefill_tokens, lease.power_mw) == (1200, 1000, p.power_increment_mw)
    assert lease.placement.lease_id == "L1" and lease.class_name == d.traffic_class.name
    fallback = dataclasses.replace(d, chosen=d.fallbacks[0])
    assert policy.lease_for(fallback, "L2", 100.0).power_visible_at_s is None  # no telemetry: held to the end
    capped = turnout(lease_grace_s=1.0, lease_max_ttl_s=2.0).lease_for(d, "L3", 0.0)
    assert capped.expires_at_s == 2.0
    with pytest.raises(ValueError):
        policy.lease_for(d, "", 0.0)


def test_completion_corrects_the_endpoint_latency_estimate() -> None:
    policy = turnout()
    ledger = ReservationLedger(correction_weight=1.0)
    snapshot = make_snapshot([make_state(make_spec("e1"))])
    d = place_and_reserve(policy, ledger, make_request("a"), snapshot, EMPTY_PLAN, 0.0)
    assert isinstance(d, Placed)
    before = d.chosen.prediction
    ledger.complete("lease-a", observed_ttft_ms=2 * before.ttft_ms, observed_tpot_ms=3 * before.tpot_ms)
    after = policy.place(make_request("b"), snapshot, EMPTY_PLAN, ledger, 1.0)
    assert isinstance(after, Placed)
    assert after.chosen.prediction.ttft_ms == pytest.approx(2 * before.ttft_ms)
    assert after.chosen.prediction.tpot_ms == pytest.approx(3 * before.tpot_ms)
    assert after.chosen.prediction.cost_usd > before.cost_usd  # slower means dearer


# --------------------------------------------------------------------------------------- determinism


def test_same_inputs_same_decisions() -> None:
    def run() -> list[object]:
        policy = turnout()
        ledger = ReservationLedger()
        snapshot = three_endpoints()
        cls = class_name(make_request())
        plan = make_plan({"e1": {cls: 0.5}, "e3": {cls: 0.5}})
        out: list[object] = []
        for i in range(60):
            req = make_request(f"r{i}", input_tokens=200 + 37 * i, priority=list(Priority)[i % 3])
            out.append(
                place_and_reserve(policy, ledger, req, snapshot, plan if i % 2 else EMPTY_PLAN, i / 10)
            )
        return out

    assert run() == run()


def test_plugin_times_are_recorded_when_a_clock_is_given() -> None:
    policy = build_policy(PolicyConfig(), serving, clock=time.perf_counter)
    d = policy.place(make_request(), three_endpoints(), EMPTY_PLAN, ReservationLedger(), 0.0)
    names = {n for n, _ in d.plugin_seconds}
    assert {
        "eligible",
        "context",
        "capacity",
        "latency",
        "power",
        "capacity_cost",
        "load",
        "max_score",
    } <= names
    assert all(s >= 0.0 for _, s in d.plugin_seconds)
    quiet = turnout().place(make_request(), three_endpoints(), EMPTY_PLAN, ReservationLedger(), 0.0)
    assert quiet.plugin_seconds == ()


# ------------------------------------------------------------------------------ the real roofline model


def test_with_the_real_performance_model() -> None:
    from fleet.catalog import load_catalog
    from fleet.models import load_models
    from fleet.perf import PerformanceModel
    from fleet.types import Precision

    perf = PerformanceModel(load_catalog(), load_models())
    catalog = load_catalog()

    def spec(eid: str, instance_type: str, kind: str, tp: int, precision: Precision, replicas: int) -> object:
        s = make_spec(
            eid, model="llama-3.1-8b", instance_type=instance_type, kind=kind, max_context_tokens=131072
        )
        price = catalog.instance(instance_type).price_usd_per_hour / replicas
        return dataclasses.replace(s, tp_degree=tp, precision=precision, price_usd_per_hour=price)

    specs = [
        spec("h100-0", "p5.48xlarge", "h100", 1, Precision.FP8, 8),
        spec("inf2-0", "inf2.48xlarge", "inf2", 2, Precision.BF16, 6),
        spec("b200-0", "p6-b200.48xlarge", "b200", 1, Precision.FP8, 8),
    ]
    snapshot = make_snapshot([make_state(s) for s in specs])  # type: ignore[arg-type]
    request = make_request(model="llama-3.1-8b", input_tokens=1500, expected_output_tokens=300)
    decisions = {}
    for name in ("turnout", "cheapest_feasible"):
        policy = build_policy(PolicyConfig(policy=name), serving_lookup(perf))
        d = policy.place(request, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
        assert isinstance(d, Placed) and len(d.fallbacks) == 2
        for c in (d.chosen, *d.fallbacks):
            p = c.prediction
            assert 0 < p.ttft_ms < 2000 and 0 < p.tpot_ms < 100
            # An idle single request is the most expensive way to serve a token; still a sane figure.
            assert 0.01 < p.cost_usd_per_million_tokens < 100.0
            assert p.energy_joules > 0 and p.power_increment_mw > 0
            assert p.cost_usd == pytest.approx(p.input_cost_usd + p.output_cost_usd)
        decisions[name] = d
    # cheapest_feasible ranks the cost at the live (idle) batch; turnout's no-plan path the cost at full
    # SLO-feasible use: the same three endpoints, each ranking sorted by its own cost.
    greedy = decisions["cheapest_feasible"]
    costs = [c.prediction.cost_usd_per_million_tokens for c in (greedy.chosen, *greedy.fallbacks)]
    assert costs == sorted(costs)
    plan_less = decisions["turnout"]
    ranked = [c.endpoint_id for c in (plan_less.chosen, *plan_less.fallbacks)]
    assert sorted(ranked) == ["b200-0", "h100-0", "inf2-0"]
    policy = build_policy(PolicyConfig(), serving_lookup(perf))
    assert isinstance(policy, FastPath)
    ctx_costs = capacity_costs(policy, request, snapshot, ranked)
    assert ctx_costs == sorted(ctx_costs)


def estimates(
    policy: FastPath,
    request: PlacementRequest,
    snapshot: FleetSnapshot,
    endpoint_ids: list[str],
    ledger: ReservationLedger | None = None,
) -> list[Estimate]:
    """The estimates of ``request`` on each endpoint with no plan, as the spill profile sees them."""
    ledger = ReservationLedger() if ledger is None else ledger
    ctx = policy.context(request, policy.classify(request), snapshot, EMPTY_PLAN, ledger, 0.0)
    eligible, _ = policy.targets(snapshot, request.model)
    by_id = {t.endpoint_id: t for t in eligible}
    return [ctx.estimate(by_id[e]) for e in endpoint_ids]


def capacity_costs(
    policy: FastPath, request: PlacementRequest, snapshot: FleetSnapshot, endpoint_ids: list[str]
) -> list[float]:
    """The capacity cost per million tokens of ``request`` on each endpoint, as the spill profile sees it."""
    each = estimates(policy, request, snapshot, endpoint_ids)
    return [e.capacity_cost_usd_per_million_tokens for e in each]


def test_spill_spreads_over_identical_endpoints_where_cheapest_feasible_piles_up() -> None:
    """With no plan, turnout sends a burst to the least loaded of equally priced endpoints; the greedy
    baseline sends it to the busiest (its live batch makes each token cheapest) until latency stops it."""
    snapshot = make_snapshot([make_state(make_spec(f"e{i}")) for i in range(4)])
    chosen: dict[str, Counter[str]] = {}
    for name in ("turnout", "cheapest_feasible"):
        policy = build_policy(PolicyConfig(policy=name), serving)
        ledger = ReservationLedger()
        counts: Counter[str] = Counter()
        for i in range(40):
            req = make_request(f"r{i}", input_tokens=100, expected_output_tokens=50, max_output_tokens=50)
            d = place_and_reserve(policy, ledger, req, snapshot, EMPTY_PLAN, 0.0)
            assert isinstance(d, Placed)
            counts[d.chosen.endpoint_id] += 1
        chosen[name] = counts
    assert sorted(chosen["turnout"].values()) == [10, 10, 10, 10]
    assert max(chosen["cheapest_feasible"].values()) > 10


def test_capacity_cost_prices_the_silicon_not_one_replicas_corrections_or_batch() -> None:
    """Identical replicas cost the same at full use whatever one of them learned from its completions or
    how far its live batch runs past the SLO-feasible one; otherwise the cheapest-looking replica takes a
    whole burst (the live figures still differ: they are the request's own prediction)."""
    specs = [make_spec(f"e{i}") for i in range(3)]
    snapshot = make_snapshot([make_state(specs[0]), make_state(specs[1]), make_state(specs[2], running=90)])
    policy = build_policy(PolicyConfig(), serving)
    assert isinstance(policy, FastPath)
    ledger = ReservationLedger(correction_weight=1.0)
    learned = make_request("learned", input_tokens=400, expected_output_tokens=50, max_output_tokens=50)
    placed = place_and_reserve(policy, ledger, learned, snapshot, EMPTY_PLAN, 0.0)
    assert isinstance(placed, Placed) and placed.chosen.endpoint_id != "e2"
    p = placed.chosen.prediction
    ledger.complete(
        f"lease-{learned.request_id}", observed_ttft_ms=0.3 * p.ttft_ms, observed_tpot_ms=0.5 * p.tpot_ms
    )
    assert ledger.booking(placed.chosen.endpoint_id).ttft_factor < 0.5
    request = make_request("next", input_tokens=400, expected_output_tokens=50, max_output_tokens=50)
    each = estimates(policy, request, snapshot, ["e0", "e1", "e2"], ledger)
    full = [e.capacity_cost_usd_per_million_tokens for e in each]
    assert full == [pytest.approx(full[0], rel=1e-12)] * 3
    live = [e.cost_usd_per_million_tokens for e in each]
    assert len(set(live)) == 3


def test_a_performance_model_plugs_in_through_serving_lookup() -> None:
    via_model = build_policy(PolicyConfig(), serving_lookup(FakePerformanceModel()))
    direct = turnout()
    for i in range(5):
        req = make_request(f"r{i}", input_tokens=300 * (i + 1))
        assert via_model.place(req, three_endpoints(), EMPTY_PLAN, ReservationLedger(), 0.0) == direct.place(
            req, three_endpoints(), EMPTY_PLAN, ReservationLedger(), 0.0
        )


def test_fast_profile_sanity() -> None:
    # The fakes the tests rely on behave as documented.
    assert FAST.ttft_ms(1000) == 60.0 and SLOW.ttft_ms(1000) == 220.0
    assert FAST.max_batch_for_tpot(FAST.tpot_ms(7, 500), 500) == 7


# -------------------------------------------------------------------------------- candidates per decision


def test_candidates_per_decision_never_misses_a_feasible_endpoint() -> None:
    """Only the last of eight planned endpoints can meet the TTFT target (the others have deep queues):
    ranking the first feasible one among those looked at must still find it."""
    req = make_request(ttft_ms=500.0)
    states = [make_state(make_spec(f"e{i}", price_usd_per_hour=10.0), waiting=40) for i in range(7)]
    states.append(make_state(make_spec("e7", price_usd_per_hour=10.0)))
    snapshot = make_snapshot(states)
    plan = make_plan({f"e{i}": {class_name(req): 1.0} for i in range(8)})
    decision = turnout(candidates_per_decision=1).place(req, snapshot, plan, ReservationLedger(), 0.0)
    assert isinstance(decision, Placed)
    assert decision.chosen.endpoint_id == "e7" and decision.reason is PlacementReason.PLAN


def test_candidates_per_decision_looks_furthest_below_plan_first() -> None:
    """With two candidates per decision, the placements follow the plan's split over six endpoints as the
    full ranking does: every planned endpoint gets its turn, none is starved."""
    req = make_request()
    snapshot = make_snapshot([make_state(make_spec(f"e{i}", price_usd_per_hour=10.0)) for i in range(6)])
    plan = make_plan({f"e{i}": {class_name(req): 1.0} for i in range(6)})
    chosen: Counter[str] = Counter()
    for policy in (turnout(candidates_per_decision=2), turnout(candidates_per_decision=0)):
        ledger = ReservationLedger()
        for i in range(60):
            d = place_and_reserve(
                policy, ledger, dataclasses.replace(req, request_id=f"r{i}"), snapshot, plan, 0.0
            )
            assert isinstance(d, Placed)
            chosen[d.chosen.endpoint_id] += 1
            ledger.release(f"lease-r{i}")
    assert sorted(chosen) == [f"e{i}" for i in range(6)]
    assert min(chosen.values()) >= 10, chosen


def test_candidates_per_decision_is_validated() -> None:
    with pytest.raises(ValueError, match="candidates_per_decision: must be >= 0"):
        PolicyConfig(candidates_per_decision=-1)


def test_a_burst_onto_a_reporting_endpoint_books_its_full_power_once() -> None:
    """An endpoint that reports its draw is booked up to its full power once: later requests placed
    before its next report add nothing, and the booking drops when a report shows the requests."""
    policy = turnout()
    spec = make_spec("t", price_usd_per_hour=1.0)
    full_w = serving(spec).max_power_w
    reported_w = serving(spec).idle_power_w + 10.0
    base = make_state(spec)
    state = dataclasses.replace(
        base, load=dataclasses.replace(base.load, power_w=reported_w, observed_at_s=99.0, received_at_s=99.0)
    )
    snapshot = make_snapshot([state], version=1)
    ledger = ReservationLedger()
    ledger.expire(100.0)
    booked = []
    for i in range(3):
        d = policy.place(make_request(request_id=f"r{i}"), snapshot, EMPTY_PLAN, ledger, 100.0)
        assert isinstance(d, Placed)
        lease = policy.lease_for(d, f"L{i}", 100.0)
        ledger.reserve(lease)
        booked.append(lease.power_mw)
    assert booked[0] == pytest.approx((full_w - reported_w) * 1000.0, abs=1.0)
    assert booked[1:] == [0, 0]
    assert ledger.reserved_power_mw("z1") == booked[0]
    # A report sampled after the predicted first tokens shows them: nothing stays booked.
    later = dataclasses.replace(
        state, load=dataclasses.replace(state.load, power_w=full_w, observed_at_s=130.0, received_at_s=130.0)
    )
    assert ledger.sync_power(make_snapshot([later], version=2)) == booked[0]
    assert ledger.reserved_power_mw("z1") == 0
