"""Property tests of every policy over random fleets, loads, plans and request streams.

The oracle here re-derives feasibility from the raw snapshot, ledger and predictions, independently of
the filter plugins: never a stale, unhealthy or drained endpoint; never one the request excludes or cannot
fit; reservations never push a zone over its power cap; never a predicted SLO miss, and never a refusal
while a feasible endpoint exists; data gravity; shedding order; determinism.
"""

from __future__ import annotations

import dataclasses
import math

from fakes import make_plan, make_request, make_snapshot, make_spec, make_state, serving
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fleet.types import EndpointState, EndpointStatus, FleetSnapshot, Priority, ZoneSpec
from policies.config import DataGravity, PolicyConfig
from policies.decision import Placed, Policy, Refused
from policies.demand import classify
from policies.ledger import ReservationLedger
from policies.predict import Target, predict
from policies.registry import build_policy
from policies.types import EMPTY_PLAN, PlacementRequest, Plan

ZONES = (ZoneSpec("z1", "r1", 0.0), ZoneSpec("z2", "r2", 0.0))
POLICIES = ("turnout", "cheapest_feasible", "round_robin", "least_loaded", "random")
CHECKS_SLO_AND_POWER = ("turnout", "cheapest_feasible")


@st.composite
def fleets(draw: st.DrawFn) -> FleetSnapshot:
    caps = [draw(st.floats(150.0, 3000.0)) for _ in ZONES]
    zones = [dataclasses.replace(z, power_cap_w=c) for z, c in zip(ZONES, caps, strict=True)]
    drawn = {z.name: draw(st.floats(0.0, z.power_cap_w * 1.05)) for z in zones}
    states: list[EndpointState] = []
    for i in range(draw(st.integers(1, 8))):
        zone = draw(st.sampled_from(zones))
        slow = draw(st.booleans())
        spec = make_spec(
            f"e{i}",
            zone=zone.name,
            region=zone.region,
            instance_type="fake.slow" if slow else "fake.fast",
            kind="inf2" if slow else "h100",
            price_usd_per_hour=draw(st.floats(0.5, 60.0)),
            max_context_tokens=draw(st.sampled_from([4096, 16384])),
            expects_telemetry=draw(st.booleans()),
        )
        states.append(
            make_state(
                spec,
                status=draw(st.sampled_from(EndpointStatus)),
                running=draw(st.integers(0, 40)),
                waiting=draw(st.integers(0, 8)),
                kv_usage_ratio=draw(st.floats(0.0, 1.0)),
                utilization_ratio=draw(st.one_of(st.none(), st.floats(0.0, 1.0))),
            )
        )
    return make_snapshot(states, zones, drawn)


