"""How the simulator calls a placement policy: the :class:`SimPolicy` interface and its implementations.

The engine hands every arriving request to ``place(request, snapshot, now_s)`` and reports every finished
request to ``complete(request_id, now_s, ttft_ms=..., tpot_ms=...)``; after each planner run it hands the
new plan to ``set_plan(plan)``. ``snapshot`` is a :class:`fleet.types.FleetSnapshot` built from the
simulated endpoints' telemetry, the same type the live router decides on.

* :class:`RouterPolicy` drives the router's own policies (``policies/``: the "turnout" fast path and the
  baselines ``round_robin``, ``least_loaded``, ``random``, ``cheapest_feasible``) exactly as the router's
  event loop does: it owns a :class:`~policies.ledger.ReservationLedger`, expires it to ``now_s`` before
  each decision, books a lease for each placement and completes the lease with the observed TTFT and TPOT
  (which also corrects the policy's latency estimates). Build one with :func:`router_policy`.
* :class:`FirstFit` is a deliberately simple policy for testing the engine on its own: the first READY
  endpoint (by id) serving the model where the request fits and the outstanding requests it has placed
  there stay under a limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fleet.types import EndpointSpec, EndpointStatus, FleetSnapshot, ServingProfile
from policies.config import PolicyConfig
from policies.decision import Placed, Policy
from policies.demand import DEFAULT_BUCKET_BOUNDS, BucketBounds
from policies.ledger import ReservationLedger
from policies.registry import Plugins, build_policy
from policies.types import EMPTY_PLAN, PlacementRequest, Plan

__all__ = [
    "PLAN_POLICIES",
    "FirstFit",
    "Placement",
    "Refusal",
    "RouterPolicy",
    "SimPolicy",
    "router_policy",
]

PLAN_POLICIES = frozenset({"turnout"})
"""Registered policies that follow the planner's plan (the others ignore it)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Run the request on ``endpoint_id``. ``reason`` is the policy's (e.g. "plan", "plan_spill",
    "no_plan"); ``replan_requested`` asks the engine for an early planner run. Predictions are optional."""

    endpoint_id: str
    reason: str = ""
    replan_requested: bool = False
    predicted_ttft_ms: float | None = None
    predicted_tpot_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Nothing takes the request; it counts as rejected (an SLO miss). ``reason`` is the binding reason
    ("slo", "capacity", "power", "context", "shed", ...)."""

    reason: str
    message: str = ""
    retry_after_s: float | None = None
    replan_requested: bool = False


class SimPolicy(Protocol):
    """A placement policy as the simulator drives it.

    Contract: ``place`` returns a :class:`Placement` on a READY endpoint of ``snapshot`` serving the
    request's model, or a :class:`Refusal`; ``complete`` is called once for every placed request when it
    finishes or is dropped (``ttft_ms``/``tpot_ms`` ``None`` when it never ran); times passed in never
    decrease. ``uses_plan`` says whether the engine should run the planner for it; ``buckets`` are the
    length buckets of its traffic classes (the planner's demand is classified with the same).
    """

    @property
    def name(self) -> str: ...

    @property
    def uses_plan(self) -> bool: ...

    @property
    def buckets(self) -> BucketBounds: ...

    def set_plan(self, plan: Plan) -> None: ...

    def place(
        self, request: PlacementRequest, snapshot: FleetSnapshot, now_s: float
    ) -> Placement | Refusal: ...

    def complete(
        self, request_id: str, now_s: float, *, ttft_ms: float | None, tpot_ms: float | None
    ) -> None: ...


