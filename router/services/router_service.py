"""The ``turnout.v1.Router`` servicer and the placement engine behind it.

A ``Place`` travels one way: convert and validate (INVALID_ARGUMENT naming field and rule, NOT_FOUND for
a model the fleet does not serve), then :class:`PlacementEngine` decides on ONE snapshot and the current
plan, books the lease, and the answer is converted back. The engine runs on the event loop, the one owner
of the reservation ledger; the policy it calls is pure and synchronous.

Behaviour
---------
* **Granted**: a ``Placement`` with the lease id, the chosen endpoint and up to three fallbacks with their
  predictions, the plan generation followed, the reason (``plan``, ``plan_spill``, ``no_plan``,
  ``stale_plan``, ``idempotent_replay``), when the lease expires and the snapshot version.
* **Idempotent**: a ``Place`` whose ``request_id`` holds a live lease answers that lease again (reason
  ``idempotent_replay``); the same id with a different request is INVALID_ARGUMENT on ``request_id``.
* **Refused**: RESOURCE_EXHAUSTED with ``google.rpc.ErrorInfo`` (the binding reason: SLO, CAPACITY, POWER,
  CONTEXT, SHED) and ``google.rpc.RetryInfo`` (when the binding queue is expected to drain) if waiting
  can help; FAILED_PRECONDITION with the ``ErrorInfo`` and no ``RetryInfo`` if it cannot (the request
  fits no endpoint's context, its own constraints exclude every endpoint, or its prompt alone misses its
  TTFT objective on an idle endpoint): retrying the same request is pointless.
* **Leases** expire after their TTL (``planner.placement.lease_grace_s`` plus the request's predicted
  worst-case duration, at most ``lease_max_ttl_s``) when no ``Complete`` comes: expired leases are swept
  before every decision and every ``Complete``, and by a periodic sweep (:meth:`PlacementEngine.expire`).
* **Complete** is idempotent on ``lease_id``: the first call releases the lease, corrects the endpoint's
  latency estimate with the observed TTFT/TPOT, attributes the cost (:func:`policies.cost.
  completion_cost_usd`) and tokens to the tenant and counts SLO misses; a later call, or one for a lease
  that expired, answers ``already_completed=true`` and changes nothing. The last
  ``planner.leases.remember_ended`` ended leases are remembered for that; any other lease is NOT_FOUND.

Every decision (placed or refused, not replays) feeds the planner loop's demand estimate with the class
the policy computed, and a decision with ``replan_requested`` asks the loop for an early re-plan.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from prometheus_client import Counter

from fleet.types import FleetSnapshot
from policies.cost import completion_cost_usd
from policies.decision import (
    Placed,
    PlacementReason,
    Policy,
    Refused,
    RequestIdConflict,
    UnknownModelError,
)
from policies.ledger import ReservationLedger
from policies.types import PlacementRequest, Plan
from router.convert.router import (
    PlacementEncoder,
    complete_response_to_proto,
    completion_input_from_proto,
    place_error_result,
    place_input_from_proto,
    refusal_error,
)
from router.errors import NotFound, RpcError
from router.metrics import OTHER_LABEL, LabelCache, TurnoutMetrics
from router.planning import PlannerLoop
from router.services.common import ServicerContext, refuse
from router.validation import (
    CompletionReport,
    PlaceContext,
    validate_completion,
    validate_place_request,
    violation,
)
from turnout.v1 import router_pb2, router_pb2_grpc

__all__ = ["CompletionResult", "PlacementEngine", "RouterService"]

PLACE_STREAM_METHOD = "turnout.v1.Router/PlaceStream"


@dataclass(frozen=True, slots=True)
class CompletionResult:
    already_completed: bool
    cost_usd: float


def _identity(key: tuple[str, ...]) -> tuple[str, ...]:
    return key


class PlacementEngine:
    """Places requests with a policy and books them in the reservation ledger (module docstring).

    ``snapshot()``/``plan()`` give the latest fleet snapshot and plan, ``clock()`` unix seconds.
    ``planner`` (optional) receives the demand and re-plan requests. Event-loop thread only.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        snapshot: Callable[[], FleetSnapshot],
        plan: Callable[[], Plan],
        clock: Callable[[], float],
        metrics: TurnoutMetrics,
        planner: PlannerLoop | None = None,
        remember_ended: int = 100_000,
        ledger: ReservationLedger | None = None,
    ) -> None:
        self.policy = policy
        self.ledger = ledger if ledger is not None else ReservationLedger()
        self._snapshot = snapshot
        self._plan = plan
        self._clock = clock
        self._metrics = metrics
        self._planner = planner
        self._remember_ended = remember_ended
        self._ended: OrderedDict[str, str] = OrderedDict()  # ended lease id -> its model
        self._lease_prefix = secrets.token_hex(6)  # lease ids of another process never collide
        self._lease_seq = itertools.count(1)
        self._replan_placed = metrics.replan_requests.labels("plan_spill")
        self._replan_refused = metrics.replan_requests.labels("refused")
        self._cost_usd: LabelCache[tuple[str, ...], Counter] = LabelCache(metrics.cost_usd, _identity)
        self._tokens: LabelCache[tuple[str, ...], Counter] = LabelCache(metrics.tokens, _identity)
        self._completions: LabelCache[tuple[str, ...], Counter] = LabelCache(metrics.completions, _identity)
        self._slo_violations: LabelCache[tuple[str, ...], Counter] = LabelCache(
            metrics.slo_violations, _identity
        )

    # --- Place

    def place(self, request: PlacementRequest) -> Placed | Refused:
        """Decides ``request`` on one snapshot and the current plan at the clock's time and books a new
        placement (a granted result carries its lease id). Raises ``UnknownModelError`` and
        ``RequestIdConflict`` as the policy does."""
        now_s = self._clock()
        self.expire(now_s)
        snapshot = self._snapshot()
        self.ledger.sync_power(snapshot)  # booked power drops once the endpoints' reports show it
        decision = self.policy.place(request, snapshot, self._plan(), self.ledger, now_s)
        if isinstance(decision, Placed):
            if decision.reason is PlacementReason.IDEMPOTENT_REPLAY:
                return decision
            lease = self.policy.lease_for(decision, f"{self._lease_prefix}-{next(self._lease_seq)}", now_s)
            self.ledger.reserve(lease)
            decision = lease.placement
        planner = self._planner
        if planner is not None:
            planner.observe(
                decision.traffic_class, now_s, request.input_tokens, request.expected_output_tokens
            )
            if decision.replan_requested:
                planner.request_replan()
        if decision.replan_requested:
            (self._replan_refused if isinstance(decision, Refused) else self._replan_placed).inc()
        return decision

    def lease_expires_at_s(self, placed: Placed) -> float:
        """When the lease of a granted placement expires."""
        lease = self.ledger.lease(placed.lease_id)
        if lease is None:  # not reachable: the lease was booked (or found live) in this same call
            raise NotFound(f"lease {placed.lease_id!r} is no longer live")
        return lease.expires_at_s

    # --- leases

    def expire(self, now_s: float) -> int:
        """Releases the leases expired by ``now_s`` (and retires due bookings); returns how many."""
        expired = self.ledger.expire(now_s)
        for lease in expired:
            self._remember(lease.lease_id, lease.model)
        if expired:
            self._metrics.leases_expired.inc(len(expired))
        return len(expired)

    def _remember(self, lease_id: str, model: str) -> None:
        if self._remember_ended <= 0:
            return
        self._ended[lease_id] = model
        if len(self._ended) > self._remember_ended:
            self._ended.popitem(last=False)

    # --- Complete

    def complete(self, report: CompletionReport) -> CompletionResult:
        """Releases the lease, learns from the observed latencies and attributes the cost (module
        docstring). NOT_FOUND for a lease that never existed or is no longer remembered."""
        now_s = self._clock()
        self.expire(now_s)
        lease = self.ledger.complete(
            report.lease_id, observed_ttft_ms=report.ttft_ms, observed_tpot_ms=report.tpot_ms
        )
        if lease is None:
            ended_model = self._ended.get(report.lease_id)
            if ended_model is None:
                raise NotFound(f"lease {report.lease_id!r} is unknown (never issued, or ended long ago)")
            self._completions[ended_model, "already_completed"].inc()
            return CompletionResult(already_completed=True, cost_usd=0.0)
        self._remember(lease.lease_id, lease.model)
        request = lease.request
        spec = lease.placement.chosen.endpoint.spec
        model, kind = request.model, spec.accelerator_kind
        tenant = self._metrics.tenants(request.tenant)
        cost_usd = completion_cost_usd(lease, report.input_tokens, report.output_tokens)
        self._cost_usd[tenant, model, kind].inc(cost_usd)
        self._tokens[tenant, model, kind, "input"].inc(report.input_tokens)
        self._tokens[tenant, model, kind, "output"].inc(report.output_tokens)
        if report.ttft_ms is not None and report.ttft_ms > request.slo.ttft_ms:
            self._slo_violations[model, "ttft"].inc()
        if report.tpot_ms is not None and report.tpot_ms > request.slo.tpot_ms:
            self._slo_violations[model, "tpot"].inc()
        self._completions[model, "success" if report.success else "failure"].inc()
        return CompletionResult(already_completed=False, cost_usd=cost_usd)


