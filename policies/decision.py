"""Decisions of a placement policy, and the machinery every policy shares.

A policy answers ``place(request, snapshot, plan, ledger, now_s)`` with a :data:`PlaceDecision`: either
:class:`Placed` (the chosen endpoint and up to ``max_fallbacks`` fallbacks, each with its predictions) or
:class:`Refused` (the binding reason, a message and a retry delay). The caller, the owner of the ledger,
books a placement with ``ledger.reserve(policy.lease_for(placed, lease_id, now_s))``.

:class:`PolicyCore` holds what is common to the "turnout" policy and the baselines: the per-snapshot index
of endpoints by model (built lazily, once per snapshot version and model), serving profiles memoised per
endpoint spec, the plan's shares inverted per class (once per plan), idempotent replay, refusals with their
binding reason and retry delay, and leases. Memoisation only ever caches pure functions of immutable
values, so a policy object's answers depend on its arguments alone.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Protocol

from fleet.types import EndpointSpec, EndpointState, FleetSnapshot, Precision, ServingProfile, ZoneSpec
from policies.config import PolicyConfig
from policies.demand import classify
from policies.filters.capacity import request_kv_tokens
from policies.filters.eligible import EligibleFilter
from policies.framework import Candidate, CycleContext, Rejection, RejectReason
from policies.ledger import Lease, LedgerView
from policies.predict import Target, in_flight
from policies.types import PlacementRequest, Plan, TrafficClass

__all__ = [
    "BindingReason",
    "PlaceDecision",
    "Placed",
    "PlacementReason",
    "Policy",
    "PolicyCore",
    "Refused",
    "RequestIdConflict",
    "ServingLookup",
    "UnknownModelError",
    "serving_lookup",
]

ServingLookup = Callable[[EndpointSpec], ServingProfile]
"""The serving profile of an endpoint (the performance model, or a measured profile where supplied)."""


class _ProfileSource(Protocol):
    def profile(
        self, model: str, instance_type: str, tp_degree: int, precision: Precision, /
    ) -> ServingProfile: ...


def serving_lookup(source: _ProfileSource) -> ServingLookup:
    """Adapts an object with ``profile(model, instance_type, tp_degree, precision)`` (the performance
    model) to a :data:`ServingLookup`."""

    def lookup(spec: EndpointSpec) -> ServingProfile:
        return source.profile(spec.model, spec.instance_type, spec.tp_degree, spec.precision)

    return lookup


class PlacementReason(enum.Enum):
    PLAN = "plan"  # followed a fresh plan
    PLAN_SPILL = "plan_spill"  # a fresh plan, but none of its endpoints for the class was feasible
    NO_PLAN = "no_plan"  # no plan yet (or a policy that uses none)
    STALE_PLAN = "stale_plan"  # the plan is older than max_plan_age_s
    IDEMPOTENT_REPLAY = "idempotent_replay"  # a retried request id with a live lease


class BindingReason(enum.Enum):
    """Why nothing could take the request (``google.rpc.ErrorInfo`` reason)."""

    SLO = "slo"
    CAPACITY = "capacity"
    POWER = "power"
    CONTEXT = "context"
    SHED = "shed"


_BINDING = {
    RejectReason.NOT_SERVING_MODEL: BindingReason.CAPACITY,
    RejectReason.NOT_ALLOWED: BindingReason.CAPACITY,
    RejectReason.NOT_ELIGIBLE: BindingReason.CAPACITY,
    RejectReason.CONTEXT: BindingReason.CONTEXT,
    RejectReason.CAPACITY: BindingReason.CAPACITY,
    RejectReason.SLO_TTFT: BindingReason.SLO,
    RejectReason.SLO_TPOT: BindingReason.SLO,
    RejectReason.POWER: BindingReason.POWER,
    RejectReason.SHED: BindingReason.SHED,
}


class UnknownModelError(LookupError):
    """No endpoint of the snapshot serves the model (NOT_FOUND at the edge)."""

    def __init__(self, model: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown model {model!r}; known models: {', '.join(known) or 'none'}")
        self.model = model
        self.known = tuple(known)


class RequestIdConflict(ValueError):
    """A live lease holds this request id for a different request."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(
            f"request_id {lease.request_id!r} is in use by a different live request (lease {lease.lease_id})"
        )
        self.lease = lease


