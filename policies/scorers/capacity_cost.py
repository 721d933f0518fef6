"""Scorer "capacity_cost": cheaper per token at full SLO-feasible use scores higher."""

from __future__ import annotations

from collections.abc import Sequence

from policies.framework import CycleContext, Scorer
from policies.predict import Target
from policies.scorers.cost import cheapest_ratio

__all__ = ["CapacityCostScorer"]


class CapacityCostScorer(Scorer):
    """``min_cost / cost`` over the surviving set, on the request's cost per million tokens at each
    endpoint's full SLO-feasible batch (``Estimate.capacity_cost_usd_per_million_tokens``).

    The "cost" scorer prices the live batch, so among identical endpoints the busiest is always the
    cheapest and a greedy picker piles work on it until its predicted latency reaches the SLO. This one
    ranks the silicon, not its momentary load: identical endpoints score the same and another scorer
    (``load``) decides between them. Zero-cost endpoints score 1 and, when one exists, every priced one 0.
    """

    name = "capacity_cost"

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]:
        return cheapest_ratio([ctx.estimate(t).capacity_cost_usd_per_million_tokens for t in targets])
