"""Filter "latency": the predicted TTFT and TPOT meet the request's SLO."""

from __future__ import annotations

from functools import partial

from fleet.types import LatencySlo
from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Estimate, LatencyEstimate, Target

__all__ = ["LatencyFilter"]


class LatencyFilter(Filter):
    """Rejects when the predicted TTFT (with the endpoint's live prefill queue and any data-gravity
    network latency) exceeds ``slo.ttft_ms`` (SLO_TTFT), or the predicted TPOT at the live batch plus this
    request exceeds ``slo.tpot_ms`` (SLO_TPOT). Predictions: :mod:`policies.predict` (the latency figures
    alone, :meth:`CycleContext.latency`: the rest is never needed for an endpoint this filter drops).
    """

    name = "latency"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        p = ctx.latency(target)
        slo = ctx.request.slo
        if p.ttft_ms > slo.ttft_ms:
            return Rejection(RejectReason.SLO_TTFT, partial(_ttft_detail, target, p, slo), self.name)
        if p.tpot_ms > slo.tpot_ms:
            return Rejection(RejectReason.SLO_TPOT, partial(_tpot_detail, target, p, slo), self.name)
        return None


def _ttft_detail(target: Target, p: Estimate | LatencyEstimate, slo: LatencySlo) -> str:
    return (
        f"{target.endpoint_id}: predicted TTFT {p.ttft_ms:.0f} ms > {slo.ttft_ms:g} ms "
        f"({p.queued_prefill_tokens} prefill tokens queued)"
    )


def _tpot_detail(target: Target, p: Estimate | LatencyEstimate, slo: LatencySlo) -> str:
    return (
        f"{target.endpoint_id}: predicted TPOT {p.tpot_ms:.1f} ms > {slo.tpot_ms:g} ms "
        f"at batch {p.decode_batch}"
    )
