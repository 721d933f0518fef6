"""The placement framework: extension points, the per-decision context, and the profile that runs them.

A request is decided on one fleet snapshot, one plan and one read-only view of the reservation ledger,
at a time passed in. A :class:`Profile` runs

    builtin filters -> configured filters -> weighted scorers -> picker -> ranked candidates

* **Filter** (:class:`Filter`): ``filter(ctx, target) -> Rejection | None``. ``None`` keeps the endpoint;
  a :class:`Rejection` drops it with a typed :class:`RejectReason` and a human detail (which may be
  formatted lazily, only if read). Filters run in order; an endpoint is dropped by the first filter that
  rejects it. ``skip(ctx)`` lets a filter say it cannot reject anything for this request (e.g. no
  allowed-kind constraint), saving its per-endpoint calls.
* **Scorer** (:class:`Scorer`): ``score(ctx, targets) -> scores``, one score per surviving endpoint,
  higher is better, meant to lie in [0, 1]. The framework clamps every score into [0, 1] (NaN counts 0)
  and combines them as ``sum(w_i * s_i) / sum(w_i)`` with the weights of the profile's configuration,
  never of the scorer. A scorer sees the whole surviving set at once (as the llm-d endpoint picker's
  scorers do) rather than one endpoint per call: scores like "cheapest gets 1" are normalised over the
  set, and one call per scorer instead of one per endpoint keeps the per-request path short.
* **Picker** (:class:`Picker`): ``pick(ctx, targets, scores, k) -> indices``: at most ``k`` distinct indices
  into ``targets``, best first. The first is the chosen endpoint, the rest its fallbacks.

Builtins (always first, not removable by configuration): :class:`~policies.filters.eligible.EligibleFilter`
(status READY: healthy, fresh, not drained) and :class:`~policies.filters.allowed.AllowedFilter` (the
request's allowed accelerator kinds, region and zone). The model filter is structural: a profile is only
ever given endpoints serving the request's model (the policy's per-snapshot index).

Contracts for plugins: pure and deterministic in ``(ctx, targets)``; no I/O, no clock, no mutation of
anything but their own return value; O(1) per endpoint for filters. Predicted figures come from
``ctx.estimate(target)`` (computed once per endpoint per decision and shared by all plugins); a plugin
that needs only the TTFT and TPOT figures reads ``ctx.latency(target)``, which leaves the costs and power
uncomputed for an endpoint that misses the request's SLO (the latency filter does: under load most
endpoints a decision passes over are dropped there). The full :class:`~policies.predict.Prediction` (with
energy) is built only for the ranked candidates.
If a clock is given to the context, the framework records the seconds each plugin spent (per plugin name,
summed over the decision) in ``ctx.timings``.

What a decision costs grows with the endpoints it examines: with ``enough`` (:meth:`Profile.run`) filtering
stops at the first ``enough`` endpoints that pass every filter, so a busy fleet, where more endpoints are
dropped on the way, costs more per decision, and a refusal examines every endpoint. Dropping an endpoint
is therefore kept cheap: latency figures only, and rejection details formatted only when a refusal reads
them.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple, Protocol

from fleet.types import EndpointState, FleetSnapshot
from policies.config import PolicyConfig
from policies.ledger import LedgerView
from policies.predict import Estimate, Estimator, LatencyEstimate, Prediction, Target, prediction_of
from policies.types import PlacementRequest, Plan, TrafficClass

__all__ = [
    "Candidate",
    "CycleContext",
    "Filter",
    "Picker",
    "Profile",
    "ProfileResult",
    "RejectReason",
    "Rejection",
    "Scorer",
]


class RejectReason(enum.Enum):
    """Why a filter dropped an endpoint. Listed from the least to the most advanced stage of feasibility.

    The order matters: when nothing is feasible, the binding reason of the refusal is the most advanced
    reason among the rejections (the constraint that stopped the endpoint that came closest).
    """

    NOT_SERVING_MODEL = "not_serving_model"
    NOT_ALLOWED = "not_allowed"  # excluded by the request's allowed kinds / region / zone
    NOT_ELIGIBLE = "not_eligible"  # stale, unhealthy or drained
    CONTEXT = "context"  # the request can never fit (context length, total KV memory)
    CAPACITY = "capacity"  # not enough KV memory left now
    SLO_TTFT = "slo_ttft"
    SLO_TPOT = "slo_tpot"
    POWER = "power"  # the zone's power cap
    SHED = "shed"  # the headroom left is kept for higher priorities

    @property
    def rank(self) -> int:
        return _REASON_RANK[self]


_REASON_RANK = {r: i for i, r in enumerate(RejectReason)}


class Rejection:
    """Why ``plugin`` dropped an endpoint: a typed ``reason`` and a human ``detail``; never changed.

    ``detail`` may be given as a function of no arguments returning the text: it is then formatted only
    when read (a refusal's message reads one). Filters that drop more endpoints the busier the fleet is
    (capacity, latency, power, shed) give one, so that the endpoints passed over on the way to a
    placement cost no string formatting.
    """

    __slots__ = ("_detail", "plugin", "reason")

    def __init__(self, reason: RejectReason, detail: str | Callable[[], str], plugin: str = "") -> None:
        self.reason = reason
        self._detail = detail
        self.plugin = plugin

    @property
    def detail(self) -> str:
        d = self._detail
        if not isinstance(d, str):
            d = self._detail = d()
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rejection):
            return NotImplemented
        return (self.reason, self.detail, self.plugin) == (other.reason, other.detail, other.plugin)

    def __hash__(self) -> int:
        return hash((self.reason, self.detail, self.plugin))

    def __repr__(self) -> str:
        return f"Rejection(reason={self.reason!r}, detail={self.detail!r}, plugin={self.plugin!r})"


class Candidate(NamedTuple):
    """A ranked endpoint with its predictions; ``score`` is the profile's combined score in [0, 1].
    An immutable tuple (built for every ranked endpoint of every decision)."""

    endpoint: EndpointState
    prediction: Prediction
    score: float

    @property
    def endpoint_id(self) -> str:
        return self.endpoint.spec.endpoint_id


class CycleContext:
    """Everything one decision reads, plus its scratch memo of predictions (per endpoint, and per serving
    profile in its :class:`~policies.predict.Estimator`). Lives for one decision.

    ``planned_share``: the plan's share of the request's class per endpoint id, normalised to sum to 1
    over the class's planned endpoints (empty when no fresh plan is followed).
    """

    __slots__ = (
        "_estimates",
        "_estimator",
        "_late",
        "clock",
        "config",
        "ledger",
        "now_s",
        "plan",
        "planned_share",
        "request",
        "snapshot",
        "timings",
        "traffic_class",
    )

    def __init__(
        self,
        *,
        request: PlacementRequest,
        traffic_class: TrafficClass,
        snapshot: FleetSnapshot,
        plan: Plan,
        ledger: LedgerView,
        now_s: float,
        config: PolicyConfig,
        planned_share: Mapping[str, float],
        batch_limit: MutableMapping[tuple[int, float, int, int], int],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.request = request
        self.traffic_class = traffic_class
        self.snapshot = snapshot
        self.plan = plan
        self.ledger = ledger
        self.now_s = now_s
        self.config = config
        self.planned_share = planned_share
        self.clock = clock
        self.timings: dict[str, float] = {}
        self._estimates: dict[str, Estimate] = {}
        self._late: dict[str, LatencyEstimate] = {}  # latency figures of endpoints that miss the SLO
        self._estimator = Estimator(request, traffic_class, config, batch_limit)

    def estimate(self, target: Target) -> Estimate:
        """The request's figures on ``target`` for filters and scorers (computed once per decision)."""
        e = self._estimates.get(target.endpoint_id)
        if e is None:
            e = self._estimator.estimate(target, self.ledger.booking(target.endpoint_id))
            self._estimates[target.endpoint_id] = e
        return e

    def latency(self, target: Target) -> Estimate | LatencyEstimate:
        """The request's TTFT and TPOT figures on ``target``, as in :meth:`estimate` (what the latency
        filter and refusals read). For an endpoint that misses the request's SLO nothing more is computed
        unless a plugin asks for its whole estimate."""
        e = self._estimates.get(target.endpoint_id)
        if e is not None:
            return e
        late = self._late.get(target.endpoint_id)
        if late is not None:
            return late
        figures = self._estimator.estimate(target, self.ledger.booking(target.endpoint_id), True)
        if isinstance(figures, LatencyEstimate):
            self._late[target.endpoint_id] = figures
        else:
            self._estimates[target.endpoint_id] = figures
        return figures

    def prediction(self, target: Target) -> Prediction:
        """The full prediction on ``target`` (with energy), as answered for ranked candidates."""
        return prediction_of(self.estimate(target), target, self.request.expected_output_tokens)

    def add_time(self, plugin: str, seconds: float) -> None:
        self.timings[plugin] = self.timings.get(plugin, 0.0) + seconds


class Filter(Protocol):
    """Drops endpoints that cannot take the request. See the module docstring for the contract."""

    name: str

    def skip(self, ctx: CycleContext) -> bool:
        """True if this filter cannot reject any endpoint for this request."""
        return False

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None: ...


class Scorer(Protocol):
    """Scores the surviving endpoints; one score per target, in order, meant to lie in [0, 1]."""

    name: str

    def score(self, ctx: CycleContext, targets: Sequence[Target]) -> Sequence[float]: ...


class Picker(Protocol):
    """Ranks endpoints: at most ``k`` distinct indices into ``targets``, best first."""

    name: str

    def pick(
        self, ctx: CycleContext, targets: Sequence[Target], scores: Sequence[float], k: int
    ) -> Sequence[int]: ...


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """``ranked``: chosen first, then fallbacks. ``rejected``: every dropped endpoint with its rejection."""

    ranked: tuple[Candidate, ...]
    rejected: tuple[tuple[Target, Rejection], ...]
    feasible: int  # endpoints that passed every filter


@cache
def builtin_filters() -> tuple[Filter, ...]:
    """The filters every profile runs first (the import is deferred: the plugins import this module)."""
    from policies.filters.allowed import AllowedFilter
    from policies.filters.eligible import EligibleFilter

    return (EligibleFilter(), AllowedFilter())


class Profile:
    """A scheduling profile: builtin and configured filters, weighted scorers, a picker.

    Contract of :meth:`run`: every ranked candidate passed every filter (builtins included); candidates
    are distinct; at most ``k`` of them; the result depends only on ``ctx`` and ``targets``.
    """

    __slots__ = ("filters", "name", "picker", "scorers", "weight_total")

    def __init__(
        self,
        name: str,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        picker: Picker,
    ) -> None:
        for scorer, weight in scorers:
            if not weight > 0.0:
                raise ValueError(
                    f"profile {name}: weight of scorer {scorer.name!r} must be > 0, got {weight}"
                )
        self.name = name
        self.filters: tuple[Filter, ...] = builtin_filters() + tuple(filters)
        self.scorers = tuple(scorers)
        self.picker = picker
        self.weight_total = sum(w for _, w in scorers)

    def run(
        self, ctx: CycleContext, targets: Iterable[Target], k: int, *, enough: int | None = None
    ) -> ProfileResult:
        """Filter, score and pick among ``targets``; at most ``k`` ranked candidates.

        With ``enough``, endpoints are examined one at a time in the given order and filtering stops once
        ``enough`` have passed every filter: the ranking is then among those only (used to find fallbacks
        without evaluating every endpoint). ``targets`` may then be a lazy iterable: the endpoints after
        the last one examined are never produced.
        """
        clock = ctx.clock
        survivors, rejected = (
            self._filter_all(ctx, targets) if enough is None else self._filter_until(ctx, targets, enough)
        )
        if not survivors or k <= 0:
            return ProfileResult(ranked=(), rejected=tuple(rejected), feasible=len(survivors))

        n = len(survivors)
        totals = [0.0] * n
        if self.scorers:
            for scorer, weight in self.scorers:
                t0 = clock() if clock is not None else 0.0
                scores = scorer.score(ctx, survivors)
                if len(scores) != n:
                    raise RuntimeError(
                        f"scorer {scorer.name!r} returned {len(scores)} scores for {n} endpoints"
                    )
                # weight x the score clamped into [0, 1]: above 1 counts 1, negative or NaN counts 0
                totals = [
                    t + weight * (1.0 if s >= 1.0 else s if s >= 0.0 else 0.0)
                    for t, s in zip(totals, scores, strict=True)
                ]
                if clock is not None:
                    ctx.add_time(scorer.name, clock() - t0)
            inv = 1.0 / self.weight_total
            totals = [x * inv for x in totals]

        t0 = clock() if clock is not None else 0.0
        picked = self.picker.pick(ctx, survivors, totals, k)
        if clock is not None:
            ctx.add_time(self.picker.name, clock() - t0)
        if (
            len(picked) > k
            or len(set(picked)) != len(picked)
            or (picked and not 0 <= min(picked) <= max(picked) < n)
        ):
            raise RuntimeError(f"picker {self.picker.name!r} returned invalid indices {list(picked)} for {n}")
        ranked = tuple(Candidate(survivors[i].state, ctx.prediction(survivors[i]), totals[i]) for i in picked)
        return ProfileResult(ranked=ranked, rejected=tuple(rejected), feasible=n)

    def _filter_all(
        self, ctx: CycleContext, targets: Iterable[Target]
    ) -> tuple[list[Target], list[tuple[Target, Rejection]]]:
        """Each filter over every endpoint still in, filter by filter (one timing per plugin)."""
        clock = ctx.clock
        survivors: list[Target] = list(targets)
        rejected: list[tuple[Target, Rejection]] = []
        for f in self.filters:
            if not survivors:
                break
            t0 = clock() if clock is not None else 0.0
            if not f.skip(ctx):
                keep: list[Target] = []
                check = f.filter
                for t in survivors:
                    r = check(ctx, t)
                    if r is None:
                        keep.append(t)
                    else:
                        rejected.append((t, r))
                survivors = keep
            if clock is not None:
                ctx.add_time(f.name, clock() - t0)
        return survivors, rejected

    def _filter_until(
        self, ctx: CycleContext, targets: Iterable[Target], enough: int
    ) -> tuple[list[Target], list[tuple[Target, Rejection]]]:
        """Every filter on one endpoint at a time, until ``enough`` endpoints passed them all."""
        clock = ctx.clock
        active = [f for f in self.filters if not f.skip(ctx)]
        survivors: list[Target] = []
        rejected: list[tuple[Target, Rejection]] = []
        if enough <= 0:
            return survivors, rejected
        if clock is not None:
            return self._filter_until_timed(ctx, targets, enough, active, clock)
        checks = [f.filter for f in active]
        for t in targets:
            for check in checks:
                r = check(ctx, t)
                if r is not None:
                    rejected.append((t, r))
                    break
            else:
                survivors.append(t)
                if len(survivors) >= enough:
                    break
        return survivors, rejected

    @staticmethod
    def _filter_until_timed(
        ctx: CycleContext,
        targets: Iterable[Target],
        enough: int,
        active: Sequence[Filter],
        clock: Callable[[], float],
    ) -> tuple[list[Target], list[tuple[Target, Rejection]]]:
        """:meth:`_filter_until` recording each plugin's time."""
        survivors: list[Target] = []
        rejected: list[tuple[Target, Rejection]] = []
        for t in targets:
            for f in active:
                t0 = clock()
                r = f.filter(ctx, t)
                ctx.add_time(f.name, clock() - t0)
                if r is not None:
                    rejected.append((t, r))
                    break
            else:
                survivors.append(t)
                if len(survivors) >= enough:
                    break
        return survivors, rejected


def top_k_by_score(targets: Sequence[Target], scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` best scores, ties broken by endpoint id (deterministic)."""
    n = len(targets)
    if k >= n:
        order = list(range(n))
        order.sort(key=lambda i: (-scores[i], targets[i].endpoint_id))
        return order
    return heapq.nsmallest(k, range(n), key=lambda i: (-scores[i], targets[i].endpoint_id))
