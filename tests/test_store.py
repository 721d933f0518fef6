"""FleetStore: snapshots, telemetry application and rejection, staleness, drains and zone power."""

from __future__ import annotations

import dataclasses
import enum
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.store import FleetStore
from fleet.types import (
    DrainReason,
    EndpointLoad,
    EndpointSpec,
    EndpointStatus,
    FleetSnapshot,
    Precision,
    TelemetrySample,
    ZoneSpec,
)

T0 = 1_763_000_000.0
STALE_S = 15.0
SKEW_S = 5.0

ZONES = (
    ZoneSpec(name="use1-az1", region="us-east-1", power_cap_w=60_000.0),
    ZoneSpec(name="use1-az2", region="us-east-1", power_cap_w=40_000.0),
)


def _spec(
    endpoint_id: str,
    *,
    pool: str,
    zone: str = "use1-az1",
    model: str = "llama-3.1-8b",
    chips: int = 1,
    expects_telemetry: bool = True,
) -> EndpointSpec:
    return EndpointSpec(
        endpoint_id=endpoint_id,
        address=f"{endpoint_id}.serving.svc:8000",
        pool=pool,
        zone=zone,
        region="us-east-1",
        instance_type="p5.48xlarge",
        accelerator_kind="h100",
        model=model,
        tp_degree=chips,
        precision=Precision.FP8,
        chips=chips,
        price_usd_per_hour=7.0 * chips,
        max_context_tokens=131_072,
        expects_telemetry=expects_telemetry,
    )


SPECS = (
    _spec("h100-llama8b-1", pool="h100-llama8b"),
    _spec("h100-llama8b-0", pool="h100-llama8b"),
    _spec("h100-llama70b-0", pool="h100-llama70b", model="llama-3.1-70b", chips=4),
    _spec("trn1-llama8b-0", pool="trn1-llama8b", zone="use1-az2"),
    _spec("static-0", pool="static", zone="use1-az2", expects_telemetry=False),
)
IDS = tuple(sorted(s.endpoint_id for s in SPECS))


def modelled_power_w(spec: EndpointSpec, load: EndpointLoad) -> float:
    """A simple linear power model per chip: 100 W idle to 700 W busy (a stand-in for fleet.perf's model)."""
    busy = load.utilization_ratio if load.utilization_ratio is not None else 0.0
    return spec.chips * (100.0 + 600.0 * busy)


def make_store(now_s: float = T0, specs: tuple[EndpointSpec, ...] = SPECS) -> FleetStore:
    return FleetStore(
        specs,
        ZONES,
        stale_after_s=STALE_S,
        max_future_skew_s=SKEW_S,
        now_s=now_s,
        modelled_power_w=modelled_power_w,
    )


