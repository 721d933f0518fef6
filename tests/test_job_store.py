"""The JobStore contract, run against the in-memory store and the PostgreSQL store alike.

PostgreSQL tests (marked ``postgres``) each create their own uniquely named database on
127.0.0.1:5432 as user postgres and drop it afterwards, so runs never collide. Set
TURNOUT_TEST_PG_DSN to use another server (any database on it; it is only used to create and drop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from fleet.types import Priority
from jobs.postgres import APPLICATION_NAME, LISTENER_APPLICATION_NAME, PostgresJobStore
from jobs.store import (
    BadPageToken,
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    JobStore,
    MemoryJobStore,
    StoreClosed,
    StoreUnavailable,
    WatchLagged,
    encode_page_token,
    open_job_store,
)
from jobs.types import LEGAL_TRANSITIONS, PENDING_REASON_NO_PLACER, Job, JobEvent, JobSpec, JobState

PG_ADMIN_DSN = os.environ.get("TURNOUT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
STEP_TIMEOUT_S = 5.0


# --- fixtures and helpers (also used by test_jobs_service.py) ---------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A new empty database for one test; yields its DSN and drops it afterwards."""
    name = f"turnout_jobs_test_{uuid.uuid4().hex[:16]}"
    admin = await psycopg.AsyncConnection.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    try:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        await admin.close()


@dataclass
class StoreEnv:
    """The store under test, and (PostgreSQL only) how to open more stores on the same database."""

    kind: str
    store: JobStore
    dsn: str | None
    opened: list[JobStore] = dataclasses.field(default_factory=list)

    async def another(self, **options: object) -> JobStore:
        """A second store on the same database (a restart, or another Turnout process)."""
        assert self.dsn is not None, "only the postgres store has a database to share"
        store = await PostgresJobStore.open(self.dsn, **options)
        self.opened.append(store)
        return store


@contextlib.asynccontextmanager
async def open_store_env(kind: str, **options: object) -> AsyncIterator[StoreEnv]:
    if kind == "memory":
        env = StoreEnv(kind, MemoryJobStore(**options), None)  # type: ignore[arg-type]
        try:
            yield env
        finally:
            await env.store.close()
        return
    async with scratch_database() as dsn:
        env = StoreEnv(kind, await PostgresJobStore.open(dsn, **options), dsn)
        try:
            yield env
        finally:
            for store in [env.store, *env.opened]:
                await store.close()


