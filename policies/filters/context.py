"""Filter "context": the request can fit on the endpoint at all."""

from __future__ import annotations

from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target

__all__ = ["ContextFilter"]


class ContextFilter(Filter):
    """Rejects (CONTEXT) when ``input_tokens + max_output_tokens`` exceeds the endpoint's context length
    (``spec.max_context_tokens``) or its whole KV-cache capacity (the serving profile's
    ``kv_capacity_tokens``): waiting cannot help, the request can never run there.
    """

    name = "context"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        r = ctx.request
        need = r.input_tokens + r.max_output_tokens
        limit = target.spec.max_context_tokens
        if need > limit:
            return Rejection(
                RejectReason.CONTEXT,
                f"{target.endpoint_id}: {need} tokens (input + max output) exceed its context of {limit}",
                self.name,
            )
        if need > target.kv_capacity_tokens:
            return Rejection(
                RejectReason.CONTEXT,
                f"{target.endpoint_id}: {need} tokens exceed its KV-cache capacity "
                f"of {target.kv_capacity_tokens}",
                self.name,
            )
        return None
