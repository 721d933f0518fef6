"""Filter "shed": lower priorities may use only part of the KV memory and zone power headroom."""

from __future__ import annotations

from functools import partial

from fleet.types import Priority
from policies.filters.capacity import request_kv_tokens
from policies.filters.power import zone_power_after_w
from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target, kv_used_tokens

__all__ = ["ShedFilter"]


class ShedFilter(Filter):
    """Rejects (SHED) a request of priority ``p`` when, with it, the endpoint's KV use would exceed
    ``f(p) x kv_capacity_tokens`` or the zone's power would exceed ``f(p) x power_cap_w``, where ``f`` is
    ``config.shedding`` (default: critical 1.0, standard 0.9, sheddable 0.8).

    Runs after the hard capacity and power filters, so SHED means "there is room, but it is kept for
    higher priorities". Skipped when ``f(p) >= 1``.
    """

    name = "shed"

    def skip(self, ctx: CycleContext) -> bool:
        return ctx.config.shedding.of(ctx.request.priority) >= 1.0

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        r = ctx.request
        f = ctx.config.shedding.of(r.priority)
        kv_after = kv_used_tokens(target, ctx.ledger.booking(target.endpoint_id)) + request_kv_tokens(
            r.input_tokens, r.expected_output_tokens
        )
        if kv_after > f * target.kv_capacity_tokens:
            return Rejection(
                RejectReason.SHED, partial(_kv_detail, target, kv_after, r.priority, f), self.name
            )
        after_w = zone_power_after_w(ctx, target)
        if after_w > f * target.zone_cap_w:
            return Rejection(
                RejectReason.SHED, partial(_power_detail, target, after_w, r.priority, f), self.name
            )
        return None


def _kv_detail(target: Target, kv_after: int, priority: Priority, f: float) -> str:
    return (
        f"{target.endpoint_id}: KV use would reach {kv_after / max(1, target.kv_capacity_tokens):.0%}, "
        f"{priority.value} work may use {f:.0%}"
    )


def _power_detail(target: Target, after_w: float, priority: Priority, f: float) -> str:
    return (
        f"{target.endpoint_id}: zone {target.zone} would draw {after_w / target.zone_cap_w:.0%} of its cap, "
        f"{priority.value} work may use {f:.0%}"
    )
