"""The job store interface, its errors, and the in-memory store.

:class:`JobStore` is the one owner of job state. Two implementations keep the same contract (the same
test suite runs against both): :class:`MemoryJobStore` here, for a single process and tests, and
``jobs.postgres.PostgresJobStore``, durable and shared by every Turnout process on one database.
:func:`open_job_store` picks one by its configured kind.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import builtins
import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncGenerator, Collection, Sequence
from typing import Final, Protocol

from jobs.types import LEGAL_TRANSITIONS, PENDING_REASON_NO_PLACER, Job, JobEvent, JobSpec, JobState

#: Events a watcher may fall behind by before its watch ends with :class:`WatchLagged`.
DEFAULT_WATCH_BACKLOG: Final = 1024


# --- errors ---------------------------------------------------------------------------------------------


class JobStoreError(Exception):
    """Base of every refusal a job store raises on purpose."""


class JobNotFound(JobStoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class IdempotencyConflict(JobStoreError):
    """The idempotency key already belongs to a job with a different spec."""

    def __init__(self, idempotency_key: str, existing: Job) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} already belongs to job {existing.job_id} "
            "with a different spec; use a new key for a different job"
        )
        self.idempotency_key = idempotency_key
        self.existing = existing


class IllegalTransition(JobStoreError):
    """The state machine does not allow this change (see ``jobs.types.LEGAL_TRANSITIONS``)."""

    def __init__(self, job_id: str, from_state: JobState, to_state: JobState) -> None:
        allowed = sorted(s.value for s in LEGAL_TRANSITIONS[from_state])
        super().__init__(
            f"job {job_id} cannot go from {from_state.value} to {to_state.value} "
            f"(allowed from {from_state.value}: {', '.join(allowed) or 'none, it is final'})"
        )
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state


class BadPageToken(JobStoreError, ValueError):
    """The page token was not produced by ``list`` with the same tenant and states."""


class WatchLagged(JobStoreError):
    """The watcher fell more than its backlog behind; its watch ended and must be started again."""


class StoreUnavailable(JobStoreError):
    """The backing database cannot be reached; the operation may be retried."""


class StoreClosed(JobStoreError):
    """The store was closed."""


# --- the interface --------------------------------------------------------------------------------------


class JobStore(Protocol):
    """The durable queue of training jobs.

    Contracts every implementation keeps:

    - ``submit`` is idempotent on ``idempotency_key``: the first call creates a PENDING job at revision 1
      and returns ``(job, True)``; a later call with an equal spec returns the stored job unchanged and
      ``False``; with a different spec it raises :class:`IdempotencyConflict`.
    - Changes follow ``jobs.types.LEGAL_TRANSITIONS``; anything else raises :class:`IllegalTransition`
      and changes nothing. Each change increases the job's ``revision`` by one and is published once to
      watchers with a ``sequence`` greater than every earlier change of the store.
    - ``list`` returns jobs newest submission first. A page token is opaque, names a position rather
      than an offset (jobs submitted later never shift later pages) and only fits the same tenant and
      states filter; otherwise :class:`BadPageToken`.
    - ``watch`` yields the current state first, then every later change in sequence order, with no gaps
      and no repeats. For one job it ends after a final state; for all jobs (``None``) it starts with
      every job that is not final (oldest change first) and runs until closed. A watcher that falls
      more than its backlog behind gets :class:`WatchLagged`. Closing the iterator (or cancelling the
      task iterating it) unsubscribes it at once: ``listener_count`` counts live watches.
    - ``close`` ends every watch (their iterators stop) and releases connections; later calls raise
      :class:`StoreClosed`.
    """

    async def submit(
        self, idempotency_key: str, spec: JobSpec, now_s: float, *, reason: str = PENDING_REASON_NO_PLACER
    ) -> tuple[Job, bool]:
        """The job for ``idempotency_key``, created PENDING with ``reason`` if new; and whether it was."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job's current revision, or ``None`` if there is no such job."""
        ...

    async def cancel(self, job_id: str, reason: str, now_s: float) -> Job | None:
        """Cancels a job that is not final; a final job is returned unchanged; ``None`` if unknown."""
        ...

    async def transition(
        self,
        job_id: str,
        to_state: JobState,
        reason: str,
        now_s: float,
        assigned_instances: Sequence[str] = (),
    ) -> Job:
        """Moves the job to ``to_state`` (a placer's step).

        Non-empty ``assigned_instances`` replaces the gang; empty keeps it. Moving to PLACED needs a
        non-empty gang (``ValueError``). Raises :class:`JobNotFound` or :class:`IllegalTransition`.
        """
        ...

    async def list(
        self,
        page_size: int,
        page_token: str = "",
        tenant: str | None = None,
        states: Collection[JobState] = (),
    ) -> tuple[builtins.list[Job], str]:
        """Up to ``page_size`` (>= 1) jobs, newest first, and the next page's token ("" at the end).

        ``tenant`` None means every tenant; empty ``states`` means every state.
        """
        ...

    def watch(self, job_id: str | None = None) -> AsyncGenerator[JobEvent, None]:
        """The job's (or every non-final job's) current state, then every change. Raises
        :class:`JobNotFound` on the first step for an unknown job."""
        ...

    @property
    def listener_count(self) -> int:
        """Watches currently subscribed to changes."""
        ...

    async def close(self) -> None: ...


