"""The "turnout" policy: the per-request fast path that follows the global plan with live load.

For each request, on one snapshot, one plan and one read-only ledger view, at ``now_s``:

1. **Replay.** A request id that holds a live lease gets that placement again (reason
   ``idempotent_replay``); a different request under a live request id raises ``RequestIdConflict``.
2. **Class.** The request's traffic class from the configured length buckets (``policies.demand``).
3. **Fresh plan** (generation > 0 and ``now_s - plan.created_at_s <= max_plan_age_s``): run the plan
   profile (hard filters, then plan affinity, cost and load) over the eligible endpoints the plan gives a
   share of the class, furthest below their planned share first, ranking the first
   ``candidates_per_decision`` that pass every filter (the plan spreads a class over whole pools of
   interchangeable endpoints: evaluating every one of them would cost a prediction per endpoint per
   request and change little). If one is feasible it is chosen (reason ``plan``); fallbacks are the next
   planned ones, topped up with feasible unplanned ones: looked for in the order of a static reference
   cost per token (:class:`~policies.predict.Target`) and ranked by the spill profile, so that finding
   fallbacks does not cost an evaluation of every endpoint of the model (the split of the model's
   endpoints into planned and unplanned ones is kept per class while the snapshot and plan last:
   :meth:`FastPath.split_by_plan`). If none is feasible (a burst beyond the plan, or a class the plan
   does not cover), run the spill profile (hard filters, then the cost at full SLO-feasible use, then
   load: ``policies.config.TURNOUT_SPILL_PROFILE``) over the other endpoints: the best feasible is chosen
   (reason ``plan_spill``) and ``replan_requested`` is set.
4. **No plan or a stale plan**: the spill profile over the eligible endpoints, cheapest reference cost
   first and, among equal ones, least loaded first (:meth:`FastPath.spill_order`, produced lazily: the
   endpoints after the last one examined are never ranked by load), ranking the first
   ``candidates_per_decision`` feasible ones (reason ``no_plan`` or ``stale_plan``); the plan's age is
   the caller's to report in a metric. Routing never stops for a plan.
5. **Nothing feasible**: :class:`~policies.decision.Refused` with the binding reason and a retry delay from
   the expected drain time of the blocking queue. Because the shed filter keeps part of the headroom for
   higher priorities, sheddable work is refused before standard and standard before critical.

Usage (the router's event loop owns the ledger)::

    ledger.expire(now_s)                                   # retire due bookings and expired leases
    decision = fast_path.place(request, snapshot, plan, ledger, now_s)
    if isinstance(decision, Placed) and not decision.lease_id:  # a new placement, not a replay
        lease = fast_path.lease_for(decision, lease_id=new_id(), now_s=now_s)
        ledger.reserve(lease)
        answer(lease.placement)                            # the placement carrying its lease id
    ...
    ledger.complete(lease_id, observed_ttft_ms=..., observed_tpot_ms=...)   # on Complete; idempotent
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import attrgetter

from fleet.types import FleetSnapshot
from policies.config import PolicyConfig
from policies.decision import PlaceDecision, PlacementReason, PolicyCore, ServingLookup
from policies.framework import Profile
from policies.ledger import LedgerView
from policies.predict import Target, in_flight
from policies.types import PlacementRequest, Plan

__all__ = ["FastPath"]

_REFERENCE_COST = attrgetter("reference_cost_usd")

# (index entry, shares, planned, others) of FastPath.split_by_plan
_Split = tuple[object, Mapping[str, float], tuple[Target, ...], tuple[Target, ...]]


def _least_loaded_by_cost_group(targets: Sequence[Target], ledger: LedgerView) -> Iterator[Target]:
    """``targets`` in the order of a stable sort by (reference cost, requests in flight), one group of
    equal reference cost at a time (see :meth:`FastPath.spill_order`)."""
    costs = list(map(_REFERENCE_COST, targets))
    ordered = sorted(costs)
    if costs != ordered:  # the policy passes them cheapest first already (its index's order)
        targets = sorted(targets, key=_REFERENCE_COST)
        costs = ordered
    booking = ledger.booking
    n = len(targets)
    start = 0
    while start < n:
        cost = costs[start]
        end = start + 1
        while end < n and costs[end] == cost:
            end += 1
        if end - start == 1:
            yield targets[start]
        else:
            yield from sorted(targets[start:end], key=lambda t: in_flight(t, booking(t.endpoint_id)))
        start = end


class FastPath(PolicyCore):
    """The plan-following, cost-aware policy (module docstring). Registered as "turnout"."""

    def __init__(
        self,
        config: PolicyConfig,
        serving: ServingLookup,
        *,
        plan_profile: Profile,
        spill_profile: Profile,
        clock: Callable[[], float] | None = None,
        name: str = "turnout",
    ) -> None:
        super().__init__(name, config, serving, clock=clock)
        self.plan_profile = plan_profile
        self.spill_profile = spill_profile
        self._split: dict[str, _Split] = {}  # class name -> split_by_plan's answer and what it was for

    def plan_is_fresh(self, plan: Plan, now_s: float) -> bool:
        return (
            plan.generation > 0
            and plan.status != "none"
            and now_s - plan.created_at_s <= self.config.max_plan_age_s
        )

    @staticmethod
    def spill_order(targets: Sequence[Target], ledger: LedgerView, enough: int | None) -> Iterable[Target]:
        """The order in which the spill profile looks at ``targets`` (cheapest reference cost first) when
        it stops after ``enough`` feasible ones: among endpoints of equal reference cost (the same
        silicon), fewest requests in flight first, so that the endpoints it ranks are the least loaded
        of their kind rather than always the same ones. Unchanged when every target is ranked.

        The order is produced lazily, one tie group of equal reference cost at a time: the profile
        usually stops within the first groups, so the endpoints it never reaches are never looked up in
        the ledger nor sorted. The result is the order of a stable sort of ``targets`` by (reference
        cost, requests in flight)."""
        if enough is None or len(targets) <= enough:
            return targets
        return _least_loaded_by_cost_group(targets, ledger)

    def split_by_plan(
        self, snapshot: FleetSnapshot, model: str, class_name: str, shares: Mapping[str, float]
    ) -> tuple[tuple[Target, ...], tuple[Target, ...]]:
        """(planned, others): the eligible endpoints of ``model`` that ``shares`` (the plan's shares of the
        class) covers, by id, and the others, cheapest reference cost first (the order fallbacks are
        looked for in). Memoised per class while the model's index entry and the shares are unchanged."""
        entry = self._entry(snapshot, model)
        hit = self._split.get(class_name)
        if hit is not None and hit[0] is entry and hit[1] is shares:
            return hit[2], hit[3]
        planned = tuple(t for t in entry.eligible if t.endpoint_id in shares)
        others = tuple(t for t in entry.by_reference_cost if t.endpoint_id not in shares)
        self._split[class_name] = (entry, shares, planned, others)
        return planned, others

    def place(
        self, request: PlacementRequest, snapshot: FleetSnapshot, plan: Plan, ledger: LedgerView, now_s: float
    ) -> PlaceDecision:
        replayed = self.replay(request, ledger)
        if replayed is not None:
            return replayed
        traffic_class = self.classify(request)
        ineligible = self.targets(snapshot, request.model)[1]
        k = self._k

        enough = self.config.candidates_per_decision or None
        if enough is not None and enough < k:
            enough = k

        if not self.plan_is_fresh(plan, now_s):
            reason = PlacementReason.NO_PLAN if plan.generation == 0 else PlacementReason.STALE_PLAN
            ctx = self.context(request, traffic_class, snapshot, plan, ledger, now_s)
            by_cost = self.eligible_by_reference_cost(snapshot, request.model)
            result = self.spill_profile.run(ctx, self.spill_order(by_cost, ledger, enough), k, enough=enough)
            if result.ranked:
                return self.placed(ctx, result.ranked, reason, plan_generation=0, replan_requested=False)
            return self.refused(ctx, result.rejected, ineligible, plan_generation=0, replan_requested=False)

        cls = traffic_class.name
        shares = self.class_shares(plan, cls)
        ctx = self.context(request, traffic_class, snapshot, plan, ledger, now_s, shares)
        planned: Sequence[Target]
        planned, others = self.split_by_plan(snapshot, request.model, cls, shares)
        if enough is not None and len(planned) > enough:
            # Furthest below the planned share first (the plan-affinity criterion), then by id.
            observed = ledger.observed_share
            planned = sorted(planned, key=lambda t: observed(cls, t.endpoint_id) - shares[t.endpoint_id])

        planned_result = self.plan_profile.run(ctx, planned, k, enough=enough) if planned else None
        if planned_result is not None and planned_result.ranked:
            ranked = list(planned_result.ranked)
            if len(ranked) < k and others:
                # Top up the fallbacks with feasible unplanned endpoints, looked for in the order of their
                # static reference cost and ranked by the spill profile among those found.
                need = k - len(ranked)
                top_up = self.spill_order(others, ledger, need)
                ranked.extend(self.spill_profile.run(ctx, top_up, need, enough=need).ranked)
            return self.placed(
                ctx, ranked, PlacementReason.PLAN, plan_generation=plan.generation, replan_requested=False
            )

        spill = self.spill_profile.run(ctx, self.spill_order(others, ledger, enough), k, enough=enough)
        if spill.ranked:
            return self.placed(
                ctx,
                spill.ranked,
                PlacementReason.PLAN_SPILL,
                plan_generation=plan.generation,
                replan_requested=True,
            )
        rejected = (planned_result.rejected if planned_result is not None else ()) + spill.rejected
        return self.refused(ctx, rejected, ineligible, plan_generation=plan.generation, replan_requested=True)
