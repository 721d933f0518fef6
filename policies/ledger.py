"""The reservation ledger: tentative bookings of placed requests until they complete or expire.

In Kubernetes scheduler terms a lease is an *assumed* placement: the decision counts it against the
endpoint at once, before the endpoint's own telemetry shows it, and forgets it when the request completes
(``release`` / ``complete``) or its lease expires because ``Complete`` never came (``expire``).

Per live lease the ledger books:

* on its endpoint: one outstanding request, ``kv_tokens`` of KV cache, its expected output tokens (the
  mean remaining life of the endpoint's sequences, :mod:`policies.predict`), ``stall_us_per_step`` of decode
  stall (its own prefill time spread over its output tokens: what the request's prompt costs the other
  sequences' decode, :mod:`policies.predict`), and ``prefill_tokens`` of queued prefill work until the
  lease's predicted first token (``prefill_done_at_s``);
* on its zone and its endpoint: ``power_mw`` milliwatts until the request's draw shows in the zone's
  measured power: once its endpoint reports a sample taken at or after the lease's predicted first token
  (:meth:`ReservationLedger.sync_power`), at ``power_visible_at_s`` if that is set and comes first, else
  until the lease ends;
* in the plan tracker: one placement of its traffic class on its endpoint (history, not released).

Contracts
---------
* **One owner.** Only the router's event loop mutates a ledger (``reserve``, ``release``, ``complete``,
  ``expire``); policies read it through :class:`LedgerView`. Not thread-safe.
* **Time is passed in.** ``expire(now_s)`` advances the ledger's clock (never backwards) and retires every
  time-driven booking due by then: queued prefill past its first token, power due to show by
  ``power_visible_at_s``, leases past their expiry. Call it before each decision, and
  :meth:`~ReservationLedger.sync_power` with each new fleet snapshot.
* **Totals are exact.** Every per-endpoint and per-zone total equals the sum over live leases of what each
  still books (power is kept in integer milliwatts so no rounding drifts).
* **Idempotent release.** ``release``/``complete`` of a lease that is not live (released, completed or
  expired) changes nothing and returns ``None``.
* ``reserve`` refuses a lease id already live, or a second live lease for the same request id.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from policies.types import PlacementRequest

if TYPE_CHECKING:
    from fleet.types import FleetSnapshot
    from policies.decision import Placed
    from policies.predict import Prediction

__all__ = [
    "Booking",
    "Lease",
    "LedgerView",
    "PlanTracker",
    "ReservationLedger",
]


@dataclass(frozen=True, slots=True)
class Lease:
    """One placed request, booked until it completes or ``expires_at_s``.

    ``placement`` is the decision as answered (replayed for a retried ``Place`` with the same request id);
    ``prediction`` the chosen endpoint's prediction, used to attribute cost and correct latency estimates.
    """

    lease_id: str
    request: PlacementRequest
    class_name: str
    endpoint_id: str
    zone: str
    placed_at_s: float
    expires_at_s: float
    prefill_done_at_s: float
    prefill_tokens: int
    kv_tokens: int
    stall_us_per_step: int
    power_mw: int
    power_visible_at_s: float | None
    prediction: Prediction
    placement: Placed

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def model(self) -> str:
        return self.request.model


class Booking(Protocol):
    """Read-only view of what live leases book on one endpoint, and its learned latency corrections.

    ``ttft_factor``/``tpot_factor`` multiply the serving profile's predictions (1.0 until a completion on
    the endpoint has been observed).
    """

    @property
    def outstanding(self) -> int: ...

    @property
    def queued_prefill_tokens(self) -> int: ...

    @property
    def kv_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int:
        """Sum over live leases of their expected output tokens."""
        ...

    @property
    def stall_us_per_step(self) -> int:
        """Sum over live leases of each one's prefill microseconds per output token (see
        :mod:`policies.predict`: the decode stall the endpoint's other sequences cause)."""
        ...

    @property
    def power_mw(self) -> int:
        """Milliwatts live leases on the endpoint still hold (their draw not yet in its reports)."""
        ...

    @property
    def ttft_factor(self) -> float: ...

    @property
    def tpot_factor(self) -> float: ...


