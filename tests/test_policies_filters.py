"""Each filter plugin on its own: what it rejects, with which reason, and what it lets through."""

from __future__ import annotations

import dataclasses

import pytest
from fakes import FAST, make_request, make_snapshot, make_spec, make_state, serving

from fleet.types import EndpointState, EndpointStatus, FleetSnapshot, Priority, ZoneSpec
from policies.config import PolicyConfig, ShedFractions
from policies.decision import PolicyCore
from policies.demand import classify
from policies.filters.allowed import AllowedFilter
from policies.filters.capacity import CapacityFilter
from policies.filters.context import ContextFilter
from policies.filters.eligible import EligibleFilter
from policies.filters.latency import LatencyFilter
from policies.filters.power import PowerFilter
from policies.filters.shed import ShedFilter
from policies.framework import CycleContext, RejectReason
from policies.ledger import ReservationLedger
from policies.predict import Target
from policies.types import EMPTY_PLAN, PlacementRequest


def ctx_for(
    request: PlacementRequest,
    snapshot: FleetSnapshot,
    ledger: ReservationLedger | None = None,
    config: PolicyConfig | None = None,
) -> CycleContext:
    cfg = config or PolicyConfig()
    core = PolicyCore("test", cfg, serving)
    cls = classify(
        request.model, request.input_tokens, request.expected_output_tokens, request.priority, cfg.buckets
    )
    return core.context(
        request, cls, snapshot, EMPTY_PLAN, ledger if ledger is not None else ReservationLedger(), 0.0
    )


def target(state: EndpointState, snapshot: FleetSnapshot) -> Target:
    return Target(state, serving(state.spec), snapshot.zones.get(state.spec.zone))


def one(state: EndpointState, **snapshot_kwargs: object) -> tuple[Target, FleetSnapshot]:
    snapshot = make_snapshot([state], **snapshot_kwargs)  # type: ignore[arg-type]
    return target(state, snapshot), snapshot


@pytest.mark.parametrize("status", list(EndpointStatus))
def test_eligible_only_ready(status: EndpointStatus) -> None:
    t, snap = one(make_state(make_spec("e1"), status=status))
    r = EligibleFilter().filter(ctx_for(make_request(), snap), t)
    if status is EndpointStatus.READY:
        assert r is None
    else:
        assert r is not None and r.reason is RejectReason.NOT_ELIGIBLE and status.value in r.detail
        assert r.plugin == "eligible"


def test_allowed_kinds_region_zone() -> None:
    t, snap = one(make_state(make_spec("e1", kind="h100", zone="z1", region="r1")))
    f = AllowedFilter()
    assert f.skip(ctx_for(make_request(), snap))
    cases = {
        "kind": make_request(allowed_accelerator_kinds=frozenset({"trn2"})),
        "region": make_request(region="r9"),
        "zone": make_request(zone="z9"),
    }
    for what, req in cases.items():
        ctx = ctx_for(req, snap)
        assert not f.skip(ctx)
        r = f.filter(ctx, t)
        assert r is not None and r.reason is RejectReason.NOT_ALLOWED, what
    ok = make_request(allowed_accelerator_kinds=frozenset({"h100", "b200"}), region="r1", zone="z1")
    assert f.filter(ctx_for(ok, snap), t) is None


def test_context_limits() -> None:
    t, snap = one(make_state(make_spec("e1", max_context_tokens=4096)))
    f = ContextFilter()
    assert f.filter(ctx_for(make_request(input_tokens=3000, max_output_tokens=1096), snap), t) is None
    r = f.filter(ctx_for(make_request(input_tokens=3000, max_output_tokens=1097), snap), t)
    assert r is not None and r.reason is RejectReason.CONTEXT and "4096" in r.detail
    small_kv = dataclasses.replace(FAST, kv_capacity=2000)
    t2 = Target(t.state, small_kv, snap.zones["z1"])
    r2 = f.filter(ctx_for(make_request(input_tokens=1500, max_output_tokens=501), snap), t2)
    assert r2 is not None and r2.reason is RejectReason.CONTEXT and "KV" in r2.detail


def test_capacity_uses_the_larger_of_reported_and_reserved_kv() -> None:
    # FAST holds 200,000 KV tokens; the request books input + expected output = 1200.
    f = CapacityFilter()
    req = make_request()
    t, snap = one(make_state(make_spec("e1"), kv_usage_ratio=(200_000 - 1200) / 200_000))
    assert f.filter(ctx_for(req, snap), t) is None
    t, snap = one(make_state(make_spec("e1"), kv_usage_ratio=(200_000 - 1199) / 200_000))
    r = f.filter(ctx_for(req, snap), t)
    assert r is not None and r.reason is RejectReason.CAPACITY
    # Reported usage is low, but the ledger already holds 199,000 tokens on it.
    from test_policies_ledger import lease

    ledger = ReservationLedger()
    ledger.reserve(lease("a", endpoint_id="e1", kv_tokens=199_000))
    t, snap = one(make_state(make_spec("e1"), kv_usage_ratio=0.1))
    r = f.filter(ctx_for(req, snap, ledger), t)
    assert r is not None and r.reason is RejectReason.CAPACITY and "1000 free" in r.detail


