"""The planner loop: when the global plan is re-solved, on what, and how it is published.

:class:`PlannerLoop` belongs to the application (started and stopped with it, as a background task of
the HTTP side). It keeps the demand estimate (:class:`policies.demand.DemandEstimator`), fed by every
``Place`` decision with the traffic class the policy computed (so with the policy's own bucket bounds),
and runs :meth:`policies.planner.Planner.solve_with_report` in a dedicated worker thread so the event
loop never waits for a solve.

When it solves
--------------
The loop checks the injected clock every ``tick_s`` seconds of real time, and at once when a decision
asks for a re-plan. It solves

* ``interval``: ``interval_s`` after the previous run (the first run at start);
* early, at most every ``min_replan_interval_s`` (clock seconds since the previous run):

  - ``replan``: a decision spilled off the plan or was refused (``replan_requested``);
  - ``first_demand``: there is no plan yet and traffic has been seen since the previous run;
  - ``fleet_change``: more than ``fleet_change_ratio`` of the endpoints changed eligibility (drained,
    turned stale or unhealthy, or came back) since the snapshot of the previous run.

What it publishes
-----------------
Each run takes one snapshot, the current plan (the previous solution, also the solver's hint) and the
demand at the clock's time. With no demand at all (no traffic within the estimator's memory and no static
demand) it does not solve: a plan for zero demand would switch off every endpoint that is not reserved,
and tell an autoscaler to do the same. Otherwise the solve's plan is published with
:func:`publish` (the application's ``publish_plan``): a new generation when the solver found an
acceptable plan; on a timeout or a failure the planner hands back the previous plan's content with status
``timeout_kept_previous`` / ``failed_kept_previous``, and publishing it keeps routing on that plan while
``turnout_plan_status`` says what happened. ``turnout_plan_solves_total{trigger,outcome}`` and
``turnout_plan_solve_seconds`` count every run.

Contracts: :meth:`observe` and :meth:`request_replan` are O(1) and called from the event loop only (the
estimator is not thread-safe). The worker thread reads immutable values only (snapshot, demand, previous
plan) and the serving profiles (pure, cached thread-safely by :class:`fleet.perf.PerformanceModel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from fleet.perf import PerformanceModel
from fleet.types import EndpointSpec, FleetSnapshot, LatencySlo, Priority, ServingProfile
from policies.decision import ServingLookup
from policies.demand import DemandEstimator
from policies.planner import STATUS_FAILED, Planner, PlanReport
from policies.types import Plan, TrafficClass
from router.config import PlannerSettings
from router.metrics import TurnoutMetrics

log = logging.getLogger(__name__)

__all__ = ["PlannerLoop", "serving_profiles"]

TRIGGERS = ("interval", "replan", "first_demand", "fleet_change")


def serving_profiles(performance: PerformanceModel) -> ServingLookup:
    """The serving profile of an endpoint: its class (model, instance type, TP degree, precision) at the
    context it must hold. Used by the per-request policy and by the planner alike."""

    def lookup(spec: EndpointSpec) -> ServingProfile:
        return performance.profile(
            spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
        )

    return lookup


def _eligible_ids(snapshot: FleetSnapshot) -> frozenset[str]:
    return frozenset(s.endpoint_id for s in snapshot.endpoints if s.eligible)


class PlannerLoop:
    """Re-solves and publishes the global plan (module docstring).

    ``snapshot()`` and ``plan()`` give the latest fleet snapshot and the current plan; ``publish(plan)``
    makes a plan current (raises ``ValueError`` if it does not follow the current one); ``clock()`` gives
    unix seconds; ``slo_for(model, priority)`` the configured SLO a class is planned for.
    """

    def __init__(
        self,
        settings: PlannerSettings,
        *,
        snapshot: Callable[[], FleetSnapshot],
        plan: Callable[[], Plan],
        publish: Callable[[Plan], None],
        profiles: ServingLookup,
        slo_for: Callable[[str, Priority], LatencySlo],
        clock: Callable[[], float],
        metrics: TurnoutMetrics,
        tick_s: float = 1.0,
        planner: Planner | None = None,
    ) -> None:
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ValueError(f"tick_s: must be a finite number > 0, got {tick_s!r}")
        self.settings = settings
        self._snapshot = snapshot
        self._plan = plan
        self._publish = publish
        self._profiles = profiles
        self._slo_for = slo_for
        self._clock = clock
        self._metrics = metrics
        self._tick_s = tick_s
        self._planner = planner if planner is not None else Planner()
        self._demand = DemandEstimator(
            settings.demand_half_life_s,
            static=settings.static_demand,
            static_merge="sum" if settings.static_merge == "sum" else "max",
            warmup=settings.demand_warmup,
        )
        self._wake = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._next_due_s = -math.inf  # the first check runs at once
        self._last_run_s = -math.inf
        self._replan_wanted = False
        self._observed_since_run = False
        self._eligible_at_run: frozenset[str] | None = None
        self._checked_version = -1
        self._fleet_changed = False
        self.last_report: PlanReport | None = None

    # --- the decision path (event loop, O(1))

    def observe(
        self, traffic_class: TrafficClass, now_s: float, input_tokens: int, output_tokens: int
    ) -> None:
        """Counts one request of ``traffic_class`` arriving at ``now_s`` in the demand estimate."""
        self._demand.observe(traffic_class, now_s, input_tokens=input_tokens, output_tokens=output_tokens)
        self._observed_since_run = True

    def request_replan(self) -> None:
        """Asks for an early re-plan (run as soon as the rate limit allows)."""
        self._replan_wanted = True
        self._wake.set()

    # --- scheduling

    def trigger(self, now_s: float) -> str | None:
        """Why the loop should solve at ``now_s``, or ``None`` (module docstring, "When it solves")."""
        if now_s >= self._next_due_s:
            return "interval"
        if now_s - self._last_run_s < self.settings.min_replan_interval_s:
            return None
        if self._replan_wanted:
            return "replan"
        if self._observed_since_run and self._plan().generation == 0:
            return "first_demand"
        if self._fleet_change():
            return "fleet_change"
        return None

    def _fleet_change(self) -> bool:
        """Whether more than ``fleet_change_ratio`` of the endpoints changed eligibility since the last
        run's snapshot (looked at once per snapshot version)."""
        snap = self._snapshot()
        if snap.version != self._checked_version:
            self._checked_version = snap.version
            if self._eligible_at_run is not None and snap.endpoints:
                changed = len(_eligible_ids(snap) ^ self._eligible_at_run)
                self._fleet_changed = changed / len(snap.endpoints) > self.settings.fleet_change_ratio
        return self._fleet_changed

    async def run(self) -> None:
        """Runs until cancelled: checks :meth:`trigger` every ``tick_s`` and when woken, and solves."""
        while True:
            trigger = self.trigger(self._clock())
            if trigger is not None:
                try:
                    await self.run_once(trigger)
                except Exception:  # never let one bad run stop re-planning for good
                    log.exception("planner: run failed", extra={"fields": {"trigger": trigger}})
                    self._metrics.plan_solves.labels(trigger, "error").inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)
            self._wake.clear()

    async def close(self) -> None:
        """Lets go of the worker thread (a solve in progress ends at its time limit, unobserved)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- one run

    async def run_once(self, trigger: str) -> Plan | None:
        """Solves once on the current snapshot and demand and publishes the outcome; returns the plan
        published (``None`` if nothing was: no demand, or the plan was superseded meanwhile)."""
        now_s = self._clock()
        self._last_run_s = now_s
        self._next_due_s = now_s + self.settings.interval_s
        self._replan_wanted = False
        self._observed_since_run = False
        demand = self._demand.demand(now_s, self._class_slo)
        if not demand:
            self._metrics.plan_solves.labels(trigger, "no_demand").inc()
            log.debug("planner: no demand to plan for", extra={"fields": {"trigger": trigger}})
            return None
        snapshot = self._snapshot()
        self._eligible_at_run = _eligible_ids(snapshot)
        self._checked_version = snapshot.version
        self._fleet_changed = False
        previous = self._plan()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-planner")
        started = time.perf_counter()
        try:
            report = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                functools.partial(
                    self._planner.solve_with_report,
                    snapshot,
                    demand,
                    self._profiles,
                    previous,
                    now_s,
                    self.settings.time_limit_s,
                    self.settings.solver,
                ),
            )
        except Exception:
            # Planner.solve never raises for well-formed input; if it does, keep routing on the old plan.
            log.exception("planner: solve failed", extra={"fields": {"trigger": trigger}})
            self._metrics.plan_solve_seconds.observe(time.perf_counter() - started)
            self._metrics.plan_solves.labels(trigger, "error").inc()
            return self._publish_or_count(replace(previous, status=STATUS_FAILED), trigger)
        self._metrics.plan_solve_seconds.observe(time.perf_counter() - started)
        self.last_report = report
        plan = report.plan
        fields = {
            "trigger": trigger,
            "status": plan.status,
            "generation": plan.generation,
            "classes": len(demand),
            "solve_seconds": round(plan.solve_seconds, 4),
            "predicted_cost_usd_per_hour": round(plan.predicted_cost_usd_per_hour, 4),
            "active_endpoints": len(plan.active_endpoint_ids),
            "gap_to_lp_ratio": report.gap_to_lp_ratio,
            "solver_status": report.solver_status,
        }
        if plan.generation > previous.generation:
            log.info("plan published", extra={"fields": fields})
        else:
            log.warning("planner kept the previous plan: %s", report.message, extra={"fields": fields})
        published = self._publish_or_count(plan, trigger)
        if published is not None:
            self._metrics.plan_solves.labels(trigger, plan.status).inc()
        return published

    def _publish_or_count(self, plan: Plan, trigger: str) -> Plan | None:
        try:
            self._publish(plan)
        except ValueError as exc:  # someone published a newer plan while this one was solved
            log.warning("planner: plan superseded: %s", exc, extra={"fields": {"trigger": trigger}})
            self._metrics.plan_solves.labels(trigger, "superseded").inc()
            return None
        return plan

    def _class_slo(self, traffic_class: TrafficClass) -> LatencySlo:
        return self._slo_for(traffic_class.model, traffic_class.priority)
