"""Settings of the per-request policies: profiles, scorer weights, thresholds. Frozen values.

Everything here has a default, so ``PolicyConfig()`` is a working configuration; the service's YAML
``planner.placement`` section overrides fields through :meth:`PolicyConfig.from_mapping`, which names the
path of a wrong value (``planner.placement.shedding.standard``) and the rule it breaks.

Figures that are estimates rather than published numbers say so where they are defined, with the reasoning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

from fleet.types import Priority
from policies.demand import DEFAULT_BUCKET_BOUNDS, BucketBounds

T = TypeVar("T")

__all__ = [
    "CHEAPEST_FEASIBLE_PROFILE",
    "TURNOUT_PLAN_PROFILE",
    "TURNOUT_SPILL_PROFILE",
    "DataGravity",
    "PolicyConfig",
    "ProfileConfig",
    "RetryBounds",
    "ShedFractions",
    "WeightedScorer",
]


def _finite(path: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{path}: must be {'>' if strict else '>='} {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    """One scorer of a profile and its weight (weights live in the profile, never in the scorer)."""

    name: str
    weight: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        _finite("weight", self.weight, minimum=0.0, strict=True)


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """A scheduling profile by plugin names: filters in order, weighted scorers, one picker.

    The builtin filters (eligibility, then the request's allowed kinds/region/zone) always run first and
    are not listed here: configuration may add filters, never remove those.
    """

    filters: tuple[str, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: str

    def __post_init__(self) -> None:
        if len(set(self.filters)) != len(self.filters):
            raise ValueError(f"filters: a filter is listed twice in {list(self.filters)}")
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names):
            raise ValueError(f"scorers: a scorer is listed twice in {names}")
        if not self.picker:
            raise ValueError("picker: must not be empty")


ALL_HARD_FILTERS = ("context", "capacity", "latency", "power", "shed")

# The plan-following profile of the "turnout" policy: among the endpoints the plan gives a share of the
# request's class, prefer the one furthest below its planned share; cost and load only nudge. The planner
# already chose the split for cost, so the live terms are weighted low: at equilibrium an endpoint's share
# moves off plan by about (w_cost x cost-score gap + w_load x load-score gap) / w_affinity, e.g. 1.7
# percentage points for a 17 % price gap with these weights.
TURNOUT_PLAN_PROFILE = ProfileConfig(
    filters=ALL_HARD_FILTERS,
    scorers=(
        WeightedScorer("plan_affinity", 1.0),
        WeightedScorer("cost", 0.1),
        WeightedScorer("load", 0.05),
    ),
    picker="max_score",
)

# Greedy: every hard filter, then the lowest predicted cost of this request at the endpoint's live batch.
# The "cheapest_feasible" baseline. Because a busier endpoint serves a token more cheaply (the weights read
# at each decode step are shared by more sequences), it piles work on the busiest feasible endpoint until
# its predicted latency reaches the SLO: any error of the prediction is then an SLO miss.
CHEAPEST_FEASIBLE_PROFILE = ProfileConfig(
    filters=ALL_HARD_FILTERS,
    scorers=(WeightedScorer("cost", 1.0),),
    picker="max_score",
)

# The "turnout" policy's spill and no-plan path: every hard filter, then the cheapest silicon for this
# request at full SLO-feasible use (``capacity_cost``), the load deciding between endpoints that cost the
# same. It spreads a burst over the cheapest kind's endpoints instead of filling one to the SLO's edge; a
# 10 % cheaper kind outweighs any load difference (0.1 x cost-score gap against at most 0.1 x 1).
TURNOUT_SPILL_PROFILE = ProfileConfig(
    filters=ALL_HARD_FILTERS,
    scorers=(WeightedScorer("capacity_cost", 1.0), WeightedScorer("load", 0.1)),
    picker="max_score",
)


@dataclass(frozen=True, slots=True)
class ShedFractions:
    """Share of an endpoint's KV memory and of a zone's power cap a priority may fill.

    With the defaults, sheddable work is refused once 80 % is in use, standard at 90 %, critical only at
    100 %: when capacity runs out sheddable traffic is refused first, then standard, then critical.
    Contract: ``sheddable <= standard <= critical <= 1``.
    """

    critical: float = 1.0
    standard: float = 0.9
    sheddable: float = 0.8

    def __post_init__(self) -> None:
        for name in ("critical", "standard", "sheddable"):
            value = getattr(self, name)
            _finite(name, value, minimum=0.0, strict=True)
            if value > 1.0:
                raise ValueError(f"{name}: must be <= 1, got {value!r}")
        if not self.sheddable <= self.standard <= self.critical:
            raise ValueError(
                "sheddable <= standard <= critical: lower priorities may not use more headroom, got "
                f"{self.sheddable}, {self.standard}, {self.critical}"
            )

    def of(self, priority: Priority) -> float:
        if priority is Priority.CRITICAL:
            return self.critical
        if priority is Priority.STANDARD:
            return self.standard
        return self.sheddable


# Network round trip added to TTFT when the data lives in another region. ESTIMATE: 70 ms is the order of
# a US east-west inter-region round trip (us-east-1 <-> us-west-2); intra-continent pairs are lower and
# intercontinental ones higher, so set per pair in config where it matters.
DEFAULT_CROSS_REGION_LATENCY_MS = 70.0
# Inter-region transfer price, USD per GB. Source: AWS EC2 on-demand pricing page, "Data Transfer" section,
# "Data Transfer OUT From Amazon EC2 To another AWS Region" ($0.02/GB from most US and EU regions;
# https://aws.amazon.com/ec2/pricing/on-demand/). Some pairs are $0.01/GB and some regions charge more:
# override in config.
DEFAULT_EGRESS_USD_PER_GB = 0.02
# Bytes of payload per token moved between regions. ESTIMATE: prompt and completion travel as UTF-8 text,
# about 4 characters (bytes for English) per token for BPE tokenizers of the Llama-3 family. Requests whose
# data is heavier (images, retrieved documents fetched by the endpoint) should configure a larger figure.
DEFAULT_BYTES_PER_TOKEN = 4.0


@dataclass(frozen=True)
class DataGravity:
    """What it costs to run a request away from the region its data lives in.

    ``latency_ms(a, b)``: the pair's configured figure (either order) or ``cross_region_latency_ms``; 0 in the
    same region or when the request names no data region. Egress is charged on
    ``(input_tokens + expected_output_tokens) * bytes_per_token`` at ``egress_usd_per_gb`` (10^9 bytes).
    """

    cross_region_latency_ms: float = DEFAULT_CROSS_REGION_LATENCY_MS
    pair_latency_ms: Mapping[tuple[str, str], float] = field(default_factory=lambda: MappingProxyType({}))
    egress_usd_per_gb: float = DEFAULT_EGRESS_USD_PER_GB
    bytes_per_token: float = DEFAULT_BYTES_PER_TOKEN

    def __post_init__(self) -> None:
        _finite("cross_region_latency_ms", self.cross_region_latency_ms)
        _finite("egress_usd_per_gb", self.egress_usd_per_gb)
        _finite("bytes_per_token", self.bytes_per_token)
        for (a, b), ms in self.pair_latency_ms.items():
            _finite(f"pair_latency_ms[{a},{b}]", ms)
        object.__setattr__(self, "pair_latency_ms", MappingProxyType(dict(self.pair_latency_ms)))

    def latency_ms(self, data_region: str, endpoint_region: str) -> float:
        if not data_region or data_region == endpoint_region:
            return 0.0
        ms = self.pair_latency_ms.get((data_region, endpoint_region))
        if ms is None:
            ms = self.pair_latency_ms.get((endpoint_region, data_region), self.cross_region_latency_ms)
        return ms

    def crosses(self, data_region: str, endpoint_region: str) -> bool:
        return bool(data_region) and data_region != endpoint_region


@dataclass(frozen=True, slots=True)
class RetryBounds:
    """Limits of the retry delay given with a refusal, seconds.

    ``ineligible_s`` is the delay when every endpoint of the model is stale, unhealthy or drained: about
    one telemetry round, after which the fleet may look different.
    """

    min_s: float = 0.05
    max_s: float = 30.0
    ineligible_s: float = 5.0

    def __post_init__(self) -> None:
        _finite("min_s", self.min_s, strict=True)
        _finite("max_s", self.max_s, strict=True)
        _finite("ineligible_s", self.ineligible_s, strict=True)
        if self.min_s > self.max_s:
            raise ValueError(f"min_s: must be <= max_s ({self.max_s}), got {self.min_s}")

    def clamp(self, seconds: float) -> float:
        return min(self.max_s, max(self.min_s, seconds))


@dataclass(frozen=True)
class PolicyConfig:
    """Settings of the per-request path.

    - ``policy``: the registered policy to run ("turnout", or a baseline for comparison).
    - ``plan_profile`` / ``spill_profile``: the "turnout" policy's profile among planned endpoints, and the
      one it uses to spill or when there is no fresh plan.
    - ``buckets``: the input/output length buckets of traffic classes (shared with the planner's demand).
    - ``max_plan_age_s``: a plan older than this is stale and the decision degrades to cheapest-feasible.
    - ``max_fallbacks``: fallbacks returned with a placement.
    - ``lease_grace_s`` / ``lease_max_ttl_s``: a lease lives for the request's predicted worst-case duration
      (TTFT + max_output_tokens x TPOT) plus the grace, but never longer than the maximum.
    - ``power_visible_after_s``: after this long a placed request's power booking is taken to show in the
      zone's measured draw, so the ledger stops adding it (only for endpoints that report telemetry).
      ``None`` (default): it stays booked until a report of its endpoint sampled after its predicted first
      token shows it (:meth:`policies.ledger.ReservationLedger.sync_power`), or until the lease ends.
    - ``waiting_request_prefill_tokens``: prompt tokens assumed for each request an endpoint reports as
      waiting (ESTIMATE: telemetry gives the count, not the lengths; 1024 is a mid-size chat prompt).
    - ``random_seed``: seed of the "random" picker (its choice depends on the seed and the request id only).
    - ``candidates_per_decision``: the "turnout" policy stops filtering once this many endpoints passed
      every filter and ranks those only; it looks at planned endpoints furthest below their planned share
      first and at unplanned ones cheapest reference cost first (:mod:`policies.fastpath`). A decision
      then costs about this many evaluations instead of one per endpoint of the model; when fewer are
      feasible every endpoint is still examined, so a feasible endpoint is never missed. 0: rank every
      feasible endpoint.
    """

    policy: str = "turnout"
    plan_profile: ProfileConfig = TURNOUT_PLAN_PROFILE
    spill_profile: ProfileConfig = TURNOUT_SPILL_PROFILE
    buckets: BucketBounds = DEFAULT_BUCKET_BOUNDS
    shedding: ShedFractions = field(default_factory=ShedFractions)
    gravity: DataGravity = field(default_factory=DataGravity)
    retry: RetryBounds = field(default_factory=RetryBounds)
    max_plan_age_s: float = 60.0
    max_fallbacks: int = 3
    lease_grace_s: float = 30.0
    lease_max_ttl_s: float = 3600.0
    power_visible_after_s: float | None = None
    waiting_request_prefill_tokens: int = 1024
    random_seed: int = 0
    candidates_per_decision: int = 12

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("policy: must not be empty")
        _finite("max_plan_age_s", self.max_plan_age_s, strict=True)
        if isinstance(self.max_fallbacks, bool) or not isinstance(self.max_fallbacks, int):
            raise ValueError(f"max_fallbacks: must be an integer, got {self.max_fallbacks!r}")
        if not 0 <= self.max_fallbacks <= 16:
            raise ValueError(f"max_fallbacks: must be in [0, 16], got {self.max_fallbacks}")
        if isinstance(self.candidates_per_decision, bool) or not isinstance(
            self.candidates_per_decision, int
        ):
            raise ValueError(
                f"candidates_per_decision: must be an integer, got {self.candidates_per_decision!r}"
            )
        if self.candidates_per_decision < 0:
            raise ValueError(f"candidates_per_decision: must be >= 0, got {self.candidates_per_decision}")
        _finite("lease_grace_s", self.lease_grace_s, strict=True)
        _finite("lease_max_ttl_s", self.lease_max_ttl_s, strict=True)
        if self.lease_max_ttl_s < self.lease_grace_s:
            raise ValueError(
                f"lease_max_ttl_s: must be >= lease_grace_s ({self.lease_grace_s}), "
                f"got {self.lease_max_ttl_s}"
            )
        if self.power_visible_after_s is not None:
            _finite("power_visible_after_s", self.power_visible_after_s, strict=True)
        if (
            isinstance(self.waiting_request_prefill_tokens, bool)
            or not isinstance(self.waiting_request_prefill_tokens, int)
            or self.waiting_request_prefill_tokens < 0
        ):
            raise ValueError(
                "waiting_request_prefill_tokens: must be an integer >= 0, "
                f"got {self.waiting_request_prefill_tokens!r}"
            )

    # -----------------------------------------------------------------------------------------------------
    # From YAML
    # -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: object, path: str = "planner.placement") -> PolicyConfig:
        """Build from plain YAML data (the service config's ``planner.placement`` section).

        Keys, all optional: the scalar fields of this class; ``plan_profile`` and ``spill_profile`` as
        ``{filters: [NAME, ..], scorers: {NAME: WEIGHT, ..}, picker: NAME}``; ``buckets: {input_tokens: [..],
        output_tokens: [..]}``; ``shedding: {critical, standard, sheddable}``; ``retry: {min_s, max_s,
        ineligible_s}``; ``data_gravity: {cross_region_latency_ms, egress_usd_per_gb, bytes_per_token,
        pairs: [{from, to, latency_ms}, ..]}``. Unknown keys, wrong types and out-of-range values raise
        ``ValueError("<dotted path>: <rule>")``, e.g. ``planner.placement.shedding.standard: must be <= 1``.
        Plugin names are checked when the policy is built (:func:`policies.registry.build_policy`).
        """
        m = _mapping(data, path, _TOP_KEYS)
        kwargs: dict[str, Any] = {}
        for key, kind in _SCALARS.items():
            if key in m:
                kwargs[key] = _scalar(m[key], f"{path}.{key}", kind, nullable=key in _NULLABLE)
        for key in ("plan_profile", "spill_profile"):
            if key in m:
                kwargs[key] = _profile(m[key], f"{path}.{key}")
        if "buckets" in m:
            b = _mapping(m["buckets"], f"{path}.buckets", ("input_tokens", "output_tokens"))
            bounds = {
                k: tuple(
                    _scalar(x, f"{path}.buckets.{k}[{i}]", int)
                    for i, x in enumerate(_list(v, f"{path}.buckets.{k}"))
                )
                for k, v in b.items()
            }
            kwargs["buckets"] = _checked(
                f"{path}.buckets", lambda: BucketBounds(**{**_bounds_dict(DEFAULT_BUCKET_BOUNDS), **bounds})
            )
        if "shedding" in m:
            kwargs["shedding"] = _numbers_into(ShedFractions, m["shedding"], f"{path}.shedding")
        if "retry" in m:
            kwargs["retry"] = _numbers_into(RetryBounds, m["retry"], f"{path}.retry")
        if "data_gravity" in m:
            kwargs["gravity"] = _gravity(m["data_gravity"], f"{path}.data_gravity")
        return _checked(path, lambda: cls(**kwargs))


_SCALARS: Mapping[str, type] = MappingProxyType(
    {
        "policy": str,
        "max_plan_age_s": float,
        "max_fallbacks": int,
        "lease_grace_s": float,
        "lease_max_ttl_s": float,
        "power_visible_after_s": float,
        "waiting_request_prefill_tokens": int,
        "random_seed": int,
        "candidates_per_decision": int,
    }
)
_NULLABLE = frozenset({"power_visible_after_s"})
_TOP_KEYS = (*_SCALARS, "plan_profile", "spill_profile", "buckets", "shedding", "retry", "data_gravity")


def _bounds_dict(b: BucketBounds) -> dict[str, tuple[int, ...]]:
    return {"input_tokens": b.input_tokens, "output_tokens": b.output_tokens}


def _checked(path: str, build: Callable[[], T]) -> T:
    """``build()``, with the path prefixed to a ``ValueError("field: rule")`` it raises."""
    try:
        return build()
    except ValueError as e:
        raise ValueError(f"{path}.{e}") from None


def _mapping(value: object, path: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: must be a mapping")
    for key in value:
        if key not in known:
            raise ValueError(f"{path}.{key}: unknown key (known: {', '.join(sorted(known))})")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{path}: must be a list")
    return list(value)


def _scalar(value: object, path: str, kind: type, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{path}: must be a number")
    if kind is int:
        if not isinstance(value, int):
            raise ValueError(f"{path}: must be an integer")
        return value
    return float(value)


def _numbers_into(kind: Callable[..., T], value: object, path: str) -> T:
    known = tuple(f.name for f in fields(kind))  # type: ignore[arg-type]
    m = _mapping(value, path, known)
    numbers = {k: _scalar(v, f"{path}.{k}", float) for k, v in m.items()}
    return _checked(path, lambda: kind(**numbers))


def _profile(value: object, path: str) -> ProfileConfig:
    m = _mapping(value, path, ("filters", "scorers", "picker"))
    filters = tuple(
        _scalar(x, f"{path}.filters[{i}]", str)
        for i, x in enumerate(_list(m.get("filters", []), f"{path}.filters"))
    )
    weights = m.get("scorers", {})
    if not isinstance(weights, Mapping):
        raise ValueError(f"{path}.scorers: must be a mapping of scorer name to weight")
    scorers: list[WeightedScorer] = []
    for name, weight in weights.items():
        w: float = _scalar(weight, f"{path}.scorers.{name}", float)
        if not w > 0.0:
            raise ValueError(f"{path}.scorers.{name}: weight must be > 0, got {w!r}")
        scorers.append(WeightedScorer(str(name), w))
    picker = _scalar(m.get("picker", "max_score"), f"{path}.picker", str)
    return _checked(path, lambda: ProfileConfig(filters=filters, scorers=tuple(scorers), picker=picker))


def _gravity(value: object, path: str) -> DataGravity:
    m = _mapping(value, path, ("cross_region_latency_ms", "egress_usd_per_gb", "bytes_per_token", "pairs"))
    pairs: dict[tuple[str, str], float] = {}
    for i, item in enumerate(_list(m.get("pairs", []), f"{path}.pairs")):
        p = _mapping(item, f"{path}.pairs[{i}]", ("from", "to", "latency_ms"))
        a = _scalar(p.get("from"), f"{path}.pairs[{i}].from", str)
        b = _scalar(p.get("to"), f"{path}.pairs[{i}].to", str)
        pairs[(a, b)] = _scalar(p.get("latency_ms"), f"{path}.pairs[{i}].latency_ms", float)
    numbers = {k: _scalar(v, f"{path}.{k}", float) for k, v in m.items() if k != "pairs"}
    return _checked(path, lambda: DataGravity(pair_latency_ms=pairs, **numbers))