class LedgerView(Protocol):
    """What policies may read from the ledger. Every method is O(1)."""

    def booking(self, endpoint_id: str) -> Booking: ...

    def reserved_power_mw(self, zone: str) -> int:
        """Milliwatts live leases hold on the zone's power budget."""
        ...

    def lease_for_request(self, request_id: str) -> Lease | None: ...

    def placement_count(self, model: str) -> int:
        """Placements ever booked for ``model`` (a monotonic counter; round-robin reads it)."""
        ...

    def observed_share(self, class_name: str, endpoint_id: str) -> float:
        """Recent share of the class's placements that went to the endpoint, in [0, 1]."""
        ...


class _Booking:
    """Mutable per-endpoint totals behind the :class:`Booking` view."""

    __slots__ = (
        "kv_tokens",
        "output_tokens",
        "outstanding",
        "power_mw",
        "queued_prefill_tokens",
        "stall_us_per_step",
        "tpot_factor",
        "ttft_factor",
    )

    def __init__(self) -> None:
        self.outstanding = 0
        self.queued_prefill_tokens = 0
        self.kv_tokens = 0
        self.output_tokens = 0
        self.stall_us_per_step = 0
        self.power_mw = 0
        self.ttft_factor = 1.0
        self.tpot_factor = 1.0


_NO_BOOKING = _Booking()  # returned for endpoints with no leases and no corrections; never mutated


class PlanTracker:
    """Recent share of each traffic class's placements per endpoint (exponential, counted in placements).

    With ``a = 1 / memory_placements``, after ``n`` placements of a class, placement ``j`` weighs
    ``a (1 - a)^(n - j)``; an endpoint's share is the sum of its placements' weights over the sum of all,
    ``1 - (1 - a)^n``. Counting in placements rather than seconds needs no clock, and a class's history
    reaches back the same number of decisions however busy it is. O(1) per record and per read.
    """

    __slots__ = ("_alpha", "_classes", "_keep")

    def __init__(self, memory_placements: int = 64) -> None:
        if memory_placements < 1:
            raise ValueError(f"memory_placements: must be >= 1, got {memory_placements}")
        self._alpha = 1.0 / memory_placements
        self._keep = 1.0 - self._alpha
        # class name -> (placements so far, {endpoint id: [weight, valid at placement count]})
        self._classes: dict[str, tuple[list[int], dict[str, list[float]]]] = {}

    def record(self, class_name: str, endpoint_id: str) -> None:
        entry = self._classes.get(class_name)
        if entry is None:
            entry = ([0], {})
            self._classes[class_name] = entry
        count, weights = entry
        count[0] += 1
        n = count[0]
        w = weights.get(endpoint_id)
        if w is None:
            weights[endpoint_id] = [self._alpha, float(n)]
        else:
            w[0] = w[0] * self._keep ** (n - w[1]) + self._alpha
            w[1] = float(n)

    def share(self, class_name: str, endpoint_id: str) -> float:
        entry = self._classes.get(class_name)
        if entry is None:
            return 0.0
        count, weights = entry
        w = weights.get(endpoint_id)
        if w is None:
            return 0.0
        n = count[0]
        total = 1.0 - self._keep**n
        return min(1.0, w[0] * self._keep ** (n - w[1]) / total) if total > 0.0 else 0.0


_PREFILL, _POWER, _EXPIRY = 0, 1, 2


