"""The durable job store on PostgreSQL (psycopg 3, asyncio).

Tables (created by :data:`MIGRATIONS` when the store opens; re-opening is a no-op):

- ``turnout_jobs``: one row per job at its latest revision, with ``submit_seq`` (its position in
  submission order, the key of List's newest-first pages) and ``event_seq`` (the sequence of its latest
  change).
- ``turnout_job_events``: one row per change (seq, job, revision, state, reason, gang, time): the
  job's history, and what watchers read.
- ``turnout_job_sequence``: a single row holding the last sequence handed out.

Ordering: every write takes the ``turnout_job_sequence`` row lock (``SELECT ... FOR UPDATE``) before
anything else and holds it until commit, so writers on every Turnout process sharing the database are
serialized, sequences are handed out in commit order, and an idempotency key can never be claimed
twice. Job submission rates are small; one lock is simpler than anything finer and is never held across
a network round trip to a client.

Watching: each write ends with ``NOTIFY turnout_jobs, '<seq>'``. While a store has watchers, one
listener connection LISTENs; on each notification it reads every event with a sequence above the last
one it delivered from ``turnout_job_events`` (so nothing is lost to payload limits or reconnects) and
hands them to the watchers of this process. A watch subscribes first, then reads its snapshot and the
last sequence in one REPEATABLE READ transaction, and skips queued events at or below that sequence:
no gaps, no repeats. The listener stops when the last watcher leaves.

Connections: a small fixed set of ``AsyncConnection`` objects (``pool_size``), opened lazily, replaced
when broken or left mid-transaction by a cancelled call.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Sequence
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from fleet.types import Priority
from jobs.store import (
    DEFAULT_WATCH_BACKLOG,
    Fanout,
    IdempotencyConflict,
    JobNotFound,
    StoreClosed,
    StoreUnavailable,
    Subscription,
    advanced,
    check_transition,
    decode_page_token,
    encode_page_token,
    new_job_id,
)
from jobs.types import PENDING_REASON_NO_PLACER, Job, JobEvent, JobSpec, JobState

_log = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "turnout_jobs"
APPLICATION_NAME: Final = "turnout-jobs"  # pg_stat_activity.application_name of the pooled connections
LISTENER_APPLICATION_NAME: Final = "turnout-jobs-listener"  # ... and of the LISTEN connection
_MIGRATION_LOCK_KEY: Final = 0x7475726E6F7574  # pg_advisory_xact_lock key: "turnout" in hex
_EVENT_BATCH: Final = 500

_STATES_SQL: Final = "'pending', 'placed', 'running', 'succeeded', 'failed', 'cancelled'"

#: Schema versions in order. Each is applied once, in one transaction, recorded in
#: ``turnout_schema_version``; never edit a released entry, append a new one.
MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """
            CREATE TABLE turnout_job_sequence (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                last_seq bigint NOT NULL CHECK (last_seq >= 0)
            )
            """,
            "INSERT INTO turnout_job_sequence (singleton, last_seq) VALUES (true, 0)",
            f"""
            CREATE TABLE turnout_jobs (
                job_id text PRIMARY KEY,
                idempotency_key text NOT NULL UNIQUE,
                submit_seq bigint NOT NULL UNIQUE,
                model text NOT NULL,
                tenant text NOT NULL,
                priority text NOT NULL CHECK (priority IN ('critical', 'standard', 'sheddable')),
                chips bigint NOT NULL CHECK (chips >= 1),
                allowed_accelerator_kinds text[] NOT NULL,
                training_tokens bigint NOT NULL CHECK (training_tokens >= 0),
                max_usd_per_hour double precision NOT NULL CHECK (max_usd_per_hour >= 0),
                zone text NOT NULL,
                state text NOT NULL CHECK (state IN ({_STATES_SQL})),
                reason text NOT NULL,
                assigned_instances text[] NOT NULL,
                submitted_at_s double precision NOT NULL,
                updated_at_s double precision NOT NULL,
                revision bigint NOT NULL CHECK (revision >= 1),
                event_seq bigint NOT NULL
            )
            """,
            "CREATE INDEX turnout_jobs_tenant_submit_idx ON turnout_jobs (tenant, submit_seq DESC)",
            """
            CREATE INDEX turnout_jobs_active_idx ON turnout_jobs (event_seq)
                WHERE state IN ('pending', 'placed', 'running')
            """,
            f"""
            CREATE TABLE turnout_job_events (
                seq bigint PRIMARY KEY,
                job_id text NOT NULL REFERENCES turnout_jobs (job_id),
                revision bigint NOT NULL,
                state text NOT NULL CHECK (state IN ({_STATES_SQL})),
                reason text NOT NULL,
                assigned_instances text[] NOT NULL,
                updated_at_s double precision NOT NULL,
                UNIQUE (job_id, revision)
            )
            """,
        ),
    ),
)

# Columns that make a Job, in the order _job_from_row reads them. The events query selects the same
# shape with the per-revision columns taken from the event row.
_JOB_COLUMNS: Final = sql.SQL(
    "job_id, idempotency_key, model, tenant, priority, chips, allowed_accelerator_kinds, training_tokens, "
    "max_usd_per_hour, zone, state, reason, assigned_instances, submitted_at_s, updated_at_s, revision"
)
_N_JOB_COLUMNS: Final = 16
_EVENT_QUERY: Final = sql.SQL(
    "SELECT j.job_id, j.idempotency_key, j.model, j.tenant, j.priority, j.chips, "
    "j.allowed_accelerator_kinds, j.training_tokens, j.max_usd_per_hour, j.zone, e.state, e.reason, "
    "e.assigned_instances, j.submitted_at_s, e.updated_at_s, e.revision, e.seq "
    "FROM turnout_job_events e JOIN turnout_jobs j ON j.job_id = e.job_id "
    "WHERE e.seq > %s ORDER BY e.seq LIMIT %s"
)
_LOCK_SEQUENCE: Final = sql.SQL("SELECT last_seq FROM turnout_job_sequence FOR UPDATE")

Row = tuple[Any, ...]


def _job_from_row(row: Row) -> Job:
    return Job(
        job_id=row[0],
        idempotency_key=row[1],
        spec=JobSpec(
            model=row[2],
            tenant=row[3],
            priority=Priority(row[4]),
            chips=int(row[5]),
            allowed_accelerator_kinds=tuple(row[6]),
            training_tokens=int(row[7]),
            max_usd_per_hour=float(row[8]),
            zone=row[9],
        ),
        state=JobState(row[10]),
        reason=row[11],
        assigned_instances=tuple(row[12]),
        submitted_at_s=float(row[13]),
        updated_at_s=float(row[14]),
        revision=int(row[15]),
    )


class _Connections:
    """Up to ``size`` connections in autocommit mode, each lent to one caller at a time."""

    def __init__(self, dsn: str, size: int, connect_timeout_s: int) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._slots: asyncio.Queue[psycopg.AsyncConnection[Row] | None] = asyncio.Queue()
        for _ in range(size):
            self._slots.put_nowait(None)
        self._lent: set[psycopg.AsyncConnection[Row]] = set()
        self._closed = False

    async def connect(self, application_name: str = APPLICATION_NAME) -> psycopg.AsyncConnection[Row]:
        """A new autocommit connection (also used for the listener); StoreUnavailable if it fails."""
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=self._connect_timeout_s,
                application_name=application_name,
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to the job database: {exc}") from exc

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """Lends a connection; database connection failures surface as StoreUnavailable."""
        if self._closed:
            raise StoreClosed("the job store is closed")
        conn = await self._slots.get()
        try:
            if conn is None or conn.closed:
                conn = None
                conn = await self.connect()
            self._lent.add(conn)
            try:
                yield conn
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"the job database failed: {exc}") from exc
        finally:
            reusable = (
                conn is not None
                and not self._closed
                and not conn.closed
                and not conn.broken
                and conn.info.transaction_status == TransactionStatus.IDLE
            )
            if conn is not None:
                self._lent.discard(conn)
            self._slots.put_nowait(conn if reusable else None)
            if conn is not None and not reusable:
                await _close_quietly(conn)

    async def close(self) -> None:
        self._closed = True
        conns = [c for c in (self._slots.get_nowait() for _ in range(self._slots.qsize())) if c is not None]
        for conn in [*conns, *self._lent]:
            await _close_quietly(conn)


async def _close_quietly(conn: psycopg.AsyncConnection[Row]) -> None:
    try:
        await conn.close()
    except Exception:  # closing a broken connection may fail; there is nothing left to release
        _log.debug("error closing a job database connection", exc_info=True)


class PostgresJobStore:
    """A :class:`jobs.store.JobStore` in PostgreSQL, shared by every process on the same database.

    Open with :meth:`open` (connects and migrates); close with :meth:`close`. Database failures raise
    :class:`jobs.store.StoreUnavailable`; the store reconnects on the next call.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 4,
        connect_timeout_s: int = 5,
        watch_backlog: int = DEFAULT_WATCH_BACKLOG,
        listener_poll_s: float = 30.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self._connections = _Connections(dsn, pool_size, connect_timeout_s)
        self._fanout = Fanout(watch_backlog)
        self._listener_poll_s = listener_poll_s
        self._pump: asyncio.Task[None] | None = None
        self._pump_lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, **options: Any) -> PostgresJobStore:
        """A store on ``dsn`` with its schema migrated; StoreUnavailable if the database is unreachable."""
        store = cls(dsn, **options)
        try:
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def migrate(self) -> int:
        """Applies missing :data:`MIGRATIONS` (safe when several processes start at once); the version."""
        known = max(version for version, _ in MIGRATIONS)
        async with self._connections.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS turnout_schema_version ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT version FROM turnout_schema_version")
            applied = {int(row[0]) for row in await cur.fetchall()}
            if applied and max(applied) > known:
                raise RuntimeError(
                    f"the job database has schema version {max(applied)}, newer than this Turnout "
                    f"knows ({known}); upgrade Turnout or use another database"
                )
            for version, statements in MIGRATIONS:
                if version in applied:
                    continue
                for statement in statements:
                    await conn.execute(sql.SQL(statement))  # statements are constants of this module
                await conn.execute("INSERT INTO turnout_schema_version (version) VALUES (%s)", (version,))
                _log.info("job store schema migrated to version %d", version)
        return known

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the job store is closed")

    # --- writes (each under the sequence row lock) -----------------------------------------------------

    async def _record_change(self, conn: psycopg.AsyncConnection[Row], job: Job, seq: int) -> None:
        """Inserts the event row for ``job`` at ``seq``, advances the sequence and notifies listeners."""
        await conn.execute(
            "INSERT INTO turnout_job_events"
            " (seq, job_id, revision, state, reason, assigned_instances, updated_at_s)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                seq,
                job.job_id,
                job.revision,
                job.state.value,
                job.reason,
                list(job.assigned_instances),
                job.updated_at_s,
            ),
        )
        await conn.execute("UPDATE turnout_job_sequence SET last_seq = %s", (seq,))
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(seq)))

    async def _locked_seq(self, conn: psycopg.AsyncConnection[Row]) -> int:
        cur = await conn.execute(_LOCK_SEQUENCE)
        row = await cur.fetchone()
        assert row is not None, "turnout_job_sequence has its single row from migration 1"
        return int(row[0])

    async def _job_by(self, conn: psycopg.AsyncConnection[Row], column: str, value: str) -> Job | None:
        query = sql.SQL("SELECT {} FROM turnout_jobs WHERE {} = %s").format(
            _JOB_COLUMNS, sql.Identifier(column)
        )
        cur = await conn.execute(query, (value,))
        row = await cur.fetchone()
        return _job_from_row(row) if row is not None else None

    async def _insert_job(self, conn: psycopg.AsyncConnection[Row], job: Job, seq: int) -> None:
        spec = job.spec
        await conn.execute(
            "INSERT INTO turnout_jobs (job_id, idempotency_key, submit_seq, model, tenant, priority, chips,"
            " allowed_accelerator_kinds, training_tokens, max_usd_per_hour, zone, state, reason,"
            " assigned_instances, submitted_at_s, updated_at_s, revision, event_seq)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                job.job_id,
                job.idempotency_key,
                seq,
                spec.model,
                spec.tenant,
                spec.priority.value,
                spec.chips,
                list(spec.allowed_accelerator_kinds),
                spec.training_tokens,
                spec.max_usd_per_hour,
                spec.zone,
                job.state.value,
                job.reason,
                list(job.assigned_instances),
                job.submitted_at_s,
                job.updated_at_s,
                job.revision,
                seq,
            ),
        )

    async def submit(
        self, idempotency_key: str, spec: JobSpec, now_s: float, *, reason: str = PENDING_REASON_NO_PLACER
    ) -> tuple[Job, bool]:
        self._check_open()
        async with self._connections.connection() as conn:
            existing = await self._job_by(conn, "idempotency_key", idempotency_key)  # replay: no lock
            if existing is None:
                async with conn.transaction():
                    last_seq = await self._locked_seq(conn)
                    existing = await self._job_by(conn, "idempotency_key", idempotency_key)
                    if existing is None:
                        seq = last_seq + 1
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
                        await self._insert_job(conn, job, seq)
                        await self._record_change(conn, job, seq)
                        return job, True
        if existing.spec != spec:
            raise IdempotencyConflict(idempotency_key, existing)
        return existing, False

    async def get(self, job_id: str) -> Job | None:
        self._check_open()
        async with self._connections.connection() as conn:
            return await self._job_by(conn, "job_id", job_id)

    async def _change(
        self,
        job_id: str,
        to_state: JobState,
        reason: str,
        now_s: float,
        assigned_instances: Sequence[str],
        *,
        final_is_noop: bool,
    ) -> Job | None:
        async with self._connections.connection() as conn, conn.transaction():
            last_seq = await self._locked_seq(conn)
            job = await self._job_by(conn, "job_id", job_id)
            if job is None:
                return None
            if final_is_noop and job.state.is_final:
                return job
            check_transition(job, to_state, assigned_instances)
            changed = advanced(job, to_state, reason, now_s, assigned_instances)
            seq = last_seq + 1
            await conn.execute(
                "UPDATE turnout_jobs SET state = %s, reason = %s, assigned_instances = %s,"
                " updated_at_s = %s, revision = %s, event_seq = %s WHERE job_id = %s",
                (
                    changed.state.value,
                    changed.reason,
                    list(changed.assigned_instances),
                    changed.updated_at_s,
                    changed.revision,
                    seq,
                    job_id,
                ),
            )
            await self._record_change(conn, changed, seq)
            return changed

    async def cancel(self, job_id: str, reason: str, now_s: float) -> Job | None:
        self._check_open()
        return await self._change(job_id, JobState.CANCELLED, reason, now_s, (), final_is_noop=True)

    async def transition(
        self,
        job_id: str,
        to_state: JobState,
        reason: str,
        now_s: float,
        assigned_instances: Sequence[str] = (),
    ) -> Job:
        self._check_open()
        job = await self._change(job_id, to_state, reason, now_s, assigned_instances, final_is_noop=False)
        if job is None:
            raise JobNotFound(job_id)
        return job

    # --- reads -------------------------------------------------------------------------------------------

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
        conditions: builtins.list[sql.Composable] = [sql.SQL("true")]
        params: builtins.list[Any] = []
        if before is not None:
            conditions.append(sql.SQL("submit_seq < %s"))
            params.append(before)
        if tenant is not None:
            conditions.append(sql.SQL("tenant = %s"))
            params.append(tenant)
        if states:
            conditions.append(sql.SQL("state = ANY(%s)"))
            params.append(sorted({s.value for s in states}))
        params.append(page_size + 1)
        query = sql.SQL(
            "SELECT {}, submit_seq FROM turnout_jobs WHERE {} ORDER BY submit_seq DESC LIMIT %s"
        ).format(_JOB_COLUMNS, sql.SQL(" AND ").join(conditions))
        async with self._connections.connection() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        page = rows[:page_size]
        token = (
            encode_page_token(int(page[-1][_N_JOB_COLUMNS]), tenant, states) if len(rows) > page_size else ""
        )
        return [_job_from_row(row) for row in page], token

    async def _snapshot(self, job_id: str | None) -> tuple[builtins.list[JobEvent], int]:
        """Current event(s) for a watch and the last sequence they include, read in one snapshot."""
        async with self._connections.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT last_seq FROM turnout_job_sequence")
            row = await cur.fetchone()
            assert row is not None
            last_seq = int(row[0])
            if job_id is not None:
                query = sql.SQL("SELECT {}, event_seq FROM turnout_jobs WHERE job_id = %s").format(
                    _JOB_COLUMNS
                )
                cur = await conn.execute(query, (job_id,))
            else:
                query = sql.SQL(
                    "SELECT {}, event_seq FROM turnout_jobs"
                    " WHERE state IN ('pending', 'placed', 'running') ORDER BY event_seq"
                ).format(_JOB_COLUMNS)
                cur = await conn.execute(query)
            rows = await cur.fetchall()
        if job_id is not None and not rows:
            raise JobNotFound(job_id)
        return [JobEvent(_job_from_row(r), int(r[_N_JOB_COLUMNS])) for r in rows], last_seq

    async def watch(self, job_id: str | None = None) -> AsyncGenerator[JobEvent, None]:
        self._check_open()
        sub: Subscription = self._fanout.subscribe(job_id)
        try:
            await self._ensure_listener()
            initial, after_sequence = await self._snapshot(job_id)
            async with contextlib.aclosing(sub.follow(initial, after_sequence)) as events:
                async for event in events:
                    yield event
        finally:
            self._fanout.unsubscribe(sub)
            self._stop_listener_if_idle()

    @property
    def listener_count(self) -> int:
        return len(self._fanout)

    # --- the listener --------------------------------------------------------------------------------------

    async def _listen(self) -> tuple[psycopg.AsyncConnection[Row], int]:
        """A new connection LISTENing on the channel, and the last sequence committed when it started."""
        conn = await self._connections.connect(LISTENER_APPLICATION_NAME)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            cur = await conn.execute("SELECT last_seq FROM turnout_job_sequence")
            row = await cur.fetchone()
            assert row is not None
            return conn, int(row[0])
        except BaseException as exc:
            await _close_quietly(conn)
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"cannot listen for job changes: {exc}") from exc
            raise

    async def _ensure_listener(self) -> None:
        async with self._pump_lock:
            if self._pump is not None:
                return
            conn, last_seq = await self._listen()
            self._pump = asyncio.create_task(self._run_listener(conn, last_seq), name="turnout-jobs-listener")

    def _stop_listener_if_idle(self) -> None:
        if len(self._fanout) == 0 and self._pump is not None:
            pump, self._pump = self._pump, None
            pump.cancel()
            self._stopping.add(pump)
            pump.add_done_callback(self._stopping.discard)

    async def _deliver_new(self, conn: psycopg.AsyncConnection[Row], last_seq: int) -> int:
        """Publishes every event after ``last_seq`` to this store's watchers; the new last sequence."""
        while True:
            cur = await conn.execute(_EVENT_QUERY, (last_seq, _EVENT_BATCH))
            rows = await cur.fetchall()
            for row in rows:
                last_seq = int(row[_N_JOB_COLUMNS])
                self._fanout.publish(JobEvent(_job_from_row(row), last_seq))
            if len(rows) < _EVENT_BATCH:
                return last_seq

    async def _run_listener(self, conn: psycopg.AsyncConnection[Row] | None, last_seq: int) -> None:
        """Until cancelled: wait for a notification (or the poll interval), deliver new events. On a
        database failure, reconnect with backoff and catch up from the events table."""
        backoff_s = 0.2
        try:
            while True:
                try:
                    if conn is None:
                        conn, _ = await self._listen()
                        _log.info("job change listener reconnected")
                        backoff_s = 0.2
                    last_seq = await self._deliver_new(conn, last_seq)
                    async for _ in conn.notifies(timeout=self._listener_poll_s, stop_after=1):
                        pass
                except Exception as exc:
                    if isinstance(exc, psycopg.OperationalError | StoreUnavailable):
                        _log.warning(
                            "job change listener lost the database (%s); retry in %.1fs", exc, backoff_s
                        )
                    else:
                        _log.exception("job change listener failed; retry in %.1fs", backoff_s)
                    if conn is not None:
                        await _close_quietly(conn)
                        conn = None
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
        finally:
            if conn is not None:
                await _close_quietly(conn)

    async def close(self) -> None:
        """Ends every watch, stops the listener and closes all connections. Idempotent."""
        self._closed = True
        self._fanout.close_all()
        if self._pump is not None:
            self._pump.cancel()
            self._stopping.add(self._pump)
            self._pump = None
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._connections.close()
