"""The discrete-event simulation: a trace replayed through a placement policy onto a simulated fleet.

Time and events
---------------
Simulated time is seconds from the trace's first request, kept by a :class:`~sim.clock.SimClock` that
refuses to go backwards. The loop takes, in time order, either the next arrival of the trace or the next
event of the heap; at equal times heap events go first, in this rank order: endpoint wake-ups
(prefill or decode segment done: completions free memory before anything else looks), endpoints finishing
their provisioning, telemetry reports, time-series samples, planner runs; arrivals last.

* **Arrival.** The request becomes a :class:`~policies.types.PlacementRequest` (SLO from the fleet's
  configuration for its model and priority; expected output as configured: the true output length by
  default, i.e. a client that states its ``max_tokens`` accurately) and is given to the policy with the
  current snapshot. A refusal is recorded (an SLO miss). A placement is queued on the endpoint, which
  simulates it (:mod:`sim.endpoint`); a request that can never fit the endpoint is rejected there.
* **Telemetry** every ``telemetry_interval_s``: each endpoint reports its live load (running and waiting
  requests, KV use, mean power and busy share over the interval, mean observed latencies) and a new
  :class:`~fleet.types.FleetSnapshot` is published, the type the live router's store publishes. Between
  reports the policy sees the last snapshot plus its own reservations (as the live router does). A change
  of an endpoint's lifecycle (below) publishes a new snapshot at once, as a drain does in the live store.
* **Planner** (when the policy follows a plan or scaling is plan-driven): every ``planner_interval_s``
  from ``planner_first_run_s``, and early (at most every ``replan_min_interval_s``) when a placement asks
  for it (the "turnout" policy asks when it spills), the router's own
  :class:`~policies.planner.Planner` solves on a snapshot of the whole inventory (every endpoint shown
  eligible, so that it may turn endpoints on) and the demand estimated from the arrivals seen so far by
  the router's :class:`~policies.demand.DemandEstimator`. The plan goes to the policy.
* **Autoscaling** (``scaling="plan"``): endpoints in the plan's active set that are off start
  provisioning and become ACTIVE (eligible, costing money, drawing power) after ``provisioning_delay_s``;
  ACTIVE endpoints outside it are DRAINING: they take no new request, finish what they hold, and are
  switched off (stop costing) once empty; with ``make_before_break`` (default) an endpoint is drained only
  once the endpoints the plan turned on for its model have finished provisioning, so capacity is replaced
  before it is removed. Reserved endpoints stay on. A plan the planner could not
  improve (status ``*_kept_previous``) changes nothing. ``scaling="fixed"``: every endpoint is on for the
  whole run, and the planner is told so: every endpoint counts as reserved. Its price is paid whatever the
  plan says, so the plan spreads each class over all the replicas that serve it instead of packing the
  traffic onto the fewest and leaving the rest idle while bursts spill (a fixed fleet in production says
  ``reserved: true`` on its pools for the same reason).

The run ends when every arrived request has finished (or at ``horizon_s`` if given: requests still in the
system then are counted "running"). Conservation is checked at the end: every arrived request is
completed, rejected or running, and the endpoints hold exactly the running ones.

Determinism: no wall clock and no unseeded randomness is read; the result depends only on the trace, the
fleet, the policy and the configuration. (The planner's MIP is time-limited in wall-clock seconds; a
solve that hits ``planner_time_limit_s`` may differ between runs, so the limit should leave room.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from fleet.types import (
    DrainReason,
    DrainState,
    EndpointLoad,
    EndpointSpec,
    EndpointState,
    EndpointStatus,
    FleetSnapshot,
    LatencySlo,
    Priority,
    ServingProfile,
    ZoneSpec,
)
from policies.demand import ClassDemand, DemandEstimator, StaticDemand, classify
from policies.types import EMPTY_PLAN, PlacementRequest, Plan, TrafficClass
from sim.accounting import (
    COMPLETED,
    REJECTED,
    RUNNING,
    EndpointInfo,
    FleetMeter,
    PolicyResult,
    RequestOutcome,
    summarize,
)
from sim.clock import EventQueue, SimClock
from sim.endpoint import DEFAULT_SEGMENT_STEPS, Lifecycle, SimEndpoint, SimRequest
from sim.policy_adapter import Placement, SimPolicy
from sim.traces import Trace

if TYPE_CHECKING:
    from fleet.perf import PerformanceModel
    from fleet.types import PoolSpec
    from policies.planner import PlannerConfig
    from router.config import PlannerSettings, SloConfig, TurnoutConfig

__all__ = [
    "PlannerLike",
    "PolicyContractError",
    "SimConfig",
    "SimError",
    "SimFleet",
    "SimResult",
    "Simulation",
    "fleet_from_config",
    "fleet_from_pools",
    "load_fleet",
    "simulate",
]

SCALING_MODES = ("fixed", "plan")

DEFAULT_PROVISIONING_DELAY_S = 180.0
"""ESTIMATE, not a measurement: seconds from the plan turning an endpoint on to it serving. Launching an
EC2 accelerator instance and pulling a serving container take on the order of a minute each, and loading
weights of an 8B-70B model from local or S3 storage another minute or so; an endpoint on an instance that
is already running (a replica of a partly used instance) starts faster. Configure what your fleet sees."""

# Event kinds; their ranks order events at equal times.
_WAKE, _PROVISIONED, _TELEMETRY, _SAMPLE, _PLANNER = 0, 1, 2, 3, 4
_RANK = {_WAKE: 0, _PROVISIONED: 1, _TELEMETRY: 2, _SAMPLE: 3, _PLANNER: 4}

_NICE_BIN_S = (
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
)


class PlannerLike(Protocol):
    """What the engine needs of a planner: :meth:`policies.planner.Planner.solve`'s signature."""

    def solve(
        self,
        snapshot: FleetSnapshot,
        demand: Mapping[TrafficClass, ClassDemand],
        profiles: Callable[[EndpointSpec], ServingProfile],
        previous: Plan,
        now_s: float,
        time_limit_s: float,
        config: PlannerConfig | None = None,
    ) -> Plan: ...