async def open_job_store(kind: str, dsn: str | None) -> JobStore:
    """The configured store: ``"memory"`` (``dsn`` must be None) or ``"postgres"`` (``dsn`` required).

    The PostgreSQL store connects and migrates its schema before returning; an unreachable database
    raises :class:`StoreUnavailable`.
    """
    if kind == "memory":
        if dsn is not None:
            raise ValueError("the memory job store takes no dsn")
        return MemoryJobStore()
    if kind == "postgres":
        if not dsn:
            raise ValueError("the postgres job store needs a dsn, e.g. postgresql://user@host:5432/db")
        from jobs.postgres import PostgresJobStore

        return await PostgresJobStore.open(dsn)
    raise ValueError(f"unknown job store kind {kind!r}; expected 'memory' or 'postgres'")


# --- helpers shared by the implementations ----------------------------------------------------------------


def new_job_id() -> str:
    """A fresh, unguessable job identifier ("job-" and 32 hex digits)."""
    return f"job-{uuid.uuid4().hex}"


def check_transition(job: Job, to_state: JobState, assigned_instances: Sequence[str]) -> None:
    """Raises :class:`IllegalTransition` (or ``ValueError`` for a PLACED step without a gang)."""
    if to_state not in LEGAL_TRANSITIONS[job.state]:
        raise IllegalTransition(job.job_id, job.state, to_state)
    if to_state is JobState.PLACED and not assigned_instances:
        raise ValueError(f"job {job.job_id}: moving to placed needs the assigned instances")


def advanced(
    job: Job, to_state: JobState, reason: str, now_s: float, assigned_instances: Sequence[str]
) -> Job:
    """``job`` after a checked change: next revision, new state and reason, gang replaced if given."""
    return dataclasses.replace(
        job,
        state=to_state,
        reason=reason,
        assigned_instances=tuple(assigned_instances) if assigned_instances else job.assigned_instances,
        updated_at_s=now_s,
        revision=job.revision + 1,
    )


_TOKEN_VERSION: Final = "1"
_MAX_TOKEN_CHARS: Final = 256


