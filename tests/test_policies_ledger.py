"""The reservation ledger: totals, idempotent release, expiry, time-driven bookings, plan tracker."""

from __future__ import annotations

import dataclasses
import math

import pytest
from fakes import make_request, make_snapshot, make_spec, make_state, serving
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.config import PolicyConfig
from policies.decision import Placed
from policies.ledger import Lease, PlanTracker, ReservationLedger
from policies.registry import build_policy
from policies.types import EMPTY_PLAN

ENDPOINTS = ("e1", "e2", "e3")
ZONES = ("z1", "z2")


def _template_lease() -> Lease:
    """A real lease from a real placement; tests vary its fields with ``dataclasses.replace``."""
    policy = build_policy(PolicyConfig(policy="cheapest_feasible"), serving)
    snapshot = make_snapshot([make_state(make_spec("e1"))])
    decision = policy.place(make_request("template"), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(decision, Placed)
    return policy.lease_for(decision, "template-lease", 0.0)


TEMPLATE = _template_lease()


def lease(
    lease_id: str,
    *,
    request_id: str | None = None,
    endpoint_id: str = "e1",
    zone: str = "z1",
    placed_at_s: float = 0.0,
    expires_at_s: float = 100.0,
    prefill_done_at_s: float = 1.0,
    prefill_tokens: int = 1000,
    kv_tokens: int = 1200,
    power_mw: int = 5000,
    power_visible_at_s: float | None = None,
    class_name: str = "m-8b/in1024/out256/standard",
) -> Lease:
    request = dataclasses.replace(TEMPLATE.request, request_id=request_id or f"req-{lease_id}")
    return dataclasses.replace(
        TEMPLATE,
        lease_id=lease_id,
        request=request,
        class_name=class_name,
        endpoint_id=endpoint_id,
        zone=zone,
        placed_at_s=placed_at_s,
        expires_at_s=expires_at_s,
        prefill_done_at_s=prefill_done_at_s,
        prefill_tokens=prefill_tokens,
        kv_tokens=kv_tokens,
        power_mw=power_mw,
        power_visible_at_s=power_visible_at_s,
    )


def state(ledger: ReservationLedger) -> tuple[object, ...]:
    """Everything a policy can read from the ledger, for the endpoints and zones of these tests."""
    bookings = tuple(
        (e, b.outstanding, b.queued_prefill_tokens, b.kv_tokens, b.ttft_factor, b.tpot_factor)
        for e in ENDPOINTS
        for b in [ledger.booking(e)]
    )
    zones = tuple((z, ledger.reserved_power_mw(z)) for z in ZONES)
    leases = tuple(sorted(lease.lease_id for lease in ledger))
    return bookings, zones, leases, ledger.placement_count("m-8b")


def expected_totals(ledger: ReservationLedger, shown: frozenset[str] = frozenset()) -> tuple[object, ...]:
    """The totals recomputed from the live leases and the ledger's clock alone (``shown``: leases whose
    power an endpoint report has shown)."""
    now = ledger.now_s
    out: dict[str, list[int]] = {e: [0, 0, 0, 0, 0, 0] for e in ENDPOINTS}
    zones = dict.fromkeys(ZONES, 0)
    for lz in ledger:
        totals = out[lz.endpoint_id]
        totals[0] += 1
        totals[2] += lz.kv_tokens
        totals[3] += lz.request.expected_output_tokens
        totals[4] += lz.stall_us_per_step
        if lz.prefill_tokens and ledger.is_prefill_pending(lz.lease_id):
            totals[1] += lz.prefill_tokens
        if ledger.is_power_pending(lz.lease_id):
            zones[lz.zone] += lz.power_mw
            totals[5] += lz.power_mw
        # What is pending follows from time and reports alone:
        assert ledger.is_prefill_pending(lz.lease_id) == (
            lz.prefill_tokens > 0 and lz.prefill_done_at_s > now
        )
        visible = lz.power_visible_at_s
        assert ledger.is_power_pending(lz.lease_id) == (
            lz.power_mw > 0 and (visible is None or visible > now) and lz.lease_id not in shown
        )
    return tuple((e, *out[e]) for e in ENDPOINTS), tuple(zones.items())


def actual_totals(ledger: ReservationLedger) -> tuple[object, ...]:
    bookings = tuple(
        (
            e,
            b.outstanding,
            b.queued_prefill_tokens,
            b.kv_tokens,
            b.output_tokens,
            b.stall_us_per_step,
            b.power_mw,
        )
        for e in ENDPOINTS
        for b in [ledger.booking(e)]
    )
    return bookings, tuple((z, ledger.reserved_power_mw(z)) for z in ZONES)


# --------------------------------------------------------------------------------------------- unit tests


def test_reserve_books_endpoint_zone_and_request() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(
        lease("a", endpoint_id="e1", zone="z1", prefill_tokens=1000, kv_tokens=1200, power_mw=5000)
    )
    ledger.reserve(lease("b", endpoint_id="e1", zone="z1", prefill_tokens=300, kv_tokens=400, power_mw=1500))
    b = ledger.booking("e1")
    assert (b.outstanding, b.queued_prefill_tokens, b.kv_tokens) == (2, 1300, 1600)
    assert ledger.reserved_power_mw("z1") == 6500
    assert ledger.reserved_power_w("z1") == 6.5
    assert ledger.booking("e2").outstanding == 0
    assert ledger.lease_for_request("req-a") is not None
    assert ledger.lease_for_request("req-a").lease_id == "a"  # type: ignore[union-attr]
    assert ledger.placement_count("m-8b") == 2
    assert len(ledger) == 2


def test_release_twice_changes_nothing() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(lease("a"))
    ledger.reserve(lease("b", endpoint_id="e2", zone="z2"))
    first = ledger.release("a")
    assert first is not None and first.lease_id == "a"
    after_first = state(ledger)
    assert ledger.release("a") is None
    assert ledger.complete("a", observed_ttft_ms=1.0) is None
    assert state(ledger) == after_first
    assert ledger.lease_for_request("req-a") is None
    assert ledger.booking("e1").outstanding == 0 and ledger.reserved_power_mw("z1") == 0


def test_duplicate_lease_or_request_is_refused() -> None:
    ledger = ReservationLedger()
    ledger.reserve(lease("a"))
    with pytest.raises(ValueError, match="already live"):
        ledger.reserve(lease("a", request_id="other"))
    with pytest.raises(ValueError, match="already holds live lease"):
        ledger.reserve(lease("b", request_id="req-a"))
    with pytest.raises(ValueError, match="must be >= 0"):
        ledger.reserve(lease("c", kv_tokens=-1))
    with pytest.raises(ValueError, match="must be finite"):
        ledger.reserve(lease("d", expires_at_s=math.inf))
    assert [x.lease_id for x in ledger] == ["a"]


def test_expire_retires_prefill_then_power_then_lease() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(lease("a", prefill_done_at_s=1.0, power_visible_at_s=5.0, expires_at_s=10.0))
    assert ledger.expire(0.5) == []
    assert ledger.booking("e1").queued_prefill_tokens == 1000
    assert ledger.expire(1.0) == []
    assert ledger.booking("e1").queued_prefill_tokens == 0
    assert ledger.reserved_power_mw("z1") == 5000
    assert ledger.expire(5.0) == []
    assert ledger.reserved_power_mw("z1") == 0
    assert ledger.booking("e1").outstanding == 1
    expired = ledger.expire(10.0)
    assert [x.lease_id for x in expired] == ["a"]
    assert ledger.booking("e1").outstanding == 0 and ledger.booking("e1").kv_tokens == 0
    assert ledger.lease_for_request("req-a") is None
    assert ledger.release("a") is None  # a Complete after expiry changes nothing


def test_power_drops_once_an_endpoint_report_shows_it() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(lease("a", endpoint_id="e1", prefill_done_at_s=1.0, power_mw=5000))
    ledger.reserve(lease("b", endpoint_id="e1", prefill_done_at_s=3.0, power_mw=2000))
    ledger.reserve(lease("c", endpoint_id="e2", prefill_done_at_s=1.0, power_mw=700))
    assert ledger.booking("e1").power_mw == 7000 and ledger.reserved_power_mw("z1") == 7700
    # A report sampled before a lease's first token does not show it.
    assert ledger.power_shown("e1", 0.5) == 0
    # One sampled at 2 s shows "a" (first token at 1 s), not "b" (3 s), and nothing of e2.
    assert ledger.power_shown("e1", 2.0) == 5000
    assert ledger.booking("e1").power_mw == 2000 and ledger.reserved_power_mw("z1") == 2700
    assert not ledger.is_power_pending("a") and ledger.is_power_pending("b")
    # The lease itself stays booked on its endpoint; releasing it later changes the power by nothing.
    assert ledger.booking("e1").outstanding == 2
    ledger.release("a")
    assert ledger.reserved_power_mw("z1") == 2700
    # sync_power dates a report by the earlier of sampled and received times, per endpoint.
    e1 = make_state(make_spec("e1"))
    e2 = make_state(make_spec("e2"))
    snap = make_snapshot(
        [
            dataclasses.replace(
                e1, load=dataclasses.replace(e1.load, power_w=900.0, observed_at_s=9.0, received_at_s=2.5)
            ),
            e2,  # never reported: keeps its booking
        ]
    )
    assert ledger.sync_power(snap) == 0
    snap = make_snapshot(
        [
            dataclasses.replace(
                e1, load=dataclasses.replace(e1.load, power_w=900.0, observed_at_s=3.0, received_at_s=3.2)
            ),
            e2,
        ]
    )
    assert ledger.sync_power(snap) == 2000
    assert ledger.reserved_power_mw("z1") == 700 and ledger.booking("e1").power_mw == 0


def test_expire_never_goes_back_in_time() -> None:
    ledger = ReservationLedger()
    ledger.expire(10.0)
    ledger.reserve(lease("a", prefill_done_at_s=11.0, expires_at_s=20.0))
    assert ledger.expire(5.0) == []
    assert ledger.now_s == 10.0
    assert ledger.booking("e1").queued_prefill_tokens == 1000


def test_bookings_already_due_are_not_counted() -> None:
    ledger = ReservationLedger()
    ledger.expire(10.0)
    ledger.reserve(lease("a", prefill_done_at_s=9.0, power_visible_at_s=10.0, expires_at_s=50.0))
    assert ledger.booking("e1").queued_prefill_tokens == 0
    assert ledger.reserved_power_mw("z1") == 0
    assert ledger.booking("e1").outstanding == 1


def test_reused_lease_id_is_not_touched_by_old_events() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(lease("a", prefill_done_at_s=1.0, expires_at_s=2.0))
    ledger.release("a")
    ledger.reserve(lease("a", request_id="again", prefill_done_at_s=5.0, expires_at_s=50.0))
    assert ledger.expire(3.0) == []
    assert ledger.booking("e1").queued_prefill_tokens == 1000
    assert ledger.lease("a") is not None


def test_released_leases_do_not_pile_up_in_the_event_heap() -> None:
    ledger = ReservationLedger()
    ledger.expire(0.0)
    ledger.reserve(lease("keep", expires_at_s=10_000.0, power_visible_at_s=5_000.0))
    for i in range(10_000):  # long-lived leases completed at once, as most are
        ledger.reserve(lease(f"L{i}", expires_at_s=3_600.0, power_visible_at_s=1_000.0))
        ledger.release(f"L{i}")
        assert ledger.pending_events <= 4 * (len(ledger) + 1) + 1024 + 3
    assert [x.lease_id for x in ledger] == ["keep"]
    assert ledger.expire(5_000.0) == [] and ledger.reserved_power_mw("z1") == 0
    assert [x.lease_id for x in ledger.expire(10_000.0)] == ["keep"]


def test_complete_corrects_latency_factors_within_bounds() -> None:
    ledger = ReservationLedger(correction_weight=0.5, correction_bounds=(0.5, 2.0))
    template = lease("a")
    p = template.prediction
    ledger.reserve(template)
    done = ledger.complete(
        "a",
        observed_ttft_ms=p.network_latency_ms + 2 * p.profile_ttft_ms,
        observed_tpot_ms=100 * p.profile_tpot_ms,  # clipped to 2.0
    )
    assert done is not None
    b = ledger.booking("e1")
    assert b.ttft_factor == pytest.approx(1.5)
    assert b.tpot_factor == pytest.approx(1.5)
    ledger.reserve(lease("b"))
    ledger.complete("b", observed_ttft_ms=0.0, observed_tpot_ms=math.nan)  # not observed: unchanged
    assert ledger.booking("e1").ttft_factor == pytest.approx(1.5)
    assert ledger.booking("e1").tpot_factor == pytest.approx(1.5)


def test_plan_tracker_shares() -> None:
    t = PlanTracker(memory_placements=8)
    assert t.share("c", "e1") == 0.0
    t.record("c", "e1")
    assert t.share("c", "e1") == pytest.approx(1.0)
    for i in range(400):
        t.record("c", "e1" if i % 4 else "e2")
    assert t.share("c", "e1") + t.share("c", "e2") == pytest.approx(1.0)
    assert 0.55 < t.share("c", "e1") < 0.95  # recent history: about 3/4 with an 8-placement memory
    for _ in range(100):
        t.record("c", "e2")
    assert t.share("c", "e2") > 0.99  # forgets old placements
    assert t.share("other", "e2") == 0.0


# ----------------------------------------------------------------------------------------- property tests

op = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.integers(0, 11),  # lease number
        st.sampled_from(ENDPOINTS),
        st.sampled_from(ZONES),
        st.floats(0.0, 20.0),  # prefill done, relative to now
        st.one_of(st.none(), st.floats(0.0, 20.0)),  # power visible, relative
        st.floats(0.0, 40.0),  # expiry, relative
        st.integers(0, 5000),
        st.integers(0, 20000),
        st.integers(0, 900_000),
    ),
    st.tuples(st.just("release"), st.integers(0, 11)),
    st.tuples(st.just("complete"), st.integers(0, 11), st.floats(0.0, 5000.0), st.floats(0.0, 500.0)),
    st.tuples(st.just("expire"), st.floats(0.0, 15.0)),
    st.tuples(st.just("shown"), st.sampled_from(ENDPOINTS), st.floats(-5.0, 20.0)),  # sample time, relative
)