class RouterService(router_pb2_grpc.RouterServicer):
    """The gRPC face of :class:`PlacementEngine`: conversion, validation, errors and Place metrics."""

    def __init__(self, *, context: PlaceContext, engine: PlacementEngine, metrics: TurnoutMetrics) -> None:
        self._ctx = context
        self._engine = engine
        self._metrics = metrics
        self._encoder = PlacementEncoder()
        self._outcomes = LabelCache(metrics.place_requests, _identity)
        self._cost = LabelCache(metrics.request_cost_usd_per_mtok, _identity)
        self._decision_seconds = metrics.place_decision_seconds

    def _decide(
        self, msg: router_pb2.PlaceRequest, out: router_pb2.Placement | None = None
    ) -> router_pb2.Placement:
        """Converts, validates and places one request; counts the outcome. Raises :class:`RpcError`.
        The answer is written into ``out`` (an empty message) when given, else into a new one."""
        model = msg.model if msg.model in self._ctx.served_models else OTHER_LABEL
        try:
            request = validate_place_request(place_input_from_proto(msg), self._ctx)
            started = time.perf_counter()
            try:
                decision = self._engine.place(request)
            except UnknownModelError as exc:
                raise NotFound(str(exc)) from None
            except RequestIdConflict as exc:
                raise violation(
                    "request_id",
                    f"is held by a different live request (lease {exc.lease.lease_id}); "
                    "use a new request_id for a new request",
                ) from None
            self._decision_seconds.observe(time.perf_counter() - started)
            if isinstance(decision, Refused):
                raise refusal_error(decision)
        except RpcError as err:
            self._outcomes[model, _outcome(err.code), ""].inc()
            raise
        kind = decision.chosen.endpoint.spec.accelerator_kind
        reason = decision.reason
        self._outcomes[model, reason.value, kind].inc()
        if reason is not PlacementReason.IDEMPOTENT_REPLAY:
            self._cost[model, kind].observe(decision.chosen.prediction.cost_usd_per_million_tokens)
        return self._encoder.placement(decision, self._engine.lease_expires_at_s(decision), out)

    async def Place(self, request: router_pb2.PlaceRequest, context: ServicerContext) -> router_pb2.Placement:
        try:
            return self._decide(request)
        except RpcError as err:
            await refuse(context, err)

    async def PlaceStream(
        self, request_iterator: AsyncIterator[router_pb2.PlaceRequest], context: ServicerContext
    ) -> AsyncIterator[router_pb2.PlaceResult]:
        async for msg in request_iterator:
            result = router_pb2.PlaceResult(request_id=msg.request_id)
            try:
                self._decide(msg, result.placement)  # written in place: no copy into the result
            except RpcError as err:
                if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._metrics.rpc_invalid_argument.labels(PLACE_STREAM_METHOD).inc()
                yield place_error_result(msg.request_id, err)
            else:
                yield result

    async def Complete(
        self, request: router_pb2.Completion, context: ServicerContext
    ) -> router_pb2.CompleteResponse:
        try:
            report = validate_completion(completion_input_from_proto(request))
            result = self._engine.complete(report)
        except RpcError as err:
            await refuse(context, err)
        return complete_response_to_proto(
            already_completed=result.already_completed, cost_usd=result.cost_usd
        )


def _outcome(code: grpc.StatusCode) -> str:
    """Outcome label of a refused Place: the status code's name in lower case (a bounded set)."""
    name: str = code.name
    return name.lower()
