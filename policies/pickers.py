"""Picker plugins: rank the surviving endpoints; the first is chosen, the next ones are its fallbacks.

| name          | ranks by                                                                                 |
|---------------|------------------------------------------------------------------------------------------|
| `max_score`   | combined score, highest first; ties by endpoint id                                       |
| `round_robin` | endpoint id order, rotated by the ledger's placement count of the model                   |
| `random`      | a permutation drawn from a generator seeded by ``(config.random_seed, request_id)``      |

All three are deterministic: the same context gives the same ranking.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from policies.framework import CycleContext, Picker, top_k_by_score
from policies.predict import Target

__all__ = ["MaxScorePicker", "RandomPicker", "RoundRobinPicker"]


class MaxScorePicker(Picker):
    name = "max_score"

    def pick(
        self, ctx: CycleContext, targets: Sequence[Target], scores: Sequence[float], k: int
    ) -> Sequence[int]:
        return top_k_by_score(targets, scores, k)


class RoundRobinPicker(Picker):
    """The ``c mod n``-th endpoint by id, then the following ones, where ``c`` is the number of placements
    the ledger has booked for the model and ``n`` the surviving endpoints. Consecutive placements of a
    model therefore walk through its endpoints (exactly when the surviving set does not change)."""

    name = "round_robin"

    def pick(
        self, ctx: CycleContext, targets: Sequence[Target], scores: Sequence[float], k: int
    ) -> Sequence[int]:
        n = len(targets)
        order = sorted(range(n), key=lambda i: targets[i].endpoint_id)
        start = ctx.ledger.placement_count(ctx.request.model) % n
        return [order[(start + j) % n] for j in range(min(k, n))]


class RandomPicker(Picker):
    """A uniformly random ranking, reproducible: seeded by the configured seed and the request id."""

    name = "random"

    def pick(
        self, ctx: CycleContext, targets: Sequence[Target], scores: Sequence[float], k: int
    ) -> Sequence[int]:
        n = len(targets)
        order = sorted(range(n), key=lambda i: targets[i].endpoint_id)
        rng = random.Random(f"{ctx.config.random_seed}/{ctx.request.request_id}")
        return rng.sample(order, min(k, n))
