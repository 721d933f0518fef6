"""Builtin filter: the request's own constraints on accelerator kind, region and zone."""

from __future__ import annotations

from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target

__all__ = ["AllowedFilter"]


class AllowedFilter(Filter):
    """Rejects endpoints outside the request's allowed kinds, region or zone (NOT_ALLOWED).

    An empty constraint allows everything; with none set the filter is skipped.
    """

    name = "allowed"

    def skip(self, ctx: CycleContext) -> bool:
        r = ctx.request
        return not (r.allowed_accelerator_kinds or r.region or r.zone)

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        r = ctx.request
        if r.allowed_accelerator_kinds and target.kind not in r.allowed_accelerator_kinds:
            kinds = ", ".join(sorted(r.allowed_accelerator_kinds))
            return Rejection(
                RejectReason.NOT_ALLOWED,
                f"{target.endpoint_id} runs on {target.kind}, allowed: {kinds}",
                self.name,
            )
        if r.region and target.region != r.region:
            return Rejection(
                RejectReason.NOT_ALLOWED,
                f"{target.endpoint_id} is in region {target.region}, not {r.region}",
                self.name,
            )
        if r.zone and target.zone != r.zone:
            return Rejection(
                RejectReason.NOT_ALLOWED,
                f"{target.endpoint_id} is in zone {target.zone}, not {r.zone}",
                self.name,
            )
        return None
