"""Filter "power": the zone's drawn plus reserved power stays within its cap with this request."""

from __future__ import annotations

from functools import partial

from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.predict import Target

__all__ = ["PowerFilter", "zone_power_after_w"]


def zone_power_after_w(ctx: CycleContext, target: Target) -> float:
    """Watts the zone would draw with this request: measured draw + ledger reservations + increment.

    Computed in the same integer milliwatts the ledger keeps, so the check made here is exactly the
    total the ledger holds after the reservation.
    """
    drawn_w = ctx.snapshot.zone_power_w.get(target.zone, 0.0)
    reserved_mw = ctx.ledger.reserved_power_mw(target.zone) + ctx.estimate(target).power_increment_mw
    return drawn_w + reserved_mw / 1000.0


class PowerFilter(Filter):
    """Rejects (POWER) when ``snapshot.zone_power_w[zone] + reserved + increment > power_cap_w``.

    A zone the snapshot does not list has no cap.
    """

    name = "power"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        after_w = zone_power_after_w(ctx, target)
        if after_w > target.zone_cap_w:
            return Rejection(RejectReason.POWER, partial(_detail, target, after_w), self.name)
        return None


def _detail(target: Target, after_w: float) -> str:
    return (
        f"{target.endpoint_id}: zone {target.zone} would draw {after_w:.0f} W > cap {target.zone_cap_w:.0f} W"
    )