def _filter_fingerprint(tenant: str | None, states: Collection[JobState]) -> str:
    text = f"{tenant if tenant is not None else ''}\x1f{','.join(sorted(s.value for s in states))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_page_token(before_submit_seq: int, tenant: str | None, states: Collection[JobState]) -> str:
    """An opaque token for the page of jobs submitted before submission number ``before_submit_seq``."""
    raw = f"{_TOKEN_VERSION}:{before_submit_seq}:{_filter_fingerprint(tenant, states)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, tenant: str | None, states: Collection[JobState]) -> int | None:
    """The submission number a page starts below; ``None`` for the first page (empty token).

    Raises :class:`BadPageToken` for anything :func:`encode_page_token` did not produce for this filter.
    """
    if not token:
        return None
    if len(token) > _MAX_TOKEN_CHARS:
        raise BadPageToken("is not a page token from a previous List response")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise BadPageToken("is not a page token from a previous List response") from None
    parts = raw.split(":")
    canonical = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    if (
        token != canonical
        or len(parts) != 3
        or parts[0] != _TOKEN_VERSION
        or not parts[1].isdigit()
        or str(int(parts[1])) != parts[1]
        or int(parts[1]) < 1
    ):
        raise BadPageToken("is not a page token from a previous List response")
    if parts[2] != _filter_fingerprint(tenant, states):
        raise BadPageToken("belongs to a List call with a different tenant or states filter")
    return int(parts[1])


@dataclasses.dataclass(frozen=True, slots=True)
class _End:
    """Queue marker: the store closed (``lagged`` False) or the watcher fell behind (True)."""

    lagged: bool


class Subscription:
    """One watch's queue of events. Filled by :class:`Fanout`, drained by the watch iterator."""

    def __init__(self, job_id: str | None, max_backlog: int) -> None:
        self.job_id = job_id
        self._max_backlog = max_backlog
        self._queue: asyncio.Queue[JobEvent | _End] = asyncio.Queue()
        self._ended = False

    def offer(self, event: JobEvent) -> None:
        if self._ended or (self.job_id is not None and event.job.job_id != self.job_id):
            return
        if self._queue.qsize() >= self._max_backlog:
            self._end(lagged=True)
            return
        self._queue.put_nowait(event)

    def _end(self, *, lagged: bool) -> None:
        if self._ended:
            return
        self._ended = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_End(lagged))

    def close(self) -> None:
        self._end(lagged=False)

    async def follow(
        self, initial: Sequence[JobEvent], after_sequence: int
    ) -> AsyncGenerator[JobEvent, None]:
        """``initial``, then queued events with sequence above ``after_sequence`` (the snapshot's).

        For a single-job subscription the stream stops after the job's first final state.
        """
        for event in initial:
            yield event
            if self.job_id is not None and event.job.state.is_final:
                return
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                if item.lagged:
                    raise WatchLagged(
                        f"the watcher fell more than {self._max_backlog} events behind; watch again"
                    )
                return
            if item.sequence <= after_sequence:
                continue  # already part of the snapshot
            yield item
            if self.job_id is not None and item.job.state.is_final:
                return


class Fanout:
    """The live watches of one store: ``publish`` hands each event to every matching subscription."""

    def __init__(self, max_backlog: int = DEFAULT_WATCH_BACKLOG) -> None:
        self._max_backlog = max_backlog
        self._subscriptions: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, job_id: str | None) -> Subscription:
        sub = Subscription(job_id, self._max_backlog)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def publish(self, event: JobEvent) -> None:
        for sub in self._subscriptions:
            sub.offer(event)

    def close_all(self) -> None:
        for sub in self._subscriptions:
            sub.close()


# --- the in-memory store --------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Record:
    job: Job
    submit_seq: int  # position in submission order
    event_seq: int  # sequence of the job's latest change


