"""Demand per traffic class: classification, an exponentially weighted rate estimate, static demand.

The planner plans for a rate of requests per second and a mean request shape for every
:class:`~policies.types.TrafficClass` (model x input-length bucket x output-length bucket x priority).
This module turns observed ``Place`` traffic into that estimate.

Rate estimator
--------------
Each observed request adds a unit impulse to an exponentially decaying sum ``w`` with half-life ``H``::

    w(t) = sum over observed requests i of 2 ** (-(t - t_i) / H)
    rate(t) = w(t) * ln(2) / H                                         [requests/s]

For a steady Poisson stream of rate ``r`` the expected value of ``w`` is ``r * H / ln(2)``, so ``rate`` is an
unbiased estimate of ``r`` once the estimator has seen a few half-lives of traffic. A burst decays by half
every ``H`` seconds. The mean input and output tokens of a class are averages weighted by the same decaying
weights.

Start-up (``warmup=True``)
~~~~~~~~~~~~~~~~~~~~~~~~~~
During the first half-lives after the estimator starts observing at ``t0`` (its first observation, or
``observing_since_s``), the plain estimate is biased low: a stream of rate ``r`` that began at ``t0`` has

    E[w(t)] = r * W(t),   W(t) = (H / ln 2) * (1 - 2 ** (-(t - t0) / H))              [s]

where ``W(t)`` is the effective length of the window observed so far (the integral of the decaying weight
over ``[t0, t]``): 29 % of ``r`` after half a half-life, 50 % after one. With ``warmup`` the rate is
``w(t) / max(W(t), W_min)``, the decay-weighted mean rate over the window actually observed, which is
unbiased for a stream that started at ``t0`` and equals the plain estimate once ``t - t0`` is a few
half-lives (``W`` tends to ``H / ln 2``). ``W_min = min(min_window_s, H / ln 2)`` bounds the estimate from
a window of a few seconds (one request an instant after start is not an infinite rate). ``t0`` is shared
by every class: a class first seen later is new traffic, and ramps up as in the plain estimate.
Off by default (the plain estimate, with static demand covering start-up).

Static demand
-------------
Configured demand (known traffic, a capacity floor) is merged per class with the observed estimate. The
default merge is ``"max"``: the static rate is a floor that observed traffic may exceed; adding the two
(``"sum"``) would count the known traffic twice once it arrives, so ``"sum"`` is only for static demand that
describes traffic *not* routed through ``Place`` (e.g. a batch job expected to start). With ``"max"`` the
mean shape comes from whichever source gives the larger rate; with ``"sum"`` it is the rate-weighted mean.

Contracts
---------
Pure and deterministic: time is passed in (unix seconds), no clock is read. A :class:`DemandEstimator` is
mutable and not thread-safe: its owner calls :meth:`DemandEstimator.observe` and takes an immutable
:meth:`DemandEstimator.demand` value to hand to the planner's thread. A time earlier than the last one seen
for a class counts as "no time passed" (nothing decays backwards).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from fleet.types import LatencySlo, Priority
from policies.types import TrafficClass

__all__ = [
    "DEFAULT_BUCKET_BOUNDS",
    "BucketBounds",
    "ClassDemand",
    "DemandEstimator",
    "StaticDemand",
    "bucket_upper_bound",
    "classify",
]


# ---------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------


def _check_bounds(name: str, bounds: tuple[int, ...]) -> None:
    if not bounds:
        raise ValueError(f"{name}: must hold at least one bucket bound")
    for i, b in enumerate(bounds):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{name}[{i}]: must be an integer >= 1, got {b!r}")
        if i and b <= bounds[i - 1]:
            raise ValueError(f"{name}[{i}]: bounds must be strictly increasing, got {bounds[i - 1]} then {b}")


@dataclass(frozen=True, slots=True)
class BucketBounds:
    """Inclusive upper bounds, in tokens, of the input-length and output-length buckets.

    A length ``n`` falls in the first bucket whose bound is ``>= n``. The last bucket also holds every
    longer request (so the last bound should be the longest context the fleet serves).
    """

    input_tokens: tuple[int, ...]
    output_tokens: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_bounds("input_tokens", self.input_tokens)
        _check_bounds("output_tokens", self.output_tokens)


# Powers of four from 256 tokens up to the 128 Ki-token context of the Llama-3.1 family; output buckets
# stop at 32 Ki tokens. Overridable in config.
DEFAULT_BUCKET_BOUNDS = BucketBounds(
    input_tokens=(256, 1024, 4096, 16384, 131072),
    output_tokens=(128, 512, 2048, 8192, 32768),
)


def bucket_upper_bound(tokens: int, bounds: tuple[int, ...]) -> int:
    """The inclusive upper bound of the bucket holding ``tokens`` (the last bucket holds anything longer)."""
    i = bisect.bisect_left(bounds, tokens)
    return bounds[min(i, len(bounds) - 1)]


def classify(
    model: str, input_tokens: int, output_tokens: int, priority: Priority, bounds: BucketBounds
) -> TrafficClass:
    """The traffic class of a request with these token counts (``output_tokens``: the expected output)."""
    if input_tokens < 0:
        raise ValueError(f"input_tokens: must be >= 0, got {input_tokens}")
    if output_tokens < 0:
        raise ValueError(f"output_tokens: must be >= 0, got {output_tokens}")
    return TrafficClass(
        model=model,
        input_bucket_tokens=bucket_upper_bound(input_tokens, bounds.input_tokens),
        output_bucket_tokens=bucket_upper_bound(output_tokens, bounds.output_tokens),
        priority=priority,
    )


# ---------------------------------------------------------------------------------------------------------
# Demand values
# ---------------------------------------------------------------------------------------------------------


def _check_finite(name: str, value: float, minimum: float, strict: bool = False) -> None:
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        rule = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name}: must be a finite number {rule}, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClassDemand:
    """What the planner plans for, for one traffic class.

    ``rate_per_s`` is the request rate to serve; the mean token counts give the work per request; ``slo``
    is the latency target every request of the class must meet (defaults from config already applied).
    """

    rate_per_s: float
    mean_input_tokens: float
    mean_output_tokens: float
    slo: LatencySlo

    def __post_init__(self) -> None:
        _check_finite("rate_per_s", self.rate_per_s, 0.0)
        _check_finite("mean_input_tokens", self.mean_input_tokens, 0.0)
        _check_finite("mean_output_tokens", self.mean_output_tokens, 1.0)
        _check_finite("slo.ttft_ms", self.slo.ttft_ms, 0.0, strict=True)
        _check_finite("slo.tpot_ms", self.slo.tpot_ms, 0.0, strict=True)


@dataclass(frozen=True, slots=True)
class StaticDemand:
    """Configured demand for one class. Token means default to the class's bucket bounds (the longest)."""

    traffic_class: TrafficClass
    rate_per_s: float
    mean_input_tokens: float | None = None
    mean_output_tokens: float | None = None

    def __post_init__(self) -> None:
        _check_finite("rate_per_s", self.rate_per_s, 0.0)
        if self.mean_input_tokens is not None:
            _check_finite("mean_input_tokens", self.mean_input_tokens, 0.0)
        if self.mean_output_tokens is not None:
            _check_finite("mean_output_tokens", self.mean_output_tokens, 1.0)


