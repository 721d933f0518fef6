"""Filter "capacity": enough KV-cache memory is free now for the request."""

from __future__ import annotations

from functools import partial

from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target, kv_used_tokens

__all__ = ["CapacityFilter", "request_kv_tokens"]


def request_kv_tokens(input_tokens: int, expected_output_tokens: int) -> int:
    """KV tokens a request is booked for: its prompt plus its expected output.

    The worst case (``max_output_tokens``) is checked against the whole capacity by the context filter;
    serving engines allocate KV pages as a sequence grows, so the expected length is what the request
    typically holds.
    """
    return input_tokens + expected_output_tokens


class CapacityFilter(Filter):
    """Rejects (CAPACITY) when the request's KV tokens (:func:`request_kv_tokens`) exceed the endpoint's
    free KV memory: capacity minus the larger of the reported usage and the ledger's reservations.
    """

    name = "capacity"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        r = ctx.request
        need = request_kv_tokens(r.input_tokens, r.expected_output_tokens)
        free = target.kv_capacity_tokens - kv_used_tokens(target, ctx.ledger.booking(target.endpoint_id))
        if need > free:
            return Rejection(RejectReason.CAPACITY, partial(_detail, target, need, free), self.name)
        return None


def _detail(target: Target, need: int, free: int) -> str:
    return f"{target.endpoint_id}: needs {need} KV tokens, {max(0, free)} free"