@st.composite
def requests(draw: st.DrawFn, index: int = 0) -> PlacementRequest:
    max_out = draw(st.integers(1, 3000))
    return make_request(
        f"r{index}",
        priority=draw(st.sampled_from(Priority)),
        input_tokens=draw(st.integers(1, 6000)),
        max_output_tokens=max_out,
        expected_output_tokens=draw(st.integers(1, max_out)),
        ttft_ms=draw(st.floats(50.0, 5000.0)),
        tpot_ms=draw(st.floats(10.0, 200.0)),
        allowed_accelerator_kinds=draw(
            st.sampled_from([frozenset(), frozenset(), frozenset({"h100"}), frozenset({"inf2", "trn2"})])
        ),
        region=draw(st.sampled_from(["", "", "", "r2"])),
        zone=draw(st.sampled_from(["", "", "", "z1"])),
        data_region=draw(st.sampled_from(["", "", "r1", "r2"])),
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[FleetSnapshot, Plan, list[tuple[PlacementRequest, float, bool]]]:
    snapshot = draw(fleets())
    stream = []
    for i in range(draw(st.integers(1, 10))):
        req = draw(requests(i))
        stream.append(
            (req, draw(st.floats(0.0, 2.0)), draw(st.booleans()))
        )  # (request, time step, completes)
    plan = EMPTY_PLAN
    if draw(st.booleans()):
        cfg = PolicyConfig()
        share: dict[str, dict[str, float]] = {}
        for req, _, _ in stream:
            cls = classify(
                req.model, req.input_tokens, req.expected_output_tokens, req.priority, cfg.buckets
            ).name
            for s in snapshot.endpoints:
                if draw(st.booleans()):
                    share.setdefault(s.endpoint_id, {})[cls] = draw(st.floats(0.01, 1.0))
        plan = make_plan(share, generation=draw(st.integers(1, 5)), created_at_s=0.0)
    return snapshot, plan, stream


# ------------------------------------------------------------------------------------------ the oracle


def allowed(req: PlacementRequest, s: EndpointState) -> bool:
    spec = s.spec
    return (
        (not req.allowed_accelerator_kinds or spec.accelerator_kind in req.allowed_accelerator_kinds)
        and (not req.region or spec.region == req.region)
        and (not req.zone or spec.zone == req.zone)
    )


def fits(req: PlacementRequest, s: EndpointState) -> bool:
    profile = serving(s.spec)
    need = req.input_tokens + req.max_output_tokens
    return need <= s.spec.max_context_tokens and need <= profile.kv_capacity_tokens


def feasible(
    req: PlacementRequest,
    s: EndpointState,
    snapshot: FleetSnapshot,
    ledger: ReservationLedger,
    config: PolicyConfig,
) -> bool:
    """Every hard constraint, from the raw values (the filters are not used here)."""
    if s.status is not EndpointStatus.READY or not allowed(req, s) or not fits(req, s):
        return False
    profile = serving(s.spec)
    booking = ledger.booking(s.endpoint_id)
    kv_used = max(booking.kv_tokens, math.ceil(s.load.kv_cache_usage_ratio * profile.kv_capacity_tokens))
    kv_after = kv_used + req.input_tokens + req.expected_output_tokens
    if kv_after > profile.kv_capacity_tokens:
        return False
    cls = classify(req.model, req.input_tokens, req.expected_output_tokens, req.priority, config.buckets)
    target = Target(s, profile, snapshot.zones.get(s.spec.zone))
    p = predict(req, cls, target, booking, config)
    if p.ttft_ms > req.slo.ttft_ms or p.tpot_ms > req.slo.tpot_ms:
        return False
    cap = snapshot.zones[s.spec.zone].power_cap_w
    after_w = (
        snapshot.zone_power_w.get(s.spec.zone, 0.0)
        + (ledger.reserved_power_mw(s.spec.zone) + p.power_increment_mw) / 1000.0
    )
    if after_w > cap:
        return False
    f = config.shedding.of(req.priority)
    return f >= 1.0 or (kv_after <= f * profile.kv_capacity_tokens and after_w <= f * cap)


# ---------------------------------------------------------------------------------------------- properties


@settings(max_examples=120, deadline=None)
@given(streams(), st.sampled_from(POLICIES))
def test_every_decision_respects_the_hard_constraints(
    case: tuple[FleetSnapshot, Plan, list[tuple[PlacementRequest, float, bool]]], name: str
) -> None:
    snapshot, plan, stream = case
    config = PolicyConfig(policy=name)
    policy = build_policy(config, serving)
    ledger = ReservationLedger()
    now = 0.0
    for req, step, completes in stream:
        now += step
        ledger.expire(now)
        feasible_ids = {
            s.endpoint_id for s in snapshot.by_model[req.model] if feasible(req, s, snapshot, ledger, config)
        }
        d = policy.place(req, snapshot, plan, ledger, now)
        if isinstance(d, Refused):
            if name in CHECKS_SLO_AND_POWER:
                # Never a refusal while a feasible endpoint exists.
                assert not feasible_ids, (d.message, feasible_ids)
            continue
        ranked = [d.chosen, *d.fallbacks]
        assert len({c.endpoint_id for c in ranked}) == len(ranked) <= 1 + config.max_fallbacks
        for c in ranked:
            s = snapshot.by_id[c.endpoint_id]
            # Never a stale, unhealthy or drained endpoint; never one the request excludes or cannot fit.
            assert s.status is EndpointStatus.READY and s.eligible
            assert allowed(req, s) and fits(req, s)
            if name in CHECKS_SLO_AND_POWER:
                assert c.endpoint_id in feasible_ids
                # Never a predicted SLO miss.
                assert c.prediction.ttft_ms <= req.slo.ttft_ms and c.prediction.tpot_ms <= req.slo.tpot_ms
        lease = policy.lease_for(d, f"L-{req.request_id}", now)
        ledger.reserve(lease)
        if name in CHECKS_SLO_AND_POWER:
            # Reservations never push a zone's drawn + reserved watts over its cap.
            z = lease.zone
            drawn = snapshot.zone_power_w.get(z, 0.0)
            assert drawn + ledger.reserved_power_mw(z) / 1000.0 <= snapshot.zones[z].power_cap_w
        if completes:
            ledger.complete(lease.lease_id, observed_ttft_ms=lease.prediction.ttft_ms)


@settings(max_examples=60, deadline=None)
@given(streams())
def test_same_inputs_give_the_same_decisions(
    case: tuple[FleetSnapshot, Plan, list[tuple[PlacementRequest, float, bool]]],
) -> None:
    snapshot, plan, stream = case

    def run() -> list[object]:
        policy = build_policy(PolicyConfig(), serving)
        ledger = ReservationLedger()
        out: list[object] = []
        now = 0.0
        for req, step, completes in stream:
            now += step
            ledger.expire(now)
            d = policy.place(req, snapshot, plan, ledger, now)
            out.append(d)
            if isinstance(d, Placed):
                ledger.reserve(policy.lease_for(d, f"L-{req.request_id}", now))
                if completes:
                    ledger.release(f"L-{req.request_id}")
        return out

    assert run() == run()


def hand_cost_usd(price_usd_per_hour: float, req: PlacementRequest, egress_usd: float) -> float:
    """Cost on an idle fakes.FAST endpoint worked out from the formula in policies/cost.py."""
    prefill_s = (10.0 + req.input_tokens / 20.0) / 1000.0
    out = req.expected_output_tokens
    tpot_s = (10.0 + 1 * (0.5 + 0.1 * (req.input_tokens + out // 2) / 1000.0)) / 1000.0
    return price_usd_per_hour / 3600.0 * (prefill_s + out * tpot_s / 1) + egress_usd


@settings(max_examples=200, deadline=None)
@given(
    local_price=st.floats(1.0, 40.0),
    remote_price=st.floats(1.0, 40.0),
    egress_usd_per_gb=st.floats(0.0, 0.2),
    bytes_per_token=st.sampled_from([4.0, 1e3, 1e5, 1e6]),
    input_tokens=st.integers(1, 4000),
    output_tokens=st.integers(1, 1000),
    name=st.sampled_from(["turnout", "cheapest_feasible"]),
)
def test_remote_endpoint_wins_only_when_cheaper_including_egress(
    local_price: float,
    remote_price: float,
    egress_usd_per_gb: float,
    bytes_per_token: float,
    input_tokens: int,
    output_tokens: int,
    name: str,
) -> None:
    snapshot = make_snapshot(
        [
            make_state(make_spec("local", region="r1", price_usd_per_hour=local_price)),
            make_state(make_spec("remote", zone="z2", region="r2", price_usd_per_hour=remote_price)),
        ],
        zones=[ZoneSpec("z1", "r1", 1e9), ZoneSpec("z2", "r2", 1e9)],
    )
    req = make_request(
        input_tokens=input_tokens,
        max_output_tokens=output_tokens,
        expected_output_tokens=output_tokens,
        ttft_ms=60_000.0,
        # A TPOT target only a batch of one meets: the "turnout" spill path ranks the cost at the full
        # SLO-feasible batch, which is then the idle endpoint's, so both policies rank hand_cost_usd.
        tpot_ms=11.0,
        data_region="r1",
    )
    egress = egress_usd_per_gb * (input_tokens + output_tokens) * bytes_per_token / 1e9
    local_cost = hand_cost_usd(local_price, req, 0.0)
    remote_cost = hand_cost_usd(remote_price, req, egress)
    assume(abs(local_cost - remote_cost) > 1e-9 * local_cost)
    gravity = DataGravity(egress_usd_per_gb=egress_usd_per_gb, bytes_per_token=bytes_per_token)
    policy = build_policy(PolicyConfig(policy=name, gravity=gravity), serving)
    d = policy.place(req, snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Placed)
    assert (d.chosen.endpoint_id == "remote") == (remote_cost < local_cost)
    by_id = {c.endpoint_id: c.prediction.cost_usd for c in (d.chosen, *d.fallbacks)}
    assert math.isclose(by_id["local"], local_cost, rel_tol=1e-9)
    assert math.isclose(by_id["remote"], remote_cost, rel_tol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    drawn_share=st.floats(0.0, 1.02),
    kv_usage_ratio=st.floats(0.0, 1.0),
    running=st.integers(0, 30),
    req=requests(),
)
def test_sheddable_is_refused_before_standard_before_critical(
    drawn_share: float, kv_usage_ratio: float, running: int, req: PlacementRequest
) -> None:
    snapshot = make_snapshot(
        [make_state(make_spec("e1"), kv_usage_ratio=kv_usage_ratio, running=running)],
        zones=[ZoneSpec("z1", "r1", 2000.0)],
        zone_power_w={"z1": 2000.0 * drawn_share},
    )
    req = dataclasses.replace(req, allowed_accelerator_kinds=frozenset(), region="", zone="", data_region="")
    policy: Policy = build_policy(PolicyConfig(), serving)
    placed = {
        p: isinstance(
            policy.place(
                dataclasses.replace(req, priority=p), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0
            ),
            Placed,
        )
        for p in Priority
    }
    # The same request (same SLO) at three priorities.
    assert placed[Priority.SHEDDABLE] <= placed[Priority.STANDARD] <= placed[Priority.CRITICAL]
