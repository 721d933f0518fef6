"""Baseline policies the "turnout" policy is compared against; selectable by name like any policy.

Each is a single profile run by :class:`ProfilePolicy` (the same framework, index, refusals and leases as
the fast path) and ignores the plan (reason ``no_plan``, plan generation 0). Every baseline runs the
builtin filters (status READY: never a stale, unhealthy or drained endpoint; the request's allowed kinds,
region and zone) and exactly the filters listed here:

* ``round_robin``: filters ``context`` and ``capacity`` (the request fits the endpoint's context and the
  KV memory free now); no scorer; picks endpoints in id order rotated by the model's placement count.
  Ignores SLO, power cap, priority shedding and cost.
* ``least_loaded``: filters ``context`` and ``capacity``; scorer ``load``: the fewest requests in flight
  (telemetry or ledger, whichever is larger), ties by endpoint id. Ignores SLO, power, shedding and cost.
* ``random``: filters ``context`` and ``capacity``; a random ranking seeded by ``random_seed`` and the
  request id (deterministic). Ignores SLO, power, shedding and cost.
* ``cheapest_feasible``: every hard filter (``context``, ``capacity``, ``latency``, ``power``,
  ``shed``) and scorer ``cost``: the lowest predicted cost of this request (egress included) among the
  endpoints that meet its SLO within the power cap. Greedy: no plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from fleet.types import FleetSnapshot
from policies.config import CHEAPEST_FEASIBLE_PROFILE, PolicyConfig, ProfileConfig, WeightedScorer
from policies.decision import PlaceDecision, PlacementReason, PolicyCore, ServingLookup
from policies.framework import Profile
from policies.ledger import LedgerView
from policies.types import PlacementRequest, Plan

__all__ = ["BASELINE_PROFILES", "ProfilePolicy"]

_FITS = ("context", "capacity")

BASELINE_PROFILES: Mapping[str, ProfileConfig] = MappingProxyType(
    {
        "round_robin": ProfileConfig(filters=_FITS, scorers=(), picker="round_robin"),
        "least_loaded": ProfileConfig(
            filters=_FITS, scorers=(WeightedScorer("load", 1.0),), picker="max_score"
        ),
        "random": ProfileConfig(filters=_FITS, scorers=(), picker="random"),
        "cheapest_feasible": CHEAPEST_FEASIBLE_PROFILE,
    }
)


class ProfilePolicy(PolicyCore):
    """A policy that runs one profile over every eligible endpoint of the model, without a plan."""

    def __init__(
        self,
        name: str,
        config: PolicyConfig,
        serving: ServingLookup,
        profile: Profile,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, config, serving, clock=clock)
        self.profile = profile

    def place(
        self, request: PlacementRequest, snapshot: FleetSnapshot, plan: Plan, ledger: LedgerView, now_s: float
    ) -> PlaceDecision:
        replayed = self.replay(request, ledger)
        if replayed is not None:
            return replayed
        traffic_class = self.classify(request)
        eligible, ineligible = self.targets(snapshot, request.model)
        ctx = self.context(request, traffic_class, snapshot, plan, ledger, now_s)
        result = self.profile.run(ctx, eligible, self._k)
        if result.ranked:
            return self.placed(
                ctx, result.ranked, PlacementReason.NO_PLAN, plan_generation=0, replan_requested=False
            )
        return self.refused(ctx, result.rejected, ineligible, plan_generation=0, replan_requested=False)