def test_latency_ttft_then_tpot() -> None:
    t, snap = one(make_state(make_spec("e1"), running=10))
    f = LatencyFilter()
    # TPOT at batch 11, context 1100: a step of 10 + 11 * 0.61 = 16.71 ms plus the prefill stalls of the 10
    # sequences telemetry reports (the ledger knows none of them, so each is charged this request's own
    # 60 ms prefill over its 200 output tokens): 16.71 + 10 * 60 / 200 = 19.71 ms. TTFT: the prompt's
    # 10 + 1000 / 20 = 60 ms after half the decode step in progress, and one step beside its single chunk
    # (1000 tokens < 2048 - 10): 60 + 1.5 * 16.71 = 85.065 ms.
    assert f.filter(ctx_for(make_request(ttft_ms=85.07, tpot_ms=19.71), snap), t) is None
    r = f.filter(ctx_for(make_request(ttft_ms=85.06), snap), t)
    assert r is not None and r.reason is RejectReason.SLO_TTFT
    r = f.filter(ctx_for(make_request(tpot_ms=19.7), snap), t)
    assert r is not None and r.reason is RejectReason.SLO_TPOT and "batch 11" in r.detail


def test_tpot_counts_the_prefill_stalls_the_ledger_books() -> None:
    from test_policies_ledger import lease

    t, snap = one(make_state(make_spec("e1"), running=3))
    ledger = ReservationLedger()
    for i, stall_us in enumerate((400, 600)):
        ledger.reserve(dataclasses.replace(lease(f"l{i}", endpoint_id="e1"), stall_us_per_step=stall_us))
    e = ctx_for(make_request(), snap, ledger).estimate(t)
    # Telemetry shows 3 in flight, the ledger books 2 with 1.0 ms of stall per step: the third sequence is
    # charged the ledger's mean (0.5 ms). Step at batch 4, context 1100: 10 + 4 * 0.61 = 12.44 ms.
    assert e.stall_ms == pytest.approx(1.5)
    assert e.tpot_ms == pytest.approx(12.44 + 1.5)
    assert e.decode_step_ms == pytest.approx(12.44)
    ledger.release("l1")
    ledger.release("l0")
    assert ctx_for(make_request(), snap, ledger).estimate(t).stall_ms == pytest.approx(3 * 60 / 200)


def test_the_stall_per_step_is_capped_at_one_chunk_of_prefill() -> None:
    from test_policies_ledger import lease

    # Stalls booked beyond what one step's chunk of prompt costs cannot slow the decode further: the engine
    # carries at most max_batched_tokens - decoding prompt tokens a step (the rest queues, a TTFT matter).
    t, snap = one(make_state(make_spec("e1"), running=2))
    ledger = ReservationLedger()
    for i in range(2):
        ledger.reserve(dataclasses.replace(lease(f"l{i}", endpoint_id="e1"), stall_us_per_step=500_000))
    e = ctx_for(make_request(), snap, ledger).estimate(t)
    assert e.stall_ms == pytest.approx(10 + (2048 - 2) / 20)  # FAST's prefill of a 2046-token chunk
    small = dataclasses.replace(make_spec("e1"), max_batched_tokens=512)
    t, snap = one(make_state(small, running=2))
    assert ctx_for(make_request(), snap, ledger).estimate(t).stall_ms == pytest.approx(10 + 510 / 20)


def test_latency_counts_waiting_requests_as_queued_prefill() -> None:
    t, snap = one(make_state(make_spec("e1"), waiting=2))
    ctx = ctx_for(make_request(ttft_ms=160.0), snap)
    # 2 waiting x 1024 assumed prompt tokens queued: 10 + (1000 + 2048) / 20 = 162.4 ms, plus half the decode
    # step in progress and one beside each of the ceil(3048 / (2048 - 2)) = 2 chunks, at batch 3, context
    # 1100: 2.5 x (10 + 3 * 0.61) = 29.575 ms.
    assert ctx.estimate(t).ttft_ms == pytest.approx(191.975)
    r = LatencyFilter().filter(ctx, t)
    assert r is not None and r.reason is RejectReason.SLO_TTFT


def test_power_cap_is_exact_in_milliwatts() -> None:
    state = make_state(make_spec("e1"))
    zones = [ZoneSpec("z1", "r1", 1000.0)]
    t, snap = one(state, zones=zones, zone_power_w={"z1": 0.0})
    inc_mw = ctx_for(make_request(), snap).estimate(t).power_increment_mw
    assert inc_mw > 0
    f = PowerFilter()
    at_cap = make_snapshot([state], zones, {"z1": 1000.0 - inc_mw / 1000.0})
    assert f.filter(ctx_for(make_request(), at_cap), target(state, at_cap)) is None
    over = make_snapshot([state], zones, {"z1": 1000.0 - inc_mw / 1000.0 + 0.002})
    r = f.filter(ctx_for(make_request(), over), target(state, over))
    assert r is not None and r.reason is RejectReason.POWER
    no_zone = make_snapshot([state], [], {"z1": 1e12})
    assert f.filter(ctx_for(make_request(), no_zone), target(state, no_zone)) is None  # no cap known


def test_shed_keeps_headroom_by_priority() -> None:
    state = make_state(make_spec("e1"), kv_usage_ratio=0.85)
    t, snap = one(state)
    f = ShedFilter()
    cfg = PolicyConfig(shedding=ShedFractions(critical=1.0, standard=0.9, sheddable=0.8))
    for p, rejected in ((Priority.SHEDDABLE, True), (Priority.STANDARD, False), (Priority.CRITICAL, False)):
        ctx = ctx_for(make_request(priority=p), snap, config=cfg)
        r = None if f.skip(ctx) else f.filter(ctx, t)
        assert (r is not None) == rejected, p
        if r is not None:
            assert r.reason is RejectReason.SHED and "sheddable work may use 80%" in r.detail
    assert f.skip(ctx_for(make_request(priority=Priority.CRITICAL), snap, config=cfg))
