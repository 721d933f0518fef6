"""The simulated clock and the event queue of the discrete-event loop.

Simulated time is seconds (float) from the first request of the trace. It only moves forward:
:meth:`SimClock.advance` refuses an earlier time with :class:`TimeWentBackwards` (an ``AssertionError``:
it can only be a bug of the simulator, never bad input).

Events are ordered by (time, kind rank, sequence number): at equal times a lower rank goes first, and
events of the same rank in the order they were pushed, so a run is deterministic. An event carries an
integer ``key`` (e.g. an endpoint index) and a ``token`` the owner uses to recognise events it has since
superseded (e.g. an endpoint's wake-up that a new arrival moved earlier): stale events are popped and
skipped by the owner, which is cheaper than removing them from the heap.
"""

from __future__ import annotations

import heapq
import math
from typing import NamedTuple

__all__ = ["Event", "EventQueue", "SimClock", "TimeWentBackwards"]


class TimeWentBackwards(AssertionError):
    """The simulator tried to move its clock to an earlier time."""


class SimClock:
    """Simulated seconds; monotonic. ``now_s`` starts at ``start_s``."""

    __slots__ = ("_now_s",)

    def __init__(self, start_s: float = 0.0) -> None:
        if not math.isfinite(start_s):
            raise ValueError(f"start_s: must be finite, got {start_s!r}")
        self._now_s = float(start_s)

    @property
    def now_s(self) -> float:
        return self._now_s

    def __call__(self) -> float:
        """The clock as an injectable ``Callable[[], float]``."""
        return self._now_s

    def advance(self, t_s: float) -> float:
        """Moves the clock to ``t_s``; raises :class:`TimeWentBackwards` if ``t_s`` is earlier than now."""
        if t_s < self._now_s or t_s != t_s:  # the second test catches NaN
            raise TimeWentBackwards(f"simulated time would go back from {self._now_s!r} s to {t_s!r} s")
        self._now_s = t_s
        return t_s


class Event(NamedTuple):
    time_s: float
    rank: int
    seq: int
    kind: int
    key: int
    token: int


class EventQueue:
    """A heap of :class:`Event` ordered by (time, rank, push order)."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[Event] = []
        self._seq = 0

    def push(self, time_s: float, kind: int, *, rank: int = 0, key: int = 0, token: int = 0) -> None:
        if not math.isfinite(time_s):
            raise ValueError(f"event time must be finite, got {time_s!r}")
        self._seq += 1
        heapq.heappush(self._heap, Event(time_s, rank, self._seq, kind, key, token))

    def pop(self) -> Event:
        return heapq.heappop(self._heap)

    def peek_time_s(self) -> float:
        """Time of the next event, ``inf`` when empty."""
        return self._heap[0].time_s if self._heap else math.inf

    def peek(self) -> Event | None:
        return self._heap[0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
