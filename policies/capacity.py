"""SLO-feasible capacity of one endpoint for one traffic class, and its power as a function of load.

Capacity
--------
Notation (all times in seconds): for class ``c`` with longest prompt ``L_max`` (its input bucket bound) and
longest expected output ``O_max`` (its output bucket bound), mean prompt ``L`` and mean output ``O`` tokens,
TTFT target ``S`` and TPOT target ``T``; on an endpoint with profile ``P``:

* ``p     = P.ttft(L)``         prefill time of a mean prompt (engine time each request costs before decode)
* ``p_max = P.ttft(L_max)``     TTFT of the longest prompt on an idle endpoint
* ``ctx   = L + O / 2``         mean context of a sequence while it decodes
* ``t(B)  = P.tpot(B, ctx)``    time of one decode step with ``B`` sequences in the batch
* ``B_hi  = min(P.max_batch_for_tpot(T, ctx), M)``   largest batch meeting ``T`` that fits in KV memory
  and within the engine's limit ``M`` on sequences decoding at once (the endpoint's
  ``max_batch_sequences``)
* ``k(N, B) = ceil(N / (C - B))``  steps whose chunks prefill a prompt of ``N`` tokens beside ``B``
  decoding sequences, ``C`` being the engine's tokens per step (the endpoint's ``max_batched_tokens``)

The engine prefills prompts in chunks beside the decoding sequences (chunked prefill, decodes first): each
step decodes the batch and carries at most one chunk, so the prefills slow the decode batch by their total
time, spread over the steps. At arrival rate ``λ`` it spends the share
``λ p`` of its time in prefill, so with a mean of ``B`` sequences decoding:

1. *throughput*: every request needs ``p`` of exclusive engine time and ``O`` decode steps shared by ``B``
   sequences, so the rate that keeps ``B`` sequences busy is ``g(B) = B / (B p + O t(B))``;
2. *TPOT with prefill stalls*: a decoding sequence sees ``t(B) / (1 - λ p) <= T``, i.e.
   ``λ <= h_tpot(B) = (1 - t(B) / T) / p``;
3. *TTFT under load*: a new prompt waits for the decode step in progress (``t(B)``) and for the prompts
   queued before it, then its own ``k(L_max, B)`` chunk steps each carry a decode step besides its prefill.
   A queued mean prompt holds the prefill queue for ``q = p + k(L, B) t(B)``; served first-come
   first-served at load ``λ q`` the mean wait is the M/D/1 value ``λ q^2 / (2 (1 - λ q))``. Requiring
   ``p_max + (1 + k(L_max, B)) t(B) + wait <= S`` with slack ``s = S - p_max - (1 + k(L_max, B)) t(B)``
   gives ``λ <= h_ttft(B) = 2 s / (q (q + 2 s))`` (0 when ``s <= 0``).

``g`` rises with ``B`` (batching amortises the weight reads: ``t(B) / B`` falls) while ``h = min(h_tpot,
h_ttft)`` falls (``t`` is non-decreasing in ``B``). The operating point is the largest rate at which the
batch that rate produces still meets both SLO conditions: with ``B*`` the largest batch in ``[1, B_hi]``
where ``g(B*) <= h(B*)`` (binary search), the rate is ``max(g(B*), h(B* + 1))`` — ``h(B* + 1)`` is valid
because that rate produces a batch below ``B* + 1`` whose step time is at most ``t(B* + 1)``; at
``B* = B_hi`` the memory or TPOT batch limit binds and the rate is ``g(B_hi)``; when no batch of one or
more qualifies, the rate is ``h(1)`` (a mean batch below one). The SLO-feasible capacity is

    capacity_rps = headroom_ratio * rate

where the utilisation headroom (default 0.8) absorbs burstiness and the spread of request shapes around the
mean that the mean-value analysis above ignores. Capacity is 0 when the profile does not fit the model,
when ``L_max + O_max`` exceeds the endpoint's context, when even an idle endpoint misses ``S`` for the
longest prompt, or when no batch meets ``T``. Targets apply to the predicted (mean) values, as on the
per-request path.

Power
-----
``power_w(u) = active_w + load_w * u`` for an active endpoint at load share ``u`` in [0, 1] of its
SLO-feasible capacity, with ``active_w`` = the profile's maximum power and ``load_w`` = 0: an engine with
work is busy, and busy silicon draws its full power whatever its batch (the simulator's engine model, and
what a zone's meter shows). At the loads the planner plans, an active endpoint is almost never without
work (Little's law: its rate times its latency is many requests in flight), so charging it its full power
is exact at planned load and errs on the high side, the safe side for a power cap, only for an active
endpoint left nearly idle. A line that grew with the load share charged a busy endpoint at 40 % load 40 %
of its dynamic power and let plans put more silicon in a zone than its cap can feed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet.types import DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_BATCHED_TOKENS, ServingProfile
from policies.demand import ClassDemand
from policies.types import TrafficClass

__all__ = [
    "DEFAULT_HEADROOM_RATIO",
    "ClassCapacity",
    "PowerLine",
    "class_capacity",
    "power_line",
]

DEFAULT_HEADROOM_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class ClassCapacity:
    """Requests/s of one class an endpoint serves within the class's SLO, and why it is not more.

    ``binding`` names what limits the rate: "tpot" (prefill stalls push TPOT to its target), "ttft"
    (queued prefills push TTFT to its target), "batch" (memory, the TPOT batch limit or the engine's
    sequence limit), or, with a zero rate, "no_fit" (the model does not fit), "context" (the class's
    requests exceed the endpoint's context), "ttft_idle" (TTFT misses its target even on an idle
    endpoint), "tpot_idle" (no batch meets TPOT). ``batch`` is the decode batch the operating point was
    checked at, an upper bound on its mean batch (0 when the rate is 0).
    """

    requests_per_s: float
    batch: int
    prefill_ms: float
    binding: str


@dataclass(frozen=True, slots=True)
class PowerLine:
    """Power of an active endpoint: ``active_w + load_w * load_share`` watts."""

    active_w: float
    load_w: float

    def power_w(self, load_share: float) -> float:
        return self.active_w + self.load_w * min(1.0, max(0.0, load_share))


def power_line(profile: ServingProfile) -> PowerLine:
    """The power model of an active endpoint with ``profile``: its full power whatever its load (see the
    module docstring)."""
    return PowerLine(active_w=float(profile.max_power_w), load_w=0.0)


def _zero(binding: str, prefill_ms: float = 0.0) -> ClassCapacity:
    return ClassCapacity(requests_per_s=0.0, batch=0, prefill_ms=prefill_ms, binding=binding)


def class_capacity(
    profile: ServingProfile,
    cls: TrafficClass,
    demand: ClassDemand,
    *,
    max_context_tokens: int,
    max_batch_sequences: int = DEFAULT_MAX_BATCH_SEQUENCES,
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
    headroom_ratio: float = DEFAULT_HEADROOM_RATIO,
) -> ClassCapacity:
    """SLO-feasible capacity in requests/s of one endpoint for one class (module docstring has the model).

    ``cls`` gives the longest request of the class (its bucket bounds); ``demand`` its mean shape and SLO
    (its rate is not used). Contract: deterministic in its arguments; relies on the
    :class:`~fleet.types.ServingProfile` monotonicity contract (TPOT non-decreasing in batch, TTFT
    non-decreasing in input).
    """
    input_bucket_tokens = cls.input_bucket_tokens
    output_bucket_tokens = cls.output_bucket_tokens
    mean_input_tokens = demand.mean_input_tokens
    mean_output_tokens = demand.mean_output_tokens
    slo = demand.slo
    if not 0.0 < headroom_ratio <= 1.0:
        raise ValueError(f"headroom_ratio: must be in (0, 1], got {headroom_ratio}")
    if not profile.fits:
        return _zero("no_fit")
    if input_bucket_tokens + output_bucket_tokens > max_context_tokens:
        return _zero("context")

    ttft_target_s = slo.ttft_ms / 1000.0
    tpot_target_s = slo.tpot_ms / 1000.0
    p_max = profile.ttft_ms(int(input_bucket_tokens)) / 1000.0
    if p_max > ttft_target_s:
        return _zero("ttft_idle", p_max * 1000.0)

    mean_in = max(0, round(mean_input_tokens))
    out = max(1.0, float(mean_output_tokens))
    ctx = max(1, round(mean_input_tokens + out / 2.0))
    p = max(1e-9, profile.ttft_ms(mean_in) / 1000.0)
    b_hi = min(int(profile.max_batch_for_tpot(slo.tpot_ms, ctx)), max_batch_sequences)
    if b_hi < 1:
        return _zero("tpot_idle", p * 1000.0)

    step_cache: dict[int, float] = {}

    def step_s(b: int) -> float:
        v = step_cache.get(b)
        if v is None:
            v = profile.tpot_ms(b, ctx) / 1000.0
            step_cache[b] = v
        return v

    def g(b: int) -> float:  # arrival rate that keeps a mean batch of b sequences decoding
        return b / (b * p + out * step_s(b))

    def h_tpot(b: int) -> float:  # largest rate whose prefill stalls keep TPOT within target
        return max(0.0, (1.0 - step_s(b) / tpot_target_s) / p)

    def chunk_steps(tokens: int, b: int) -> int:  # k(N, B)
        return -(-tokens // max(1, max_batched_tokens - b))

    def h_ttft(b: int) -> float:  # largest rate whose queued prefills keep TTFT within target
        t = step_s(b)
        slack = ttft_target_s - p_max - (1 + chunk_steps(int(input_bucket_tokens), b)) * t
        if slack <= 0.0:
            return 0.0
        q = p + chunk_steps(max(1, mean_in), b) * t
        return 2.0 * slack / (q * (q + 2.0 * slack))

    def h(b: int) -> float:
        return min(h_tpot(b), h_ttft(b))

    if g(1) > h(1):
        rate, batch = h(1), 1
        binding = "tpot" if h_tpot(1) <= h_ttft(1) else "ttft"
    else:
        lo, hi = 1, b_hi  # invariant: g(lo) <= h(lo)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if g(mid) <= h(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo == b_hi:
            rate, batch, binding = g(b_hi), b_hi, "batch"
        else:
            above = h(lo + 1)
            if above > g(lo):
                rate, batch = above, lo + 1
            else:
                rate, batch = g(lo), lo
            binding = "tpot" if h_tpot(lo + 1) <= h_ttft(lo + 1) else "ttft"
    if not (rate > 0.0 and math.isfinite(rate)):
        return _zero("ttft_idle" if h_ttft(1) <= 0.0 else "tpot_idle", p * 1000.0)
    return ClassCapacity(
        requests_per_s=headroom_ratio * rate, batch=batch, prefill_ms=p * 1000.0, binding=binding
    )
