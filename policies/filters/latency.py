"""Filter "latency": the predicted TTFT and TPOT meet the request's SLO."""

from __future__ import annotations

from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target

__all__ = ["LatencyFilter"]


class LatencyFilter(Filter):
    """Rejects when the predicted TTFT (with the endpoint's live prefill queue and any data-gravity
    network latency) exceeds ``slo.ttft_ms`` (SLO_TTFT), or the predicted TPOT at the live batch plus this
    request exceeds ``slo.tpot_ms`` (SLO_TPOT). Predictions: :mod:`policies.predict`.
    """

    name = "latency"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        p = ctx.estimate(target)
        slo = ctx.request.slo
        if p.ttft_ms > slo.ttft_ms:
            return Rejection(
                RejectReason.SLO_TTFT,
                f"{target.endpoint_id}: predicted TTFT {p.ttft_ms:.0f} ms > {slo.ttft_ms:g} ms "
                f"({p.queued_prefill_tokens} prefill tokens queued)",
                self.name,
            )
        if p.tpot_ms > slo.tpot_ms:
            return Rejection(
                RejectReason.SLO_TPOT,
                f"{target.endpoint_id}: predicted TPOT {p.tpot_ms:.1f} ms > {slo.tpot_ms:g} ms "
                f"at batch {p.decode_batch}",
                self.name,
            )
        return None