class SimError(ValueError):
    """A simulation that cannot run as asked (a trace model no pool serves, a bad setting)."""


class PolicyContractError(AssertionError):
    """The policy broke the :class:`~sim.policy_adapter.SimPolicy` contract (e.g. placed a request on an
    endpoint that is not READY or does not serve the model)."""


# ---------------------------------------------------------------------------------------------------------
# The fleet and the settings
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimFleet:
    """The fleet to simulate: endpoints and zones (as ``fleet.inventory`` expands them), the serving
    profile of each endpoint, and the SLO of each (model, priority)."""

    endpoints: tuple[EndpointSpec, ...]
    zones: tuple[ZoneSpec, ...]
    serving: Callable[[EndpointSpec], ServingProfile]
    slo_for: Callable[[str, Priority], LatencySlo]
    source: str = ""
    planning: PlannerSettings | None = None  # the configuration's planner section, when loaded from one

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({e.model for e in self.endpoints}))


def fleet_from_config(config: TurnoutConfig) -> SimFleet:
    """The :class:`SimFleet` of a loaded configuration (``router.config``); ``ConfigError`` as
    :func:`router.config.build_fleet` raises it."""
    from router.config import build_fleet

    model = build_fleet(config)
    performance = model.performance

    def serving(spec: EndpointSpec) -> ServingProfile:
        return performance.profile(
            spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
        )

    slo: SloConfig = config.slo
    return SimFleet(
        endpoints=model.endpoints,
        zones=config.zones,
        serving=serving,
        slo_for=slo.slo_for,
        source=config.source,
        planning=config.planning,
    )


def fleet_from_pools(
    pools: Sequence[PoolSpec],
    zones: Sequence[ZoneSpec],
    *,
    performance: PerformanceModel | None = None,
    slo_for: Callable[[str, Priority], LatencySlo] | None = None,
    source: str = "",
) -> SimFleet:
    """A :class:`SimFleet` from pools and zones (``fleet.inventory.expand_pools`` rules and errors).

    ``performance`` defaults to the fitted model of the shipped catalog and registry
    (:func:`fleet.perf.default_performance_model`); ``slo_for`` to the configuration defaults
    (``router.config.SloConfig()``)."""
    from fleet.catalog import load_catalog
    from fleet.inventory import expand_pools
    from fleet.models import load_models
    from fleet.perf import default_performance_model

    if performance is None:
        performance = default_performance_model(load_catalog(), load_models())
    perf = performance
    endpoints = expand_pools(pools, zones, perf.catalog, perf.models, perf)
    if slo_for is None:
        from router.config import SloConfig

        slo_for = SloConfig().slo_for

    def serving(spec: EndpointSpec) -> ServingProfile:
        return perf.profile(
            spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
        )

    return SimFleet(endpoints=endpoints, zones=tuple(zones), serving=serving, slo_for=slo_for, source=source)


def load_fleet(path: str | Path | None = None) -> SimFleet:
    """The fleet of a configuration file (``None``: the embedded default fleet); ``router.config``'s
    ``ConfigError`` names the file, the path inside it and the rule on bad input."""
    from router.config import load_config

    return fleet_from_config(load_config(path))


