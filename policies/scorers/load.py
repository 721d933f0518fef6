"""Scorer "load": fewer requests in flight scores higher."""

from __future__ import annotations

from collections.abc import Sequence

from policies.framework import CycleContext, Scorer
from policies.predict import Target, in_flight

__all__ = ["LoadScorer"]


class LoadScorer(Scorer):
    """``(1 + least) / (1 + n)`` where ``n`` is the endpoint's requests in flight (the larger of its
    telemetry count and the ledger's outstanding leases) and ``least`` the smallest ``n`` in the set: the
    least loaded endpoint scores 1.
    """

    name = "load"

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]:
        booking = ctx.ledger.booking
        counts = [in_flight(t, booking(t.endpoint_id)) for t in targets]
        least = 1.0 + min(counts)
        return [least / (1.0 + n) for n in counts]
