"""What a simulated run cost, how much energy it used, and how well it served: exact integrals and the
per-policy summary.

Meters (updated by the engine as the run goes)
----------------------------------------------
Every figure that varies over time is piecewise constant between events of the simulation, so its
integral is computed exactly from the times of its changes, never by sampling:

* **Cost.** An endpoint costs its ``price_usd_per_hour`` while it is *on*: from the moment it starts
  serving (at the start of the run for a fixed fleet; when its provisioning delay has passed for an
  endpoint the plan turns on) until it is switched off (when it has drained, for an endpoint the plan turns
  off; at the end of the run otherwise). ``total_usd = sum over endpoints of price_usd_per_hour / 3600 x
  seconds on``.
* **Power.** An endpoint that is on draws ``power_w(1)`` of its serving profile while its engine executes
  a step (a prefill or a decode step) and ``power_w(0)`` (idle power) otherwise; off, it draws nothing.
  The busy fraction of any interval is therefore its utilisation, and because each segment is either busy
  or idle the energy ``idle_w x idle seconds + busy_w x busy seconds`` is the exact integral of
  ``power_w(utilisation)`` (for any ``power_w``, linear or not). Zone power is the sum over the zone's
  endpoints; its peak, mean and the time spent above the zone's cap are exact.
* **Time series** (for the plots): the meters are read at fixed bin edges; each bin's cost rate and mean
  power are exact integrals over the bin divided by its width.

Summary (:func:`summarize`)
---------------------------
* USD per million tokens: total USD over the tokens of completed requests (prompt plus generated).
  Split by the prefill/decode work: each endpoint's cost is divided into its prefill-busy, decode-busy
  and idle seconds; idle cost is shared out in proportion to the fleet's prefill and decode cost, so
  ``input_usd + output_usd = total_usd``; USD per million input tokens is ``input_usd`` over the prompt
  tokens and USD per million output tokens ``output_usd`` over the generated tokens.
* SLO attainment: the share of all arrived requests that completed meeting both their TTFT and their TPOT
  target. A rejected request is a miss; so is one still running when the run stops at a horizon.
* TPOT of a request: ``(completion - first token) / (output tokens - 1)`` (the mean over its decode; a
  one-token request has no decode and meets any TPOT target). Percentiles are nearest-rank over the
  completed requests.
* Joules per token: the fleet's energy over the tokens of completed requests.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet.types import Priority

__all__ = [
    "EndpointMeter",
    "FleetMeter",
    "Percentiles",
    "PolicyResult",
    "PoolUsage",
    "RequestOutcome",
    "StepIntegral",
    "TimeSeries",
    "ZonePower",
    "nearest_rank",
    "summarize",
    "to_plain",
]

_SECONDS_PER_HOUR = 3600.0
_JOULES_PER_KWH = 3.6e6

COMPLETED = "completed"
REJECTED = "rejected"
RUNNING = "running"


class StepIntegral:
    """The integral, peak and time above a threshold of a piecewise-constant function of time.

    ``set(t, v)`` changes the value at ``t`` (times never decrease); the integral up to any later time is
    exact: ``integral + value x (t - since)``.
    """

    __slots__ = ("_above", "integral", "over_s", "peak", "since_s", "threshold", "value")

    def __init__(self, start_s: float, value: float = 0.0, threshold: float = math.inf) -> None:
        self.since_s = start_s
        self.value = value
        self.integral = 0.0
        self.peak = value
        self.threshold = threshold
        self.over_s = 0.0
        self._above = value > threshold

    def set(self, t_s: float, value: float) -> None:
        dt = t_s - self.since_s
        if dt:
            self.integral += self.value * dt
            if self._above:
                self.over_s += dt
            self.since_s = t_s
        self.value = value
        if value > self.peak:
            self.peak = value
        self._above = value > self.threshold

    def add(self, t_s: float, delta: float) -> None:
        self.set(t_s, self.value + delta)

    def integral_to(self, t_s: float) -> float:
        return self.integral + self.value * (t_s - self.since_s)

    def over_to(self, t_s: float) -> float:
        return self.over_s + (t_s - self.since_s if self._above else 0.0)


class EndpointMeter:
    """On/off and busy/idle time of one endpoint, feeding its zone's power and the fleet's cost rate.

    ``prefill_s`` and ``decode_s`` are added by the simulated endpoint as its steps complete; ``busy``
    transitions come from the endpoint too. Contract: an endpoint is busy only while on.
    """

    __slots__ = (
        "_fleet",
        "_zone",
        "busy",
        "busy_s",
        "busy_since_s",
        "busy_w",
        "decode_s",
        "endpoint_id",
        "idle_w",
        "on",
        "on_s",
        "on_since_s",
        "prefill_s",
        "price_usd_per_s",
    )

    def __init__(
        self,
        endpoint_id: str,
        price_usd_per_hour: float,
        idle_w: float,
        busy_w: float,
        zone: StepIntegral,
        fleet: FleetMeter,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.price_usd_per_s = price_usd_per_hour / _SECONDS_PER_HOUR
        self.idle_w = idle_w
        self.busy_w = busy_w
        self._zone = zone
        self._fleet = fleet
        self.on = False
        self.on_since_s = 0.0
        self.on_s = 0.0
        self.busy = False
        self.busy_since_s = 0.0
        self.busy_s = 0.0
        self.prefill_s = 0.0
        self.decode_s = 0.0

    def switch_on(self, t_s: float) -> None:
        if self.on:
            return
        self.on = True
        self.on_since_s = t_s
        self._zone.add(t_s, self.busy_w if self.busy else self.idle_w)
        self._fleet.cost_rate.add(t_s, self.price_usd_per_s)
        self._fleet.active.add(t_s, 1.0)

    def switch_off(self, t_s: float) -> None:
        if not self.on:
            return
        if self.busy:
            raise AssertionError(f"{self.endpoint_id}: switched off while busy")
        self.on = False
        self.on_s += t_s - self.on_since_s
        self._zone.add(t_s, -self.idle_w)
        self._fleet.cost_rate.add(t_s, -self.price_usd_per_s)
        self._fleet.active.add(t_s, -1.0)

    def set_busy(self, t_s: float, busy: bool) -> None:
        if busy == self.busy:
            return
        if busy:
            if not self.on:
                raise AssertionError(f"{self.endpoint_id}: busy while off")
            self.busy = True
            self.busy_since_s = t_s
            self._zone.add(t_s, self.busy_w - self.idle_w)
        else:
            self.busy = False
            self.busy_s += t_s - self.busy_since_s
            self._zone.add(t_s, self.idle_w - self.busy_w)

    def on_seconds(self, t_s: float) -> float:
        return self.on_s + (t_s - self.on_since_s if self.on else 0.0)

    def busy_seconds(self, t_s: float) -> float:
        return self.busy_s + (t_s - self.busy_since_s if self.busy else 0.0)

    def usd(self, t_s: float) -> float:
        return self.price_usd_per_s * self.on_seconds(t_s)

    def energy_j(self, t_s: float) -> float:
        busy = self.busy_seconds(t_s)
        return self.idle_w * (self.on_seconds(t_s) - busy) + self.busy_w * busy

    def power_w(self) -> float:
        if not self.on:
            return 0.0
        return self.busy_w if self.busy else self.idle_w


@dataclass(frozen=True, slots=True)
class _Sample:
    t_s: float
    cost_usd: float
    active_endpoint_s: float
    zone_energy_j: tuple[float, ...]


class FleetMeter:
    """The meters of one run: per-endpoint meters, per-zone power, the fleet's cost rate, samples."""

    def __init__(self, start_s: float, zone_caps_w: Mapping[str, float]) -> None:
        self.start_s = start_s
        self.zone_names: tuple[str, ...] = tuple(sorted(zone_caps_w))
        self.zone_caps_w = dict(zone_caps_w)
        self.zones: dict[str, StepIntegral] = {
            z: StepIntegral(start_s, 0.0, threshold=zone_caps_w[z]) for z in self.zone_names
        }
        self.cost_rate = StepIntegral(start_s)  # USD/s of the endpoints on
        self.active = StepIntegral(start_s)  # endpoints on
        self.endpoints: list[EndpointMeter] = []
        self.samples: list[_Sample] = [_Sample(start_s, 0.0, 0.0, tuple(0.0 for _ in self.zone_names))]

    def add_endpoint(
        self, endpoint_id: str, zone: str, price_usd_per_hour: float, idle_w: float, busy_w: float
    ) -> EndpointMeter:
        meter = EndpointMeter(endpoint_id, price_usd_per_hour, idle_w, busy_w, self.zones[zone], self)
        self.endpoints.append(meter)
        return meter

    def sample(self, t_s: float) -> None:
        """Record the cumulative figures at ``t_s`` (a bin edge)."""
        if self.samples and t_s <= self.samples[-1].t_s:
            return
        self.samples.append(
            _Sample(
                t_s,
                self.cost_rate.integral_to(t_s),
                self.active.integral_to(t_s),
                tuple(self.zones[z].integral_to(t_s) for z in self.zone_names),
            )
        )

    def zone_power_w(self) -> dict[str, float]:
        return {z: self.zones[z].value for z in self.zone_names}


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What happened to one request of the trace.

    ``outcome`` is "completed", "rejected" (by the policy, or by the endpoint when it can never fit) or
    "running" (arrived but not finished when the run stopped at its horizon). Latencies in ms; ``tpot_ms``
    is 0 for a one-token request. ``predicted_*`` are the policy's predictions when it gave any.
    """

    index: int
    arrival_s: float
    model: str
    priority: Priority
    tenant: str
    input_tokens: int
    output_tokens: int
    outcome: str
    endpoint_id: str
    accelerator_kind: str
    pool: str
    reason: str  # rejection reason, or the policy's placement reason
    ttft_ms: float | None
    tpot_ms: float | None
    completed_s: float | None
    slo_ttft_ms: float
    slo_tpot_ms: float
    predicted_ttft_ms: float | None = None
    predicted_tpot_ms: float | None = None

    @property
    def slo_met(self) -> bool:
        return (
            self.outcome == COMPLETED
            and self.ttft_ms is not None
            and self.tpot_ms is not None
            and self.ttft_ms <= self.slo_ttft_ms
            and self.tpot_ms <= self.slo_tpot_ms
        )


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Nearest-rank percentiles and the mean of a sample (``None`` when the sample is empty)."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @staticmethod
    def of(values: Iterable[float]) -> Percentiles:
        xs = sorted(values)
        if not xs:
            return Percentiles(0, None, None, None, None, None)
        return Percentiles(
            count=len(xs),
            mean=math.fsum(xs) / len(xs),
            p50=nearest_rank(xs, 50),
            p90=nearest_rank(xs, 90),
            p99=nearest_rank(xs, 99),
            max=xs[-1],
        )


def nearest_rank(sorted_values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty sequence."""
    n = len(sorted_values)
    rank = max(1, math.ceil(percent / 100.0 * n))
    return sorted_values[min(n, rank) - 1]