class ReservationLedger:
    """The live leases and their totals (module docstring has the contracts).

    ``affinity_memory_placements``: memory of the :class:`PlanTracker`. ``correction_weight``: weight of a
    new observation in the exponentially averaged latency corrections; ``correction_bounds``: the range a
    single observed/predicted ratio is clipped to before averaging (one wild report cannot swing it).
    """

    def __init__(
        self,
        *,
        affinity_memory_placements: int = 64,
        correction_weight: float = 0.02,
        correction_bounds: tuple[float, float] = (0.25, 4.0),
    ) -> None:
        if not 0.0 < correction_weight <= 1.0:
            raise ValueError(f"correction_weight: must be in (0, 1], got {correction_weight}")
        lo, hi = correction_bounds
        if not 0.0 < lo <= 1.0 <= hi < math.inf:
            raise ValueError(f"correction_bounds: must satisfy 0 < low <= 1 <= high, got {correction_bounds}")
        self._correction_weight = correction_weight
        self._correction_bounds = (lo, hi)
        self._now_s = -math.inf
        self._leases: dict[str, Lease] = {}
        self._booked_as: dict[str, int] = {}  # lease id -> sequence number of its reservation
        self._by_request: dict[str, str] = {}
        self._bookings: dict[str, _Booking] = {}
        self._zone_mw: dict[str, int] = {}
        self._prefill_pending: set[str] = set()
        # endpoint id -> {lease id: predicted first token, s} of its leases whose power is still booked
        self._power_by_endpoint: dict[str, dict[str, float]] = {}
        self._power_synced: FleetSnapshot | None = None  # the snapshot sync_power last applied
        # (due time, sequence, kind, lease id, reservation sequence): an event acts only on the reservation
        # it was made for (never on a later lease reusing the id) and keeps no released lease alive. Events
        # of released leases are dropped when they come due, or all at once when they outnumber the live
        # ones (so the heap stays proportional to the live leases).
        self._events: list[tuple[float, int, int, str, int]] = []
        self._seq = 0
        self._placements: dict[str, int] = {}
        self._tracker = PlanTracker(affinity_memory_placements)

    # -----------------------------------------------------------------------------------------------------
    # Reads (LedgerView)
    # -----------------------------------------------------------------------------------------------------

    def booking(self, endpoint_id: str) -> Booking:
        return self._bookings.get(endpoint_id, _NO_BOOKING)

    def reserved_power_mw(self, zone: str) -> int:
        return self._zone_mw.get(zone, 0)

    def reserved_power_w(self, zone: str) -> float:
        return self._zone_mw.get(zone, 0) / 1000.0

    def lease_for_request(self, request_id: str) -> Lease | None:
        lease_id = self._by_request.get(request_id)
        return None if lease_id is None else self._leases[lease_id]

    def lease(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def placement_count(self, model: str) -> int:
        return self._placements.get(model, 0)

    def observed_share(self, class_name: str, endpoint_id: str) -> float:
        return self._tracker.share(class_name, endpoint_id)

    @property
    def now_s(self) -> float:
        """The latest time passed to :meth:`expire` (``-inf`` before the first call)."""
        return self._now_s

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        """Live leases in reservation order."""
        return iter(tuple(self._leases.values()))

    def is_prefill_pending(self, lease_id: str) -> bool:
        return lease_id in self._prefill_pending

    def is_power_pending(self, lease_id: str) -> bool:
        lease = self._leases.get(lease_id)
        return lease is not None and self._power_booked(lease)

    # -----------------------------------------------------------------------------------------------------
    # Writes (the owner only)
    # -----------------------------------------------------------------------------------------------------

    def reserve(self, lease: Lease) -> None:
        """Book ``lease``. Time-driven parts already due at the ledger's clock are not booked at all."""
        if lease.lease_id in self._leases:
            raise ValueError(f"lease {lease.lease_id!r} is already live")
        if lease.request_id in self._by_request:
            raise ValueError(
                f"request {lease.request_id!r} already holds live lease "
                f"{self._by_request[lease.request_id]!r}"
            )
        if min(lease.prefill_tokens, lease.kv_tokens, lease.power_mw, lease.stall_us_per_step) < 0:
            raise ValueError(
                f"lease {lease.lease_id!r}: prefill_tokens, kv_tokens, power_mw and stall_us_per_step must "
                f"be >= 0, got {lease.prefill_tokens}, {lease.kv_tokens}, {lease.power_mw}, "
                f"{lease.stall_us_per_step}"
            )
        for name in ("placed_at_s", "expires_at_s", "prefill_done_at_s"):
            if not math.isfinite(getattr(lease, name)):
                raise ValueError(f"lease {lease.lease_id!r}: {name} must be finite")
        lid = lease.lease_id
        self._seq += 1
        booked_as = self._seq
        self._leases[lid] = lease
        self._booked_as[lid] = booked_as
        self._by_request[lease.request_id] = lid
        b = self._bookings.get(lease.endpoint_id)
        if b is None:
            b = _Booking()
            self._bookings[lease.endpoint_id] = b
        b.outstanding += 1
        b.kv_tokens += lease.kv_tokens
        b.output_tokens += lease.request.expected_output_tokens
        b.stall_us_per_step += lease.stall_us_per_step
        if lease.prefill_done_at_s > self._now_s and lease.prefill_tokens:
            b.queued_prefill_tokens += lease.prefill_tokens
            self._prefill_pending.add(lid)
            self._push(lease.prefill_done_at_s, _PREFILL, lid, booked_as)
        visible = lease.power_visible_at_s
        if lease.power_mw and (visible is None or visible > self._now_s):
            self._zone_mw[lease.zone] = self._zone_mw.get(lease.zone, 0) + lease.power_mw
            b.power_mw += lease.power_mw
            pending = self._power_by_endpoint.get(lease.endpoint_id)
            if pending is None:
                pending = self._power_by_endpoint[lease.endpoint_id] = {}
            pending[lid] = lease.prefill_done_at_s
            if visible is not None:
                self._push(visible, _POWER, lid, booked_as)
        self._push(lease.expires_at_s, _EXPIRY, lid, booked_as)
        if len(self._events) > 4 * len(self._leases) + 1024:
            self._compact()
        self._placements[lease.model] = self._placements.get(lease.model, 0) + 1
        self._tracker.record(lease.class_name, lease.endpoint_id)

    def release(self, lease_id: str) -> Lease | None:
        """Forget a lease; returns it, or ``None`` (and changes nothing) if it is not live."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        del self._booked_as[lease_id]
        del self._by_request[lease.request_id]
        b = self._bookings[lease.endpoint_id]
        b.outstanding -= 1
        b.kv_tokens -= lease.kv_tokens
        b.output_tokens -= lease.request.expected_output_tokens
        b.stall_us_per_step -= lease.stall_us_per_step
        if lease_id in self._prefill_pending:
            self._prefill_pending.discard(lease_id)
            b.queued_prefill_tokens -= lease.prefill_tokens
        if self._power_booked(lease):
            self._drop_power(lease)
        return lease

    def complete(
        self, lease_id: str, *, observed_ttft_ms: float | None = None, observed_tpot_ms: float | None = None
    ) -> Lease | None:
        """Release a lease and learn from what was observed; ``None`` (nothing changed) if it is not live.

        A positive, finite observation updates the endpoint's correction factor toward
        ``observed / predicted`` (TTFT net of the network latency the prediction added; clipped to the
        correction bounds) with weight ``correction_weight``. ``None`` or 0 means "not observed".
        """
        lease = self.release(lease_id)
        if lease is None:
            return None
        b = self._bookings[lease.endpoint_id]
        p = lease.prediction
        if observed_ttft_ms and math.isfinite(observed_ttft_ms) and p.profile_ttft_ms > 0.0:
            engine_ms = max(0.0, observed_ttft_ms - p.network_latency_ms)
            b.ttft_factor = self._corrected(b.ttft_factor, engine_ms / p.profile_ttft_ms)
        if observed_tpot_ms and math.isfinite(observed_tpot_ms) and p.profile_tpot_ms > 0.0:
            b.tpot_factor = self._corrected(b.tpot_factor, observed_tpot_ms / p.profile_tpot_ms)
        return lease

    def expire(self, now_s: float) -> list[Lease]:
        """Advance the clock to ``now_s`` and retire what is due; returns the leases that expired.

        Due prefill stops counting as queued, due power stops counting against its zone, and leases whose
        ``expires_at_s <= now_s`` are released (also when ``now_s`` equals the clock: bookings made since
        may already be due). A ``now_s`` earlier than the clock changes nothing.
        """
        if not math.isfinite(now_s):
            raise ValueError(f"now_s: must be finite, got {now_s!r}")
        if now_s < self._now_s:
            return []
        self._now_s = now_s
        expired: list[Lease] = []
        events = self._events
        booked_as = self._booked_as
        while events and events[0][0] <= now_s:
            _, _, kind, lid, seq = heapq.heappop(events)
            if booked_as.get(lid) != seq:
                continue  # released since
            lease = self._leases[lid]
            if kind == _PREFILL:
                if lid in self._prefill_pending:
                    self._prefill_pending.discard(lid)
                    self._bookings[lease.endpoint_id].queued_prefill_tokens -= lease.prefill_tokens
            elif kind == _POWER:
                if self._power_booked(lease):
                    self._drop_power(lease)
            elif lease.expires_at_s <= now_s:
                self.release(lid)
                expired.append(lease)
        return expired

    def power_shown(self, endpoint_id: str, observed_at_s: float) -> int:
        """The endpoint reported its draw as sampled at ``observed_at_s``: stop booking the power of its
        leases whose predicted first token came by then (the sample includes them). Returns the
        milliwatts released."""
        pending = self._power_by_endpoint.get(endpoint_id)
        if not pending:
            return 0
        due = [lid for lid, first_token_s in pending.items() if first_token_s <= observed_at_s]
        released = 0
        for lid in due:
            lease = self._leases[lid]
            released += lease.power_mw
            self._drop_power(lease)
        return released

    def sync_power(self, snapshot: FleetSnapshot) -> int:
        """Apply :meth:`power_shown` for every endpoint holding booked power whose latest report in
        ``snapshot`` is fresher than some of it (report time: ``min(observed_at_s, received_at_s)``, as
        the fleet store dates a sample). O(endpoints with booked power), and nothing for the snapshot it
        last applied: call it before each decision. Returns the milliwatts released.
        """
        if snapshot is self._power_synced:
            return 0
        self._power_synced = snapshot
        released = 0
        by_id = snapshot.by_id
        for endpoint_id in tuple(self._power_by_endpoint):
            state = by_id.get(endpoint_id)
            if state is None:
                continue
            load = state.load
            observed, received = load.observed_at_s, load.received_at_s
            if observed is None or received is None:
                continue
            released += self.power_shown(endpoint_id, observed if observed < received else received)
        return released

    # -----------------------------------------------------------------------------------------------------

    def _push(self, due_s: float, kind: int, lease_id: str, booked_as: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (due_s, self._seq, kind, lease_id, booked_as))

    def _compact(self) -> None:
        """Drop the events of released leases (amortised O(1) per reservation)."""
        booked_as = self._booked_as
        self._events = [e for e in self._events if booked_as.get(e[3]) == e[4]]
        heapq.heapify(self._events)

    @property
    def pending_events(self) -> int:
        """Time-driven events held (live leases' and not yet dropped released ones'): for tests, metrics."""
        return len(self._events)

    def _power_booked(self, lease: Lease) -> bool:
        """Whether the live ``lease`` still books its power."""
        pending = self._power_by_endpoint.get(lease.endpoint_id)
        return pending is not None and lease.lease_id in pending

    def _drop_power(self, lease: Lease) -> None:
        """Stop booking a power-pending lease's milliwatts on its zone and endpoint."""
        lid = lease.lease_id
        zone = lease.zone
        left = self._zone_mw[zone] - lease.power_mw
        if left:
            self._zone_mw[zone] = left
        else:
            del self._zone_mw[zone]
        self._bookings[lease.endpoint_id].power_mw -= lease.power_mw
        pending = self._power_by_endpoint[lease.endpoint_id]
        del pending[lid]
        if not pending:
            del self._power_by_endpoint[lease.endpoint_id]

    def _corrected(self, factor: float, ratio: float) -> float:
        lo, hi = self._correction_bounds
        ratio = min(hi, max(lo, ratio))
        w = self._correction_weight
        return (1.0 - w) * factor + w * ratio
