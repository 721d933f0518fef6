"""Builtin filter: only endpoints that may receive new work (status READY: healthy, fresh, not drained)."""

from __future__ import annotations

from fleet.types import EndpointStatus
from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target

__all__ = ["EligibleFilter"]


class EligibleFilter(Filter):
    """Rejects every endpoint whose status is not READY (NOT_ELIGIBLE, the status in the detail)."""

    name = "eligible"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        status = target.state.status
        if status is EndpointStatus.READY:
            return None
        drain = target.state.drain
        why = f"{status.value} ({drain.reason.value})" if drain is not None else status.value
        return Rejection(RejectReason.NOT_ELIGIBLE, f"{target.endpoint_id} is {why}", self.name)
