"""Prometheus metrics of the service, on a registry of its own (no module-level state).

Request-path counters and histograms are updated by the servicers (the Place path through
:class:`LabelCache`, which keeps the labelled children so a hot call does no label lookup). Fleet and
plan gauges are not kept up to date by anyone: :class:`FleetCollector` reads the latest published
snapshot and plan when Prometheus scrapes, so they can never drift from what the router decides on.

Names and labels (units in the names)::

    turnout_place_requests_total{model,outcome,accelerator}   Place decisions by outcome
    turnout_place_decision_seconds                            server-side decision time (histogram)
    turnout_request_cost_usd_per_mtok{model,accelerator}      predicted cost per 1e6 tokens (histogram)
    turnout_cost_usd_total{tenant,model,accelerator}          cost attributed on Complete
    turnout_tokens_total{tenant,model,accelerator,kind}       tokens on Complete, kind=input|output
    turnout_slo_violations_total{model,kind}                  Complete reports over SLO, kind=ttft|tpot
    turnout_plan_solve_seconds                                planner wall time (histogram)
    turnout_plan_solves_total{trigger,outcome}                planner runs: why, and the plan status
    turnout_replan_requests_total{reason}                     decisions asking for an early re-plan
    turnout_completions_total{model,outcome}                  Complete calls, outcome=success|failure|
                                                              already_completed
    turnout_leases_expired_total                              leases released without a Complete
    turnout_telemetry_accepted_total                          telemetry samples applied
    turnout_telemetry_rejected_total{field}                   samples refused, by the field at fault
    turnout_scrapes_total{outcome}                            endpoint metric scrapes
    turnout_rpc_invalid_argument_total{method}                INVALID_ARGUMENT answers
    turnout_build_info{version}                               1
    -- read from the snapshot / plan at scrape time --
    turnout_zone_power_watts{zone}, turnout_zone_power_cap_watts{zone}
    turnout_zone_ineligible_power_watts{zone}                 of that draw, endpoints that may not take work
    turnout_accelerator_utilization_ratio{kind,zone}          chip-weighted mean busy share
    turnout_endpoints{status}                                 endpoints per status
    turnout_snapshot_version
    turnout_leases                                            live leases (placed, not yet completed)
    turnout_plan_generation, turnout_plan_age_seconds, turnout_plan_cost_usd_per_hour,
    turnout_plan_status{status}, turnout_pool_desired_replicas{pool}
    turnout_plan_zone_power_watts{zone}                       the plan's predicted draw per zone
    turnout_plan_unserved_requests_per_second{model,priority} demand the plan leaves unserved
    turnout_plan_objective_usd_per_hour                       the plan's objective: cost plus penalties
    turnout_plan_lp_bound_usd_per_hour                        the LP relaxation's bound on that objective
    turnout_plan_lp_gap_ratio                                 objective above the bound, share of what
                                                              decisions change (the three: planner plans)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleet.types import EndpointState, EndpointStatus, FleetSnapshot
from policies.types import Plan, model_and_priority_of

PLAN_STATUSES = ("none", "optimal", "feasible", "timeout_kept_previous", "failed_kept_previous")
OTHER_LABEL = "_other"  # label value standing for names outside the fleet (bounded cardinality)
MAX_TENANT_LABELS = 1000  # distinct tenant label values; later tenants are counted under OTHER_LABEL

DECISION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
COST_BUCKETS_USD_PER_MTOK = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
SOLVE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class TurnoutMetrics:
    """Every metric the service exports, registered on ``self.registry``."""

    def __init__(self, *, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.place_requests = Counter(
            "turnout_place_requests",
            "Place decisions by outcome.",
            ["model", "outcome", "accelerator"],
            registry=r,
        )
        self.place_decision_seconds = Histogram(
            "turnout_place_decision_seconds",
            "Server-side Place decision time.",
            buckets=DECISION_BUCKETS_S,
            registry=r,
        )
        self.request_cost_usd_per_mtok = Histogram(
            "turnout_request_cost_usd_per_mtok",
            "Predicted cost of placed requests, US dollars per million tokens.",
            ["model", "accelerator"],
            buckets=COST_BUCKETS_USD_PER_MTOK,
            registry=r,
        )
        self.cost_usd = Counter(
            "turnout_cost_usd",
            "Cost attributed to tenants on Complete, US dollars.",
            ["tenant", "model", "accelerator"],
            registry=r,
        )
        self.tokens = Counter(
            "turnout_tokens",
            "Tokens reported on Complete.",
            ["tenant", "model", "accelerator", "kind"],
            registry=r,
        )
        self.slo_violations = Counter(
            "turnout_slo_violations",
            "Completed requests whose observed latency missed their SLO.",
            ["model", "kind"],
            registry=r,
        )
        self.plan_solve_seconds = Histogram(
            "turnout_plan_solve_seconds", "Planner solve wall time.", buckets=SOLVE_BUCKETS_S, registry=r
        )
        self.plan_solves = Counter(
            "turnout_plan_solves",
            "Planner runs by trigger (interval, replan, fleet_change, first_demand) and outcome (the "
            "plan status, no_demand when there was nothing to plan for, superseded, error).",
            ["trigger", "outcome"],
            registry=r,
        )
        self.replan_requests = Counter(
            "turnout_replan_requests",
            "Place decisions that asked for an early re-plan (reason: plan_spill or refused).",
            ["reason"],
            registry=r,
        )
        self.completions = Counter(
            "turnout_completions",
            "Complete calls by outcome (success, failure, already_completed).",
            ["model", "outcome"],
            registry=r,
        )
        self.leases_expired = Counter(
            "turnout_leases_expired", "Leases released because no Complete came in time.", registry=r
        )
        self.live_leases = Gauge("turnout_leases", "Live leases (placed, not yet completed).", registry=r)
        self.tenants = BoundedLabels(MAX_TENANT_LABELS)
        self.telemetry_accepted = Counter(
            "turnout_telemetry_accepted", "Telemetry samples applied to the fleet store.", registry=r
        )
        self.telemetry_rejected = Counter(
            "turnout_telemetry_rejected",
            "Telemetry samples refused, by the field at fault.",
            ["field"],
            registry=r,
        )
        self.scrapes = Counter(
            "turnout_scrapes", "Scrapes of endpoint metric pages.", ["outcome"], registry=r
        )
        self.rpc_invalid_argument = Counter(
            "turnout_rpc_invalid_argument",
            "RPCs answered INVALID_ARGUMENT, by method.",
            ["method"],
            registry=r,
        )
        self.build_info = Info("turnout_build", "Turnout build information.", registry=r)
        self.build_info.info({"version": version})
        self._fleet_collector: FleetCollector | None = None

    def attach_fleet(
        self,
        snapshot: Callable[[], FleetSnapshot],
        plan: Callable[[], Plan],
        clock: Callable[[], float],
        utilization_ratio: Callable[[EndpointState], float],
    ) -> None:
        """Exports fleet and plan gauges read from ``snapshot()`` and ``plan()`` at each scrape."""
        if self._fleet_collector is not None:
            raise RuntimeError("fleet gauges are already attached")
        self._fleet_collector = FleetCollector(snapshot, plan, clock, utilization_ratio)
        self.registry.register(self._fleet_collector)

    def attach_leases(self, count: Callable[[], int]) -> None:
        """Exports ``count()`` (live leases) as ``turnout_leases`` at each scrape."""
        self.live_leases.set_function(lambda: float(count()))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", Counter, Histogram)


class LabelCache(Generic[K, M]):
    """Labelled children of one metric, looked up once per key: ``cache[key]`` returns
    ``metric.labels(*labels_of(key))``, remembered. Keys must come from a bounded set."""

    __slots__ = ("_children", "_labels_of", "_metric")

    def __init__(self, metric: M, labels_of: Callable[[K], tuple[str, ...]]) -> None:
        self._metric: M = metric
        self._labels_of = labels_of
        self._children: dict[K, M] = {}

    def __getitem__(self, key: K) -> M:
        child = self._children.get(key)
        if child is None:
            child = self._metric.labels(*self._labels_of(key))
            self._children[key] = child
        return child


class BoundedLabels:
    """Client-chosen names (tenants) as label values: the first ``limit`` distinct names keep their own
    value, later ones share :data:`OTHER_LABEL`, so a client cannot grow the metric without bound."""

    __slots__ = ("_known", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._known:
            return name
        if len(self._known) < self._limit:
            self._known.add(name)
            return name
        return OTHER_LABEL


class FleetCollector(Collector):
    """Gauges computed from the latest snapshot and plan when the registry is collected."""

    def __init__(
        self,
        snapshot: Callable[[], FleetSnapshot],
        plan: Callable[[], Plan],
        clock: Callable[[], float],
        utilization_ratio: Callable[[EndpointState], float],
    ) -> None:
        self._snapshot = snapshot
        self._plan = plan
        self._clock = clock
        self._utilization_ratio = utilization_ratio

    def describe(self) -> list[Metric]:
        return []  # no fixed sample set; avoids collecting at registration time

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        plan = self._plan()

        power = GaugeMetricFamily(
            "turnout_zone_power_watts",
            "Accelerator power drawn per zone (reported or modelled), watts.",
            labels=["zone"],
        )
        cap = GaugeMetricFamily("turnout_zone_power_cap_watts", "Power cap per zone, watts.", labels=["zone"])
        held = GaugeMetricFamily(
            "turnout_zone_ineligible_power_watts",
            "Part of the zone's draw from endpoints that may not take work (stale, unhealthy, drained), "
            "taken off the cap the planner plans within, watts.",
            labels=["zone"],
        )
        for name in sorted(snap.zones):
            power.add_metric([name], snap.zone_power_w.get(name, 0.0))
            cap.add_metric([name], snap.zones[name].power_cap_w)
            held.add_metric([name], snap.zone_ineligible_power_w.get(name, 0.0))
        yield power
        yield cap
        yield held

        busy_chips: dict[tuple[str, str], float] = defaultdict(float)
        chips: dict[tuple[str, str], int] = defaultdict(int)
        counts = dict.fromkeys(EndpointStatus, 0)
        for state in snap.endpoints:
            key = (state.spec.accelerator_kind, state.spec.zone)
            chips[key] += state.spec.chips
            busy_chips[key] += state.spec.chips * self._utilization_ratio(state)
            counts[state.status] += 1
        util = GaugeMetricFamily(
            "turnout_accelerator_utilization_ratio",
            "Chip-weighted mean busy share of each accelerator kind per zone.",
            labels=["kind", "zone"],
        )
        for key in sorted(chips):
            util.add_metric(list(key), busy_chips[key] / chips[key] if chips[key] else 0.0)
        yield util
        endpoints = GaugeMetricFamily("turnout_endpoints", "Endpoints per status.", labels=["status"])
        for status in EndpointStatus:
            endpoints.add_metric([status.value], counts[status])
        yield endpoints
        yield GaugeMetricFamily(
            "turnout_snapshot_version", "Version of the latest published fleet snapshot.", value=snap.version
        )

        yield GaugeMetricFamily(
            "turnout_plan_generation", "Generation of the current plan; 0 when none.", value=plan.generation
        )
        yield _optional_gauge(
            "turnout_plan_age_seconds",
            "Seconds since the current plan was published.",
            max(0.0, self._clock() - plan.created_at_s) if plan.generation > 0 else None,
        )
        yield GaugeMetricFamily(
            "turnout_plan_cost_usd_per_hour",
            "Predicted fleet cost of the current plan, US dollars per hour.",
            value=plan.predicted_cost_usd_per_hour,
        )
        yield _optional_gauge(
            "turnout_plan_objective_usd_per_hour",
            "Objective of the current plan: its predicted cost plus the penalties for unserved demand and "
            "churn, US dollars per hour (absent for a plan the planner did not make).",
            plan.objective_usd_per_hour,
        )
        yield _optional_gauge(
            "turnout_plan_lp_bound_usd_per_hour",
            "The LP relaxation's optimum, a lower bound on the current plan's objective, US dollars per "
            "hour.",
            plan.lp_bound_usd_per_hour,
        )
        yield _optional_gauge(
            "turnout_plan_lp_gap_ratio",
            "How far the current plan's objective lies above the LP bound, as a share of the part of the "
            "objective that placement decisions can change.",
            plan.gap_to_lp_ratio,
        )
        plan_status = GaugeMetricFamily(
            "turnout_plan_status", "1 for the status of the current plan.", labels=["status"]
        )
        for s in sorted(set(PLAN_STATUSES) | {plan.status}):
            plan_status.add_metric([s], 1.0 if s == plan.status else 0.0)
        yield plan_status
        yield _labelled_gauge(
            "turnout_pool_desired_replicas",
            "Replicas the plan wants active per pool.",
            ["pool"],
            (((pool,), n) for pool, n in sorted(plan.desired_replicas.items())),
        )
        yield _labelled_gauge(
            "turnout_plan_zone_power_watts",
            "Power the current plan predicts per zone (with what endpoints that may not take work draw), "
            "watts.",
            ["zone"],
            (((zone,), watts) for zone, watts in sorted(plan.predicted_zone_power_w.items())),
        )
        yield _labelled_gauge(
            "turnout_plan_unserved_requests_per_second",
            "Demand the current plan leaves unserved (no SLO-feasible capacity within the power caps), "
            "requests per second.",
            ["model", "priority"],
            sorted(_unserved_by_model_priority(plan).items()),
        )


def _optional_gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """An unlabelled gauge with its one sample, or none when ``value`` is None."""
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


def _labelled_gauge(
    name: str, documentation: str, labels: list[str], samples: Iterable[tuple[tuple[str, ...], float]]
) -> GaugeMetricFamily:
    """A gauge family with one sample per (label values, value) of ``samples``."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _unserved_by_model_priority(plan: Plan) -> dict[tuple[str, str], float]:
    """The plan's unserved demand summed per (model, priority) of its classes: classes are many, models
    and priorities few."""
    out: dict[tuple[str, str], float] = {}
    for name, rate in plan.unserved_rate_per_s.items():
        key = model_and_priority_of(name) or (name, "unknown")  # a plan made elsewhere
        out[key] = out.get(key, 0.0) + rate
    return out
