"""Scorer "cost": cheaper per token scores higher."""

from __future__ import annotations

from collections.abc import Sequence

from policies.framework import CycleContext, Scorer
from policies.predict import Target

__all__ = ["CostScorer", "cheapest_ratio"]


class CostScorer(Scorer):
    """``min_cost / cost`` over the surviving set, on the predicted cost per million tokens (egress
    included): the cheapest endpoint scores 1, one twice as expensive 0.5. A ratio rather than a min-max
    rescaling keeps a 1 % price difference worth 1 % of the weight, not the whole of it. Zero-cost
    endpoints score 1 and, when one exists, every priced endpoint 0.
    """

    name = "cost"

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]:
        return cheapest_ratio([ctx.estimate(t).cost_usd_per_million_tokens for t in targets])


def cheapest_ratio(costs: Sequence[float]) -> list[float]:
    """``min / cost`` for each cost; zero costs score 1 and, when one exists, every positive cost 0."""
    lowest = min(costs)
    if lowest <= 0.0:
        return [1.0 if c <= 0.0 else 0.0 for c in costs]
    return [lowest / c for c in costs]