@dataclass(frozen=True)
class SimConfig:
    """Settings of a simulated run (the module docstring says what each drives).

    - ``scaling``: "fixed" (every endpoint on throughout) or "plan" (plan-driven autoscaling).
    - ``planner_enabled``: run the planner for a policy that follows plans (false: it never gets one,
      as a service with ``planner.enabled: false``); plan scaling needs it.
    - ``initial_active``: with plan scaling, "all" endpoints on at the start or only the "reserved" ones.
    - ``make_before_break``: with plan scaling, endpoints of a model that the plan turns off keep serving
      until every endpoint the plan turned on for that model has finished provisioning (as a rolling
      update with no unavailability would); false drains them as soon as the plan leaves them out.
    - ``expected_output_tokens``: what a request tells the policy it will generate: ``None`` = its true
      output length (default), or a fixed number of tokens for every request.
    - ``max_output_tokens``: the request's ``max_output_tokens``: ``None`` = the larger of its true output
      and its expected output.
    - ``sample_interval_s``: width of the time-series bins; ``None`` chooses a round width giving about
      120 bins over the trace.
    - ``horizon_s``: stop there even if requests are still running (``None``: run until all finish).
    - Planner settings default to the service's (``router.config.PlannerSettings``; :meth:`from_planning`
      copies a loaded configuration's), except ``planner_time_limit_s``: a solve cut short by its
      wall-clock limit may differ between runs, so the simulator leaves it more room (10 s).
    - ``static_demand`` / ``static_demand_merge``: configured demand merged into the planner's estimate
      (:class:`policies.demand.DemandEstimator`).
    - ``demand_warmup``: the estimator corrects its start-up bias (``DemandEstimator(warmup=True)``,
      observing from t = 0): while the trace has run for less than a few half-lives the rate is the
      decay-weighted mean over the time observed. Without it the observed rate starts from nothing and
      reaches only about 29 % of the true rate at the first plan (30 s, half-life 60 s) and 50 % after one
      half-life, so the first plans size the fleet for a fraction of the traffic (and, with plan scaling,
      switch off endpoints the traffic needs, which take ``provisioning_delay_s`` to come back). The live
      router's planner loop does the same (``planner.demand.warmup``, on by default); :meth:`from_planning`
      copies the configuration's setting.
    """

    scaling: str = "fixed"
    initial_active: str = "all"
    telemetry_interval_s: float = 1.0
    provisioning_delay_s: float = DEFAULT_PROVISIONING_DELAY_S
    planner_enabled: bool = True
    planner_interval_s: float = 30.0
    planner_first_run_s: float | None = None  # None: planner_interval_s
    planner_time_limit_s: float = 10.0
    replan_min_interval_s: float = 5.0
    demand_half_life_s: float = 60.0
    demand_warmup: bool = True
    make_before_break: bool = True
    static_demand: tuple[StaticDemand, ...] = ()
    static_demand_merge: str = "max"
    planner: PlannerConfig | None = None  # None: PlannerConfig()
    max_batch: int | None = None  # None: each endpoint's max_batch_sequences (its pool's setting)
    segment_steps: int = DEFAULT_SEGMENT_STEPS
    expected_output_tokens: int | None = None
    max_output_tokens: int | None = None
    sample_interval_s: float | None = None
    horizon_s: float | None = None

    @classmethod
    def from_planning(cls, planning: PlannerSettings, **overrides: Any) -> SimConfig:
        """The settings of a configuration's ``planner:`` section (``TurnoutConfig.planning``): interval,
        early re-plan spacing, demand estimator and solver settings; ``overrides`` replace any field.
        The solve time limit is the larger of the configured one and this class's default."""
        fields: dict[str, Any] = {
            "planner_enabled": planning.enabled,
            "planner_interval_s": planning.interval_s,
            "planner_time_limit_s": max(planning.time_limit_s, cls.planner_time_limit_s),
            "replan_min_interval_s": planning.min_replan_interval_s,
            "demand_half_life_s": planning.demand_half_life_s,
            "static_demand": tuple(planning.static_demand),
            "static_demand_merge": planning.static_merge,
            "demand_warmup": planning.demand_warmup,
            "planner": planning.solver,
        }
        fields.update(overrides)
        return cls(**fields)

    def __post_init__(self) -> None:
        if self.scaling not in SCALING_MODES:
            raise SimError(f"scaling: must be one of {', '.join(SCALING_MODES)}, got {self.scaling!r}")
        if self.scaling == "plan" and not self.planner_enabled:
            raise SimError("scaling: plan-driven autoscaling needs the planner (planner_enabled is false)")
        if self.static_demand_merge not in ("max", "sum"):
            raise SimError(f"static_demand_merge: must be 'max' or 'sum', got {self.static_demand_merge!r}")
        if self.initial_active not in ("all", "reserved"):
            raise SimError(f"initial_active: must be 'all' or 'reserved', got {self.initial_active!r}")
        positive = (
            "telemetry_interval_s",
            "planner_interval_s",
            "planner_time_limit_s",
            "demand_half_life_s",
        )
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise SimError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("provisioning_delay_s", "replan_min_interval_s"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise SimError(f"{name}: must be a finite number >= 0, got {v!r}")
        for name in ("planner_first_run_s", "sample_interval_s", "horizon_s"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise SimError(f"{name}: must be null or a finite number >= 0, got {v!r}")
        if self.sample_interval_s is not None and self.sample_interval_s <= 0:
            raise SimError(f"sample_interval_s: must be > 0, got {self.sample_interval_s!r}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1
        ):
            raise SimError(f"max_batch: must be null or an integer >= 1, got {self.max_batch!r}")
        steps = self.segment_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise SimError(f"segment_steps: must be an integer >= 1, got {self.segment_steps!r}")
        for name in ("expected_output_tokens", "max_output_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SimError(f"{name}: must be null or an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class SimResult:
    """A finished run: the summary (what reports show), every request's outcome, and run statistics.

    ``wall_seconds`` and ``planner_solve_seconds`` are wall-clock figures and vary between runs; nothing
    else does."""

    policy: str
    trace: Trace
    fleet_source: str
    config: SimConfig
    summary: PolicyResult
    outcomes: tuple[RequestOutcome, ...]
    end_s: float
    events: int
    snapshots: int
    wall_seconds: float
    planner_solve_seconds: float


# ---------------------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------------------

ProgressFn = Callable[[int, int, float], None]
"""``progress(arrivals_done, arrivals_total, simulated_s)``, called now and then during a run."""


class Simulation:
    """One run of ``policy`` on ``fleet`` over ``trace`` (module docstring). Call :meth:`run` once."""

    def __init__(
        self,
        trace: Trace,
        fleet: SimFleet,
        policy: SimPolicy,
        config: SimConfig | None = None,
        *,
        progress: ProgressFn | None = None,
        planner: PlannerLike | None = None,
    ) -> None:
        self.trace = trace
        self.fleet = fleet
        self.policy = policy
        self.config = config if config is not None else SimConfig()
        self._progress = progress
        self._given_planner = planner
        if not fleet.endpoints:
            raise SimError("fleet: has no endpoint")
        served = set(fleet.models)
        missing = sorted({r.model for r in trace.requests} - served)
        if missing:
            raise SimError(
                f"trace {trace.name}: model {', '.join(missing)} is served by no pool of the fleet "
                f"(fleet serves {', '.join(sorted(served))}); assign the trace's requests a served model"
            )
        zone_names = {z.name for z in fleet.zones}
        for spec in fleet.endpoints:
            if spec.zone not in zone_names:
                raise SimError(f"endpoint {spec.endpoint_id}: unknown zone {spec.zone!r}")
        self._ran = False

    # --- setup ----------------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        fleet = self.fleet
        self.clock = SimClock(0.0)
        self.events = EventQueue()
        self.meter = FleetMeter(0.0, {z.name: z.power_cap_w for z in fleet.zones})
        specs = sorted(fleet.endpoints, key=lambda s: s.endpoint_id)
        self.endpoints: list[SimEndpoint] = []
        self.infos: list[EndpointInfo] = []
        for i, spec in enumerate(specs):
            profile = fleet.serving(spec)
            meter = self.meter.add_endpoint(
                spec.endpoint_id,
                spec.zone,
                spec.price_usd_per_hour,
                float(profile.power_w(0.0)),
                float(profile.power_w(1.0)),
            )
            try:
                endpoint = SimEndpoint(
                    i,
                    spec,
                    profile,
                    meter,
                    max_batch=spec.max_batch_sequences if cfg.max_batch is None else cfg.max_batch,
                    max_batched_tokens=spec.max_batched_tokens,
                    segment_steps=cfg.segment_steps,
                )
            except ValueError as exc:  # an override that does not suit this endpoint's pool settings
                raise SimError(f"endpoint {spec.endpoint_id}: {exc}") from exc
            self.endpoints.append(endpoint)
            self.infos.append(
                EndpointInfo(
                    spec.endpoint_id, spec.pool, spec.zone, spec.accelerator_kind, spec.instance_type
                )
            )
        self.by_id = {ep.endpoint_id: ep for ep in self.endpoints}
        self.zone_specs: Mapping[str, ZoneSpec] = MappingProxyType({z.name: z for z in fleet.zones})
        self.model_members: dict[str, list[int]] = {}
        for ep in self.endpoints:
            self.model_members.setdefault(ep.spec.model, []).append(ep.index)
        self.zone_members: dict[str, list[int]] = {z: [] for z in self.zone_specs}
        for ep in self.endpoints:
            self.zone_members[ep.spec.zone].append(ep.index)

        # Lifecycle at t = 0.
        for ep in self.endpoints:
            on = cfg.scaling == "fixed" or cfg.initial_active == "all" or ep.spec.reserved
            if on:
                ep.lifecycle = Lifecycle.ACTIVE
                ep.meter.switch_on(0.0)

        # Telemetry state: the last reported load and state of each endpoint.
        self.loads: list[EndpointLoad] = [ep.load(0.0, None) for ep in self.endpoints]
        self.states: list[EndpointState | None] = [None] * len(self.endpoints)
        self.by_model_tuples: dict[str, tuple[EndpointState, ...]] = {}
        self.snapshot_version = 0
        self.snapshot = self._publish(0.0)

        # Planner and demand.
        self.plan: Plan = EMPTY_PLAN
        self.plans_run = 0
        self.plans_early = 0
        self.plan_statuses: dict[str, int] = {}
        self.planner_solve_s = 0.0
        self.last_plan_s = -math.inf
        self.early_plan_pending = False
        self.planner_token = 0
        self.replans_requested = 0
        self.plan_history: list[dict[str, Any]] = []
        self.target_active: frozenset[str] = frozenset(
            ep.endpoint_id for ep in self.endpoints if ep.spec.reserved
        )
        self.needs_planner = cfg.planner_enabled and (cfg.scaling == "plan" or self.policy.uses_plan)
        self.estimator = (
            DemandEstimator(
                cfg.demand_half_life_s,
                static=cfg.static_demand,
                static_merge="sum" if cfg.static_demand_merge == "sum" else "max",
                warmup=cfg.demand_warmup,
                observing_since_s=0.0,
            )
            if self.needs_planner
            else None
        )
        self.buckets = self.policy.buckets
        self._planner: PlannerLike | None = None
        self._planner_config: PlannerConfig | None = None
        if self.needs_planner:
            from policies.planner import Planner, PlannerConfig

            self._planner = self._given_planner if self._given_planner is not None else Planner()
            self._planner_config = cfg.planner if cfg.planner is not None else PlannerConfig()
            first = cfg.planner_first_run_s if cfg.planner_first_run_s is not None else cfg.planner_interval_s
            self._push_planner(first, early=False)

        # Periodic events.
        self.events.push(cfg.telemetry_interval_s, _TELEMETRY, rank=_RANK[_TELEMETRY])
        self.sample_interval_s = cfg.sample_interval_s or _auto_bin(self.trace.span_s)
        self.events.push(self.sample_interval_s, _SAMPLE, rank=_RANK[_SAMPLE])

        self.slo_cache: dict[tuple[str, Priority], LatencySlo] = {}
        self.sim_requests: list[SimRequest] = []
        self.outcome_kind: list[str] = []  # per arrived request: completed / rejected / running
        self.reject_reason: dict[int, str] = {}
        self.in_system = 0
        self.event_count = 0
        self.snapshot_count = 1

    # --- snapshots ------------------------------------------------------------------------------------

    def _publish(self, now_s: float) -> FleetSnapshot:
        """A new snapshot from the last reported loads and the current lifecycles."""
        states = self.states
        loads = self.loads
        for ep in self.endpoints:
            i = ep.index
            load = loads[i]
            active = ep.lifecycle is Lifecycle.ACTIVE
            old = states[i]
            if old is not None and old.load is load and (old.status is EndpointStatus.READY) == active:
                continue
            if active:
                states[i] = EndpointState(spec=ep.spec, load=load, status=EndpointStatus.READY)
            else:
                states[i] = EndpointState(
                    spec=ep.spec,
                    load=load,
                    status=EndpointStatus.DRAINED,
                    drain=DrainState(DrainReason.MAINTENANCE, since_s=ep.lifecycle_since_s),
                )
        return self._snapshot_of([s for s in states if s is not None], now_s, cache=True)

    def _snapshot_of(self, states: Sequence[EndpointState], now_s: float, *, cache: bool) -> FleetSnapshot:
        by_id = {s.spec.endpoint_id: s for s in states}
        by_model: dict[str, tuple[EndpointState, ...]] = {}
        for model, members in self.model_members.items():
            fresh = tuple(states[i] for i in members)
            if cache:
                old = self.by_model_tuples.get(model)
                if (
                    old is not None
                    and len(old) == len(fresh)
                    and all(a is b for a, b in zip(old, fresh, strict=True))
                ):
                    fresh = old
                else:
                    self.by_model_tuples[model] = fresh
            by_model[model] = fresh
        zone_power: dict[str, float] = {}
        for zone, members in self.zone_members.items():
            zone_power[zone] = math.fsum(states[i].load.power_w or 0.0 for i in members)
        self.snapshot_version += 1
        return FleetSnapshot(
            version=self.snapshot_version,
            taken_at_s=now_s,
            endpoints=tuple(states),
            by_id=MappingProxyType(by_id),
            by_model=MappingProxyType(by_model),
            zones=self.zone_specs,
            zone_power_w=MappingProxyType(zone_power),
        )

    def _planner_snapshot(self, now_s: float) -> FleetSnapshot:
        """Every endpoint eligible (the planner may turn any on), with its last reported load. With fixed
        scaling every endpoint is reserved: it is on and paid for whatever the plan says."""
        fixed = self.config.scaling == "fixed"
        states = [
            EndpointState(
                spec=replace(ep.spec, reserved=True) if fixed and not ep.spec.reserved else ep.spec,
                load=self.loads[ep.index],
                status=EndpointStatus.READY,
            )
            for ep in self.endpoints
        ]
        return self._snapshot_of(states, now_s, cache=False)

    # --- events ---------------------------------------------------------------------------------------

    def _push_wake(self, ep: SimEndpoint) -> None:
        if ep.wake_s != math.inf:
            self.events.push(ep.wake_s, _WAKE, rank=0, key=ep.index, token=ep.token)

    def _push_planner(self, at_s: float, *, early: bool) -> None:
        self.planner_token += 1
        self.events.push(
            at_s, _PLANNER, rank=_RANK[_PLANNER], key=1 if early else 0, token=self.planner_token
        )

    def _telemetry(self, now_s: float) -> None:
        loads = self.loads
        for ep in self.endpoints:
            loads[ep.index] = ep.load(now_s, loads[ep.index])
        self.snapshot = self._publish(now_s)
        self.snapshot_count += 1

    def _run_planner(self, now_s: float, early: bool) -> None:
        assert self.estimator is not None and self._planner is not None
        fleet = self.fleet

        def slo_of(c: TrafficClass) -> LatencySlo:
            return fleet.slo_for(c.model, c.priority)

        demand = self.estimator.demand(now_s, slo_of)
        t0 = time.perf_counter()
        plan: Plan = self._planner.solve(
            self._planner_snapshot(now_s),
            demand,
            fleet.serving,
            self.plan,
            now_s,
            self.config.planner_time_limit_s,
            self._planner_config,
        )
        self.planner_solve_s += time.perf_counter() - t0
        self.plans_run += 1
        if early:
            self.plans_early += 1
        self.plan_statuses[plan.status] = self.plan_statuses.get(plan.status, 0) + 1
        self.last_plan_s = now_s
        self.plan = plan
        self.plan_history.append(
            {
                "t_s": now_s,
                "generation": plan.generation,
                "status": plan.status,
                "active_endpoints": len(plan.active_endpoint_ids),
                "predicted_usd_per_hour": plan.predicted_cost_usd_per_hour,
                "demand_rate_per_s": math.fsum(d.rate_per_s for d in demand.values()),
            }
        )
        self.policy.set_plan(plan)
        if self.config.scaling == "plan" and plan.status in ("optimal", "feasible"):
            self._apply_active_set(plan.active_endpoint_ids, now_s)

    def _apply_active_set(self, active: frozenset[str], now_s: float) -> None:
        self.target_active = active
        changed = False
        # With make-before-break, a model whose planned endpoints are still provisioning keeps the ones it
        # has: nothing of it is drained until every endpoint the plan turned on for it serves.
        waiting: set[str] = set()
        if self.config.make_before_break:
            for ep in self.endpoints:
                want = ep.endpoint_id in active or ep.spec.reserved
                if want and ep.lifecycle in (Lifecycle.OFF, Lifecycle.PROVISIONING):
                    waiting.add(ep.spec.model)
        for ep in self.endpoints:
            want = ep.endpoint_id in active or ep.spec.reserved
            state = ep.lifecycle
            if want:
                if state is Lifecycle.OFF:
                    self._set_lifecycle(ep, Lifecycle.PROVISIONING, now_s)
                    self.events.push(
                        now_s + self.config.provisioning_delay_s,
                        _PROVISIONED,
                        rank=_RANK[_PROVISIONED],
                        key=ep.index,
                        token=ep.lifecycle_token,
                    )
                    changed = True
                elif state is Lifecycle.DRAINING:
                    self._set_lifecycle(ep, Lifecycle.ACTIVE, now_s)
                    changed = True
            else:
                if state is Lifecycle.ACTIVE and ep.spec.model not in waiting:
                    self._set_lifecycle(ep, Lifecycle.DRAINING, now_s)
                    if ep.empty:
                        self._switch_off(ep, now_s)
                    changed = True
                elif state is Lifecycle.PROVISIONING:
                    self._set_lifecycle(ep, Lifecycle.OFF, now_s)
                    changed = True
        if changed:
            self.snapshot = self._publish(now_s)
            self.snapshot_count += 1

    def _set_lifecycle(self, ep: SimEndpoint, state: Lifecycle, now_s: float) -> None:
        ep.lifecycle = state
        ep.lifecycle_since_s = now_s
        ep.lifecycle_token += 1

    def _switch_off(self, ep: SimEndpoint, now_s: float) -> None:
        self._set_lifecycle(ep, Lifecycle.OFF, now_s)
        ep.meter.switch_off(now_s)

    def _provisioned(self, ep: SimEndpoint, token: int, now_s: float) -> None:
        if token != ep.lifecycle_token or ep.lifecycle is not Lifecycle.PROVISIONING:
            return
        self._set_lifecycle(ep, Lifecycle.ACTIVE, now_s)
        ep.meter.switch_on(now_s)
        ep.window_start_s = now_s
        ep.window_busy_s = ep.meter.busy_seconds(now_s)
        self.snapshot = self._publish(now_s)
        self.snapshot_count += 1
        if self.config.make_before_break:
            self._apply_active_set(self.target_active, now_s)  # drains what this endpoint replaces

    # --- requests -------------------------------------------------------------------------------------

    def _slo(self, model: str, priority: Priority) -> LatencySlo:
        key = (model, priority)
        slo = self.slo_cache.get(key)
        if slo is None:
            slo = self.fleet.slo_for(model, priority)
            self.slo_cache[key] = slo
        return slo

    def _arrive(self, index: int, now_s: float) -> None:
        tr = self.trace.requests[index]
        cfg = self.config
        req = SimRequest(index, now_s, tr.input_tokens, tr.output_tokens)
        self.sim_requests.append(req)
        expected = cfg.expected_output_tokens if cfg.expected_output_tokens is not None else tr.output_tokens
        max_output = (
            cfg.max_output_tokens if cfg.max_output_tokens is not None else max(tr.output_tokens, expected)
        )
        placement_request = PlacementRequest(
            request_id=req.request_id,
            model=tr.model,
            tenant=tr.tenant,
            priority=tr.priority,
            input_tokens=tr.input_tokens,
            max_output_tokens=max_output,
            expected_output_tokens=expected,
            slo=self._slo(tr.model, tr.priority),
        )
        if self.estimator is not None:
            cls = classify(tr.model, tr.input_tokens, expected, tr.priority, self.buckets)
            self.estimator.observe(cls, now_s, input_tokens=tr.input_tokens, output_tokens=expected)
        decision = self.policy.place(placement_request, self.snapshot, now_s)
        if decision.replan_requested:
            self._request_replan(now_s)
        if not isinstance(decision, Placement):
            req.reason = decision.reason
            self.outcome_kind.append(REJECTED)
            return
        ep = self.by_id.get(decision.endpoint_id)
        if ep is None or ep.spec.model != tr.model:
            raise PolicyContractError(
                f"policy {self.policy.name} placed {req.request_id} ({tr.model}) on "
                f"{decision.endpoint_id!r}, which is not an endpoint serving {tr.model}"
            )
        if ep.lifecycle is not Lifecycle.ACTIVE:
            raise PolicyContractError(
                f"policy {self.policy.name} placed {req.request_id} on {ep.endpoint_id}, which is "
                f"{ep.lifecycle.value} (not READY in the snapshot)"
            )
        req.reason = decision.reason
        req.predicted_ttft_ms = decision.predicted_ttft_ms
        req.predicted_tpot_ms = decision.predicted_tpot_ms
        why = ep.never_fits(req)
        if why is not None:
            req.endpoint = ep.index
            req.reason = f"endpoint_{why}"
            self.outcome_kind.append(REJECTED)
            self.policy.complete(req.request_id, now_s, ttft_ms=None, tpot_ms=None)
            return
        self.outcome_kind.append(RUNNING)
        self.in_system += 1
        if ep.offer(req, now_s):
            self._push_wake(ep)

    def _request_replan(self, now_s: float) -> None:
        if not self.needs_planner:
            return
        self.replans_requested += 1
        if self.early_plan_pending:
            return
        at = max(now_s, self.last_plan_s + self.config.replan_min_interval_s)
        self.early_plan_pending = True
        # An early run replaces the pending periodic one (which the early run re-schedules).
        self._push_planner(at, early=True)

    def _finish(self, done: list[SimRequest], now_s: float) -> None:
        complete = self.policy.complete
        kinds = self.outcome_kind
        for req in done:
            kinds[req.index] = COMPLETED
            self.in_system -= 1
            complete(req.request_id, now_s, ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms)

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> SimResult:
        if self._ran:
            raise SimError("a Simulation runs once; build a new one")
        self._ran = True
        wall0 = time.perf_counter()
        self._setup()
        cfg = self.config
        clock = self.clock
        events = self.events
        arrivals = self.trace.requests
        n = len(arrivals)
        horizon = cfg.horizon_s if cfg.horizon_s is not None else math.inf
        endpoints = self.endpoints
        progress = self._progress
        progress_every = max(1, n // 200)
        done: list[SimRequest] = []
        i = 0
        stopped_at_horizon = False
        while True:
            t_arrival = arrivals[i].arrival_s if i < n else math.inf
            t_event = events.peek_time_s()
            if t_event <= t_arrival and t_event != math.inf:
                if t_event > horizon:
                    stopped_at_horizon = True
                    break
                ev = events.pop()
                now = clock.advance(ev.time_s)
                self.event_count += 1
                kind = ev.kind
                if kind == _WAKE:
                    ep = endpoints[ev.key]
                    if ev.token != ep.token:
                        continue  # superseded
                    ep.wake(now, done)
                    self._push_wake(ep)
                    if done:
                        self._finish(done, now)
                        done.clear()
                    if ep.lifecycle is Lifecycle.DRAINING and ep.empty:
                        self._switch_off(ep, now)
                        self.snapshot = self._publish(now)
                        self.snapshot_count += 1
                elif kind == _TELEMETRY:
                    self._telemetry(now)
                    events.push(now + cfg.telemetry_interval_s, _TELEMETRY, rank=_RANK[_TELEMETRY])
                elif kind == _SAMPLE:
                    self.meter.sample(now)
                    events.push(now + self.sample_interval_s, _SAMPLE, rank=_RANK[_SAMPLE])
                elif kind == _PLANNER:
                    if ev.token != self.planner_token:
                        continue
                    early = ev.key == 1
                    self.early_plan_pending = False
                    self._run_planner(now, early)
                    self._push_planner(now + cfg.planner_interval_s, early=False)
                elif kind == _PROVISIONED:
                    self._provisioned(endpoints[ev.key], ev.token, now)
            elif i < n:
                if t_arrival > horizon:
                    stopped_at_horizon = True
                    break
                now = clock.advance(t_arrival)
                self._arrive(i, now)
                i += 1
                if progress is not None and (i % progress_every == 0 or i == n):
                    progress(i, n, now)
            else:
                break
            if i >= n and self.in_system == 0:
                break

        end_s = horizon if stopped_at_horizon else clock.now_s
        if stopped_at_horizon:
            clock.advance(end_s)
        return self._result(end_s, time.perf_counter() - wall0)

    # --- the result -----------------------------------------------------------------------------------

    def _result(self, end_s: float, wall_s: float) -> SimResult:
        outcomes = self._outcomes()
        self._check_conservation(outcomes)
        self.meter.sample(end_s)
        cfg = self.config
        summary = summarize(
            policy=self.policy.name,
            scaling=cfg.scaling,
            end_s=end_s,
            meter=self.meter,
            endpoints=self.infos,
            outcomes=outcomes,
            planner={
                "runs": self.plans_run,
                "early_runs": self.plans_early,
                "replans_requested": self.replans_requested,
                "statuses": dict(sorted(self.plan_statuses.items())),
                "history": list(self.plan_history),
            },
            extra={"events": self.event_count, "snapshots": self.snapshot_count},
        )
        return SimResult(
            policy=self.policy.name,
            trace=self.trace,
            fleet_source=self.fleet.source,
            config=cfg,
            summary=summary,
            outcomes=outcomes,
            end_s=end_s,
            events=self.event_count,
            snapshots=self.snapshot_count,
            wall_seconds=wall_s,
            planner_solve_seconds=self.planner_solve_s,
        )

    def _outcomes(self) -> tuple[RequestOutcome, ...]:
        out: list[RequestOutcome] = []
        trace = self.trace.requests
        for req, kind in zip(self.sim_requests, self.outcome_kind, strict=True):
            tr = trace[req.index]
            slo = self._slo(tr.model, tr.priority)
            spec = self.endpoints[req.endpoint].spec if req.endpoint >= 0 else None
            completed = kind == COMPLETED
            out.append(
                RequestOutcome(
                    index=req.index,
                    arrival_s=req.arrival_s,
                    model=tr.model,
                    priority=tr.priority,
                    tenant=tr.tenant,
                    input_tokens=tr.input_tokens,
                    output_tokens=tr.output_tokens,
                    outcome=kind,
                    endpoint_id=spec.endpoint_id if spec is not None else "",
                    accelerator_kind=spec.accelerator_kind if spec is not None else "",
                    pool=spec.pool if spec is not None else "",
                    reason=req.reason,
                    ttft_ms=req.ttft_ms if completed else None,
                    tpot_ms=req.tpot_ms if completed else None,
                    completed_s=req.done_s if completed else None,
                    slo_ttft_ms=slo.ttft_ms,
                    slo_tpot_ms=slo.tpot_ms,
                    predicted_ttft_ms=req.predicted_ttft_ms,
                    predicted_tpot_ms=req.predicted_tpot_ms,
                )
            )
        return tuple(out)

    def _check_conservation(self, outcomes: Sequence[RequestOutcome]) -> None:
        """Every arrived request is completed, rejected or running; the endpoints hold the running ones."""
        running = sum(1 for o in outcomes if o.outcome == RUNNING)
        held = sum(ep.in_system() for ep in self.endpoints)
        counted = sum(1 for o in outcomes if o.outcome in (COMPLETED, REJECTED, RUNNING))
        if counted != len(outcomes) or running != held or running != self.in_system:
            raise AssertionError(
                f"conservation broken: {len(outcomes)} arrived, {counted} accounted for, {running} running "
                f"by the records, {held} held by endpoints, {self.in_system} in the system"
            )


def simulate(
    trace: Trace,
    fleet: SimFleet,
    policy: SimPolicy,
    config: SimConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    planner: PlannerLike | None = None,
) -> SimResult:
    """Runs ``policy`` on ``fleet`` over ``trace`` (see :class:`Simulation`). ``planner`` defaults to the
    router's :class:`policies.planner.Planner`; anything with its ``solve`` signature will do."""
    return Simulation(trace, fleet, policy, config, progress=progress, planner=planner).run()


def _auto_bin(span_s: float) -> float:
    """A round bin width giving about 120 bins over ``span_s`` (at least 0.1 s)."""
    target = span_s / 120.0 if span_s > 0 else 1.0
    for width in _NICE_BIN_S:
        if width >= target:
            return width
    return _NICE_BIN_S[-1]
