"""Predicted outcome of one request on one endpoint: TTFT, TPOT, cost, energy, power increment.

Live load
---------
Two sources count the work on an endpoint: its own telemetry (``running_requests + waiting_requests``,
``kv_cache_usage_ratio``) and the reservation ledger (requests placed here and not yet completed). They
overlap: a request placed by this router shows in the endpoint's telemetry once it arrives there. Adding
them would count it twice, so the prediction takes the larger of the two: the ledger covers what the last
telemetry report has not seen yet, telemetry covers traffic placed by anyone else.

* ``in_flight = max(running + waiting, ledger outstanding)``; the request decodes in a batch of
  ``B = min(in_flight + 1, max_batch)`` where ``max_batch`` is the endpoint's ``max_batch_sequences`` (the
  engine decodes at most that many sequences; the rest wait in its queue).
* prefill queue ahead of the request:
  ``max(ledger queued prefill tokens, waiting x waiting_request_prefill_tokens)``.
* KV tokens in use: ``max(kv_cache_usage_ratio x kv_capacity_tokens, ledger KV tokens)``.

Predictions
-----------
* ``ttft_ms = (profile.ttft_ms(input, queued) + wait_ms) x ttft_factor + network_latency_ms`` where,
  when the endpoint holds sequences, ``wait_ms`` is half a decode step (below: a prompt waits for the step
  in progress, engines do not cut a step short) plus one decode step beside each chunk of the queued
  prompts and its own (the engine prefills in chunks beside its decoding sequences, at most
  ``max_batched_tokens - min(in_flight, max_batch)`` prompt tokens a step, so ``ceil((queued + input) /
  that)`` steps), plus, when the batch is full (``in_flight >=
  max_batch``), the decode steps until ``in_flight + 1 - max_batch`` sequences have finished: a full batch
  whose sequences live ``O`` steps on average finishes ``max_batch / O`` of them per step, ``O`` being the
  mean expected output of the ledger's leases there (this request's own when it holds none); the network
  term is the data-gravity latency when the request's data lives in another region, and ``ttft_factor``
  the endpoint's correction learned from completions (1 until observed).
* ``tpot_ms = (step_ms + stall_ms) x tpot_factor`` with ``step_ms = profile.tpot_ms(B, input +
  expected_output / 2)`` (one decode step at the mean context of this request while it decodes) and
  ``stall_ms`` the prefills that slow the decode batch. A continuous-batching engine prefills each newly
  admitted prompt in the steps its sequences decode in. In steady state the endpoint admits new requests
  as fast as its sequences finish: a sequence ``i`` finishes every ``O_i`` steps, and its successor's
  prompt costs about its own prefill time ``p_i``, so each step carries ``sum_i p_i / O_i`` of prefill on
  average. The ledger keeps that sum over its live leases (``stall_us_per_step``, each lease booking its
  own corrected prefill over its expected output); sequences the telemetry reports beyond the ledger's
  count (placed by someone else) are charged the ledger's mean per lease, or this request's own ``prefill
  / expected_output`` when the ledger holds nothing there. Without this term a busy endpoint's TPOT is
  under-predicted by the share of time it spends prefilling (the planner's capacity model,
  :mod:`policies.capacity`, has the same term). A step carries at most one chunk of prompt, so the stall
  is capped at the prefill of one chunk (``profile.ttft_ms(chunk, 0)``): beyond that, prompts queue (TTFT)
  instead of slowing the decode.
* cost and energy: :mod:`policies.cost` with ``prefill_s`` the request's own prefill time (TTFT on an idle
  endpoint, corrected), ``batch = B`` and the decode step without the stall (the time the engine
  spends prefilling other prompts is theirs: their input cost already pays for it).
* capacity cost: the same cost by the profile alone, at the endpoint's full SLO-feasible batch ``n_max``
  (below; the live batch only when no batch meets the target) and without the endpoint's learned
  corrections: what a token costs on this silicon used as fully as the SLO allows, independent of how busy
  the endpoint happens to be (scorer ``capacity_cost``). Identical endpoints get identical figures, so the
  load decides between them: pricing a batch past ``n_max`` made the busiest endpoint the cheapest, and
  per-endpoint corrections (each learned from its own completions at its own load) made one of several
  identical replicas look a few per cent cheaper than the others; either piled a burst onto one replica.
* utilisation: the reported ``utilization_ratio`` if any, else ``in_flight / n_max`` where ``n_max`` is the
  largest batch meeting the request's TPOT target at its class's longest context (memoised per class), at
  most ``max_batch``;
  the request adds ``1 / n_max``. Power increment, rounded up to a whole milliwatt so that the ledger adds
  integers and its totals are exact: on an endpoint that reports its draw, ``power_w(1) - reported`` less
  the milliwatts its live leases already book (an engine with work is busy and may draw its full power;
  bookings drop as reports show them, :meth:`policies.ledger.ReservationLedger.sync_power`), so a burst
  onto one endpoint books its full power once, not once per request; on one that does not,
  ``power_w(u + 1 / n_max) - power_w(u)``.

Computation
-----------
A decision computes these figures for many endpoints with one :class:`Estimator`: what depends on the
request alone is worked out once, and what depends on the request and the serving profile (its prefill on
an idle endpoint, ``n_max``, decode steps by batch size) once per profile, so that endpoints of the same
silicon share it (serving profiles are pure). An :class:`Estimate` holds the figures filters and scorers
read; an endpoint that misses the request's SLO may get its latency figures alone
(:class:`LatencyEstimate`), and the full :class:`Prediction`, with energy, is built for ranked candidates
only. Each step computes exactly what the formulas above give, in the same order of operations.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, NamedTuple, overload

from fleet.types import EndpointSpec, EndpointState, ServingProfile, ZoneSpec
from policies.cost import egress_cost_usd, request_cost_usd, request_energy_joules

if TYPE_CHECKING:
    from policies.config import PolicyConfig
    from policies.ledger import Booking
    from policies.types import PlacementRequest, TrafficClass

__all__ = [
    "Estimate",
    "Estimator",
    "LatencyEstimate",
    "Prediction",
    "Target",
    "in_flight",
    "kv_used_tokens",
    "predict",
    "prediction_of",
]


class Target:
    """An endpoint as the policies see it on one snapshot: state, serving profile, derived constants.

    Built once per snapshot version by the policy's index; never changed afterwards.
    """

    __slots__ = (
        "endpoint_id",
        "full_power_w",
        "kind",
        "kv_capacity_tokens",
        "max_batch",
        "max_batched_tokens",
        "price_usd_per_s",
        "reference_cost_usd",
        "region",
        "serving",
        "spec",
        "state",
        "zone",
        "zone_cap_w",
        "zone_spec",
    )

    def __init__(self, state: EndpointState, serving: ServingProfile, zone: ZoneSpec | None) -> None:
        spec: EndpointSpec = state.spec
        self.state = state
        self.spec = spec
        self.endpoint_id = spec.endpoint_id
        self.serving = serving
        self.price_usd_per_s = spec.price_usd_per_hour / 3600.0
        self.zone = spec.zone
        self.region = spec.region
        self.kind = spec.accelerator_kind
        self.kv_capacity_tokens = int(serving.kv_capacity_tokens)
        self.max_batch = spec.max_batch_sequences
        self.max_batched_tokens = spec.max_batched_tokens
        self.full_power_w = float(serving.power_w(1.0))
        self.zone_spec = zone
        self.zone_cap_w = zone.power_cap_w if zone is not None else math.inf
        # A static cost per token of a reference request (1024 tokens in, 256 out, batch of 8): the order
        # in which fallbacks are looked for among endpoints a decision does not otherwise evaluate.
        ref_in, ref_out, ref_batch = 1024, 256, 8
        ref_input_usd, ref_output_usd = request_cost_usd(
            self.price_usd_per_s,
            serving.ttft_ms(ref_in, 0) / 1000.0,
            ref_out,
            serving.tpot_ms(ref_batch, ref_in + ref_out // 2) / 1000.0,
            ref_batch,
        )
        self.reference_cost_usd = ref_input_usd + ref_output_usd

    def __repr__(self) -> str:
        return f"Target({self.endpoint_id!r}, {self.state.status.value})"


class Estimate(NamedTuple):
    """The per-endpoint figures filters and scorers read (an immutable tuple: cheap to build for every
    endpoint of a decision). :class:`Prediction` is built from it for the ranked candidates only."""

    ttft_ms: float
    tpot_ms: float
    cost_usd: float
    cost_usd_per_million_tokens: float
    input_cost_usd: float
    output_cost_usd: float
    egress_cost_usd: float
    network_latency_ms: float
    profile_ttft_ms: float
    profile_tpot_ms: float
    decode_batch: int
    queued_prefill_tokens: int
    utilization_ratio: float
    power_increment_mw: int
    prefill_s: float  # the request's own prefill time, corrected
    decode_power_w: float  # the endpoint's draw at ``utilization_ratio``
    decode_step_ms: float  # one decode step without prefill stalls, corrected
    stall_ms: float  # other prompts' prefill per decode step (uncorrected; part of ``profile_tpot_ms``)
    # Cost per million tokens of this request at the endpoint's full SLO-feasible batch (``n_max``), egress
    # included: what the silicon costs when used as the plan uses it, whatever its live load.
    capacity_cost_usd_per_million_tokens: float


class LatencyEstimate(NamedTuple):
    """The latency figures of an :class:`Estimate` alone: what :meth:`Estimator.estimate` answers with
    ``latency_only`` for an endpoint that misses the request's TTFT or TPOT target."""

    ttft_ms: float
    tpot_ms: float
    decode_batch: int
    queued_prefill_tokens: int


