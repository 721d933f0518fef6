"""Scorer "plan_affinity": endpoints furthest below their planned share of the class score higher."""

from __future__ import annotations

from collections.abc import Sequence

from policies.framework import CycleContext, Scorer
from policies.predict import Target

__all__ = ["PlanAffinityScorer"]


class PlanAffinityScorer(Scorer):
    """``(1 + planned - observed) / 2`` where ``planned`` is the plan's share of the request's traffic class
    on the endpoint (``ctx.planned_share``, normalised over the class's planned endpoints) and ``observed``
    the endpoint's recent share of the class's placements (the ledger's plan tracker).

    An endpoint exactly at its planned share scores 0.5, one that has had none of its planned traffic
    scores up to 1, one the plan gives nothing scores at most 0.5. Following the highest score makes the
    placements converge to the planned split.
    """

    name = "plan_affinity"

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]:
        planned = ctx.planned_share
        observed = ctx.ledger.observed_share
        cls = ctx.traffic_class.name
        return [0.5 * (1.0 + planned.get(t.endpoint_id, 0.0) - observed(cls, t.endpoint_id)) for t in targets]
