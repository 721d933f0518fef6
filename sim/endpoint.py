"""A simulated serving endpoint: continuous batching driven by a :class:`fleet.types.ServingProfile`.

The engine model
----------------
One engine per endpoint executes one step at a time, back to back while it has work:

* **Admission** (first come, first served). The request at the head of the queue is admitted when the
  decode batch has room (fewer than ``max_batch`` sequences, the endpoint's ``max_batch_sequences``) and
  its KV cache fits: the KV tokens held by admitted requests plus its own ``input + output`` tokens stay
  within the profile's ``kv_capacity_tokens``. A request is booked for its final length on admission, so
  memory never runs out mid-decode and nothing is preempted. A blocked head blocks the queue (no overtaking).
* **Prefill.** An admitted request's prompt is prefilled alone, taking ``ttft_ms(input_tokens, 0)`` of the
  profile; the decode batch is stalled meanwhile. Its first token is out when the prefill ends (TTFT =
  that moment minus arrival); then it joins the decode batch. Prompts queued behind it wait, so a prompt
  behind ``q`` queued prefill tokens of prompts like its own gets its first token after about
  ``ttft_ms(input_tokens, q)``: the profile's TTFT semantics, simulated one prompt at a time.
* **Decode.** Each step produces one token for every sequence of the batch and takes
  ``tpot_ms(batch, mean context)``; a sequence with ``output_tokens`` completes after ``output_tokens - 1``
  steps (its first token came from the prefill). Prefill has priority: at every step boundary an
  admissible queued request is prefilled before the next decode step (as schedulers that prioritise
  prefills do); a step in progress is never cut short, so a request arriving mid-step waits for it.

Event-driven jumps
------------------
Nothing is simulated token by token. While the batch is unchanged the engine runs a *segment* of ``k``
decode steps, ``k`` = the steps until the next sequence completes (capped at ``segment_steps``), all of
the same duration ``tpot_ms(B, c_mid)`` where ``c_mid`` is the batch's mean context at the segment's
middle step (the mean context grows by exactly one token per step, so this is exact when TPOT is linear
in the context, as the roofline is between its kinks). The endpoint then sleeps until the segment ends.
An arrival that can be admitted at once cuts the segment at the next step boundary (``ceil`` of the
elapsed steps). Per-sequence progress is one counter of steps for the whole endpoint: a sequence joining
at step ``s`` completes at step ``s + output_tokens - 1`` (a heap keyed by that step), and the batch's total
context is ``sum(input_i + 1 - join_step_i) + B x steps``, so joins, completions and the mean context
are O(log B) or O(1).

Accounting: the endpoint tells its :class:`~sim.accounting.EndpointMeter` when it turns busy or idle and
adds its prefill and decode seconds as they complete.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from dataclasses import dataclass

from fleet.types import DEFAULT_MAX_BATCH_SEQUENCES, EndpointLoad, EndpointSpec, ServingProfile
from sim.accounting import EndpointMeter

__all__ = ["DEFAULT_SEGMENT_STEPS", "Lifecycle", "SimEndpoint", "SimRequest"]

DEFAULT_SEGMENT_STEPS = 64
"""Longest run of decode steps simulated as one segment of equal steps (the step time is re-evaluated at
least this often as the context grows)."""

_IDLE, _PREFILL, _DECODE = 0, 1, 2


class Lifecycle(enum.Enum):
    """Where an endpoint is in plan-driven autoscaling. Only ACTIVE endpoints take new requests; ACTIVE and
    DRAINING ones are on (cost money and draw power)."""

    OFF = "off"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    DRAINING = "draining"


class SimRequest:
    """One request inside the simulation (mutable; the engine turns it into a frozen outcome)."""

    __slots__ = (
        "arrival_s",
        "ctx_term",
        "done_s",
        "endpoint",
        "finish_step",
        "first_token_s",
        "index",
        "input_tokens",
        "kv_tokens",
        "output_tokens",
        "predicted_tpot_ms",
        "predicted_ttft_ms",
        "reason",
        "request_id",
    )

    def __init__(self, index: int, arrival_s: float, input_tokens: int, output_tokens: int) -> None:
        self.index = index
        self.request_id = f"r{index}"
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.kv_tokens = input_tokens + output_tokens
        self.endpoint = -1
        self.first_token_s = math.nan
        self.done_s = math.nan
        self.finish_step = 0
        self.ctx_term = 0
        self.reason = ""
        self.predicted_ttft_ms: float | None = None
        self.predicted_tpot_ms: float | None = None

    @property
    def ttft_ms(self) -> float:
        return (self.first_token_s - self.arrival_s) * 1000.0

    @property
    def tpot_ms(self) -> float:
        """Mean time per output token over the decode; 0 for a one-token request."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.done_s - self.first_token_s) * 1000.0 / (self.output_tokens - 1)


