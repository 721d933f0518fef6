"""The fleet store: the one writer of live state, publishing immutable, versioned snapshots.

Readers (the router per decision, the planner in a worker thread, the HTTP debug pages) call
:meth:`FleetStore.snapshot` once and work on that value; nothing they hold ever changes under them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from types import MappingProxyType
from typing import TypeVar

from fleet.telemetry import TelemetryRejection, validate_sample
from fleet.types import (
    DrainReason,
    DrainState,
    EndpointLoad,
    EndpointSpec,
    EndpointState,
    EndpointStatus,
    FleetSnapshot,
    TelemetrySample,
    ZoneSpec,
)

__all__ = ["FleetStore", "ModelledPowerFn"]

_T = TypeVar("_T")

ModelledPowerFn = Callable[[EndpointSpec, EndpointLoad], float]
"""Watts an endpoint draws at a load, used where no fresh power reading exists."""


class FleetStore:
    """Live state of every configured endpoint; publishes a new :class:`FleetSnapshot` on each change.

    Contract:

    - **One writer.** ``apply``, ``drain``, ``undrain`` and ``refresh`` must all be called from one
      thread (the event loop's). The first of these calls binds that thread; a call from another
      thread raises :class:`RuntimeError`. ``snapshot`` and ``pool_endpoint_ids`` may be called from
      any thread: publishing is a single reference assignment of a fully built snapshot.
    - **Immutable snapshots.** A published snapshot is never modified: every publish builds new
      tuples and dicts (copying the previous ones, replacing only changed endpoints: copy-on-write)
      wrapped in ``MappingProxyType``; states, specs and zones are frozen dataclasses.
    - **Versions** start at 1 (the snapshot built at construction) and increase by exactly one per
      publish. A call that changes nothing publishes nothing.
    - **Status** of an endpoint, by precedence: DRAINED (drained by an operator or a spot notice) >
      UNHEALTHY (it last reported ``healthy=False``) > STALE (it expects telemetry and its freshest
      report is older than ``stale_after_s``; an endpoint that never reported counts from the store's
      start ``now_s``) > READY. A report's age is measured from ``min(observed_at_s, received_at_s)``,
      so neither an endpoint clock running ahead nor a late delivery makes old data look fresh.
      Endpoints with ``expects_telemetry=False`` are never stale. Staleness of endpoints no call
      touched is re-evaluated only by :meth:`refresh`: call it periodically (the scraper does each round).
    - **Zone power** is, per zone, the sum over its endpoints of the last reported ``power_w`` where
      that reading is itself no older than ``stale_after_s``, else ``modelled_power_w(spec, load)``.
      Drained and unhealthy endpoints still count: they still draw power. The snapshot's
      ``zone_ineligible_power_w`` is the part of it drawn by endpoints whose status is not READY.
    - **Bad telemetry** is rejected per sample (see :func:`fleet.telemetry.validate_sample`) and leaves
      everything already stored untouched; ``apply`` returns the rejections for the caller to count.
    """

    def __init__(
        self,
        endpoints: Sequence[EndpointSpec],
        zones: Sequence[ZoneSpec],
        *,
        stale_after_s: float,
        max_future_skew_s: float,
        now_s: float,
        modelled_power_w: ModelledPowerFn,
    ) -> None:
        if not (math.isfinite(stale_after_s) and stale_after_s > 0):
            raise ValueError(f"stale_after_s must be a finite number > 0, got {stale_after_s!r}")
        if not (math.isfinite(max_future_skew_s) and max_future_skew_s >= 0):
            raise ValueError(f"max_future_skew_s must be a finite number >= 0, got {max_future_skew_s!r}")
        _check_time(now_s)
        zone_by_name: dict[str, ZoneSpec] = {}
        for zone in zones:
            if zone.name in zone_by_name:
                raise ValueError(f"duplicate zone {zone.name!r}")
            zone_by_name[zone.name] = zone
        specs: dict[str, EndpointSpec] = {}
        for spec in endpoints:
            if spec.endpoint_id in specs:
                raise ValueError(f"duplicate endpoint id {spec.endpoint_id!r}")
            if spec.zone not in zone_by_name:
                raise ValueError(
                    f"endpoint {spec.endpoint_id!r} is in unknown zone {spec.zone!r} "
                    f"(known: {', '.join(sorted(zone_by_name)) or 'none'})"
                )
            specs[spec.endpoint_id] = spec

        self._stale_after_s = float(stale_after_s)
        self._max_future_skew_s = float(max_future_skew_s)
        self._started_at_s = float(now_s)
        self._modelled_power_w = modelled_power_w
        self._writer_thread: int | None = None

        # Configuration, fixed for the store's life.
        self._ids: tuple[str, ...] = tuple(sorted(specs))
        self._specs: dict[str, EndpointSpec] = {eid: specs[eid] for eid in self._ids}
        self._position: dict[str, int] = {eid: i for i, eid in enumerate(self._ids)}
        self._zone_members = _group(self._ids, lambda eid: self._specs[eid].zone, zone_by_name)
        self._model_members = _group(self._ids, lambda eid: self._specs[eid].model, {})
        self._pool_members = _group(self._ids, lambda eid: self._specs[eid].pool, {})
        self._pick_model = {m: _tuple_getter(ids) for m, ids in self._model_members.items()}
        self._pick_zone = {z: _tuple_getter(ids) for z, ids in self._zone_members.items()}

        # Working state, touched only by the writer thread.
        self._loads: dict[str, EndpointLoad] = {eid: EndpointLoad() for eid in self._ids}
        self._drains: dict[str, DrainState] = {}
        self._power_at_s: dict[str, float] = {}  # when the last power_w reading was observed
        self._modelled_w: dict[str, float] = {
            eid: self._model_power(eid, self._loads[eid]) for eid in self._ids
        }
        self._power_w: dict[str, float] = {eid: self._power_of(eid, now_s) for eid in self._ids}

        # The dicts behind the latest snapshot's read-only proxies. Never modified once published:
        # the next publish copies them (dict.copy is a fast C copy; copying through the proxy is not).
        states = tuple(self._state_of(eid, now_s) for eid in self._ids)
        self._published_by_id: dict[str, EndpointState] = {s.endpoint_id: s for s in states}
        self._published_by_model: dict[str, tuple[EndpointState, ...]] = {
            m: pick(self._published_by_id) for m, pick in self._pick_model.items()
        }
        self._published_zone_power_w: dict[str, float] = {
            z: math.fsum(pick(self._power_w)) for z, pick in self._pick_zone.items()
        }
        self._published_zone_ineligible_power_w: dict[str, float] = {
            z: self._ineligible_power_w(z, self._published_by_id) for z in self._pick_zone
        }
        self._snapshot = FleetSnapshot(
            version=1,
            taken_at_s=float(now_s),
            endpoints=states,
            by_id=MappingProxyType(self._published_by_id),
            by_model=MappingProxyType(self._published_by_model),
            zones=MappingProxyType(dict(zone_by_name)),
            zone_power_w=MappingProxyType(self._published_zone_power_w),
            zone_ineligible_power_w=MappingProxyType(self._published_zone_ineligible_power_w),
        )

    # --- readers (any thread) -------------------------------------------------------------------

    def snapshot(self) -> FleetSnapshot:
        """The latest published snapshot (O(1), any thread)."""
        return self._snapshot

    def pool_endpoint_ids(self, pool: str) -> tuple[str, ...]:
        """Ids of a pool's endpoints, sorted. :class:`KeyError` naming the pool if it is unknown."""
        try:
            return self._pool_members[pool]
        except KeyError:
            raise KeyError(
                f"unknown pool {pool!r} (known: {', '.join(sorted(self._pool_members)) or 'none'})"
            ) from None

    @property
    def stale_after_s(self) -> float:
        return self._stale_after_s

    @property
    def started_at_s(self) -> float:
        return self._started_at_s

    # --- writers (the one writer thread) --------------------------------------------------------

    def apply(self, samples: Sequence[TelemetrySample], now_s: float) -> list[TelemetryRejection]:
        """Validate each sample alone, apply the good ones in order, publish once if any was applied.

        ``None`` fields of a sample keep the stored value; ``received_at_s`` becomes ``now_s``. Samples
        for one endpoint within a batch must come in time order like samples across batches.
        Returns the rejected samples (their index in ``samples``, the field and the rule).
        """
        self._check_writer()
        _check_time(now_s)
        rejections: list[TelemetryRejection] = []
        changed: set[str] = set()
        for index, sample in enumerate(samples):
            problem = validate_sample(
                sample, known=self._loads, now_s=now_s, max_future_skew_s=self._max_future_skew_s
            )
            if problem is not None:
                field, rule = problem
                rejections.append(TelemetryRejection(index, str(sample.endpoint_id), field, rule))
                continue
            eid = sample.endpoint_id
            load = _merge(self._loads[eid], sample, received_at_s=float(now_s))
            self._loads[eid] = load
            if sample.power_w is not None:
                self._power_at_s[eid] = min(float(sample.observed_at_s), float(now_s))
            self._modelled_w[eid] = self._model_power(eid, load)
            changed.add(eid)
        if changed:
            self._publish(changed, now_s)
        return rejections

    def drain(
        self,
        endpoint_ids: Iterable[str],
        reason: DrainReason,
        deadline_s: float | None,
        now_s: float,
    ) -> list[str]:
        """Drain endpoints (no new work) from this call's snapshot on. Ids whose state changed.

        Draining an endpoint already drained with the same reason and deadline changes nothing; a
        different reason or deadline replaces its drain state (``since_s`` is kept).
        :class:`KeyError` naming every unknown id, raised before anything changes.
        """
        self._check_writer()
        _check_time(now_s)
        if not isinstance(reason, DrainReason):
            raise TypeError(f"reason must be a DrainReason, not {type(reason).__name__}")
        if deadline_s is not None and not math.isfinite(deadline_s):
            raise ValueError(f"deadline_s must be finite or None, got {deadline_s!r}")
        ids = self._known_ids(endpoint_ids)
        changed: list[str] = []
        for eid in ids:
            current = self._drains.get(eid)
            if current is not None and current.reason is reason and current.deadline_s == deadline_s:
                continue
            since_s = current.since_s if current is not None else float(now_s)
            self._drains[eid] = DrainState(reason=reason, since_s=since_s, deadline_s=deadline_s)
            changed.append(eid)
        if changed:
            self._publish(set(changed), now_s)
        return changed

    def undrain(self, endpoint_ids: Iterable[str], now_s: float) -> list[str]:
        """Return drained endpoints to service. Ids whose state changed (those that were drained).

        :class:`KeyError` naming every unknown id, raised before anything changes.
        """
        self._check_writer()
        _check_time(now_s)
        ids = self._known_ids(endpoint_ids)
        changed = [eid for eid in ids if self._drains.pop(eid, None) is not None]
        if changed:
            self._publish(set(changed), now_s)
        return changed

    def refresh(self, now_s: float) -> bool:
        """Re-evaluate staleness (and power-reading freshness) of every endpoint at ``now_s``.

        Publishes one snapshot and returns True if any endpoint's status or zone power contribution
        changed; otherwise publishes nothing and returns False. O(endpoints), no allocation when
        nothing changed.
        """
        self._check_writer()
        _check_time(now_s)
        current = self._snapshot.by_id
        changed = {
            eid
            for eid in self._ids
            if self._status_of(eid, now_s) is not current[eid].status
            or self._power_of(eid, now_s) != self._power_w[eid]
        }
        if changed:
            self._publish(changed, now_s)
        return bool(changed)

    # --- internals ------------------------------------------------------------------------------

    def _check_writer(self) -> None:
        me = threading.get_ident()
        if self._writer_thread is None:
            self._writer_thread = me
        elif self._writer_thread != me:
            raise RuntimeError("FleetStore is written from one thread only (the event loop's)")

    def _known_ids(self, endpoint_ids: Iterable[str]) -> list[str]:
        if isinstance(endpoint_ids, str):
            raise TypeError("endpoint_ids must be a collection of ids, not one str")
        ids = list(dict.fromkeys(endpoint_ids))  # de-duplicated, in order
        unknown = [eid for eid in ids if eid not in self._specs]
        if unknown:
            raise KeyError(f"unknown endpoint ids: {', '.join(map(repr, unknown))}")
        return ids

    def _model_power(self, eid: str, load: EndpointLoad) -> float:
        watts = float(self._modelled_power_w(self._specs[eid], load))
        if not (math.isfinite(watts) and watts >= 0):
            raise ValueError(f"modelled_power_w gave {watts!r} W for endpoint {eid!r}; must be finite >= 0")
        return watts

    def _fresh_since_s(self, eid: str) -> float:
        load = self._loads[eid]
        if load.observed_at_s is None or load.received_at_s is None:
            return self._started_at_s
        return min(load.observed_at_s, load.received_at_s)

    def _status_of(self, eid: str, now_s: float) -> EndpointStatus:
        if eid in self._drains:
            return EndpointStatus.DRAINED
        if not self._loads[eid].healthy:
            return EndpointStatus.UNHEALTHY
        if self._specs[eid].expects_telemetry and now_s - self._fresh_since_s(eid) > self._stale_after_s:
            return EndpointStatus.STALE
        return EndpointStatus.READY

    def _power_of(self, eid: str, now_s: float) -> float:
        """This endpoint's share of its zone's power: a fresh reading, else the model."""
        reported = self._loads[eid].power_w
        power_at_s = self._power_at_s.get(eid)
        if reported is not None and power_at_s is not None and now_s - power_at_s <= self._stale_after_s:
            return float(reported)
        return self._modelled_w[eid]

    def _ineligible_power_w(self, zone: str, by_id: Mapping[str, EndpointState]) -> float:
        """Watts drawn in ``zone`` by endpoints that may not take new work, per the states ``by_id``."""
        return math.fsum(self._power_w[eid] for eid in self._zone_members[zone] if not by_id[eid].eligible)

    def _state_of(self, eid: str, now_s: float) -> EndpointState:
        return EndpointState(
            spec=self._specs[eid],
            load=self._loads[eid],
            status=self._status_of(eid, now_s),
            drain=self._drains.get(eid),
        )

    def _publish(self, changed: set[str], now_s: float) -> None:
        """Build the next snapshot from the previous one, replacing only ``changed`` endpoints."""
        previous = self._snapshot
        endpoints = list(previous.endpoints)
        by_id = self._published_by_id.copy()
        models: set[str] = set()
        zones: set[str] = set()
        ineligible_zones: set[str] = set()  # zones whose ineligible endpoints or their draw changed
        for eid in changed:
            state = self._state_of(eid, now_s)
            was_eligible = by_id[eid].eligible
            endpoints[self._position[eid]] = state
            by_id[eid] = state
            spec = self._specs[eid]
            models.add(spec.model)
            power_w = self._power_of(eid, now_s)
            power_changed = power_w != self._power_w[eid]
            if power_changed:
                self._power_w[eid] = power_w
                zones.add(spec.zone)
            if was_eligible != state.eligible or (power_changed and not state.eligible):
                ineligible_zones.add(spec.zone)
        by_model = self._published_by_model.copy()
        for model in models:
            by_model[model] = self._pick_model[model](by_id)
        zone_power_w = self._published_zone_power_w.copy()
        for zone in zones:
            zone_power_w[zone] = math.fsum(self._pick_zone[zone](self._power_w))
        zone_ineligible_power_w = self._published_zone_ineligible_power_w
        if ineligible_zones:
            zone_ineligible_power_w = zone_ineligible_power_w.copy()
            for zone in ineligible_zones:
                zone_ineligible_power_w[zone] = self._ineligible_power_w(zone, by_id)
        self._published_by_id = by_id
        self._published_by_model = by_model
        self._published_zone_power_w = zone_power_w
        self._published_zone_ineligible_power_w = zone_ineligible_power_w
        self._snapshot = FleetSnapshot(
            version=previous.version + 1,
            taken_at_s=float(now_s),
            endpoints=tuple(endpoints),
            by_id=MappingProxyType(by_id),
            by_model=MappingProxyType(by_model),
            zones=previous.zones,
            zone_power_w=MappingProxyType(zone_power_w),
            zone_ineligible_power_w=MappingProxyType(zone_ineligible_power_w),
        )


def _group(
    ids: Sequence[str], key: Callable[[str], str], seed: Mapping[str, object]
) -> dict[str, tuple[str, ...]]:
    """Ids (already sorted) grouped by ``key``; every name in ``seed`` gets a group, maybe empty."""
    groups: dict[str, list[str]] = {name: [] for name in seed}
    for eid in ids:
        groups.setdefault(key(eid), []).append(eid)
    return {name: tuple(members) for name, members in groups.items()}


def _merge(load: EndpointLoad, sample: TelemetrySample, *, received_at_s: float) -> EndpointLoad:
    """The load after a validated sample: its non-None fields replace the stored ones."""

    def pick(new: _T | None, old: _T) -> _T:
        return old if new is None else new

    return EndpointLoad(
        running_requests=pick(sample.running_requests, load.running_requests),
        waiting_requests=pick(sample.waiting_requests, load.waiting_requests),
        kv_cache_usage_ratio=pick(sample.kv_cache_usage_ratio, load.kv_cache_usage_ratio),
        power_w=pick(sample.power_w, load.power_w),
        utilization_ratio=pick(sample.utilization_ratio, load.utilization_ratio),
        observed_ttft_ms=pick(sample.observed_ttft_ms, load.observed_ttft_ms),
        observed_tpot_ms=pick(sample.observed_tpot_ms, load.observed_tpot_ms),
        healthy=pick(sample.healthy, load.healthy),
        observed_at_s=float(sample.observed_at_s),
        received_at_s=received_at_s,
    )


def _tuple_getter(keys: tuple[str, ...]) -> Callable[[Mapping[str, _T]], tuple[_T, ...]]:
    """``d -> tuple(d[k] for k in keys)``, done in C by ``itemgetter`` (which needs 2+ keys for a tuple)."""
    if len(keys) >= 2:
        return itemgetter(*keys)
    if len(keys) == 1:
        only = keys[0]
        return lambda d: (d[only],)
    return lambda _d: ()


def _check_time(now_s: float) -> None:
    if not (isinstance(now_s, int | float) and math.isfinite(now_s)):
        raise ValueError(f"now_s must be a finite number of unix seconds, got {now_s!r}")