STORE_KINDS = ["memory", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORE_KINDS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[StoreEnv]:
    async with open_store_env(request.param) as store_env:
        yield store_env


def make_spec(**changes: object) -> JobSpec:
    spec = JobSpec(
        model="llama-3.1-8b",
        tenant="acme",
        priority=Priority.STANDARD,
        chips=64,
        allowed_accelerator_kinds=("trn2", "h100"),
        training_tokens=2_000_000_000,
        max_usd_per_hour=350.5,
        zone="use1-az1",
    )
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


async def next_event(events: AsyncIterator[JobEvent]) -> JobEvent:
    return await asyncio.wait_for(anext(events), STEP_TIMEOUT_S)


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def listener_backends(dsn: str) -> int:
    """Connections of the job store's LISTEN side open on ``dsn``'s database."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (LISTENER_APPLICATION_NAME,),
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


PATH_TO: dict[JobState, tuple[JobState, ...]] = {
    JobState.PENDING: (),
    JobState.PLACED: (JobState.PLACED,),
    JobState.RUNNING: (JobState.PLACED, JobState.RUNNING),
    JobState.SUCCEEDED: (JobState.PLACED, JobState.RUNNING, JobState.SUCCEEDED),
    JobState.FAILED: (JobState.PLACED, JobState.RUNNING, JobState.FAILED),
    JobState.CANCELLED: (JobState.CANCELLED,),
}


async def job_in_state(store: JobStore, state: JobState, key: str) -> Job:
    job, _ = await store.submit(key, make_spec(), 100.0)
    for i, step in enumerate(PATH_TO[state]):
        job = await store.transition(job.job_id, step, f"to {step.value}", 101.0 + i, ["i-1", "i-2"])
    assert job.state is state
    return job


# --- submit and get ------------------------------------------------------------------------------------


async def test_submit_creates_a_pending_job_at_revision_one(env: StoreEnv) -> None:
    spec = make_spec()
    job, created = await env.store.submit("key-1", spec, 1_700_000_000.25)
    assert created
    assert job.job_id.startswith("job-")
    assert job.idempotency_key == "key-1"
    assert job.spec == spec
    assert job.state is JobState.PENDING
    assert job.reason == PENDING_REASON_NO_PLACER
    assert job.assigned_instances == ()
    assert job.submitted_at_s == job.updated_at_s == 1_700_000_000.25
    assert job.revision == 1
    assert await env.store.get(job.job_id) == job


async def test_submit_is_idempotent_on_the_key(env: StoreEnv) -> None:
    first, created_first = await env.store.submit("key-1", make_spec(), 10.0)
    again, created_again = await env.store.submit("key-1", make_spec(), 99.0)
    assert created_first and not created_again
    assert again == first  # unchanged, including its submission time
    other, created_other = await env.store.submit("key-2", make_spec(), 11.0)
    assert created_other and other.job_id != first.job_id
    jobs, _ = await env.store.list(10)
    assert [j.job_id for j in jobs] == [other.job_id, first.job_id]


async def test_same_key_with_a_different_spec_is_a_conflict(env: StoreEnv) -> None:
    first, _ = await env.store.submit("key-1", make_spec(), 10.0)
    with pytest.raises(IdempotencyConflict) as caught:
        await env.store.submit("key-1", make_spec(chips=128), 11.0)
    assert caught.value.existing == first
    assert "key-1" in str(caught.value) and first.job_id in str(caught.value)
    assert await env.store.get(first.job_id) == first


async def test_get_of_an_unknown_job_is_none(env: StoreEnv) -> None:
    assert await env.store.get("job-does-not-exist") is None


async def test_spec_round_trips_exactly(env: StoreEnv) -> None:
    spec = make_spec(
        priority=Priority.SHEDDABLE,
        allowed_accelerator_kinds=(),
        max_usd_per_hour=0.1 + 0.2,  # not representable in decimal: must survive bit for bit
        zone="",
        training_tokens=2**62,
        tenant="ünïcode tenant",
    )
    job, _ = await env.store.submit("key-ü", spec, 1.0 / 3.0)
    stored = await env.store.get(job.job_id)
    assert stored == job
    assert stored is not None and stored.spec.max_usd_per_hour == 0.1 + 0.2
    assert stored.submitted_at_s == 1.0 / 3.0


# --- the state machine ---------------------------------------------------------------------------------


async def test_a_job_runs_through_its_whole_life(env: StoreEnv) -> None:
    job, _ = await env.store.submit("key-1", make_spec(), 10.0)
    placed = await env.store.transition(job.job_id, JobState.PLACED, "gang of 64 trn2", 11.0, ["i-a", "i-b"])
    assert (placed.state, placed.revision, placed.assigned_instances) == (JobState.PLACED, 2, ("i-a", "i-b"))
    running = await env.store.transition(job.job_id, JobState.RUNNING, "started", 12.0)
    assert running.assigned_instances == ("i-a", "i-b")  # an empty gang keeps the assignment
    done = await env.store.transition(job.job_id, JobState.SUCCEEDED, "trained", 13.5)
    assert (done.state, done.reason, done.revision, done.updated_at_s) == (
        JobState.SUCCEEDED,
        "trained",
        4,
        13.5,
    )
    assert done.submitted_at_s == 10.0 and done.spec == job.spec
    assert await env.store.get(job.job_id) == done


@pytest.mark.parametrize("from_state", list(JobState))
async def test_each_transition_is_allowed_exactly_when_the_state_machine_says(
    env: StoreEnv, from_state: JobState
) -> None:
    job = await job_in_state(env.store, from_state, "illegal")
    for to_state in JobState:
        if to_state in LEGAL_TRANSITIONS[from_state]:
            continue
        with pytest.raises(IllegalTransition) as caught:
            await env.store.transition(job.job_id, to_state, "nope", 500.0, ["i-9"])
        assert (caught.value.from_state, caught.value.to_state) == (from_state, to_state)
        assert await env.store.get(job.job_id) == job  # nothing changed
    for i, to_state in enumerate(sorted(LEGAL_TRANSITIONS[from_state], key=lambda s: s.value)):
        fresh = await job_in_state(env.store, from_state, f"legal-{i}")
        moved = await env.store.transition(fresh.job_id, to_state, "ok", 600.0, ["i-7"])
        assert moved.state is to_state and moved.revision == fresh.revision + 1


async def test_placing_needs_a_gang(env: StoreEnv) -> None:
    job, _ = await env.store.submit("key-1", make_spec(), 10.0)
    with pytest.raises(ValueError, match="assigned instances"):
        await env.store.transition(job.job_id, JobState.PLACED, "no gang", 11.0)
    assert await env.store.get(job.job_id) == job


async def test_transition_of_an_unknown_job_raises(env: StoreEnv) -> None:
    with pytest.raises(JobNotFound):
        await env.store.transition("job-missing", JobState.PLACED, "x", 1.0, ["i-1"])


async def test_cancel(env: StoreEnv) -> None:
    running = await job_in_state(env.store, JobState.RUNNING, "key-1")
    cancelled = await env.store.cancel(running.job_id, "tenant asked", 50.0)
    assert cancelled is not None
    assert (cancelled.state, cancelled.reason, cancelled.revision) == (JobState.CANCELLED, "tenant asked", 4)
    again = await env.store.cancel(running.job_id, "second time", 60.0)
    assert again == cancelled  # a final job is returned unchanged
    succeeded = await job_in_state(env.store, JobState.SUCCEEDED, "key-2")
    assert await env.store.cancel(succeeded.job_id, "too late", 70.0) == succeeded
    assert await env.store.cancel("job-missing", "x", 1.0) is None


async def test_calls_cancelled_midway_leave_the_store_consistent_and_usable(env: StoreEnv) -> None:
    async def work(i: int) -> None:
        job, _ = await env.store.submit(f"c-{i}", make_spec(), float(i))
        await env.store.list(5)
        await env.store.transition(job.job_id, JobState.PLACED, "placed", float(i) + 0.5, [f"i-{i}"])

    tasks = [asyncio.create_task(work(i)) for i in range(40)]
    for i, task in enumerate(tasks):
        if i % 2:
            await asyncio.sleep(0.002)
            task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    finished = {i for i, r in enumerate(results) if r is None}
    assert {i for i in range(40) if i % 2 == 0} <= finished
    # Every call still answers (no connection was lost to a cancelled call) ...
    for i in range(8):
        await asyncio.wait_for(env.store.submit(f"after-{i}", make_spec(), 100.0 + i), STEP_TIMEOUT_S)
    jobs, _ = await asyncio.wait_for(env.store.list(1000), STEP_TIMEOUT_S)
    by_key = {j.idempotency_key: j for j in jobs}
    assert len(by_key) == len(jobs)
    # ... and each job is either untouched or fully placed: no half-applied change.
    for i in range(40):
        job = by_key.get(f"c-{i}")
        if i in finished:
            assert job is not None and job.state is JobState.PLACED and job.revision == 2
        if job is not None:
            assert (job.state, job.revision, job.assigned_instances) in {
                (JobState.PENDING, 1, ()),
                (JobState.PLACED, 2, (f"i-{i}",)),
            }
    if env.dsn is not None:
        async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = %s",
                (APPLICATION_NAME,),
            )
            row = await cur.fetchone()
            assert row is not None and row[0] <= 4  # the default pool size: nothing leaked


# --- list ----------------------------------------------------------------------------------------------


async def test_list_pages_newest_first_with_stable_tokens(env: StoreEnv) -> None:
    ids = [(await env.store.submit(f"key-{i}", make_spec(), float(i)))[0].job_id for i in range(7)]
    newest_first = ids[::-1]
    page1, token1 = await env.store.list(3)
    page2, token2 = await env.store.list(3, token1)
    page3, token3 = await env.store.list(3, token2)
    assert [j.job_id for j in page1 + page2 + page3] == newest_first
    assert token1 and token2 and token3 == ""
    assert (await env.store.list(3))[1] == token1  # same position, same token
    # Jobs submitted later never shift the pages after the first.
    await env.store.submit("key-late", make_spec(), 100.0)
    again2, again_token2 = await env.store.list(3, token1)
    assert [j.job_id for j in again2] == [j.job_id for j in page2] and again_token2 == token2
    # An exact fit leaves no token.
    all_jobs, last = await env.store.list(8)
    assert len(all_jobs) == 8 and last == ""


async def test_list_filters_by_tenant_and_state(env: StoreEnv) -> None:
    a1, _ = await env.store.submit("a1", make_spec(tenant="a"), 1.0)
    b1, _ = await env.store.submit("b1", make_spec(tenant="b"), 2.0)
    a2, _ = await env.store.submit("a2", make_spec(tenant="a"), 3.0)
    a3, _ = await env.store.submit("a3", make_spec(tenant="a"), 4.0)
    await env.store.cancel(a2.job_id, "x", 5.0)
    only_a, _ = await env.store.list(10, tenant="a")
    assert [j.job_id for j in only_a] == [a3.job_id, a2.job_id, a1.job_id]
    pending, _ = await env.store.list(10, states=[JobState.PENDING])
    assert [j.job_id for j in pending] == [a3.job_id, b1.job_id, a1.job_id]
    both, _ = await env.store.list(10, tenant="a", states=[JobState.CANCELLED, JobState.RUNNING])
    assert [j.job_id for j in both] == [a2.job_id]
    first, token = await env.store.list(1, tenant="a", states=[JobState.PENDING])
    rest, end = await env.store.list(1, token, tenant="a", states=[JobState.PENDING])
    assert [j.job_id for j in first + rest] == [a3.job_id, a1.job_id] and end == ""
    assert (await env.store.list(10, tenant="nobody")) == ([], "")


async def test_a_page_token_only_fits_its_own_filter(env: StoreEnv) -> None:
    for i in range(3):
        await env.store.submit(f"k{i}", make_spec(), float(i))
    _, token = await env.store.list(1, tenant="acme")
    with pytest.raises(BadPageToken, match="different tenant or states"):
        await env.store.list(1, token, tenant="other")
    with pytest.raises(BadPageToken, match="different tenant or states"):
        await env.store.list(1, token, tenant="acme", states=[JobState.PENDING])


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "a" * 300,
        encode_page_token(5, None, ()) + "x",
        encode_page_token(5, None, ()).lower(),
        "MjozOmFiYw",  # base64 of "2:3:abc": an unknown version
        "MTpmaXZlOmFiYw",  # "1:five:abc"
        "MTowOmU1ZGU0ZWI0OTU5ZmM5NjE",  # "1:0:..." (positions start at 1)
        "MTowMDM6YWJj",  # "1:003:abc" (not canonical)
        "8J+YgA",  # a non-ASCII payload
    ],
)
async def test_malformed_page_tokens_are_refused(env: StoreEnv, token: str) -> None:
    await env.store.submit("k", make_spec(), 1.0)
    with pytest.raises(BadPageToken):
        await env.store.list(10, token)


async def test_page_size_must_be_positive(env: StoreEnv) -> None:
    with pytest.raises(ValueError, match="page_size"):
        await env.store.list(0)


# --- watch ---------------------------------------------------------------------------------------------


async def test_watching_one_job_gives_its_state_then_every_change_then_ends(env: StoreEnv) -> None:
    job, _ = await env.store.submit("key-1", make_spec(), 1.0)
    other, _ = await env.store.submit("key-2", make_spec(), 1.5)
    events = env.store.watch(job.job_id)
    first = await next_event(events)
    assert first.job == job
    await env.store.transition(other.job_id, JobState.PLACED, "other job", 1.8, ["i-0"])  # not ours
    await env.store.transition(job.job_id, JobState.PLACED, "placed", 2.0, ["i-1"])
    await env.store.transition(job.job_id, JobState.RUNNING, "running", 3.0)
    await env.store.transition(job.job_id, JobState.FAILED, "NaN loss", 4.0)
    seen = [await next_event(events) for _ in range(3)]
    assert [(e.job.state, e.job.revision) for e in seen] == [
        (JobState.PLACED, 2),
        (JobState.RUNNING, 3),
        (JobState.FAILED, 4),
    ]
    sequences = [first.sequence] + [e.sequence for e in seen]
    assert sequences == sorted(set(sequences))  # strictly increasing
    with pytest.raises(StopAsyncIteration):
        await next_event(events)  # a final state ends the watch
    assert env.store.listener_count == 0


async def test_watching_a_final_job_gives_it_once_and_ends(env: StoreEnv) -> None:
    job = await job_in_state(env.store, JobState.CANCELLED, "key-1")
    events = env.store.watch(job.job_id)
    assert (await next_event(events)).job == job
    with pytest.raises(StopAsyncIteration):
        await next_event(events)
    assert env.store.listener_count == 0


async def test_watching_an_unknown_job_raises_and_leaves_no_listener(env: StoreEnv) -> None:
    with pytest.raises(JobNotFound):
        await next_event(env.store.watch("job-missing"))
    assert env.store.listener_count == 0


async def test_watching_every_job_starts_with_the_unfinished_ones(env: StoreEnv) -> None:
    done = await job_in_state(env.store, JobState.SUCCEEDED, "done")
    old, _ = await env.store.submit("old", make_spec(), 1.0)
    placed = await job_in_state(env.store, JobState.PLACED, "placed")
    events = env.store.watch()
    initial = [await next_event(events) for _ in range(2)]
    assert [e.job for e in initial] == [old, placed]  # oldest change first; the finished job is left out
    new, _ = await env.store.submit("new", make_spec(), 9.0)
    await env.store.cancel(old.job_id, "stop", 10.0)
    await env.store.cancel(done.job_id, "no-op on a final job", 11.0)
    await env.store.transition(placed.job_id, JobState.RUNNING, "go", 12.0)
    later = [await next_event(events) for _ in range(3)]
    assert [(e.job.job_id, e.job.state) for e in later] == [
        (new.job_id, JobState.PENDING),
        (old.job_id, JobState.CANCELLED),
        (placed.job_id, JobState.RUNNING),
    ]
    sequences = [e.sequence for e in initial + later]
    assert sequences == sorted(set(sequences))
    await events.aclose()
    assert env.store.listener_count == 0


async def test_no_change_is_lost_or_repeated_while_watchers_come_and_go(env: StoreEnv) -> None:
    job, _ = await env.store.submit("busy", make_spec(), 0.0)

    async def churn() -> None:
        for i in range(20):
            await env.store.submit(f"churn-{i}", make_spec(), float(i))

    watcher = env.store.watch()
    writer = asyncio.create_task(churn())
    seen: list[JobEvent] = []
    while len({e.job.job_id for e in seen}) < 21:
        seen.append(await next_event(watcher))
    await writer
    await watcher.aclose()
    assert seen[0].job.job_id == job.job_id
    ids = [e.job.job_id for e in seen]
    assert len(ids) == len(set(ids)) == 21  # every submission once
    assert [e.sequence for e in seen] == sorted({e.sequence for e in seen})


async def test_listeners_return_to_zero_after_many_watchers_leave(env: StoreEnv) -> None:
    job, _ = await env.store.submit("key-1", make_spec(), 1.0)
    watches = [env.store.watch(job.job_id if i % 2 else None) for i in range(40)]
    for w in watches:
        assert (await next_event(w)).job.job_id == job.job_id
    assert env.store.listener_count == 40
    # Half leave by closing their iterator, half by having the task that waits on them cancelled.
    waiting = [asyncio.create_task(anext(w)) for w in watches[20:]]
    await asyncio.sleep(0.05)
    for w in watches[:20]:
        await w.aclose()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert env.store.listener_count == 0
    if env.dsn is not None:
        dsn = env.dsn

        async def listener_gone() -> bool:
            return await listener_backends(dsn) == 0

        await wait_until(listener_gone, "the LISTEN connection is closed")
    # The store still serves new watchers afterwards.
    events = env.store.watch(job.job_id)
    assert (await next_event(events)).job == job
    await env.store.cancel(job.job_id, "done", 2.0)
    assert (await next_event(events)).job.state is JobState.CANCELLED
    with pytest.raises(StopAsyncIteration):
        await next_event(events)
    assert env.store.listener_count == 0


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_a_watcher_that_falls_behind_is_told_so(kind: str) -> None:
    async with open_store_env(kind, watch_backlog=3) as small:
        job, _ = await small.store.submit("key-1", make_spec(), 1.0)
        events = small.store.watch()
        await next_event(events)
        for i in range(10):
            await small.store.submit(f"more-{i}", make_spec(), 2.0 + i)
        with pytest.raises(WatchLagged):
            for _ in range(11):
                await next_event(events)
        assert small.store.listener_count == 0
        assert await small.store.get(job.job_id) == job


async def test_close_ends_watches_and_refuses_later_calls(env: StoreEnv) -> None:
    job, _ = await env.store.submit("key-1", make_spec(), 1.0)
    events = env.store.watch()
    await next_event(events)
    waiting = asyncio.create_task(anext(events))
    await asyncio.sleep(0.05)
    await env.store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, STEP_TIMEOUT_S)
    assert env.store.listener_count == 0
    with pytest.raises(StoreClosed):
        await env.store.get(job.job_id)
    with pytest.raises(StoreClosed):
        await env.store.submit("key-2", make_spec(), 2.0)
    await env.store.close()  # idempotent


# --- PostgreSQL only: durability and sharing -------------------------------------------------------------


@pytest.mark.postgres
async def test_jobs_survive_a_restart() -> None:
    async with open_store_env("postgres") as pg:
        job, _ = await pg.store.submit("key-1", make_spec(), 1.0)
        placed = await pg.store.transition(job.job_id, JobState.PLACED, "placed", 2.0, ["i-1"])
        await pg.store.close()
        reopened = await pg.another()
        assert await reopened.get(job.job_id) == placed
        assert await reopened.submit("key-1", make_spec(), 3.0) == (placed, False)
        new, created = await reopened.submit("key-2", make_spec(), 4.0)
        assert created
        assert [j.job_id for j in (await reopened.list(10))[0]] == [new.job_id, job.job_id]
        events = reopened.watch()
        initial = [await next_event(events) for _ in range(2)]
        assert [e.job.job_id for e in initial] == [job.job_id, new.job_id]
        assert initial[0].sequence < initial[1].sequence  # the sequence continued across the restart
        await events.aclose()


@pytest.mark.postgres
async def test_changes_through_another_store_reach_watchers() -> None:
    async with open_store_env("postgres") as pg:
        other = await pg.another()
        job, _ = await pg.store.submit("key-1", make_spec(), 1.0)
        one = pg.store.watch(job.job_id)
        every = pg.store.watch()
        assert (await next_event(one)).job == job
        assert (await next_event(every)).job == job
        placed = await other.transition(job.job_id, JobState.PLACED, "placed elsewhere", 2.0, ["i-1"])
        second, _ = await other.submit("key-2", make_spec(), 3.0)
        assert (await next_event(one)).job == placed
        got = [await next_event(every) for _ in range(2)]
        assert [e.job for e in got] == [placed, second]
        assert got[0].sequence < got[1].sequence
        cancelled = await other.cancel(job.job_id, "stop", 4.0)
        assert (await next_event(one)).job == cancelled
        with pytest.raises(StopAsyncIteration):
            await next_event(one)
        await every.aclose()


@pytest.mark.postgres
async def test_concurrent_submits_of_one_key_create_one_job() -> None:
    async with open_store_env("postgres") as pg:
        stores = [pg.store, await pg.another(), await pg.another()]
        results = await asyncio.gather(
            *(s.submit("same-key", make_spec(), float(i)) for i, s in enumerate(stores))
        )
        assert sum(created for _, created in results) == 1
        assert len({job.job_id for job, _ in results}) == 1
        assert len((await pg.store.list(10))[0]) == 1


@pytest.mark.postgres
async def test_opening_is_an_idempotent_migration() -> None:
    async with scratch_database() as dsn:
        stores = await asyncio.gather(*(PostgresJobStore.open(dsn) for _ in range(3)))
        try:
            assert [await s.migrate() for s in stores] == [1, 1, 1]
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute("SELECT version FROM turnout_schema_version")
                assert await cur.fetchall() == [(1,)]
        finally:
            for s in stores:
                await s.close()


@pytest.mark.postgres
async def test_an_unreachable_database_is_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable):
        await open_job_store("postgres", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2")


async def test_open_job_store_checks_its_arguments() -> None:
    store = await open_job_store("memory", None)
    assert isinstance(store, MemoryJobStore)
    await store.close()
    with pytest.raises(ValueError, match="dsn"):
        await open_job_store("postgres", None)
    with pytest.raises(ValueError, match="no dsn"):
        await open_job_store("memory", "postgresql://x")
    with pytest.raises(ValueError, match="'memory' or 'postgres'"):
        await open_job_store("redis", None)