@dataclass(slots=True)
class _Window:
    """Completions since the last telemetry report (for the observed latencies)."""

    ttft_ms_sum: float = 0.0
    tpot_ms_sum: float = 0.0
    tpot_count: int = 0
    count: int = 0


class SimEndpoint:
    """One simulated endpoint (module docstring). The engine calls :meth:`offer` and :meth:`wake` and
    re-schedules the endpoint at :attr:`wake_s` whenever :attr:`token` changes.

    Contract: ``offer`` and ``wake`` are called with non-decreasing times; ``wake`` only at ``wake_s`` with
    the current ``token``.
    """

    __slots__ = (
        "_heap",
        "_prefill_ms",
        "_tpot",
        "_ttft",
        "_window",
        "act_start_s",
        "batch",
        "ctx_base",
        "index",
        "kv_capacity_tokens",
        "kv_used_tokens",
        "lifecycle",
        "lifecycle_since_s",
        "lifecycle_token",
        "max_batch",
        "max_context_tokens",
        "meter",
        "mode",
        "prefilling",
        "profile",
        "queue",
        "seg_step_s",
        "seg_steps",
        "segment_steps",
        "spec",
        "steps",
        "token",
        "wake_s",
        "window_busy_s",
        "window_start_s",
    )

    def __init__(
        self,
        index: int,
        spec: EndpointSpec,
        profile: ServingProfile,
        meter: EndpointMeter,
        *,
        max_batch: int = DEFAULT_MAX_BATCH_SEQUENCES,
        segment_steps: int = DEFAULT_SEGMENT_STEPS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        if segment_steps < 1:
            raise ValueError(f"segment_steps: must be >= 1, got {segment_steps}")
        self.index = index
        self.spec = spec
        self.profile = profile
        self.meter = meter
        self.max_batch = max_batch
        self.segment_steps = segment_steps
        self.kv_capacity_tokens = int(profile.kv_capacity_tokens)
        self.max_context_tokens = spec.max_context_tokens
        self._ttft = profile.ttft_ms
        self._tpot = profile.tpot_ms
        self._prefill_ms: dict[int, float] = {}
        self.queue: deque[SimRequest] = deque()
        self.prefilling: SimRequest | None = None
        self._heap: list[tuple[int, int, SimRequest]] = []  # (finish step, request index, request)
        self.batch = 0
        self.steps = 0
        self.ctx_base = 0
        self.kv_used_tokens = 0
        self.mode = _IDLE
        self.act_start_s = 0.0
        self.seg_step_s = 0.0
        self.seg_steps = 0
        self.wake_s = math.inf
        self.token = 0
        self.lifecycle = Lifecycle.OFF
        self.lifecycle_since_s = 0.0
        self.lifecycle_token = 0
        self._window = _Window()
        self.window_start_s = 0.0
        self.window_busy_s = 0.0

    # --- queries ------------------------------------------------------------------------------------------

    @property
    def endpoint_id(self) -> str:
        return self.spec.endpoint_id

    def never_fits(self, req: SimRequest) -> str | None:
        """Why ``req`` can never run here (its length exceeds the context or the whole KV cache), or
        ``None``."""
        if req.kv_tokens > self.max_context_tokens:
            return "context"
        if req.kv_tokens > self.kv_capacity_tokens:
            return "kv_capacity"
        return None

    @property
    def empty(self) -> bool:
        return not self.queue and self.prefilling is None and self.batch == 0

    @property
    def running(self) -> int:
        """Sequences admitted: decoding plus the one in prefill."""
        return self.batch + (1 if self.prefilling is not None else 0)

    def in_system(self) -> int:
        return self.running + len(self.queue)

    def load(self, now_s: float, previous: EndpointLoad | None) -> EndpointLoad:
        """The telemetry this endpoint reports at ``now_s``; resets the reporting window.

        Power and utilisation are means over the window since the last report (busy share of the time);
        observed latencies are means over the requests that completed in the window (the previous values
        when none did). Returns ``previous`` itself when nothing it reports has changed.
        """
        meter = self.meter
        busy_total = meter.busy_seconds(now_s)
        width = now_s - self.window_start_s
        if width > 0:
            utilization = min(1.0, max(0.0, (busy_total - self.window_busy_s) / width))
        else:
            utilization = 1.0 if meter.busy else 0.0
        self.window_start_s = now_s
        self.window_busy_s = busy_total
        power = meter.idle_w + (meter.busy_w - meter.idle_w) * utilization if meter.on else 0.0
        w = self._window
        ttft = w.ttft_ms_sum / w.count if w.count else (previous.observed_ttft_ms if previous else None)
        tpot = (
            w.tpot_ms_sum / w.tpot_count
            if w.tpot_count
            else (previous.observed_tpot_ms if previous else None)
        )
        self._window = _Window()
        running = self.running
        waiting = len(self.queue)
        kv_ratio = self.kv_used_tokens / self.kv_capacity_tokens if self.kv_capacity_tokens else 0.0
        if (
            previous is not None
            and previous.running_requests == running
            and previous.waiting_requests == waiting
            and previous.kv_cache_usage_ratio == kv_ratio
            and previous.power_w == power
            and previous.utilization_ratio == utilization
            and previous.observed_ttft_ms == ttft
            and previous.observed_tpot_ms == tpot
        ):
            return previous
        return EndpointLoad(
            running_requests=running,
            waiting_requests=waiting,
            kv_cache_usage_ratio=kv_ratio,
            power_w=power,
            utilization_ratio=utilization,
            observed_ttft_ms=ttft,
            observed_tpot_ms=tpot,
            healthy=True,
            observed_at_s=now_s,
            received_at_s=now_s,
        )

    # --- the engine ---------------------------------------------------------------------------------------

    def offer(self, req: SimRequest, now_s: float) -> bool:
        """Queue ``req`` (which must fit: :meth:`never_fits` is ``None``). Returns True when the endpoint's
        wake-up changed (re-schedule it at :attr:`wake_s`)."""
        req.endpoint = self.index
        queue = self.queue
        queue.append(req)
        if self.mode == _IDLE:
            self._start_next(now_s)
            return True
        if (
            self.mode == _DECODE
            and len(queue) == 1
            and self.batch < self.max_batch
            and self.kv_used_tokens + req.kv_tokens <= self.kv_capacity_tokens
        ):
            # Cut the segment at the next step boundary so that the prefill starts there.
            step_s = self.seg_step_s
            done = math.ceil((now_s - self.act_start_s) / step_s - 1e-9) if step_s > 0 else 0
            if done < 0:
                done = 0
            if done < self.seg_steps:
                self.seg_steps = done
                self._schedule(max(now_s, self.act_start_s + done * step_s))
                return True
        return False

    def wake(self, now_s: float, completed: list[SimRequest]) -> None:
        """Finish the activity due at ``now_s`` (appending the requests that complete to ``completed``)
        and start the next one. Always re-schedules (the caller pushes :attr:`wake_s` if finite)."""
        mode = self.mode
        meter = self.meter
        if mode == _PREFILL:
            req = self.prefilling
            assert req is not None
            self.prefilling = None
            meter.prefill_s += now_s - self.act_start_s
            req.first_token_s = now_s
            if req.output_tokens <= 1:
                self._complete(req, now_s, completed)
            else:
                steps = self.steps
                req.finish_step = steps + req.output_tokens - 1
                req.ctx_term = req.input_tokens + 1 - steps
                self.ctx_base += req.ctx_term
                self.batch += 1
                heapq.heappush(self._heap, (req.finish_step, req.index, req))
        elif mode == _DECODE:
            meter.decode_s += now_s - self.act_start_s
            self.steps += self.seg_steps
            steps = self.steps
            heap = self._heap
            while heap and heap[0][0] <= steps:
                req = heapq.heappop(heap)[2]
                self.batch -= 1
                self.ctx_base -= req.ctx_term
                self._complete(req, now_s, completed)
        self._start_next(now_s)

    def _complete(self, req: SimRequest, now_s: float, completed: list[SimRequest]) -> None:
        req.done_s = now_s
        self.kv_used_tokens -= req.kv_tokens
        w = self._window
        w.count += 1
        w.ttft_ms_sum += req.ttft_ms
        if req.output_tokens > 1:
            w.tpot_count += 1
            w.tpot_ms_sum += req.tpot_ms
        completed.append(req)

    def _schedule(self, wake_s: float) -> None:
        self.wake_s = wake_s
        self.token += 1

    def _start_next(self, now_s: float) -> None:
        queue = self.queue
        if queue:
            head = queue[0]
            if (
                self.batch < self.max_batch
                and self.kv_used_tokens + head.kv_tokens <= self.kv_capacity_tokens
            ):
                queue.popleft()
                self.kv_used_tokens += head.kv_tokens
                self.prefilling = head
                self.mode = _PREFILL
                self.act_start_s = now_s
                self.meter.set_busy(now_s, True)
                n = head.input_tokens
                ms = self._prefill_ms.get(n)
                if ms is None:
                    ms = float(self._ttft(n, 0))
                    self._prefill_ms[n] = ms
                self._schedule(now_s + ms / 1000.0)
                return
        batch = self.batch
        if batch:
            remaining = self._heap[0][0] - self.steps
            k = remaining if remaining < self.segment_steps else self.segment_steps
            mid_context = self.ctx_base / batch + self.steps + (k - 1) / 2.0
            step_s = float(self._tpot(batch, int(mid_context + 0.5))) / 1000.0
            self.mode = _DECODE
            self.act_start_s = now_s
            self.seg_step_s = step_s
            self.seg_steps = k
            self.meter.set_busy(now_s, True)
            self._schedule(now_s + k * step_s)
            return
        self.mode = _IDLE
        self.meter.set_busy(now_s, False)
        self._schedule(math.inf)