class RouterPolicy:
    """A policy of ``policies/`` with its reservation ledger, driven as the router drives it."""

    def __init__(
        self,
        policy: Policy,
        config: PolicyConfig,
        *,
        uses_plan: bool | None = None,
        ledger: ReservationLedger | None = None,
    ) -> None:
        self._policy = policy
        self._config = config
        self._uses_plan = policy.name in PLAN_POLICIES if uses_plan is None else uses_plan
        self._ledger = ledger if ledger is not None else ReservationLedger()
        self._plan: Plan = EMPTY_PLAN
        self._lease_of: dict[str, str] = {}
        self.placements = 0
        self.refusals = 0

    @property
    def name(self) -> str:
        return self._policy.name

    @property
    def uses_plan(self) -> bool:
        return self._uses_plan

    @property
    def buckets(self) -> BucketBounds:
        return self._config.buckets

    @property
    def ledger(self) -> ReservationLedger:
        return self._ledger

    @property
    def plan(self) -> Plan:
        return self._plan

    def set_plan(self, plan: Plan) -> None:
        self._plan = plan

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot, now_s: float) -> Placement | Refusal:
        ledger = self._ledger
        ledger.expire(now_s)
        ledger.sync_power(snapshot)  # as the router does: booked power drops once reports show it
        decision = self._policy.place(request, snapshot, self._plan, ledger, now_s)
        if isinstance(decision, Placed):
            lease_id = decision.lease_id
            if not lease_id:  # a new placement (not an idempotent replay): book it
                lease_id = f"lease-{request.request_id}"
                ledger.reserve(self._policy.lease_for(decision, lease_id, now_s))
            self._lease_of[request.request_id] = lease_id
            self.placements += 1
            p = decision.chosen.prediction
            return Placement(
                endpoint_id=decision.chosen.endpoint_id,
                reason=decision.reason.value,
                replan_requested=decision.replan_requested,
                predicted_ttft_ms=p.ttft_ms,
                predicted_tpot_ms=p.tpot_ms,
            )
        self.refusals += 1
        return Refusal(
            reason=decision.reason.value,
            message=decision.message,
            retry_after_s=decision.retry_after_s,
            replan_requested=decision.replan_requested,
        )

    def complete(
        self, request_id: str, now_s: float, *, ttft_ms: float | None, tpot_ms: float | None
    ) -> None:
        lease_id = self._lease_of.pop(request_id, None)
        if lease_id is None:
            return
        self._ledger.expire(now_s)
        # An expired lease is already gone: complete() then changes nothing (idempotent by contract).
        self._ledger.complete(lease_id, observed_ttft_ms=ttft_ms, observed_tpot_ms=tpot_ms)


def router_policy(
    name: str,
    serving: Callable[[EndpointSpec], ServingProfile],
    config: PolicyConfig | None = None,
    *,
    plugins: Plugins | None = None,
) -> RouterPolicy:
    """The registered policy ``name`` ("turnout" or a baseline) over ``serving`` profiles, ready for the
    simulator. ``config`` (default ``PolicyConfig()``) gives every other setting; its ``policy`` field is
    replaced by ``name``. Raises ``policies.registry.UnknownPluginError`` listing the known names."""
    cfg = dataclasses.replace(config if config is not None else PolicyConfig(), policy=name)
    return RouterPolicy(build_policy(cfg, serving, plugins=plugins), cfg)


class FirstFit:
    """The first READY endpoint (by id) serving the model where the request fits its context and KV
    capacity and fewer than ``max_outstanding`` requests placed by this policy are unfinished. For tests of
    the engine; ignores plans, SLOs, cost and power."""

    def __init__(
        self,
        serving: Callable[[EndpointSpec], ServingProfile],
        *,
        max_outstanding: int = 1_000_000,
        name: str = "first_fit",
    ) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding: must be >= 1, got {max_outstanding}")
        self._serving = serving
        self._max_outstanding = max_outstanding
        self._name = name
        self._outstanding: dict[str, int] = {}
        self._where: dict[str, str] = {}
        self.plans_seen = 0
        self.calls: list[tuple[str, float]] = []  # ("place" | "complete", now_s), in call order

    @property
    def name(self) -> str:
        return self._name

    @property
    def uses_plan(self) -> bool:
        return False

    @property
    def buckets(self) -> BucketBounds:
        return DEFAULT_BUCKET_BOUNDS

    def set_plan(self, plan: Plan) -> None:
        self.plans_seen += 1

    def place(self, request: PlacementRequest, snapshot: FleetSnapshot, now_s: float) -> Placement | Refusal:
        self.calls.append(("place", now_s))
        need = request.input_tokens + request.max_output_tokens
        for state in snapshot.by_model.get(request.model, ()):
            if state.status is not EndpointStatus.READY:
                continue
            spec = state.spec
            if need > spec.max_context_tokens or need > self._serving(spec).kv_capacity_tokens:
                continue
            eid = spec.endpoint_id
            if self._outstanding.get(eid, 0) >= self._max_outstanding:
                continue
            self._outstanding[eid] = self._outstanding.get(eid, 0) + 1
            self._where[request.request_id] = eid
            return Placement(endpoint_id=eid, reason="first_fit")
        return Refusal(reason="capacity", message=f"no endpoint of {request.model} has room")

    def complete(
        self, request_id: str, now_s: float, *, ttft_ms: float | None, tpot_ms: float | None
    ) -> None:
        self.calls.append(("complete", now_s))
        eid = self._where.pop(request_id, None)
        if eid is not None:
            self._outstanding[eid] -= 1