# ---------------------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------------------


def _class_key(c: TrafficClass) -> tuple[str, int, int, str]:
    # TrafficClass orders by its fields, but Priority (an Enum) has no order: sort by value instead.
    return (c.model, c.input_bucket_tokens, c.output_bucket_tokens, c.priority.value)


class _ClassState:
    """Decayed sums for one class, all valid at ``t_s``."""

    __slots__ = ("t_s", "tok_input_sum", "tok_output_sum", "tok_weight", "weight")

    def __init__(self, t_s: float) -> None:
        self.t_s = t_s
        self.weight = 0.0  # decayed count of requests
        self.tok_weight = 0.0  # decayed count of requests that carried token counts
        self.tok_input_sum = 0.0
        self.tok_output_sum = 0.0


@dataclass(frozen=True, slots=True)
class _Observed:
    rate_per_s: float
    mean_input_tokens: float | None
    mean_output_tokens: float | None


class DemandEstimator:
    """Exponentially weighted request rate and mean request shape per traffic class.

    ``half_life_s``: how fast the estimate forgets (see the module docstring). ``static``: configured demand
    merged per class by ``static_merge`` ("max" or "sum"). Classes whose observed rate has decayed below
    ``min_rate_per_s`` are dropped from the estimate (and their state is freed on a later ``observe``).
    ``warmup``: correct the start-up bias over the window observed since ``observing_since_s`` (default:
    the first observation), never shorter than ``min_window_s`` (module docstring, "Start-up").
    """

    _PRUNE_EVERY = 4096  # observations between sweeps that free classes decayed below min_rate_per_s

    def __init__(
        self,
        half_life_s: float = 60.0,
        *,
        static: Iterable[StaticDemand] = (),
        static_merge: Literal["max", "sum"] = "max",
        min_rate_per_s: float = 1e-4,
        warmup: bool = False,
        observing_since_s: float | None = None,
        min_window_s: float = 5.0,
    ) -> None:
        _check_finite("half_life_s", half_life_s, 0.0, strict=True)
        _check_finite("min_rate_per_s", min_rate_per_s, 0.0)
        _check_finite("min_window_s", min_window_s, 0.0, strict=True)
        if observing_since_s is not None:
            _check_finite("observing_since_s", observing_since_s, -math.inf)
        if static_merge not in ("max", "sum"):
            raise ValueError(f"static_merge: must be 'max' or 'sum', got {static_merge!r}")
        self._half_life_s = float(half_life_s)
        self._rate_per_weight = math.log(2.0) / self._half_life_s
        self._min_rate_per_s = float(min_rate_per_s)
        self._static_merge = static_merge
        static_by_class: dict[TrafficClass, StaticDemand] = {}
        for i, s in enumerate(static):
            if s.traffic_class in static_by_class:
                raise ValueError(f"static[{i}]: class {s.traffic_class.name} is given twice")
            static_by_class[s.traffic_class] = s
        self._static: Mapping[TrafficClass, StaticDemand] = MappingProxyType(static_by_class)
        self._state: dict[TrafficClass, _ClassState] = {}
        self._since_prune = 0
        self._warmup = bool(warmup)
        self._t0_s = observing_since_s
        self._min_window_s = min(float(min_window_s), 1.0 / self._rate_per_weight)

    @property
    def half_life_s(self) -> float:
        return self._half_life_s

    @property
    def warmup(self) -> bool:
        return self._warmup

    def _decay(self, dt_s: float) -> float:
        return 2.0 ** (-max(0.0, dt_s) / self._half_life_s)

    def _per_weight(self, now_s: float) -> float:
        """Requests/s per unit of decayed weight at ``now_s``: ``1 / W`` (module docstring)."""
        if not self._warmup or self._t0_s is None:
            return self._rate_per_weight
        window_s = (1.0 - self._decay(now_s - self._t0_s)) / self._rate_per_weight
        return 1.0 / max(window_s, self._min_window_s)

    def observe(
        self,
        cls: TrafficClass,
        now_s: float,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        count: int = 1,
    ) -> None:
        """Record ``count`` requests of ``cls`` arriving at ``now_s``, with their token counts if known.

        Token counts are used for the class's mean shape only when both are given.
        """
        if count < 1:
            raise ValueError(f"count: must be >= 1, got {count}")
        _check_finite("now_s", now_s, -math.inf)
        if self._t0_s is None:
            self._t0_s = now_s
        st = self._state.get(cls)
        if st is None:
            st = _ClassState(now_s)
            self._state[cls] = st
        elif now_s > st.t_s:
            d = self._decay(now_s - st.t_s)
            st.weight *= d
            st.tok_weight *= d
            st.tok_input_sum *= d
            st.tok_output_sum *= d
            st.t_s = now_s
        # A time before st.t_s is taken as st.t_s: the impulse is added undecayed.
        st.weight += count
        if input_tokens is not None and output_tokens is not None:
            st.tok_weight += count
            st.tok_input_sum += count * float(input_tokens)
            st.tok_output_sum += count * float(output_tokens)
        self._since_prune += 1
        if self._since_prune >= self._PRUNE_EVERY:
            self._prune(now_s)

    def _prune(self, now_s: float) -> None:
        self._since_prune = 0
        per_weight = self._per_weight(now_s)
        dead = [
            c
            for c, st in self._state.items()
            if st.weight * self._decay(now_s - st.t_s) * per_weight < self._min_rate_per_s
        ]
        for c in dead:
            del self._state[c]

    def _observed(self, now_s: float) -> dict[TrafficClass, _Observed]:
        out: dict[TrafficClass, _Observed] = {}
        per_weight = self._per_weight(now_s)
        for c, st in self._state.items():
            rate = st.weight * self._decay(now_s - st.t_s) * per_weight
            if rate < self._min_rate_per_s:
                continue
            if st.tok_weight > 0.0:
                out[c] = _Observed(rate, st.tok_input_sum / st.tok_weight, st.tok_output_sum / st.tok_weight)
            else:
                out[c] = _Observed(rate, None, None)
        return out

    def rates(self, now_s: float) -> Mapping[TrafficClass, float]:
        """Request rate per class at ``now_s`` in requests/s, static demand merged in. Immutable."""
        return MappingProxyType({c: d[0] for c, d in self._merged(now_s).items()})

    def mean_tokens(self, cls: TrafficClass, now_s: float) -> tuple[float, float]:
        """(mean input tokens, mean output tokens) of ``cls``; the bucket bounds when nothing is known."""
        merged = self._merged(now_s).get(cls)
        if merged is None:
            return float(cls.input_bucket_tokens), float(cls.output_bucket_tokens)
        return merged[1], merged[2]

    def demand(
        self, now_s: float, slo_for: Callable[[TrafficClass], LatencySlo]
    ) -> Mapping[TrafficClass, ClassDemand]:
        """The planner's input: one immutable :class:`ClassDemand` per class with a positive rate."""
        return MappingProxyType(
            {
                c: ClassDemand(rate_per_s=r, mean_input_tokens=i, mean_output_tokens=o, slo=slo_for(c))
                for c, (r, i, o) in self._merged(now_s).items()
            }
        )

    def _merged(self, now_s: float) -> dict[TrafficClass, tuple[float, float, float]]:
        """Per class: (rate, mean input tokens, mean output tokens) with static demand merged in."""
        observed = self._observed(now_s)
        out: dict[TrafficClass, tuple[float, float, float]] = {}
        for c in sorted(set(observed) | set(self._static), key=_class_key):
            obs = observed.get(c)
            st = self._static.get(c)
            o_rate = obs.rate_per_s if obs else 0.0
            s_rate = st.rate_per_s if st else 0.0
            o_in = obs.mean_input_tokens if obs and obs.mean_input_tokens is not None else None
            o_out = obs.mean_output_tokens if obs and obs.mean_output_tokens is not None else None
            s_in = st.mean_input_tokens if st else None
            s_out = st.mean_output_tokens if st else None
            # A source without a known shape stands for the longest requests of the class.
            o_in_v = float(c.input_bucket_tokens) if o_in is None else o_in
            o_out_v = float(c.output_bucket_tokens) if o_out is None else o_out
            s_in_v = float(c.input_bucket_tokens) if s_in is None else s_in
            s_out_v = float(c.output_bucket_tokens) if s_out is None else s_out
            if self._static_merge == "max":
                if o_rate >= s_rate:
                    rate, mean_in, mean_out = o_rate, o_in_v, o_out_v
                else:
                    rate, mean_in, mean_out = s_rate, s_in_v, s_out_v
            else:
                rate = o_rate + s_rate
                if rate > 0.0:
                    mean_in = (o_rate * o_in_v + s_rate * s_in_v) / rate
                    mean_out = (o_rate * o_out_v + s_rate * s_out_v) / rate
                else:
                    mean_in, mean_out = s_in_v, s_out_v
            if rate <= 0.0:
                continue
            out[c] = (rate, mean_in, max(1.0, mean_out))
        return out