@settings(max_examples=150, deadline=None)
@given(st.lists(op, max_size=60))
def test_ledger_invariants_under_any_sequence(ops: list[tuple[object, ...]]) -> None:
    ledger = ReservationLedger()
    now = 0.0
    ledger.expire(now)
    released: set[str] = set()
    shown: set[str] = set()
    for o in ops:
        kind = o[0]
        if kind == "shown":
            _, e, dt = o
            t = now + dt  # type: ignore[operator]
            before = ledger.reserved_power_mw("z1") + ledger.reserved_power_mw("z2")
            due = [
                x
                for x in ledger
                if x.endpoint_id == e and ledger.is_power_pending(x.lease_id) and x.prefill_done_at_s <= t
            ]
            assert ledger.power_shown(e, t) == sum(x.power_mw for x in due)  # type: ignore[arg-type]
            shown.update(x.lease_id for x in due)
            after = ledger.reserved_power_mw("z1") + ledger.reserved_power_mw("z2")
            assert before - after == sum(x.power_mw for x in due)
        elif kind == "reserve":
            _, n, e, z, pre, vis, exp, ptok, kv, mw = o
            lid = f"L{n}"
            if ledger.lease(lid) is not None:
                continue
            ledger.reserve(
                lease(
                    lid,
                    endpoint_id=e,  # type: ignore[arg-type]
                    zone=z,  # type: ignore[arg-type]
                    placed_at_s=now,
                    prefill_done_at_s=now + pre,  # type: ignore[operator]
                    power_visible_at_s=None if vis is None else now + vis,  # type: ignore[operator]
                    expires_at_s=now + exp,  # type: ignore[operator]
                    prefill_tokens=ptok,  # type: ignore[arg-type]
                    kv_tokens=kv,  # type: ignore[arg-type]
                    power_mw=mw,  # type: ignore[arg-type]
                )
            )
            released.discard(lid)
            shown.discard(lid)
        elif kind in ("release", "complete"):
            lid = f"L{o[1]}"
            before = state(ledger)
            was_live = ledger.lease(lid) is not None
            if kind == "release":
                out = ledger.release(lid)
            else:
                out = ledger.complete(lid, observed_ttft_ms=o[2], observed_tpot_ms=o[3])  # type: ignore[arg-type]
            assert (out is not None) == was_live
            if not was_live:
                # A lease released twice (or expired, or never booked) changes nothing.
                assert state(ledger) == before
            else:
                released.add(lid)
                # ... and releasing it again changes nothing either.
                again = state(ledger)
                assert ledger.release(lid) is None
                assert state(ledger) == again
        else:
            now += o[1]  # type: ignore[operator]
            expired = ledger.expire(now)
            for x in expired:
                assert x.expires_at_s <= now
                assert ledger.lease(x.lease_id) is None
            # Leases expire: none past its expiry survives an expire call.
            assert all(x.expires_at_s > now for x in ledger)
        assert actual_totals(ledger) == expected_totals(ledger, frozenset(shown))
        for z in ZONES:
            assert ledger.reserved_power_mw(z) >= 0