def plain(value: Any) -> Any:
    """A deep, plain-Python copy of a snapshot's content, for comparing across time."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple((f.name, plain(getattr(value, f.name))) for f in dataclasses.fields(value)),
        )
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((k, plain(v)) for k, v in value.items())))
    if isinstance(value, tuple | list):
        return ("seq", tuple(plain(v) for v in value))
    if isinstance(value, enum.Enum):
        return ("enum", type(value).__name__, value.value)
    assert value is None or isinstance(value, str | int | float | bool), type(value)
    return value


def check_invariants(snap: FleetSnapshot) -> None:
    ids = [s.endpoint_id for s in snap.endpoints]
    assert ids == sorted(ids) == sorted(snap.by_id)
    for state in snap.endpoints:
        assert snap.by_id[state.endpoint_id] is state
        assert state in snap.by_model[state.spec.model]
        assert (state.status is EndpointStatus.DRAINED) == (state.drain is not None)
    assert sum(len(v) for v in snap.by_model.values()) == len(ids)
    assert set(snap.zone_power_w) == set(snap.zones)
    assert all(math.isfinite(w) and w >= 0 for w in snap.zone_power_w.values())
    # The ineligible endpoints' part of each zone's draw: none of it when all may take work, all of it
    # when none may.
    assert set(snap.zone_ineligible_power_w) == set(snap.zones)
    for zone, drawn_w in snap.zone_power_w.items():
        held_w = snap.zone_ineligible_power_w[zone]
        assert 0.0 <= held_w <= drawn_w * (1 + 1e-12)
        members = [s for s in snap.endpoints if s.spec.zone == zone]
        if all(s.eligible for s in members):
            assert held_w == 0.0
        if not any(s.eligible for s in members):
            assert held_w == pytest.approx(drawn_w, rel=1e-12)


# --- construction and the first snapshot ---------------------------------------------------------


def test_initial_snapshot_lists_every_endpoint_ready_with_modelled_power() -> None:
    store = make_store()
    snap = store.snapshot()
    assert snap.version == 1
    assert snap.taken_at_s == T0
    assert tuple(s.endpoint_id for s in snap.endpoints) == IDS
    assert all(s.status is EndpointStatus.READY and s.eligible for s in snap.endpoints)
    assert snap.models == ("llama-3.1-70b", "llama-3.1-8b")
    assert [s.endpoint_id for s in snap.by_model["llama-3.1-8b"]] == [
        "h100-llama8b-0",
        "h100-llama8b-1",
        "static-0",
        "trn1-llama8b-0",
    ]
    assert dict(snap.zones) == {z.name: z for z in ZONES}
    # idle model: 100 W per chip; az1 holds 1 + 1 + 4 chips, az2 holds 1 + 1
    assert dict(snap.zone_power_w) == {"use1-az1": 600.0, "use1-az2": 200.0}
    assert store.snapshot() is snap  # nothing published without a change
    check_invariants(snap)


def test_published_snapshot_cannot_be_modified_in_place() -> None:
    snap = make_store().snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.version = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.by_id["x"] = snap.endpoints[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.zone_power_w["use1-az1"] = 0.0  # type: ignore[index]
    with pytest.raises(TypeError):
        snap.by_model["llama-3.1-8b"] = ()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.endpoints[0].load.running_requests = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("specs", "zones", "kwargs", "message"),
    [
        ((*SPECS, SPECS[0]), ZONES, {}, "duplicate endpoint id 'h100-llama8b-1'"),
        ((_spec("x", pool="p", zone="nowhere"),), ZONES, {}, "unknown zone 'nowhere'"),
        (SPECS, (*ZONES, ZONES[0]), {}, "duplicate zone 'use1-az1'"),
        (SPECS, ZONES, {"stale_after_s": 0.0}, "stale_after_s must be a finite number > 0"),
        (SPECS, ZONES, {"stale_after_s": math.inf}, "stale_after_s must be a finite number > 0"),
        (SPECS, ZONES, {"max_future_skew_s": -1.0}, "max_future_skew_s must be a finite number >= 0"),
        (SPECS, ZONES, {"now_s": math.nan}, "now_s must be a finite number"),
    ],
)
def test_constructor_refuses_inconsistent_configuration(
    specs: tuple[EndpointSpec, ...], zones: tuple[ZoneSpec, ...], kwargs: dict[str, float], message: str
) -> None:
    args: dict[str, Any] = {"stale_after_s": STALE_S, "max_future_skew_s": SKEW_S, "now_s": T0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        FleetStore(specs, zones, modelled_power_w=modelled_power_w, **args)


# --- apply -------------------------------------------------------------------------------------------


def test_apply_merges_fields_and_publishes_once_per_call() -> None:
    store = make_store()
    before = store.snapshot()
    rejections = store.apply(
        [
            TelemetrySample(
                "h100-llama8b-0",
                T0 + 1,
                running_requests=4,
                waiting_requests=2,
                kv_cache_usage_ratio=0.5,
                observed_ttft_ms=180.0,
            ),
            TelemetrySample("h100-llama8b-0", T0 + 2, running_requests=6, utilization_ratio=0.25),
            TelemetrySample("trn1-llama8b-0", T0 + 2, healthy=False),
        ],
        now_s=T0 + 3,
    )
    assert rejections == []
    snap = store.snapshot()
    assert snap.version == 2  # one publish for the whole batch
    assert snap.taken_at_s == T0 + 3
    load = snap.by_id["h100-llama8b-0"].load
    assert load == EndpointLoad(
        running_requests=6,  # the later sample wins
        waiting_requests=2,  # None in the later sample keeps the earlier value
        kv_cache_usage_ratio=0.5,
        power_w=None,
        utilization_ratio=0.25,
        observed_ttft_ms=180.0,
        observed_tpot_ms=None,
        healthy=True,
        observed_at_s=T0 + 2,
        received_at_s=T0 + 3,
    )
    assert snap.by_id["trn1-llama8b-0"].status is EndpointStatus.UNHEALTHY
    assert not snap.by_id["trn1-llama8b-0"].eligible
    # modelled power follows the reported utilisation: 100 + 600 * 0.25 = 250 W for that chip
    assert snap.zone_power_w["use1-az1"] == 250.0 + 100.0 + 400.0
    # untouched endpoints keep their very state objects (copy-on-write)
    assert snap.by_id["h100-llama70b-0"] is before.by_id["h100-llama70b-0"]
    assert before.version == 1 and before.by_id["h100-llama8b-0"].load == EndpointLoad()
    check_invariants(snap)


def test_unhealthy_endpoint_recovers_when_it_reports_healthy() -> None:
    store = make_store()
    store.apply([TelemetrySample("h100-llama8b-0", T0, healthy=False)], T0)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.UNHEALTHY
    store.apply([TelemetrySample("h100-llama8b-0", T0 + 1, healthy=True)], T0 + 1)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.READY


BAD_SAMPLES: list[tuple[TelemetrySample, str, str]] = [
    (TelemetrySample("nope", T0), "endpoint_id", "unknown endpoint"),
    (TelemetrySample("h100-llama8b-0", math.nan), "observed_at_s", "finite"),
    (TelemetrySample("h100-llama8b-0", math.inf), "observed_at_s", "finite"),
    (TelemetrySample("h100-llama8b-0", T0 + SKEW_S + 0.5), "observed_at_s", "in the future"),
    (TelemetrySample("h100-llama8b-0", T0, running_requests=-1), "running_requests", ">= 0"),
    (TelemetrySample("h100-llama8b-0", T0, waiting_requests=-3), "waiting_requests", ">= 0"),
    (TelemetrySample("h100-llama8b-0", T0, kv_cache_usage_ratio=1.01), "kv_cache_usage_ratio", "[0, 1]"),
    (TelemetrySample("h100-llama8b-0", T0, kv_cache_usage_ratio=-0.1), "kv_cache_usage_ratio", "[0, 1]"),
    (TelemetrySample("h100-llama8b-0", T0, kv_cache_usage_ratio=math.nan), "kv_cache_usage_ratio", "[0, 1]"),
    (TelemetrySample("h100-llama8b-0", T0, utilization_ratio=2.0), "utilization_ratio", "[0, 1]"),
    (TelemetrySample("h100-llama8b-0", T0, power_w=-5.0), "power_w", ">= 0"),
    (TelemetrySample("h100-llama8b-0", T0, power_w=math.nan), "power_w", "finite"),
    (TelemetrySample("h100-llama8b-0", T0, power_w=math.inf), "power_w", "finite"),
    (TelemetrySample("h100-llama8b-0", T0, observed_ttft_ms=-1.0), "observed_ttft_ms", ">= 0"),
    (TelemetrySample("h100-llama8b-0", T0, observed_tpot_ms=math.nan), "observed_tpot_ms", "finite"),
]


@pytest.mark.parametrize(("sample", "field", "rule_part"), BAD_SAMPLES)
def test_bad_sample_is_rejected_naming_field_and_rule_and_changes_nothing(
    sample: TelemetrySample, field: str, rule_part: str
) -> None:
    store = make_store()
    store.apply([TelemetrySample("h100-llama8b-0", T0 - 1, running_requests=3, power_w=300.0)], T0)
    before = store.snapshot()
    rejections = store.apply([sample], now_s=T0)
    assert len(rejections) == 1
    rejection = rejections[0]
    assert (rejection.index, rejection.endpoint_id, rejection.field) == (0, sample.endpoint_id, field)
    assert rule_part in rejection.rule
    assert store.snapshot() is before  # nothing published
    # and nothing stored was lost: a later good sample merges onto the earlier values
    store.apply([TelemetrySample("h100-llama8b-0", T0, waiting_requests=1)], T0)
    load = store.snapshot().by_id["h100-llama8b-0"].load
    assert (load.running_requests, load.waiting_requests, load.power_w) == (3, 1, 300.0)


def test_sample_older_than_the_last_applied_one_is_rejected() -> None:
    store = make_store()
    assert store.apply([TelemetrySample("h100-llama8b-0", T0, running_requests=5)], T0) == []
    rejections = store.apply(
        [
            TelemetrySample("h100-llama8b-0", T0 - 0.001, running_requests=1),
            TelemetrySample("h100-llama8b-0", T0, running_requests=7),  # same time: accepted
        ],
        T0 + 1,
    )
    assert [(r.index, r.field) for r in rejections] == [(0, "observed_at_s")]
    assert "older than the last applied sample" in rejections[0].rule
    assert store.snapshot().by_id["h100-llama8b-0"].load.running_requests == 7


def test_mixed_batch_applies_good_samples_and_reports_bad_ones_by_index() -> None:
    store = make_store()
    rejections = store.apply(
        [
            TelemetrySample("h100-llama8b-0", T0, running_requests=2),
            TelemetrySample("ghost-9", T0, running_requests=2),
            TelemetrySample("h100-llama8b-1", T0, kv_cache_usage_ratio=math.nan),
            TelemetrySample("h100-llama8b-1", T0, running_requests=9),
        ],
        T0,
    )
    assert [(r.index, r.endpoint_id, r.field) for r in rejections] == [
        (1, "ghost-9", "endpoint_id"),
        (2, "h100-llama8b-1", "kv_cache_usage_ratio"),
    ]
    assert rejections[0].message == "samples[1] (ghost-9): endpoint_id: unknown endpoint"
    snap = store.snapshot()
    assert snap.version == 2
    assert snap.by_id["h100-llama8b-0"].load.running_requests == 2
    assert snap.by_id["h100-llama8b-1"].load.running_requests == 9
    assert snap.by_id["h100-llama8b-1"].load.kv_cache_usage_ratio == 0.0


def test_only_rejections_publish_nothing() -> None:
    store = make_store()
    before = store.snapshot()
    assert len(store.apply([TelemetrySample("x", T0), TelemetrySample("y", T0)], T0)) == 2
    assert store.apply([], T0) == []
    assert store.snapshot() is before


# --- staleness ---------------------------------------------------------------------------------------


def test_never_reported_endpoint_turns_stale_counting_from_store_start() -> None:
    store = make_store()
    assert store.refresh(T0 + STALE_S) is False  # exactly stale_after_s: still fresh
    assert store.snapshot().version == 1
    assert store.refresh(T0 + STALE_S + 0.001) is True
    snap = store.snapshot()
    assert snap.version == 2
    stale = {s.endpoint_id for s in snap.endpoints if s.status is EndpointStatus.STALE}
    assert stale == set(IDS) - {"static-0"}  # expects_telemetry=False is never stale
    assert snap.by_id["static-0"].status is EndpointStatus.READY
    assert store.refresh(T0 + 1000.0) is False  # no further change, nothing published
    assert store.snapshot() is snap


def test_report_makes_stale_endpoint_ready_until_it_ages_again() -> None:
    store = make_store()
    store.refresh(T0 + 20)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.STALE
    store.apply([TelemetrySample("h100-llama8b-0", T0 + 20, running_requests=1)], T0 + 20)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.READY
    store.refresh(T0 + 35)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.READY
    store.refresh(T0 + 35.5)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.STALE


def test_age_counts_from_the_earlier_of_observation_and_receipt() -> None:
    store = make_store(now_s=T0)
    # observed 10 s before it arrived: it is only 5 s from going stale
    store.apply([TelemetrySample("h100-llama8b-0", T0 + 10, running_requests=1)], T0 + 20)
    store.refresh(T0 + 25)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.READY
    store.refresh(T0 + 25.5)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.STALE
    # a clock running ahead (within the allowed skew) does not buy extra freshness
    store.apply([TelemetrySample("h100-llama8b-1", T0 + 34, running_requests=1)], T0 + 30)
    store.refresh(T0 + 45)
    assert store.snapshot().by_id["h100-llama8b-1"].status is EndpointStatus.READY
    store.refresh(T0 + 45.5)
    assert store.snapshot().by_id["h100-llama8b-1"].status is EndpointStatus.STALE


@st.composite
def _report_times(draw: st.DrawFn) -> tuple[list[float | None], float]:
    times = [draw(st.none() | st.floats(0.0, 100.0)) for _ in IDS]
    query = draw(st.floats(0.0, 200.0))
    return times, query


@settings(max_examples=150, deadline=None)
@given(_report_times(), st.sampled_from(IDS), st.booleans())
def test_status_matches_the_precedence_rules(
    case: tuple[list[float | None], float], drained_id: str, report_unhealthy: bool
) -> None:
    times, query = case
    store = make_store()
    last_s = max([t for t in times if t is not None], default=0.0)
    samples = [
        TelemetrySample(eid, T0 + t, running_requests=1, healthy=not (report_unhealthy and i == 0))
        for i, (eid, t) in enumerate(zip(IDS, times, strict=True))
        if t is not None
    ]
    store.apply(sorted(samples, key=lambda s: s.observed_at_s), T0 + last_s)
    store.drain([drained_id], DrainReason.MAINTENANCE, None, T0 + last_s)
    now_s = T0 + max(query, last_s)
    store.refresh(now_s)
    snap = store.snapshot()
    check_invariants(snap)
    for i, (eid, t) in enumerate(zip(IDS, times, strict=True)):
        spec = snap.by_id[eid].spec
        fresh_since = T0 + t if t is not None else T0
        if eid == drained_id:
            expected = EndpointStatus.DRAINED
        elif report_unhealthy and i == 0 and t is not None:
            expected = EndpointStatus.UNHEALTHY
        elif spec.expects_telemetry and now_s - fresh_since > STALE_S:
            expected = EndpointStatus.STALE
        else:
            expected = EndpointStatus.READY
        assert snap.by_id[eid].status is expected, (eid, t, query)


# --- drain / undrain / pools ---------------------------------------------------------------------


def test_drain_takes_effect_in_the_snapshot_it_publishes_and_undrain_restores() -> None:
    store = make_store()
    changed = store.drain(
        ["h100-llama8b-0", "h100-llama8b-1"], DrainReason.SPOT_INTERRUPTION, T0 + 120, T0 + 1
    )
    assert changed == ["h100-llama8b-0", "h100-llama8b-1"]
    snap = store.snapshot()
    assert snap.version == 2
    state = snap.by_id["h100-llama8b-0"]
    assert state.status is EndpointStatus.DRAINED and not state.eligible
    assert state.drain is not None
    assert (state.drain.reason, state.drain.since_s, state.drain.deadline_s) == (
        DrainReason.SPOT_INTERRUPTION,
        T0 + 1,
        T0 + 120,
    )
    # the same drain again changes nothing and publishes nothing
    assert store.drain(["h100-llama8b-0"], DrainReason.SPOT_INTERRUPTION, T0 + 120, T0 + 2) == []
    assert store.snapshot() is snap
    # a different reason replaces the drain state but keeps when it started
    assert store.drain(["h100-llama8b-0"], DrainReason.MAINTENANCE, None, T0 + 3) == ["h100-llama8b-0"]
    drain = store.snapshot().by_id["h100-llama8b-0"].drain
    assert drain is not None and (drain.reason, drain.since_s, drain.deadline_s) == (
        DrainReason.MAINTENANCE,
        T0 + 1,
        None,
    )
    # drained beats unhealthy
    store.apply([TelemetrySample("h100-llama8b-0", T0 + 3, healthy=False)], T0 + 3)
    assert store.snapshot().by_id["h100-llama8b-0"].status is EndpointStatus.DRAINED
    assert store.undrain(["h100-llama8b-0", "h100-llama70b-0"], T0 + 4) == ["h100-llama8b-0"]
    after = store.snapshot()
    assert after.by_id["h100-llama8b-0"].status is EndpointStatus.UNHEALTHY
    assert after.by_id["h100-llama8b-0"].drain is None
    assert after.by_id["h100-llama8b-1"].status is EndpointStatus.DRAINED
    assert store.undrain(["h100-llama8b-0"], T0 + 5) == []
    check_invariants(after)


def test_unknown_ids_raise_key_error_naming_them_before_any_change() -> None:
    store = make_store()
    before = store.snapshot()
    with pytest.raises(KeyError, match="'ghost-1', 'ghost-2'"):
        store.drain(["h100-llama8b-0", "ghost-1", "ghost-2"], DrainReason.MAINTENANCE, None, T0)
    assert store.snapshot() is before
    store.drain(["h100-llama8b-0"], DrainReason.MAINTENANCE, None, T0)
    drained = store.snapshot()
    with pytest.raises(KeyError, match="'ghost-3'"):
        store.undrain(["h100-llama8b-0", "ghost-3"], T0)
    assert store.snapshot() is drained
    assert drained.by_id["h100-llama8b-0"].status is EndpointStatus.DRAINED
    with pytest.raises(TypeError):
        store.drain("h100-llama8b-0", DrainReason.MAINTENANCE, None, T0)


def test_pool_endpoint_ids() -> None:
    store = make_store()
    assert store.pool_endpoint_ids("h100-llama8b") == ("h100-llama8b-0", "h100-llama8b-1")
    assert store.pool_endpoint_ids("static") == ("static-0",)
    with pytest.raises(KeyError, match=r"unknown pool 'nope'.*h100-llama70b"):
        store.pool_endpoint_ids("nope")


# --- zone power --------------------------------------------------------------------------------------


def test_zone_power_uses_fresh_readings_and_falls_back_to_the_model() -> None:
    store = make_store()
    store.apply(
        [
            TelemetrySample("h100-llama70b-0", T0, power_w=2_600.0, utilization_ratio=0.5),
            TelemetrySample("trn1-llama8b-0", T0, utilization_ratio=1.0),
        ],
        T0,
    )
    snap = store.snapshot()
    # az1: 2600 W reported + 100 + 100 modelled; az2: trn1 modelled busy 700 + static idle 100
    assert dict(snap.zone_power_w) == {"use1-az1": 2_800.0, "use1-az2": 800.0}
    # later reports without power keep the endpoint fresh, but the power reading itself ages
    store.apply([TelemetrySample("h100-llama70b-0", T0 + 10, running_requests=3)], T0 + 10)
    store.refresh(T0 + STALE_S)
    assert store.snapshot().zone_power_w["use1-az1"] == 2_800.0
    assert store.refresh(T0 + STALE_S + 1) is True
    snap = store.snapshot()
    assert snap.by_id["h100-llama70b-0"].status is EndpointStatus.READY
    # modelled now: 4 chips * (100 + 600 * 0.5) = 1600 W
    assert snap.zone_power_w["use1-az1"] == 1_600.0 + 200.0
    # drained endpoints still draw power
    store.drain(["h100-llama70b-0"], DrainReason.MAINTENANCE, None, T0 + 17)
    assert store.snapshot().zone_power_w["use1-az1"] == 1_800.0


def test_power_drawn_by_endpoints_that_may_not_take_work_is_published_per_zone() -> None:
    store = make_store()
    store.apply([TelemetrySample(eid, T0, utilization_ratio=0.0) for eid in IDS], T0)
    assert dict(store.snapshot().zone_ineligible_power_w) == {"use1-az1": 0.0, "use1-az2": 0.0}
    # drained: its 4 chips' 400 W idle draw
    store.drain(["h100-llama70b-0"], DrainReason.MAINTENANCE, None, T0 + 1)
    assert dict(store.snapshot().zone_ineligible_power_w) == {"use1-az1": 400.0, "use1-az2": 0.0}
    # its draw changes while drained (finishing its work): followed
    store.apply([TelemetrySample("h100-llama70b-0", T0 + 2, power_w=2_000.0)], T0 + 2)
    assert store.snapshot().zone_ineligible_power_w["use1-az1"] == 2_000.0
    # unhealthy counts too; an eligible endpoint's draw does not
    store.apply(
        [
            TelemetrySample("trn1-llama8b-0", T0 + 3, healthy=False, power_w=500.0),
            TelemetrySample("static-0", T0 + 3, power_w=300.0),
        ],
        T0 + 3,
    )
    assert dict(store.snapshot().zone_ineligible_power_w) == {"use1-az1": 2_000.0, "use1-az2": 500.0}
    # stale: the endpoints that stopped reporting (static-0 expects no telemetry and never goes stale)
    store.refresh(T0 + 3 + STALE_S + 1)
    snap = store.snapshot()
    assert snap.by_id["h100-llama8b-0"].status is EndpointStatus.STALE
    # power readings aged out too: modelled idle again (100 W per chip)
    assert dict(snap.zone_ineligible_power_w) == {"use1-az1": 100.0 + 100.0 + 400.0, "use1-az2": 100.0}
    # back to work: nothing held
    store.undrain(["h100-llama70b-0"], T0 + 20)
    now = T0 + 21
    store.apply([TelemetrySample(eid, now, healthy=True) for eid in IDS], now)
    assert dict(store.snapshot().zone_ineligible_power_w) == {"use1-az1": 0.0, "use1-az2": 0.0}


# --- the one-writer contract ----------------------------------------------------------------------


def test_writes_from_a_second_thread_are_refused() -> None:
    store = make_store()
    store.refresh(T0)  # binds this thread as the writer
    errors: list[BaseException] = []
    seen: list[FleetSnapshot] = []

    def other() -> None:
        seen.append(store.snapshot())  # reading is fine from any thread
        try:
            store.apply([TelemetrySample("h100-llama8b-0", T0, running_requests=1)], T0)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [store.snapshot()]
    assert len(errors) == 1 and "one thread" in str(errors[0])
    assert store.snapshot().version == 1


# --- property tests: snapshots never change; rejected samples change nothing ---------------------

_valid_sample = st.builds(
    TelemetrySample,
    endpoint_id=st.sampled_from(IDS),
    observed_at_s=st.just(0.0),  # replaced by the current time when applied
    running_requests=st.none() | st.integers(0, 512),
    waiting_requests=st.none() | st.integers(0, 512),
    kv_cache_usage_ratio=st.none() | st.floats(0.0, 1.0),
    power_w=st.none() | st.floats(0.0, 10_000.0),
    utilization_ratio=st.none() | st.floats(0.0, 1.0),
    observed_ttft_ms=st.none() | st.floats(0.0, 60_000.0),
    observed_tpot_ms=st.none() | st.floats(0.0, 1_000.0),
    healthy=st.none() | st.booleans(),
)

_bad_value = st.one_of(
    st.builds(dict, endpoint_id=st.sampled_from(["ghost", "", "H100-LLAMA8B-0"])),
    st.builds(dict, running_requests=st.integers(max_value=-1)),
    st.builds(dict, waiting_requests=st.integers(max_value=-1)),
    st.builds(dict, kv_cache_usage_ratio=st.floats(allow_nan=True).filter(lambda v: not 0.0 <= v <= 1.0)),
    st.builds(dict, utilization_ratio=st.floats(allow_nan=True).filter(lambda v: not 0.0 <= v <= 1.0)),
    st.builds(dict, power_w=st.floats(allow_nan=True).filter(lambda v: not (math.isfinite(v) and v >= 0))),
    st.builds(
        dict, observed_ttft_ms=st.floats(allow_nan=True).filter(lambda v: not (math.isfinite(v) and v >= 0))
    ),
    st.builds(dict, observed_tpot_ms=st.sampled_from([math.nan, math.inf, -math.inf, -0.5])),
    st.builds(dict, future_s=st.floats(SKEW_S + 0.01, 1e6)),
    st.builds(dict, past_s=st.floats(0.01, 1e6)),
)


@dataclass(frozen=True)
class _Op:
    kind: str  # "apply", "bad", "drain", "undrain", "refresh"
    dt_s: float
    samples: tuple[TelemetrySample, ...] = ()
    bad: tuple[dict[str, Any], ...] = ()
    ids: tuple[str, ...] = ()
    reason: DrainReason = DrainReason.MAINTENANCE


_op = st.one_of(
    st.builds(
        _Op,
        kind=st.just("apply"),
        dt_s=st.floats(0.0, 10.0),
        samples=st.lists(_valid_sample, max_size=4).map(tuple),
    ),
    st.builds(
        _Op,
        kind=st.just("bad"),
        dt_s=st.floats(0.0, 10.0),
        samples=st.lists(_valid_sample, min_size=1, max_size=3).map(tuple),
        bad=st.lists(_bad_value, min_size=3, max_size=3).map(tuple),
    ),
    st.builds(
        _Op,
        kind=st.just("drain"),
        dt_s=st.floats(0.0, 10.0),
        ids=st.lists(st.sampled_from(IDS), max_size=3).map(tuple),
        reason=st.sampled_from(list(DrainReason)),
    ),
    st.builds(
        _Op,
        kind=st.just("undrain"),
        dt_s=st.floats(0.0, 10.0),
        ids=st.lists(st.sampled_from(IDS), max_size=3).map(tuple),
    ),
    st.builds(_Op, kind=st.just("refresh"), dt_s=st.floats(0.0, 30.0)),
)


def _corrupt(
    sample: TelemetrySample, bad: dict[str, Any], now_s: float, last_s: float | None
) -> TelemetrySample:
    changes = dict(bad)
    if "future_s" in changes:
        changes = {"observed_at_s": now_s + changes["future_s"]}
    elif "past_s" in changes:
        # older than the last applied sample; an endpoint with none yet gets an unknown id instead
        changes = (
            {"endpoint_id": "ghost"} if last_s is None else {"observed_at_s": last_s - changes["past_s"]}
        )
    return dataclasses.replace(sample, **changes)


def _run(store: FleetStore, ops: list[_Op], *, with_bad: bool) -> list[FleetSnapshot]:
    """Run ``ops``; ``bad`` ops slip a corrupted sample before each of their good ones, but only
    when ``with_bad``. Returns every snapshot published along the way."""
    now_s = T0
    last_observed: dict[str, float] = {}
    published = [store.snapshot()]
    for op in ops:
        now_s += op.dt_s
        if op.kind in ("apply", "bad"):
            batch: list[TelemetrySample] = []
            bad_indexes: list[int] = []
            for sample, bad in zip(op.samples, op.bad or [None] * len(op.samples), strict=False):
                if bad is not None and with_bad:
                    bad_indexes.append(len(batch))
                    batch.append(_corrupt(sample, bad, now_s, last_observed.get(sample.endpoint_id)))
                batch.append(dataclasses.replace(sample, observed_at_s=now_s))
                last_observed[sample.endpoint_id] = now_s
            rejections = store.apply(batch, now_s)
            assert [r.index for r in rejections] == bad_indexes
        elif op.kind == "drain":
            store.drain(op.ids, op.reason, None, now_s)
        elif op.kind == "undrain":
            store.undrain(op.ids, now_s)
        else:
            store.refresh(now_s)
        if store.snapshot() is not published[-1]:
            published.append(store.snapshot())
    return published


@settings(max_examples=120, deadline=None)
@given(st.lists(_op, max_size=25))
def test_published_snapshots_never_change_and_versions_step_by_one(ops: list[_Op]) -> None:
    store = make_store()
    published = _run(store, ops, with_bad=True)
    frozen = [plain(s) for s in published]
    # more writes of every kind on top: none of the snapshots seen so far may change
    store.refresh(T0 + 10_000.0)
    store.drain(list(IDS), DrainReason.SPOT_INTERRUPTION, T0 + 10_100.0, T0 + 10_000.0)
    store.apply(
        [TelemetrySample(eid, T0 + 10_000.0, running_requests=99, power_w=1.0) for eid in IDS], T0 + 10_000.0
    )
    store.undrain(list(IDS), T0 + 10_001.0)
    assert [plain(s) for s in published] == frozen
    assert [s.version for s in published] == list(range(1, len(published) + 1))
    for snap in published:
        check_invariants(snap)


@settings(max_examples=120, deadline=None)
@given(st.lists(_op, max_size=25))
def test_rejected_samples_leave_state_untouched(ops: list[_Op]) -> None:
    clean = make_store()
    dirty = make_store()
    clean_published = _run(clean, ops, with_bad=False)
    dirty_published = _run(dirty, ops, with_bad=True)
    # the same snapshots, versions included: rejected samples neither changed nor published anything
    assert [plain(s) for s in dirty_published] == [plain(s) for s in clean_published]