class Prediction(NamedTuple):
    """What the policies expect if the request runs on an endpoint now (see the module docstring).

    ``cost_usd = input_cost_usd + output_cost_usd + egress_cost_usd``; ``profile_*`` are the serving
    profile's figures before the learned corrections and without network latency (what a completion's
    observation corrects). ``utilization_ratio`` is the endpoint's with this request added.

    An immutable tuple, like :class:`Estimate`: one is built for every ranked candidate of every decision,
    and a tuple is several times cheaper to build than a frozen dataclass.
    """

    ttft_ms: float
    tpot_ms: float
    cost_usd: float
    cost_usd_per_million_tokens: float
    energy_joules: float
    input_cost_usd: float
    output_cost_usd: float
    egress_cost_usd: float
    network_latency_ms: float
    profile_ttft_ms: float
    profile_tpot_ms: float
    decode_batch: int
    queued_prefill_tokens: int
    utilization_ratio: float
    power_increment_mw: int
    prefill_ms: float  # the request's own prefill on an idle endpoint, corrected (what its lease books)

    @property
    def power_increment_w(self) -> float:
        return self.power_increment_mw / 1000.0


def prediction_of(estimate: Estimate, target: Target, output_tokens: int) -> Prediction:
    """The full prediction from an estimate: adds the energy (:mod:`policies.cost`)."""
    e = estimate
    energy = request_energy_joules(
        target.full_power_w,
        e.decode_power_w,
        e.prefill_s,
        output_tokens,
        e.decode_step_ms / 1000.0,
        e.decode_batch,
    )
    return Prediction(
        ttft_ms=e.ttft_ms,
        tpot_ms=e.tpot_ms,
        cost_usd=e.cost_usd,
        cost_usd_per_million_tokens=e.cost_usd_per_million_tokens,
        energy_joules=energy,
        input_cost_usd=e.input_cost_usd,
        output_cost_usd=e.output_cost_usd,
        egress_cost_usd=e.egress_cost_usd,
        network_latency_ms=e.network_latency_ms,
        profile_ttft_ms=e.profile_ttft_ms,
        profile_tpot_ms=e.profile_tpot_ms,
        decode_batch=e.decode_batch,
        queued_prefill_tokens=e.queued_prefill_tokens,
        utilization_ratio=e.utilization_ratio,
        power_increment_mw=e.power_increment_mw,
        prefill_ms=e.prefill_s * 1000.0,
    )