class MemoryJobStore:
    """A :class:`JobStore` in this process's memory (lost on exit). Not thread-safe: one event loop.

    Every method runs without awaiting anything in between its reads and writes, so each is atomic
    with respect to the other tasks of the loop.
    """

    def __init__(self, *, watch_backlog: int = DEFAULT_WATCH_BACKLOG) -> None:
        self._records: dict[str, _Record] = {}
        self._by_key: dict[str, str] = {}
        self._submit_seqs: builtins.list[int] = []  # ascending, parallel to _submit_ids
        self._submit_ids: builtins.list[str] = []
        self._sequence = 0
        self._fanout = Fanout(watch_backlog)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the job store is closed")

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def submit(
        self, idempotency_key: str, spec: JobSpec, now_s: float, *, reason: str = PENDING_REASON_NO_PLACER
    ) -> tuple[Job, bool]:
        self._check_open()
        existing_id = self._by_key.get(idempotency_key)
        if existing_id is not None:
            existing = self._records[existing_id].job
            if existing.spec != spec:
                raise IdempotencyConflict(idempotency_key, existing)
            return existing, False
        seq = self._next_sequence()
        job = Job(
            job_id=new_job_id(),
            idempotency_key=idempotency_key,
            spec=spec,
            state=JobState.PENDING,
            reason=reason,
            assigned_instances=(),
            submitted_at_s=now_s,
            updated_at_s=now_s,
            revision=1,
        )
        self._records[job.job_id] = _Record(job, submit_seq=seq, event_seq=seq)
        self._by_key[idempotency_key] = job.job_id
        self._submit_seqs.append(seq)
        self._submit_ids.append(job.job_id)
        self._fanout.publish(JobEvent(job, seq))
        return job, True

    async def get(self, job_id: str) -> Job | None:
        self._check_open()
        record = self._records.get(job_id)
        return record.job if record is not None else None

    def _apply(
        self, record: _Record, to_state: JobState, reason: str, now_s: float, assigned: Sequence[str]
    ) -> Job:
        check_transition(record.job, to_state, assigned)
        record.job = advanced(record.job, to_state, reason, now_s, assigned)
        record.event_seq = self._next_sequence()
        self._fanout.publish(JobEvent(record.job, record.event_seq))
        return record.job

    async def cancel(self, job_id: str, reason: str, now_s: float) -> Job | None:
        self._check_open()
        record = self._records.get(job_id)
        if record is None:
            return None
        if record.job.state.is_final:
            return record.job
        return self._apply(record, JobState.CANCELLED, reason, now_s, ())

    async def transition(
        self,
        job_id: str,
        to_state: JobState,
        reason: str,
        now_s: float,
        assigned_instances: Sequence[str] = (),
    ) -> Job:
        self._check_open()
        record = self._records.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return self._apply(record, to_state, reason, now_s, assigned_instances)

    async def list(
        self,
        page_size: int,
        page_token: str = "",
        tenant: str | None = None,
        states: Collection[JobState] = (),
    ) -> tuple[builtins.list[Job], str]:
        self._check_open()
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        before = decode_page_token(page_token, tenant, states)
        wanted = frozenset(states)
        start = len(self._submit_seqs) if before is None else bisect.bisect_left(self._submit_seqs, before)
        page: builtins.list[_Record] = []
        more = False
        for i in range(start - 1, -1, -1):
            record = self._records[self._submit_ids[i]]
            job = record.job
            if (tenant is not None and job.spec.tenant != tenant) or (wanted and job.state not in wanted):
                continue
            if len(page) == page_size:
                more = True
                break
            page.append(record)
        token = encode_page_token(page[-1].submit_seq, tenant, states) if more else ""
        return [r.job for r in page], token

    async def watch(self, job_id: str | None = None) -> AsyncGenerator[JobEvent, None]:
        self._check_open()
        sub = self._fanout.subscribe(job_id)
        try:
            if job_id is not None:
                record = self._records.get(job_id)
                if record is None:
                    raise JobNotFound(job_id)
                initial = [JobEvent(record.job, record.event_seq)]
            else:
                active = sorted(
                    (r for r in self._records.values() if not r.job.state.is_final), key=lambda r: r.event_seq
                )
                initial = [JobEvent(r.job, r.event_seq) for r in active]
            # Nothing awaited since subscribing: the snapshot and the queue meet exactly at _sequence.
            async with contextlib.aclosing(sub.follow(initial, self._sequence)) as events:
                async for event in events:
                    yield event
        finally:
            self._fanout.unsubscribe(sub)

    @property
    def listener_count(self) -> int:
        return len(self._fanout)

    async def close(self) -> None:
        self._closed = True
        self._fanout.close_all()
