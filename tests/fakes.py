"""Fakes implementing the real interfaces, and builders of fleet values for policy tests.

:class:`ClosedFormProfile` implements :class:`fleet.types.ServingProfile` with closed-form figures, so a
test can work out the expected numbers by hand. The builders make real :class:`fleet.types` values
(specs, states, snapshots) and real :class:`policies.types` values (requests, plans).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fleet.types import (
    DrainReason,
    DrainState,
    EndpointLoad,
    EndpointSpec,
    EndpointState,
    EndpointStatus,
    FleetSnapshot,
    LatencySlo,
    Precision,
    Priority,
    ServingProfile,
    ZoneSpec,
)
from policies.types import PlacementRequest, Plan


@dataclass(frozen=True)
class ClosedFormProfile:
    """A :class:`~fleet.types.ServingProfile` with closed-form figures.

    * ``ttft_ms(n, q) = ttft_overhead_ms + (n + q) / prefill_tokens_per_ms``
    * ``tpot_ms(b, c) = tpot_base_ms + b * (tpot_per_seq_ms + tpot_per_ktoken_ms * c / 1000)``
    * ``power_w(u) = idle_power_w + (max_power_w - idle_power_w) * clamp(u, 0, 1)``
    """

    prefill_tokens_per_ms: float = 20.0
    ttft_overhead_ms: float = 10.0
    tpot_base_ms: float = 10.0
    tpot_per_seq_ms: float = 0.5
    tpot_per_ktoken_ms: float = 0.1
    kv_capacity: int = 200_000
    idle_w: float = 100.0
    max_w: float = 700.0
    fits: bool = True

    @property
    def kv_capacity_tokens(self) -> int:
        return self.kv_capacity

    @property
    def idle_power_w(self) -> float:
        return self.idle_w

    @property
    def max_power_w(self) -> float:
        return self.max_w

    @property
    def source(self) -> str:
        return "closed-form test profile"

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        return (
            self.ttft_overhead_ms
            + (input_tokens + max(0, queued_prefill_tokens)) / self.prefill_tokens_per_ms
        )

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        b = max(1, batch)
        return self.tpot_base_ms + b * (
            self.tpot_per_seq_ms + self.tpot_per_ktoken_ms * max(0, context_tokens) / 1000
        )

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        c = max(1, context_tokens)
        by_memory = self.kv_capacity // c
        per_seq = self.tpot_per_seq_ms + self.tpot_per_ktoken_ms * c / 1000
        if not tpot_ms > self.tpot_base_ms:
            return 0
        b = min(by_memory, int((tpot_ms - self.tpot_base_ms) / per_seq))
        while b > 0 and self.tpot_ms(b, c) > tpot_ms:
            b -= 1
        while b < by_memory and self.tpot_ms(b + 1, c) <= tpot_ms:
            b += 1
        return b

    def power_w(self, utilization_ratio: float) -> float:
        u = min(1.0, max(0.0, utilization_ratio))
        return self.idle_w + (self.max_w - self.idle_w) * u


# Two classes of silicon for tests: a fast, pricey one and a slow, cheap one (figures for tests only).
FAST = ClosedFormProfile()
SLOW = ClosedFormProfile(
    prefill_tokens_per_ms=5.0,
    ttft_overhead_ms=20.0,
    tpot_base_ms=25.0,
    tpot_per_seq_ms=1.0,
    tpot_per_ktoken_ms=0.2,
    kv_capacity=100_000,
    idle_w=60.0,
    max_w=300.0,
)
PROFILES: Mapping[str, ServingProfile] = MappingProxyType({"fake.fast": FAST, "fake.slow": SLOW})


class FakePerformanceModel:
    """``profile(model, instance_type, tp_degree, precision)`` like :class:`fleet.perf.PerformanceModel`,
    from a table keyed by instance type."""

    def __init__(self, profiles: Mapping[str, ServingProfile] = PROFILES) -> None:
        self._profiles = dict(profiles)

    def profile(self, model: str, instance_type: str, tp_degree: int, precision: Precision) -> ServingProfile:
        return self._profiles[instance_type]


def serving(spec: EndpointSpec) -> ServingProfile:
    """The :data:`policies.decision.ServingLookup` of the fake fleet."""
    return PROFILES[spec.instance_type]


def make_spec(
    endpoint_id: str,
    *,
    model: str = "m-8b",
    zone: str = "z1",
    region: str = "r1",
    instance_type: str = "fake.fast",
    kind: str = "h100",
    price_usd_per_hour: float = 10.0,
    max_context_tokens: int = 16_384,
    expects_telemetry: bool = True,
    pool: str = "",
) -> EndpointSpec:
    return EndpointSpec(
        endpoint_id=endpoint_id,
        address=f"{endpoint_id}.test:8000",
        pool=pool or f"pool-{instance_type}-{zone}",
        zone=zone,
        region=region,
        instance_type=instance_type,
        accelerator_kind=kind,
        model=model,
        tp_degree=1,
        precision=Precision.BF16,
        chips=1,
        price_usd_per_hour=price_usd_per_hour,
        max_context_tokens=max_context_tokens,
        expects_telemetry=expects_telemetry,
    )


def make_state(
    spec: EndpointSpec,
    *,
    status: EndpointStatus = EndpointStatus.READY,
    running: int = 0,
    waiting: int = 0,
    kv_usage_ratio: float = 0.0,
    utilization_ratio: float | None = None,
) -> EndpointState:
    drain = DrainState(DrainReason.MAINTENANCE, since_s=0.0) if status is EndpointStatus.DRAINED else None
    return EndpointState(
        spec=spec,
        load=EndpointLoad(
            running_requests=running,
            waiting_requests=waiting,
            kv_cache_usage_ratio=kv_usage_ratio,
            utilization_ratio=utilization_ratio,
            healthy=status is not EndpointStatus.UNHEALTHY,
        ),
        status=status,
        drain=drain,
    )


def make_snapshot(
    states: Iterable[EndpointState],
    zones: Iterable[ZoneSpec] = (ZoneSpec("z1", "r1", 1e9),),
    zone_power_w: Mapping[str, float] | None = None,
    *,
    version: int = 1,
    taken_at_s: float = 0.0,
) -> FleetSnapshot:
    ordered = tuple(sorted(states, key=lambda s: s.endpoint_id))
    by_model: dict[str, list[EndpointState]] = {}
    for s in ordered:
        by_model.setdefault(s.spec.model, []).append(s)
    return FleetSnapshot(
        version=version,
        taken_at_s=taken_at_s,
        endpoints=ordered,
        by_id=MappingProxyType({s.endpoint_id: s for s in ordered}),
        by_model=MappingProxyType({m: tuple(v) for m, v in by_model.items()}),
        zones=MappingProxyType({z.name: z for z in zones}),
        zone_power_w=MappingProxyType(dict(zone_power_w or {})),
    )


def make_request(
    request_id: str = "req-1",
    *,
    model: str = "m-8b",
    priority: Priority = Priority.STANDARD,
    input_tokens: int = 1000,
    max_output_tokens: int = 500,
    expected_output_tokens: int = 200,
    ttft_ms: float = 2000.0,
    tpot_ms: float = 100.0,
    allowed_accelerator_kinds: frozenset[str] = frozenset(),
    region: str = "",
    zone: str = "",
    data_region: str = "",
    tenant: str = "t1",
) -> PlacementRequest:
    return PlacementRequest(
        request_id=request_id,
        model=model,
        tenant=tenant,
        priority=priority,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        expected_output_tokens=expected_output_tokens,
        slo=LatencySlo(ttft_ms=ttft_ms, tpot_ms=tpot_ms),
        allowed_accelerator_kinds=allowed_accelerator_kinds,
        region=region,
        zone=zone,
        data_region=data_region,
    )


def make_plan(
    share: Mapping[str, Mapping[str, float]], *, generation: int = 1, created_at_s: float = 0.0
) -> Plan:
    return Plan(
        generation=generation,
        created_at_s=created_at_s,
        status="optimal",
        active_endpoint_ids=frozenset(share),
        share=MappingProxyType({e: MappingProxyType(dict(c)) for e, c in share.items()}),
        desired_replicas=MappingProxyType({}),
        predicted_cost_usd_per_hour=0.0,
    )


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
