"""A simulated serving endpoint: continuous batching with chunked prefill, driven by a
:class:`fleet.types.ServingProfile`.

The engine model
----------------
One engine per endpoint executes one step at a time, back to back while it has work. Each step processes
at most ``budget`` tokens (the endpoint's ``max_batched_tokens``, vLLM's ``max_num_batched_tokens``), as
vLLM's scheduler does with chunked prefill: decodes first, then prompt chunks in the tokens left.

* **Admission** (first come, first served). The request at the head of the queue is admitted when the
  engine has room (fewer than ``max_batch`` sequences admitted, the endpoint's ``max_batch_sequences``,
  counting those still in prefill), its KV cache fits (the KV tokens held by admitted requests plus its own
  ``input + output`` tokens stay within the profile's ``kv_capacity_tokens``) and the step being formed
  still has tokens to spare. A request is booked for its final length on admission, so memory never runs
  out mid-decode and nothing is preempted. A blocked head blocks the queue (no overtaking).
* **A step.** Every decoding sequence (``B`` of them) produces one token and takes one token of the
  budget; the ``budget - B`` tokens left go to the prompts in prefill, oldest first (a prompt longer than
  that is split over several steps; a step may finish one prompt and start the next). The step takes
  ``tpot_ms(B, mean context)`` for the decodes (0 when ``B = 0``) plus, for each prompt chunk of ``n`` of a
  prompt's ``N`` tokens, ``n / N`` of that prompt's prefill time ``ttft_ms(N, 0)``. A prompt's whole
  prefill thus costs the engine what the profile's TTFT says, on an idle endpoint exactly
  (``ttft_ms(N, 0)`` over ``ceil(N / budget)`` steps), and beside ``B`` decoding sequences that plus one
  decode step per chunk; the sequences decoding meanwhile are slowed by at most one chunk's share per step
  instead of stalling for whole prompts.
* **First token and decode.** A prompt's first token is out when the step that prefills its last chunk
  ends (TTFT = that moment minus arrival); it joins the decode batch for the next step. A sequence with
  ``output_tokens`` completes after ``output_tokens - 1`` decode steps. A step in progress is never cut
  short, so a request arriving mid-step waits for it.

Event-driven jumps
------------------
Nothing is simulated token by token. A step that carries prompt chunks is one event. While no prompt is in
prefill and the batch is unchanged the engine runs a *segment* of ``k`` decode steps, ``k`` = the steps
until the next sequence completes (capped at ``segment_steps``), all of the same duration ``tpot_ms(B,
c_mid)`` where ``c_mid`` is the batch's mean context at the segment's middle step (the mean context grows
by exactly one token per step, so this is exact when TPOT is linear in the context, as the roofline is
between its kinks). The endpoint then sleeps until the segment ends. An arrival that can be admitted cuts
the segment at the next step boundary (``ceil`` of the elapsed steps). Per-sequence progress is one
counter of steps for the whole endpoint: a sequence joining at step ``s`` completes at step ``s +
output_tokens - 1`` (a heap keyed by that step), and the batch's total context is ``sum(input_i + 1 -
join_step_i) + B x steps``, so joins, completions and the mean context are O(log B) or O(1).

Accounting: the endpoint tells its :class:`~sim.accounting.EndpointMeter` when it turns busy or idle and
adds its prefill and decode seconds as they complete (a mixed step's decode and chunk parts apart).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from dataclasses import dataclass

from fleet.types import (
    DEFAULT_MAX_BATCH_SEQUENCES,
    DEFAULT_MAX_BATCHED_TOKENS,
    EndpointLoad,
    EndpointSpec,
    ServingProfile,
)
from sim.accounting import EndpointMeter

__all__ = ["DEFAULT_SEGMENT_STEPS", "Lifecycle", "SimEndpoint", "SimRequest"]

DEFAULT_SEGMENT_STEPS = 64
"""Longest run of decode steps simulated as one segment of equal steps (the step time is re-evaluated at
least this often as the context grows)."""

_IDLE, _MIXED, _DECODE = 0, 1, 2


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
        "prefill_left",
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
        self.prefill_left = input_tokens if input_tokens > 1 else 1
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
        "_chunks",
        "_heap",
        "_prefill_s_per_token",
        "_tpot",
        "_ttft",
        "_window",
        "act_start_s",
        "batch",
        "budget",
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
        "prefill_share_s",
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
        max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
        segment_steps: int = DEFAULT_SEGMENT_STEPS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        if max_batched_tokens <= max_batch:
            raise ValueError(
                f"max_batched_tokens: must exceed max_batch ({max_batch}), got {max_batched_tokens}"
            )
        if segment_steps < 1:
            raise ValueError(f"segment_steps: must be >= 1, got {segment_steps}")
        self.index = index
        self.spec = spec
        self.profile = profile
        self.meter = meter
        self.max_batch = max_batch
        self.budget = max_batched_tokens
        self.segment_steps = segment_steps
        self.kv_capacity_tokens = int(profile.kv_capacity_tokens)
        self.max_context_tokens = spec.max_context_tokens
        self._ttft = profile.ttft_ms
        self._tpot = profile.tpot_ms
        self._prefill_s_per_token: dict[int, float] = {}  # prompt length -> prefill seconds per token
        self.queue: deque[SimRequest] = deque()
        self.prefilling: deque[SimRequest] = deque()  # admitted, prompt not yet fully prefilled
        self._chunks: list[tuple[SimRequest, int]] = []  # the prompt chunks of the step in progress
        self.prefill_share_s = 0.0  # the prefill seconds of the step in progress (its chunks' shares)
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
        return not self.queue and not self.prefilling and self.batch == 0

    @property
    def running(self) -> int:
        """Sequences admitted: decoding plus those in prefill."""
        return self.batch + len(self.prefilling)

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
            # Cut the segment at the next step boundary so that the prompt's first chunk goes there.
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
        """Finish the step or segment due at ``now_s`` (appending the requests that complete to
        ``completed``) and start the next one. Always re-schedules (the caller pushes :attr:`wake_s` if
        finite)."""
        mode = self.mode
        meter = self.meter
        if mode == _MIXED:
            meter.prefill_s += self.prefill_share_s
            meter.decode_s += (now_s - self.act_start_s) - self.prefill_share_s
            if self.batch:
                self._finish_decode_steps(1, now_s, completed)
            steps = self.steps
            prefilling = self.prefilling
            for req, tokens in self._chunks:
                req.prefill_left -= tokens
                if req.prefill_left > 0:
                    continue
                # Prompts finish in admission order: the finished one is at the head.
                prefilling.popleft()
                req.first_token_s = now_s
                if req.output_tokens <= 1:
                    self._complete(req, now_s, completed)
                else:
                    req.finish_step = steps + req.output_tokens - 1
                    req.ctx_term = req.input_tokens + 1 - steps
                    self.ctx_base += req.ctx_term
                    self.batch += 1
                    heapq.heappush(self._heap, (req.finish_step, req.index, req))
            self._chunks.clear()
        elif mode == _DECODE:
            meter.decode_s += now_s - self.act_start_s
            self._finish_decode_steps(self.seg_steps, now_s, completed)
        self._start_next(now_s)

    def _finish_decode_steps(self, k: int, now_s: float, completed: list[SimRequest]) -> None:
        self.steps += k
        steps = self.steps
        heap = self._heap
        while heap and heap[0][0] <= steps:
            req = heapq.heappop(heap)[2]
            self.batch -= 1
            self.ctx_base -= req.ctx_term
            self._complete(req, now_s, completed)

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

    def _take_chunk(self, req: SimRequest, left: int) -> int:
        """Put the next chunk of ``req``'s prompt, at most ``left`` tokens, into the step being formed: its
        share of the prompt's prefill time on an idle engine (memoised per prompt length). Returns the
        chunk's tokens."""
        tokens = req.prefill_left if req.prefill_left < left else left
        per_token_s = self._prefill_s_per_token.get(req.input_tokens)
        if per_token_s is None:
            n = req.input_tokens if req.input_tokens > 1 else 1
            per_token_s = self._prefill_s_per_token[req.input_tokens] = float(self._ttft(n, 0)) / 1000.0 / n
        self._chunks.append((req, tokens))
        self.prefill_share_s += per_token_s * tokens
        return tokens

    def _start_next(self, now_s: float) -> None:
        batch = self.batch
        prefilling = self.prefilling
        queue = self.queue
        left = self.budget - batch  # tokens of this step left for prompt chunks
        self.prefill_share_s = 0.0
        for req in prefilling:
            left -= self._take_chunk(req, left)
            if left <= 0:
                break
        while left > 0 and queue:
            head = queue[0]
            if (
                batch + len(prefilling) >= self.max_batch
                or self.kv_used_tokens + head.kv_tokens > self.kv_capacity_tokens
            ):
                break
            queue.popleft()
            self.kv_used_tokens += head.kv_tokens
            prefilling.append(head)
            left -= self._take_chunk(head, left)
        if self._chunks:
            step_s = self.prefill_share_s
            if batch:
                mid_context = self.ctx_base / batch + self.steps
                step_s += float(self._tpot(batch, int(mid_context + 0.5))) / 1000.0
            self.mode = _MIXED
            self.act_start_s = now_s
            self.meter.set_busy(now_s, True)
            self._schedule(now_s + step_s)
            return
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