@dataclass(frozen=True, slots=True)
class Placed:
    """Where to run the request. ``lease_id`` is empty until booked (set on the lease's copy and on
    idempotent replays). ``replan_requested``: the plan could not absorb this request; the caller should
    ask the planner for an early re-plan (rate-limited on its side)."""

    request: PlacementRequest
    traffic_class: TrafficClass
    chosen: Candidate
    fallbacks: tuple[Candidate, ...]
    reason: PlacementReason
    plan_generation: int
    replan_requested: bool
    snapshot_version: int
    policy: str
    lease_id: str = ""
    plugin_seconds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing can take the request now.

    ``retry_after_s`` is the expected time until the binding constraint eases (the drain time of the
    queue that blocks it), or ``None`` when waiting cannot help (the request does not fit any endpoint's
    context, or its own constraints exclude every endpoint). ``rejections`` counts endpoints per reason;
    ``detail`` is the binding rejection's own text.
    """

    request: PlacementRequest
    traffic_class: TrafficClass
    reason: BindingReason
    message: str
    detail: str
    retry_after_s: float | None
    rejections: tuple[tuple[RejectReason, int], ...]
    plan_generation: int
    replan_requested: bool
    snapshot_version: int
    policy: str
    plugin_seconds: tuple[tuple[str, float], ...] = ()


PlaceDecision = Placed | Refused


class Policy(Protocol):
    """A placement policy selected by name in config ("turnout" or a baseline).

    Contract: pure and synchronous; reads ``snapshot``, ``plan`` and ``ledger`` and changes none of them;
    deterministic in its arguments. A placement's candidates have passed every filter of the policy's
    profile (at least: eligible, allowed, context, capacity). ``UnknownModelError`` if no endpoint serves
    the model; ``RequestIdConflict`` if a live lease holds the request id for a different request.
    """

    name: str

    def place(
        self, request: PlacementRequest, snapshot: FleetSnapshot, plan: Plan, ledger: LedgerView, now_s: float
    ) -> PlaceDecision: ...

    def lease_for(self, placed: Placed, lease_id: str, now_s: float) -> Lease: ...


class _ModelTargets:
    __slots__ = ("by_reference_cost", "eligible", "ineligible", "states", "zones")

    def __init__(
        self,
        states: tuple[EndpointState, ...],
        zones: Mapping[str, ZoneSpec],
        eligible: tuple[Target, ...],
        ineligible: tuple[Target, ...],
    ) -> None:
        self.states = states
        self.zones = zones
        self.eligible = eligible
        self.ineligible = ineligible
        self.by_reference_cost = tuple(sorted(eligible, key=lambda t: (t.reference_cost_usd, t.endpoint_id)))


_NO_SHARES: Mapping[str, float] = MappingProxyType({})
_ELIGIBLE = EligibleFilter()


class PolicyCore:
    """Shared machinery of the policies (module docstring).

    A policy object keeps memoisation caches, so it is not thread-safe: use it from one thread (the
    router's event loop), like the ledger it reads.
    """

    _BATCH_LIMIT_MAX_ENTRIES = 65536

    def __init__(
        self,
        name: str,
        config: PolicyConfig,
        serving: ServingLookup,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._serving = serving
        self._clock = clock
        self._serving_by_endpoint: dict[str, tuple[EndpointSpec, ServingProfile]] = {}
        self._target_by_endpoint: dict[str, Target] = {}
        self._snapshot: FleetSnapshot | None = None
        self._by_model: dict[str, _ModelTargets] = {}  # for self._snapshot
        self._last_by_model: dict[str, _ModelTargets] = {}  # latest built, any snapshot
        self._plan: Plan | None = None
        self._class_shares: dict[str, Mapping[str, float]] = {}
        self._batch_limit: dict[tuple[int, float, int, int], int] = {}
        self._k = 1 + config.max_fallbacks

    # -- indexes ------------------------------------------------------------------------------------------

    def _serving_of(self, spec: EndpointSpec) -> ServingProfile:
        hit = self._serving_by_endpoint.get(spec.endpoint_id)
        if hit is not None and (hit[0] is spec or hit[0] == spec):
            return hit[1]
        profile = self._serving(spec)
        self._serving_by_endpoint[spec.endpoint_id] = (spec, profile)
        return profile

    def _target(self, state: EndpointState, zones: Mapping[str, ZoneSpec]) -> Target:
        """The target of ``state``, reused while the store hands out the same state object (copy-on-write
        snapshots keep unchanged endpoints' states) and the same zone."""
        spec = state.spec
        t = self._target_by_endpoint.get(spec.endpoint_id)
        zone = zones.get(spec.zone)
        if t is not None and t.state is state and t.zone_spec is zone:
            return t
        t = Target(state, self._serving_of(spec), zone)
        self._target_by_endpoint[spec.endpoint_id] = t
        return t

    def targets(self, snapshot: FleetSnapshot, model: str) -> tuple[tuple[Target, ...], tuple[Target, ...]]:
        """(eligible, ineligible) endpoints serving ``model`` on ``snapshot``, by endpoint id."""
        entry = self._entry(snapshot, model)
        return entry.eligible, entry.ineligible

    def eligible_by_reference_cost(self, snapshot: FleetSnapshot, model: str) -> tuple[Target, ...]:
        """The eligible endpoints of ``model`` by their static reference cost (then id), cheapest first."""
        return self._entry(snapshot, model).by_reference_cost

    def _entry(self, snapshot: FleetSnapshot, model: str) -> _ModelTargets:
        """The index entry of ``model`` on ``snapshot``.

        Built once per snapshot and model; across snapshot versions, unchanged endpoints reuse their
        targets, and an unchanged tuple of states reuses the whole entry.
        """
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._by_model = {}
        entry = self._by_model.get(model)
        if entry is None:
            states = snapshot.by_model.get(model)
            if not states:
                raise UnknownModelError(model, snapshot.models)
            last = self._last_by_model.get(model)
            zones = snapshot.zones
            if last is not None and last.states is states and last.zones is zones:
                entry = last
            else:
                built = [self._target(s, zones) for s in states]
                built.sort(key=lambda t: t.endpoint_id)
                entry = _ModelTargets(
                    states,
                    zones,
                    tuple(t for t in built if t.state.eligible),
                    tuple(t for t in built if not t.state.eligible),
                )
                self._last_by_model[model] = entry
            self._by_model[model] = entry
        return entry

    def class_shares(self, plan: Plan, class_name: str) -> Mapping[str, float]:
        """The plan's shares of ``class_name`` per endpoint, normalised to sum to 1 (empty if none)."""
        if plan is not self._plan:
            self._plan = plan
            raw: dict[str, dict[str, float]] = {}
            for endpoint_id, per_class in plan.share.items():
                for cls, share in per_class.items():
                    if share > 0.0 and math.isfinite(share):
                        raw.setdefault(cls, {})[endpoint_id] = share
            shares: dict[str, Mapping[str, float]] = {}
            for cls, per_endpoint in raw.items():
                total = sum(per_endpoint.values())
                shares[cls] = MappingProxyType({e: s / total for e, s in sorted(per_endpoint.items())})
            self._class_shares = shares
        return self._class_shares.get(class_name, _NO_SHARES)

    def classify(self, request: PlacementRequest) -> TrafficClass:
        return classify(
            request.model,
            request.input_tokens,
            request.expected_output_tokens,
            request.priority,
            self.config.buckets,
        )

    def context(
        self,
        request: PlacementRequest,
        traffic_class: TrafficClass,
        snapshot: FleetSnapshot,
        plan: Plan,
        ledger: LedgerView,
        now_s: float,
        planned_share: Mapping[str, float] = _NO_SHARES,
    ) -> CycleContext:
        if len(self._batch_limit) > self._BATCH_LIMIT_MAX_ENTRIES:
            self._batch_limit.clear()
        return CycleContext(
            request=request,
            traffic_class=traffic_class,
            snapshot=snapshot,
            plan=plan,
            ledger=ledger,
            now_s=now_s,
            config=self.config,
            planned_share=planned_share,
            batch_limit=self._batch_limit,
            clock=self._clock,
        )

    # -- shared steps -------------------------------------------------------------------------------------

    def replay(self, request: PlacementRequest, ledger: LedgerView) -> Placed | None:
        """The live placement of a retried request id, or ``None``; ``RequestIdConflict`` on a mismatch."""
        lease = ledger.lease_for_request(request.request_id)
        if lease is None:
            return None
        if lease.request != request:
            raise RequestIdConflict(lease)
        return replace(lease.placement, reason=PlacementReason.IDEMPOTENT_REPLAY, lease_id=lease.lease_id)

    def placed(
        self,
        ctx: CycleContext,
        ranked: Sequence[Candidate],
        reason: PlacementReason,
        *,
        plan_generation: int,
        replan_requested: bool,
    ) -> Placed:
        return Placed(
            request=ctx.request,
            traffic_class=ctx.traffic_class,
            chosen=ranked[0],
            fallbacks=tuple(ranked[1 : self._k]),
            reason=reason,
            plan_generation=plan_generation,
            replan_requested=replan_requested,
            snapshot_version=ctx.snapshot.version,
            policy=self.name,
            plugin_seconds=tuple(sorted(ctx.timings.items())),
        )

    def refused(
        self,
        ctx: CycleContext,
        rejected: Sequence[tuple[Target, Rejection]],
        ineligible: Sequence[Target],
        *,
        plan_generation: int,
        replan_requested: bool,
    ) -> Refused:
        """The refusal for a request no endpoint could take (see :class:`Refused`).

        The binding reason is the most advanced :class:`RejectReason` among the rejections; the retry delay
        is the smallest drain estimate over the endpoints rejected for that reason (:meth:`drain_s`).
        """
        all_rejected = list(rejected)
        for t in ineligible:
            r = _ELIGIBLE.filter(ctx, t)
            if r is not None:
                all_rejected.append((t, r))
        counts = Counter(r.reason for _, r in all_rejected)
        req = ctx.request
        if not all_rejected:  # not reachable with a non-empty index; kept total for safety
            binding_reason, detail = RejectReason.NOT_ELIGIBLE, f"no endpoint serves {req.model}"
            best = math.inf
        else:
            top = max(counts, key=lambda r: r.rank)
            binding = [(t, r) for t, r in all_rejected if r.reason is top]
            binding_reason = top
            best = math.inf
            detail = binding[0][1].detail
            for t, r in binding:
                d = self.drain_s(ctx, t, top)
                if d < best:
                    best, detail = d, r.detail
        retry = self.config.retry.clamp(best) if math.isfinite(best) else None
        summary = ", ".join(f"{r.value}={n}" for r, n in sorted(counts.items(), key=lambda kv: kv[0].rank))
        reason = _BINDING[binding_reason]
        message = (
            f"no endpoint can take this {req.priority.value} {req.model} request now "
            f"({reason.value}): {detail}; "
            f"endpoints rejected: {summary or 'none'}"
        )
        return Refused(
            request=req,
            traffic_class=ctx.traffic_class,
            reason=reason,
            message=message,
            detail=detail,
            retry_after_s=retry,
            rejections=tuple(sorted(counts.items(), key=lambda kv: kv[0].rank)),
            plan_generation=plan_generation,
            replan_requested=replan_requested,
            snapshot_version=ctx.snapshot.version,
            policy=self.name,
            plugin_seconds=tuple(sorted(ctx.timings.items())),
        )

    def drain_s(self, ctx: CycleContext, target: Target, reason: RejectReason) -> float:
        """Expected seconds until ``target`` could take the request, for a rejection of ``reason``.

        * SLO_TTFT: the predicted TTFT's excess over the target is queued prefill work that drains at the
          endpoint's own prefill rate: ``(ttft_ms - slo.ttft_ms) / 1000`` (infinite if nothing is queued:
          the excess is the prompt itself or network latency, which waiting does not shorten).
        * SLO_TPOT, CAPACITY, POWER, SHED: the next completion frees a batch slot, KV memory and power.
          With ``n`` requests in flight each taking about ``expected_output_tokens x tpot`` to finish,
          one completes every ``expected_output_tokens x tpot / n`` on average. With nothing in flight,
          SLO_TPOT and CAPACITY cannot ease by waiting (infinite); POWER and SHED depend on the zone's
          other endpoints and take ``n = 1``.
        * NOT_ELIGIBLE: ``config.retry.ineligible_s`` (a telemetry round).
        * CONTEXT, NOT_ALLOWED, NOT_SERVING_MODEL: infinite.
        """
        if reason is RejectReason.NOT_ELIGIBLE:
            return self.config.retry.ineligible_s
        if reason in (RejectReason.CONTEXT, RejectReason.NOT_ALLOWED, RejectReason.NOT_SERVING_MODEL):
            return math.inf
        p = ctx.latency(target)
        if reason is RejectReason.SLO_TTFT:
            if p.queued_prefill_tokens == 0:
                return math.inf
            return max(0.0, p.ttft_ms - ctx.request.slo.ttft_ms) / 1000.0
        n = in_flight(target, ctx.ledger.booking(target.endpoint_id))
        if n == 0:
            if reason in (RejectReason.SLO_TPOT, RejectReason.CAPACITY):
                return math.inf
            n = 1
        return ctx.request.expected_output_tokens * p.tpot_ms / 1000.0 / n

    def lease_for(self, placed: Placed, lease_id: str, now_s: float) -> Lease:
        """The lease booking ``placed`` at ``now_s`` (its TTL: :class:`~policies.config.PolicyConfig`)."""
        if not lease_id:
            raise ValueError("lease_id: must not be empty")
        request = placed.request
        chosen = placed.chosen
        p = chosen.prediction
        worst_s = (p.ttft_ms + request.max_output_tokens * p.tpot_ms) / 1000.0
        ttl_s = min(self.config.lease_max_ttl_s, self.config.lease_grace_s + worst_s)
        visible_after = self.config.power_visible_after_s
        return Lease(
            lease_id=lease_id,
            request=request,
            class_name=placed.traffic_class.name,
            endpoint_id=chosen.endpoint_id,
            zone=chosen.endpoint.spec.zone,
            placed_at_s=now_s,
            expires_at_s=now_s + ttl_s,
            prefill_done_at_s=now_s + p.ttft_ms / 1000.0,
            prefill_tokens=request.input_tokens,
            kv_tokens=request_kv_tokens(request.input_tokens, request.expected_output_tokens),
            stall_us_per_step=math.ceil(p.prefill_ms * 1000.0 / max(1, request.expected_output_tokens)),
            power_mw=p.power_increment_mw,
            power_visible_at_s=(
                now_s + visible_after
                if visible_after is not None and chosen.endpoint.spec.expects_telemetry
                else None
            ),
            prediction=p,
            placement=replace(placed, lease_id=lease_id),
        )