def in_flight(target: Target, booking: Booking) -> int:
    """Requests on the endpoint now: the larger of its telemetry count and the ledger's."""
    load = target.state.load
    live = load.running_requests + load.waiting_requests
    return booking.outstanding if booking.outstanding > live else live


def kv_used_tokens(target: Target, booking: Booking) -> int:
    """KV-cache tokens in use: the larger of the reported usage and the ledger's reservations."""
    reported = math.ceil(target.state.load.kv_cache_usage_ratio * target.kv_capacity_tokens)
    return booking.kv_tokens if booking.kv_tokens > reported else reported


class _ProfileTerms:
    """What one decision memoises per serving profile: the request's prefill on an idle endpoint, the
    class's SLO-feasible batch (uncapped by the endpoint's own limit) and decode steps by batch size."""

    __slots__ = ("chunk_ms", "n_max", "own_prefill_ms", "step_ms")

    def __init__(self, own_prefill_ms: float, n_max: int) -> None:
        self.own_prefill_ms = own_prefill_ms
        self.n_max = n_max
        self.step_ms: dict[int, float] = {}  # batch -> tpot_ms(batch, the request's mean context)
        self.chunk_ms: dict[int, float] = {}  # prompt tokens per step -> ttft_ms(tokens, 0)


class Estimator:
    """The figures of one request on any endpoint (:meth:`estimate`, module docstring). Built once per
    decision: it holds what depends on the request alone (token counts, SLO, class, data region, egress
    price) and memoises per serving profile what depends on the request and the profile only (its
    prefill on an idle endpoint, the class's SLO-feasible batch, decode steps by batch size), so that
    endpoints of the same silicon share that work. Serving profiles are pure (:class:`ServingProfile`).

    ``batch_limit`` memoises ``max_batch_for_tpot`` per (profile, TPOT target, class) across requests,
    keyed by ``id(profile)``: the caller keeps the profiles alive while the memo lives.
    """

    __slots__ = (
        "_batch_limit",
        "_by_profile",
        "_network_ms",
        "class_key",
        "context_tokens",
        "data_region",
        "egress_usd",
        "gravity",
        "input_tokens",
        "longest_context",
        "output_tokens",
        "slo_tpot_ms",
        "slo_ttft_ms",
        "tokens",
        "waiting_request_prefill_tokens",
    )

    def __init__(
        self,
        request: PlacementRequest,
        traffic_class: TrafficClass,
        config: PolicyConfig,
        batch_limit: MutableMapping[tuple[int, float, int, int], int],
    ) -> None:
        self.input_tokens = request.input_tokens
        self.output_tokens = request.expected_output_tokens
        self.context_tokens = request.input_tokens + request.expected_output_tokens // 2
        self.tokens = request.input_tokens + request.expected_output_tokens
        self.waiting_request_prefill_tokens = config.waiting_request_prefill_tokens
        self.data_region = request.data_region
        self.gravity = config.gravity
        # What moving the request's tokens costs, for endpoints outside its data region.
        self.egress_usd = (
            egress_cost_usd(config.gravity.egress_usd_per_gb, self.tokens, config.gravity.bytes_per_token)
            if request.data_region
            else 0.0
        )
        self.slo_ttft_ms = request.slo.ttft_ms
        self.slo_tpot_ms = request.slo.tpot_ms
        self.class_key = (traffic_class.input_bucket_tokens, traffic_class.output_bucket_tokens)
        self.longest_context = traffic_class.input_bucket_tokens + traffic_class.output_bucket_tokens // 2
        self._batch_limit = batch_limit
        self._by_profile: dict[int, _ProfileTerms] = {}
        self._network_ms: dict[str, float] = {}

    def _profile_terms(self, serving: ServingProfile) -> _ProfileTerms:
        pid = id(serving)
        key = (pid, self.slo_tpot_ms, *self.class_key)
        n_max = self._batch_limit.get(key)
        if n_max is None:
            n_max = max(0, int(serving.max_batch_for_tpot(self.slo_tpot_ms, self.longest_context)))
            self._batch_limit[key] = n_max
        terms = _ProfileTerms(float(serving.ttft_ms(self.input_tokens, 0)), n_max)
        self._by_profile[pid] = terms
        return terms

    @overload
    def estimate(self, target: Target, booking: Booking) -> Estimate: ...

    @overload
    def estimate(
        self, target: Target, booking: Booking, latency_only: bool
    ) -> Estimate | LatencyEstimate: ...

    def estimate(
        self, target: Target, booking: Booking, latency_only: bool = False
    ) -> Estimate | LatencyEstimate:
        """The figures for the request on ``target`` with the ledger's ``booking`` there.

        With ``latency_only``, an endpoint whose predicted TTFT or TPOT misses the request's target gets
        its :class:`LatencyEstimate` only: the costs and the power, two thirds of the work, are never
        needed for an endpoint the latency filter drops (:meth:`CycleContext.latency
        <policies.framework.CycleContext.latency>`).
        """
        serving = target.serving
        terms = self._by_profile.get(id(serving))
        if terms is None:
            terms = self._profile_terms(serving)
        steps = terms.step_ms
        load = target.state.load
        live = load.running_requests + load.waiting_requests
        n = booking.outstanding if booking.outstanding > live else live
        queued = booking.queued_prefill_tokens
        waiting_tokens = load.waiting_requests * self.waiting_request_prefill_tokens
        if waiting_tokens > queued:
            queued = waiting_tokens

        own_ms = terms.own_prefill_ms
        max_batch = target.max_batch
        batch = n + 1 if n < max_batch else max_batch
        output_tokens = self.output_tokens
        step_ms = steps.get(batch)
        if step_ms is None:
            step_ms = steps[batch] = float(serving.tpot_ms(batch, self.context_tokens))

        profile_ttft_ms = own_ms if queued == 0 else float(serving.ttft_ms(self.input_tokens, queued))
        chunk_tokens = 0
        if n:
            # The step in progress at arrival (half done on average), then one decode step beside every
            # chunk of the prompts ahead and of its own: a step carries at most max_batched_tokens less
            # one token per decoding sequence of prompt.
            decoding = n if n < max_batch else max_batch
            chunk_tokens = target.max_batched_tokens - decoding
            if chunk_tokens < 1:
                chunk_tokens = 1
            chunk_steps = -(-(queued + self.input_tokens) // chunk_tokens)
            profile_ttft_ms += (0.5 + chunk_steps) * step_ms
        if n >= max_batch:
            # A full batch: wait for n + 1 - max_batch sequences to finish. A full batch of sequences that
            # live O steps on average finishes max_batch / O of them per step.
            booked = booking.outstanding
            mean_output = booking.output_tokens / booked if booked else float(output_tokens)
            profile_ttft_ms += (n + 1 - max_batch) * (mean_output / max_batch) * step_ms
        data_region = self.data_region
        crosses = bool(data_region) and data_region != target.region
        network_ms = self._network_latency_ms(target.region) if crosses else 0.0
        ttft_factor = booking.ttft_factor
        ttft_ms = profile_ttft_ms * ttft_factor + network_ms

        prefill_ms = own_ms * ttft_factor
        stall_ms = 0.0
        if n:
            booked = booking.outstanding
            stall_ms = booking.stall_us_per_step / 1000.0
            if n > booked:
                per_sequence_ms = stall_ms / booked if booked else prefill_ms / max(1, output_tokens)
                stall_ms += (n - booked) * per_sequence_ms
            # A step carries at most one chunk of prompt: the stall per step is at most its prefill.
            chunk_ms = terms.chunk_ms.get(chunk_tokens)
            if chunk_ms is None:
                chunk_ms = terms.chunk_ms[chunk_tokens] = float(serving.ttft_ms(chunk_tokens, 0))
            if stall_ms > chunk_ms:
                stall_ms = chunk_ms
        profile_tpot_ms = step_ms + stall_ms
        tpot_factor = booking.tpot_factor
        tpot_ms = profile_tpot_ms * tpot_factor
        if latency_only and (ttft_ms > self.slo_ttft_ms or tpot_ms > self.slo_tpot_ms):
            return LatencyEstimate(ttft_ms, tpot_ms, batch, queued)
        decode_step_ms = step_ms * tpot_factor

        prefill_s = prefill_ms / 1000.0
        input_usd, output_usd = request_cost_usd(
            target.price_usd_per_s, prefill_s, output_tokens, decode_step_ms / 1000.0, batch
        )
        tokens = self.tokens
        egress_usd = self.egress_usd if crosses else 0.0
        cost_usd = input_usd + output_usd + egress_usd

        n_max = terms.n_max
        if n_max > max_batch:
            n_max = max_batch
        full = n_max if n_max >= 1 else batch
        full_step_ms = steps.get(full)
        if full_step_ms is None:
            full_step_ms = steps[full] = float(serving.tpot_ms(full, self.context_tokens))
        full_in_usd, full_out_usd = request_cost_usd(
            target.price_usd_per_s, own_ms / 1000.0, output_tokens, full_step_ms / 1000.0, full
        )
        capacity_cost = (full_in_usd + full_out_usd + egress_usd) * 1e6 / tokens if tokens > 0 else 0.0
        reported = load.utilization_ratio
        if n_max >= 1:
            u_before = min(1.0, reported if reported is not None else n / n_max)
            u_after = min(1.0, u_before + 1.0 / n_max)
        else:
            u_before = min(1.0, reported) if reported is not None else (1.0 if n else 0.0)
            u_after = 1.0
        p_after = float(serving.power_w(u_after))
        if load.power_w is not None:
            # The endpoint reports its draw: an engine with work is busy and may draw up to its full power,
            # so book the gap between the full power and the last report, less what earlier leases on it
            # already book (they drop out as reports show them).
            gap_mw = math.ceil((target.full_power_w - load.power_w) * 1000.0 - 1e-6) - booking.power_mw
            increment_mw = gap_mw if gap_mw > 0 else 0
        else:
            increment_mw = max(0, math.ceil((p_after - float(serving.power_w(u_before))) * 1000.0 - 1e-6))

        return Estimate(
            ttft_ms,
            tpot_ms,
            cost_usd,
            cost_usd * 1e6 / tokens if tokens > 0 else 0.0,
            input_usd,
            output_usd,
            egress_usd,
            network_ms,
            profile_ttft_ms,
            profile_tpot_ms,
            batch,
            queued,
            u_after,
            increment_mw,
            prefill_s,
            p_after,
            decode_step_ms,
            stall_ms,
            capacity_cost,
        )

    def _network_latency_ms(self, region: str) -> float:
        ms = self._network_ms.get(region)
        if ms is None:
            ms = self._network_ms[region] = self.gravity.latency_ms(self.data_region, region)
        return ms


def predict(
    request: PlacementRequest,
    traffic_class: TrafficClass,
    target: Target,
    booking: Booking,
    config: PolicyConfig,
) -> Prediction:
    """The full prediction for ``request`` on ``target``, without memoisation (tests, tools)."""
    e = Estimator(request, traffic_class, config, {}).estimate(target, booking)
    return prediction_of(e, target, request.expected_output_tokens)