@dataclass(frozen=True, slots=True)
class ZonePower:
    """A zone's power against its cap. ``peak_w`` is the instantaneous peak; ``peak_bin_mean_w`` the
    highest mean over a time-series bin; ``time_over_cap_s`` the time the draw exceeded the cap."""

    zone: str
    cap_w: float
    peak_w: float
    peak_bin_mean_w: float
    mean_w: float
    time_over_cap_s: float
    energy_kwh: float


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A pool over the run: ``utilization_ratio`` is busy seconds over on seconds of its endpoints,
    ``mean_active_endpoints`` its on seconds over the run's duration."""

    pool: str
    accelerator_kind: str
    instance_type: str
    endpoints: int
    mean_active_endpoints: float
    utilization_ratio: float
    usd: float
    energy_kwh: float
    requests: int


@dataclass(frozen=True)
class TimeSeries:
    """Per bin (ending at ``bin_end_s``): mean cost rate, mean power per zone and of the fleet, mean
    endpoints on, requests placed per accelerator kind, and the cumulative cost at the bin's end."""

    bin_end_s: tuple[float, ...]
    cost_usd_per_hour: tuple[float, ...]
    cumulative_usd: tuple[float, ...]
    fleet_power_w: tuple[float, ...]
    zone_power_w: Mapping[str, tuple[float, ...]]
    active_endpoints: tuple[float, ...]
    placements_by_kind: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class PolicyResult:
    """Everything reported for one policy on one trace and fleet (see the module docstring)."""

    policy: str
    scaling: str
    duration_s: float
    requests: int
    completed: int
    rejected: int
    running: int
    input_tokens: int
    output_tokens: int
    total_usd: float
    usd_per_hour: float
    usd_per_million_tokens: float | None
    usd_per_million_input_tokens: float | None
    usd_per_million_output_tokens: float | None
    prefill_usd: float
    decode_usd: float
    idle_usd: float
    slo_attainment: float
    ttft_met_ratio: float
    tpot_met_ratio: float
    slo_attainment_by_priority: Mapping[str, float | None]
    ttft_ms: Percentiles
    tpot_ms: Percentiles
    energy_kwh: float
    joules_per_token: float | None
    zones: tuple[ZonePower, ...]
    pools: tuple[PoolUsage, ...]
    shed_by_priority: Mapping[str, int]
    rejected_by_reason: Mapping[str, int]
    requests_by_kind: Mapping[str, int]
    placement_reasons: Mapping[str, int]
    planner: Mapping[str, Any]
    prediction_ratio: Mapping[str, float | None]
    timeseries: TimeSeries
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (mappings with sorted keys are written by the report)."""
        return to_plain(self)


def to_plain(value: Any) -> Any:
    """JSON-ready data of a value made of dataclasses, mappings, sequences, enums and scalars."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: to_plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        items = [to_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, frozenset | set) else items
    if isinstance(value, enum.Enum):
        return value.value
    return value


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the summary needs to know of an endpoint besides its meter."""

    endpoint_id: str
    pool: str
    zone: str
    accelerator_kind: str
    instance_type: str


def summarize(
    *,
    policy: str,
    scaling: str,
    end_s: float,
    meter: FleetMeter,
    endpoints: Sequence[EndpointInfo],
    outcomes: Sequence[RequestOutcome],
    planner: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> PolicyResult:
    """The :class:`PolicyResult` of a finished run. ``endpoints[i]`` describes ``meter.endpoints[i]``;
    ``end_s`` is the time the run stopped (every meter is read there)."""
    start_s = meter.start_s
    duration_s = max(0.0, end_s - start_s)
    meters = meter.endpoints
    if len(meters) != len(endpoints):
        raise ValueError("summarize: one EndpointInfo per endpoint meter is required")

    # --- requests
    completed = [o for o in outcomes if o.outcome == COMPLETED]
    rejected = [o for o in outcomes if o.outcome == REJECTED]
    running = [o for o in outcomes if o.outcome == RUNNING]
    input_tokens = sum(o.input_tokens for o in completed)
    output_tokens = sum(o.output_tokens for o in completed)
    tokens = input_tokens + output_tokens
    n = len(outcomes)

    # --- cost (per endpoint: exact; split by prefill / decode / idle seconds)
    usd_each = [m.usd(end_s) for m in meters]
    total_usd = math.fsum(usd_each)
    prefill_usd = math.fsum(m.price_usd_per_s * m.prefill_s for m in meters)
    decode_usd = math.fsum(m.price_usd_per_s * m.decode_s for m in meters)
    idle_usd = total_usd - prefill_usd - decode_usd
    busy_usd = prefill_usd + decode_usd
    input_share = prefill_usd / busy_usd if busy_usd > 0 else 0.5
    input_usd = prefill_usd + idle_usd * input_share
    output_usd = total_usd - input_usd

    # --- energy
    energy_each = [m.energy_j(end_s) for m in meters]
    energy_j = math.fsum(energy_each)

    # --- SLO
    met = sum(1 for o in outcomes if o.slo_met)
    ttft_met = sum(1 for o in completed if o.ttft_ms is not None and o.ttft_ms <= o.slo_ttft_ms)
    tpot_met = sum(1 for o in completed if o.tpot_ms is not None and o.tpot_ms <= o.slo_tpot_ms)
    by_priority: dict[str, float | None] = {}
    shed: dict[str, int] = {}
    for p in Priority:
        mine = [o for o in outcomes if o.priority is p]
        by_priority[p.value] = (sum(1 for o in mine if o.slo_met) / len(mine)) if mine else None
        shed[p.value] = sum(1 for o in mine if o.outcome == REJECTED)
    reasons: dict[str, int] = {}
    for o in rejected:
        reasons[o.reason] = reasons.get(o.reason, 0) + 1
    placement_reasons: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for o in outcomes:
        if o.outcome != REJECTED:
            placement_reasons[o.reason] = placement_reasons.get(o.reason, 0) + 1
            by_kind[o.accelerator_kind] = by_kind.get(o.accelerator_kind, 0) + 1

    # --- zones
    series = _timeseries(meter, endpoints, outcomes, end_s)
    zones: list[ZonePower] = []
    for z in meter.zone_names:
        integral = meter.zones[z]
        zone_energy_j = integral.integral_to(end_s)
        bins = series.zone_power_w[z]
        zones.append(
            ZonePower(
                zone=z,
                cap_w=meter.zone_caps_w[z],
                peak_w=integral.peak,
                peak_bin_mean_w=max(bins) if bins else 0.0,
                mean_w=zone_energy_j / duration_s if duration_s > 0 else 0.0,
                time_over_cap_s=integral.over_to(end_s),
                energy_kwh=zone_energy_j / _JOULES_PER_KWH,
            )
        )

    # --- pools
    placed_by_pool: dict[str, int] = {}
    for o in outcomes:
        if o.outcome != REJECTED and o.pool:
            placed_by_pool[o.pool] = placed_by_pool.get(o.pool, 0) + 1
    pool_rows: dict[str, list[int]] = {}
    for i, info in enumerate(endpoints):
        pool_rows.setdefault(info.pool, []).append(i)
    pools: list[PoolUsage] = []
    for pool in sorted(pool_rows):
        idx = pool_rows[pool]
        on_s = math.fsum(meters[i].on_seconds(end_s) for i in idx)
        busy_s = math.fsum(meters[i].busy_seconds(end_s) for i in idx)
        info = endpoints[idx[0]]
        pools.append(
            PoolUsage(
                pool=pool,
                accelerator_kind=info.accelerator_kind,
                instance_type=info.instance_type,
                endpoints=len(idx),
                mean_active_endpoints=on_s / duration_s if duration_s > 0 else 0.0,
                utilization_ratio=busy_s / on_s if on_s > 0 else 0.0,
                usd=math.fsum(usd_each[i] for i in idx),
                energy_kwh=math.fsum(energy_each[i] for i in idx) / _JOULES_PER_KWH,
                requests=placed_by_pool.get(pool, 0),
            )
        )

    # --- how well the policy predicted (median observed / predicted over completed requests)
    def ratio(pairs: Iterable[tuple[float | None, float | None]]) -> float | None:
        rs = sorted(obs / pred for obs, pred in pairs if obs is not None and pred is not None and pred > 0)
        return nearest_rank(rs, 50) if rs else None

    prediction_ratio = {
        "ttft_observed_over_predicted_p50": ratio((o.ttft_ms, o.predicted_ttft_ms) for o in completed),
        "tpot_observed_over_predicted_p50": ratio(
            (o.tpot_ms, o.predicted_tpot_ms) for o in completed if o.output_tokens > 1
        ),
    }

    return PolicyResult(
        policy=policy,
        scaling=scaling,
        duration_s=duration_s,
        requests=n,
        completed=len(completed),
        rejected=len(rejected),
        running=len(running),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_usd=total_usd,
        usd_per_hour=total_usd / duration_s * _SECONDS_PER_HOUR if duration_s > 0 else 0.0,
        usd_per_million_tokens=total_usd / tokens * 1e6 if tokens else None,
        usd_per_million_input_tokens=input_usd / input_tokens * 1e6 if input_tokens else None,
        usd_per_million_output_tokens=output_usd / output_tokens * 1e6 if output_tokens else None,
        prefill_usd=prefill_usd,
        decode_usd=decode_usd,
        idle_usd=idle_usd,
        slo_attainment=met / n if n else 0.0,
        ttft_met_ratio=ttft_met / n if n else 0.0,
        tpot_met_ratio=tpot_met / n if n else 0.0,
        slo_attainment_by_priority=by_priority,
        ttft_ms=Percentiles.of(o.ttft_ms for o in completed if o.ttft_ms is not None),
        tpot_ms=Percentiles.of(o.tpot_ms for o in completed if o.tpot_ms is not None and o.output_tokens > 1),
        energy_kwh=energy_j / _JOULES_PER_KWH,
        joules_per_token=energy_j / tokens if tokens else None,
        zones=tuple(zones),
        pools=tuple(pools),
        shed_by_priority=shed,
        rejected_by_reason=dict(sorted(reasons.items())),
        requests_by_kind=dict(sorted(by_kind.items())),
        placement_reasons=dict(sorted(placement_reasons.items())),
        planner=dict(planner),
        prediction_ratio=prediction_ratio,
        timeseries=series,
        extra=dict(extra or {}),
    )


def _timeseries(
    meter: FleetMeter, endpoints: Sequence[EndpointInfo], outcomes: Sequence[RequestOutcome], end_s: float
) -> TimeSeries:
    samples = list(meter.samples)
    if samples[-1].t_s < end_s:
        samples.append(
            _Sample(
                end_s,
                meter.cost_rate.integral_to(end_s),
                meter.active.integral_to(end_s),
                tuple(meter.zones[z].integral_to(end_s) for z in meter.zone_names),
            )
        )
    edges = [s.t_s for s in samples]
    bins = len(samples) - 1
    cost_rate: list[float] = []
    active: list[float] = []
    zone_w: dict[str, list[float]] = {z: [] for z in meter.zone_names}
    fleet_w: list[float] = []
    for a, b in itertools.pairwise(samples):
        width = b.t_s - a.t_s
        cost_rate.append((b.cost_usd - a.cost_usd) / width * _SECONDS_PER_HOUR)
        active.append((b.active_endpoint_s - a.active_endpoint_s) / width)
        total = 0.0
        for k, z in enumerate(meter.zone_names):
            w = (b.zone_energy_j[k] - a.zone_energy_j[k]) / width
            zone_w[z].append(w)
            total += w
        fleet_w.append(total)
    kinds = sorted({e.accelerator_kind for e in endpoints})
    placements: dict[str, list[int]] = {k: [0] * bins for k in kinds}
    if bins:
        for o in outcomes:
            if o.outcome == REJECTED or not o.accelerator_kind:
                continue
            j = min(bins - 1, max(0, bisect.bisect_right(edges, o.arrival_s) - 1))
            placements[o.accelerator_kind][j] += 1
    return TimeSeries(
        bin_end_s=tuple(edges[1:]),
        cost_usd_per_hour=tuple(cost_rate),
        cumulative_usd=tuple(s.cost_usd for s in samples[1:]),
        fleet_power_w=tuple(fleet_w),
        zone_power_w={z: tuple(v) for z, v in zone_w.items()},
        active_endpoints=tuple(active),
        placements_by_kind={k: tuple(v) for k, v in placements.items()},
    )
