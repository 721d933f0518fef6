"""turnout.v1.Jobs end to end: a real grpc.aio server on port 0 serving JobsService over each job store,
called through a real channel with the generated stub."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from test_job_store import (
    STEP_TIMEOUT_S,
    STORE_KINDS,
    StoreEnv,
    listener_backends,
    open_store_env,
    wait_until,
)

from jobs.types import PENDING_REASON_NO_PLACER, JobState
from router.services.jobs_service import JobsService
from turnout.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc

KNOWN_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
ACCELERATOR_KINDS = ("h100", "h200", "b200", "trn1", "trn2", "inf2", "a10g", "l4")
TRAINABLE_KINDS = ("h100", "h200", "b200", "trn1", "trn2", "a10g", "l4")  # Inferentia2 does not train
ZONES = ("use1-az1", "use1-az2")
START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@dataclass
class Served:
    stub: Any  # jobs_pb2_grpc.JobsAsyncStub (a typing-only name)
    env: StoreEnv
    clock: FakeClock


@pytest.fixture(params=STORE_KINDS)
async def jobs_api(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    async with open_store_env(request.param) as env:
        clock = FakeClock(START_S)
        server = grpc.aio.server()
        service = JobsService(
            env.store,
            known_models=KNOWN_MODELS,
            accelerator_kinds=ACCELERATOR_KINDS,
            trainable_kinds=TRAINABLE_KINDS,
            clock=clock,
            zones=ZONES,
        )
        jobs_pb2_grpc.add_JobsServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield Served(jobs_pb2_grpc.JobsStub(channel), env, clock)
        finally:
            await channel.close()
            await server.stop(None)


def spec(**fields: Any) -> jobs_pb2.TrainingJobSpec:
    values: dict[str, Any] = {
        "model": "llama-3.1-70b",
        "tenant": "acme",
        "priority": common_pb2.PRIORITY_CRITICAL,
        "chips": 64,
        "allowed_accelerator_kinds": ["trn2", "h100"],
        "training_tokens": 1_000_000_000,
        "max_usd_per_hour": 420.0,
        "zone": "use1-az1",
    }
    values.update(fields)
    return jobs_pb2.TrainingJobSpec(**values)


def submit_request(key: str = "key-1", **fields: Any) -> jobs_pb2.SubmitJobRequest:
    return jobs_pb2.SubmitJobRequest(idempotency_key=key, spec=spec(**fields))


async def refusal(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, STEP_TIMEOUT_S)
    return caught.value


async def drain(stream: Any) -> list[jobs_pb2.JobEvent]:
    return [event async for event in stream]


def violated_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details in the error's trailers."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status in the trailers"
    assert status.code == err.code().value[0] and status.message == err.details()
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


# --- the happy paths -----------------------------------------------------------------------------------


async def test_submit_then_get(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request(priority=common_pb2.PRIORITY_UNSPECIFIED))
    assert job.job_id and job.idempotency_key == "key-1"
    assert job.state == jobs_pb2.JOB_STATE_PENDING
    assert job.reason == PENDING_REASON_NO_PLACER
    assert job.revision == 1 and list(job.assigned_instances) == []
    assert job.submitted_at.ToNanoseconds() == job.updated_at.ToNanoseconds() == int(START_S * 1e9)
    assert job.spec == spec(priority=common_pb2.PRIORITY_STANDARD)  # unspecified is standard
    assert await jobs_api.stub.Get(jobs_pb2.GetJobRequest(job_id=job.job_id)) == job


async def test_submit_is_idempotent_and_a_changed_spec_is_refused(jobs_api: Served) -> None:
    first = await jobs_api.stub.Submit(submit_request("key-1"))
    jobs_api.clock.now_s += 60
    again = await jobs_api.stub.Submit(submit_request("key-1"))
    assert again == first
    err = await refusal(jobs_api.stub.Submit(submit_request("key-1", chips=128)))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency_key" in err.details() and first.job_id in err.details()
    listed = await jobs_api.stub.List(jobs_pb2.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [first.job_id]


async def test_list_pages_newest_first(jobs_api: Served) -> None:
    ids = []
    for i in range(5):
        jobs_api.clock.now_s = START_S + i
        ids.append((await jobs_api.stub.Submit(submit_request(f"key-{i}"))).job_id)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await jobs_api.stub.List(jobs_pb2.ListJobsRequest(page_size=2, page_token=token))
        seen.extend(j.job_id for j in page.jobs)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == ids[::-1]
    everything = await jobs_api.stub.List(jobs_pb2.ListJobsRequest(page_size=0))  # 0 means 100
    assert [j.job_id for j in everything.jobs] == ids[::-1] and everything.next_page_token == ""


async def test_list_filters_by_tenant_and_states(jobs_api: Served) -> None:
    a = await jobs_api.stub.Submit(submit_request("a", tenant="team-a"))
    b = await jobs_api.stub.Submit(submit_request("b", tenant="team-b"))
    await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=a.job_id))
    team_a = await jobs_api.stub.List(jobs_pb2.ListJobsRequest(tenant="team-a"))
    assert [j.job_id for j in team_a.jobs] == [a.job_id]
    pending = await jobs_api.stub.List(jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_PENDING]))
    assert [j.job_id for j in pending.jobs] == [b.job_id]
    cancelled = await jobs_api.stub.List(
        jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_CANCELLED, jobs_pb2.JOB_STATE_RUNNING])
    )
    assert [j.job_id for j in cancelled.jobs] == [a.job_id]


async def test_cancel(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request())
    jobs_api.clock.now_s += 5
    cancelled = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=job.job_id, reason="budget cut"))
    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert cancelled.reason == "budget cut" and cancelled.revision == 2
    assert cancelled.updated_at.ToNanoseconds() == int((START_S + 5) * 1e9)
    again = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=job.job_id, reason="again"))
    assert again == cancelled  # a finished job is returned unchanged
    other = await jobs_api.stub.Submit(submit_request("key-2"))
    defaulted = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=other.job_id))
    assert defaulted.reason == "cancelled by the client"


async def test_watch_gets_the_current_state_then_the_cancellation(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request())
    stream = jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest(job_id=job.job_id))
    first = await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)
    assert first.job == job
    jobs_api.clock.now_s += 1
    cancelled = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=job.job_id, reason="stop"))
    second = await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)
    assert second.job == cancelled and second.sequence > first.sequence
    assert await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S) == grpc.aio.EOF  # final: the stream ends
    assert await stream.code() == grpc.StatusCode.OK
    await wait_until(_no_listeners(jobs_api), "the watch unsubscribed")


async def test_watching_a_finished_job_returns_it_and_ends(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request())
    cancelled = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=job.job_id))
    events = await asyncio.wait_for(
        drain(jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest(job_id=job.job_id))), 5
    )
    assert [e.job for e in events] == [cancelled]


async def test_watching_every_job(jobs_api: Served) -> None:
    old = await jobs_api.stub.Submit(submit_request("old"))
    stream = jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest())
    assert (await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)).job == old
    new = await jobs_api.stub.Submit(submit_request("new", tenant="other"))
    cancelled = await jobs_api.stub.Cancel(jobs_pb2.CancelJobRequest(job_id=old.job_id))
    got = [await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S) for _ in range(2)]
    assert [e.job for e in got] == [new, cancelled]
    stream.cancel()
    await wait_until(_no_listeners(jobs_api), "the cancelled watch unsubscribed")


def _no_listeners(jobs_api: Served) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return jobs_api.env.store.listener_count == 0

    return check


async def test_many_watchers_that_disconnect_leave_no_listener(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request())
    streams = [
        jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest(job_id=job.job_id if i % 2 else "")) for i in range(30)
    ]
    for stream in streams:
        assert (await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)).job.job_id == job.job_id
    assert jobs_api.env.store.listener_count == 30
    for stream in streams:
        stream.cancel()
    await wait_until(_no_listeners(jobs_api), "every disconnected watch unsubscribed")
    if jobs_api.env.dsn is not None:
        dsn = jobs_api.env.dsn

        async def listener_closed() -> bool:
            return await listener_backends(dsn) == 0

        await wait_until(listener_closed, "the LISTEN connection closed")
    # Still serving watches afterwards.
    stream = jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest(job_id=job.job_id))
    assert (await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)).job == job
    stream.cancel()
    await wait_until(_no_listeners(jobs_api), "the last watch unsubscribed")


# --- refusals ------------------------------------------------------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Case = tuple[str, str, message.Message, list[str]]  # name, rpc, request, fields named in BadRequest

INVALID_CASES: list[Case] = [
    ("empty key", "Submit", submit_request(""), ["idempotency_key"]),
    ("long key", "Submit", submit_request("k" * 129), ["idempotency_key"]),
    ("control char in key", "Submit", submit_request("a\x00b"), ["idempotency_key"]),
    ("no spec", "Submit", jobs_pb2.SubmitJobRequest(idempotency_key="k"), ["spec"]),
    ("empty model", "Submit", submit_request(model=""), ["spec.model"]),
    ("empty tenant", "Submit", submit_request(tenant=""), ["spec.tenant"]),
    ("long tenant", "Submit", submit_request(tenant="t" * 65), ["spec.tenant"]),
    ("newline in tenant", "Submit", submit_request(tenant="a\nb"), ["spec.tenant"]),
    ("unknown priority", "Submit", submit_request(priority=99), ["spec.priority"]),
    ("zero chips", "Submit", submit_request(chips=0), ["spec.chips"]),
    ("negative chips", "Submit", submit_request(chips=-8), ["spec.chips"]),
    ("too many chips", "Submit", submit_request(chips=100_001), ["spec.chips"]),
    ("negative tokens", "Submit", submit_request(training_tokens=-1), ["spec.training_tokens"]),
    ("negative budget", "Submit", submit_request(max_usd_per_hour=-0.01), ["spec.max_usd_per_hour"]),
    ("NaN budget", "Submit", submit_request(max_usd_per_hour=math.nan), ["spec.max_usd_per_hour"]),
    ("infinite budget", "Submit", submit_request(max_usd_per_hour=math.inf), ["spec.max_usd_per_hour"]),
    (
        "inference-only kind",
        "Submit",
        submit_request(allowed_accelerator_kinds=["trn2", "inf2"]),
        ["spec.allowed_accelerator_kinds[1]"],
    ),
    (
        "unknown kind",
        "Submit",
        submit_request(allowed_accelerator_kinds=["tpu-v5"]),
        ["spec.allowed_accelerator_kinds[0]"],
    ),
    (
        "repeated kind",
        "Submit",
        submit_request(allowed_accelerator_kinds=["h100", "trn2", "h100"]),
        ["spec.allowed_accelerator_kinds[2]"],
    ),
    ("unknown zone", "Submit", submit_request(zone="use1-az9"), ["spec.zone"]),
    ("long zone", "Submit", submit_request(zone="z" * 65), ["spec.zone"]),
    (
        "everything at once",
        "Submit",
        submit_request("", model="", chips=0, training_tokens=-5, max_usd_per_hour=math.nan),
        ["idempotency_key", "spec.model", "spec.chips", "spec.training_tokens", "spec.max_usd_per_hour"],
    ),
    ("empty job id", "Get", jobs_pb2.GetJobRequest(job_id=""), ["job_id"]),
    ("long job id", "Get", jobs_pb2.GetJobRequest(job_id="j" * 129), ["job_id"]),
    ("cancel without id", "Cancel", jobs_pb2.CancelJobRequest(), ["job_id"]),
    ("long reason", "Cancel", jobs_pb2.CancelJobRequest(job_id="job-x", reason="r" * 1025), ["reason"]),
    ("NUL in reason", "Cancel", jobs_pb2.CancelJobRequest(job_id="job-x", reason="a\x00"), ["reason"]),
    ("negative page size", "List", jobs_pb2.ListJobsRequest(page_size=-1), ["page_size"]),
    ("huge page size", "List", jobs_pb2.ListJobsRequest(page_size=1001), ["page_size"]),
    ("garbage token", "List", jobs_pb2.ListJobsRequest(page_token="not-a-token"), ["page_token"]),
    ("non-ASCII token", "List", jobs_pb2.ListJobsRequest(page_token="tökén"), ["page_token"]),
    (
        "unspecified state",
        "List",
        jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_PENDING, jobs_pb2.JobState.ValueType(0)]),
        ["states[1]"],
    ),
    (
        "unknown state",
        "List",
        jobs_pb2.ListJobsRequest(states=[jobs_pb2.JobState.ValueType(42)]),
        ["states[0]"],
    ),
    ("long tenant filter", "List", jobs_pb2.ListJobsRequest(tenant="t" * 65), ["tenant"]),
    ("long watch id", "Watch", jobs_pb2.WatchJobsRequest(job_id="j" * 129), ["job_id"]),
]


async def call(stub: Any, rpc: str, request: message.Message) -> Any:
    if rpc == "Watch":
        return await drain(stub.Watch(request))
    return await getattr(stub, rpc)(request)


@pytest.mark.parametrize(
    ("name", "rpc", "request_message", "fields"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    jobs_api: Served, name: str, rpc: str, request_message: message.Message, fields: list[str]
) -> None:
    err = await refusal(call(jobs_api.stub, rpc, request_message))
    assert err.code() == INVALID, (name, err.details())
    assert violated_fields(err) == fields
    for field in fields:
        assert field in err.details()


async def test_the_kind_that_cannot_train_is_named_with_the_rule(jobs_api: Served) -> None:
    err = await refusal(jobs_api.stub.Submit(submit_request(allowed_accelerator_kinds=["inf2"])))
    assert err.code() == INVALID
    assert "spec.allowed_accelerator_kinds[0]" in err.details()
    assert "'inf2' cannot train" in err.details()


async def test_an_unknown_model_is_not_found_listing_the_known_ones(jobs_api: Served) -> None:
    err = await refusal(jobs_api.stub.Submit(submit_request(model="gpt-5")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "spec.model" in err.details() and "'gpt-5'" in err.details()
    for model in KNOWN_MODELS:
        assert model in err.details()


@pytest.mark.parametrize("rpc", ["Get", "Cancel", "Watch"])
async def test_an_unknown_job_is_not_found(jobs_api: Served, rpc: str) -> None:
    request: message.Message = {
        "Get": jobs_pb2.GetJobRequest(job_id="job-nope"),
        "Cancel": jobs_pb2.CancelJobRequest(job_id="job-nope"),
        "Watch": jobs_pb2.WatchJobsRequest(job_id="job-nope"),
    }[rpc]
    err = await refusal(call(jobs_api.stub, rpc, request))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "job-nope" in err.details()
    assert jobs_api.env.store.listener_count == 0


async def test_a_page_token_from_another_filter_is_refused(jobs_api: Served) -> None:
    for i in range(3):
        await jobs_api.stub.Submit(submit_request(f"key-{i}"))
    page = await jobs_api.stub.List(jobs_pb2.ListJobsRequest(page_size=1, tenant="acme"))
    assert page.next_page_token
    err = await refusal(
        jobs_api.stub.List(jobs_pb2.ListJobsRequest(page_size=1, page_token=page.next_page_token))
    )
    assert err.code() == INVALID and violated_fields(err) == ["page_token"]
    assert "different tenant or states" in err.details()


async def test_a_stream_of_bad_requests_leaves_the_server_answering_correctly(jobs_api: Served) -> None:
    good = await jobs_api.stub.Submit(submit_request("good"))

    async def one_bad(i: int) -> grpc.StatusCode:
        _, rpc, request_message, _ = INVALID_CASES[i % len(INVALID_CASES)]
        err = await refusal(call(jobs_api.stub, rpc, request_message))
        return err.code()

    codes: list[grpc.StatusCode] = []
    for start in range(0, 700, 50):  # in waves, so two shared cores are not swamped
        codes.extend(await asyncio.gather(*(one_bad(i) for i in range(start, start + 50))))
    assert codes == [INVALID] * 700
    not_found = await refusal(jobs_api.stub.Submit(submit_request("x", model="unknown-model")))
    assert not_found.code() == grpc.StatusCode.NOT_FOUND
    # Nothing was stored, nothing is left subscribed, and the server still works.
    listed = await jobs_api.stub.List(jobs_pb2.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [good.job_id]
    assert jobs_api.env.store.listener_count == 0
    second = await jobs_api.stub.Submit(submit_request("good-2"))
    assert second.state == jobs_pb2.JOB_STATE_PENDING
    assert (await jobs_api.stub.Get(jobs_pb2.GetJobRequest(job_id=good.job_id))) == good


async def test_a_placer_step_reaches_grpc_watchers(jobs_api: Served) -> None:
    """The store transitions a placer will make are visible through the service."""
    job = await jobs_api.stub.Submit(submit_request())
    stream = jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest(job_id=job.job_id))
    await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)
    await jobs_api.env.store.transition(
        job.job_id, JobState.PLACED, "64 trn2 chips in use1-az1", START_S + 9, ["i-1"]
    )
    placed = await asyncio.wait_for(stream.read(), STEP_TIMEOUT_S)
    assert placed.job.state == jobs_pb2.JOB_STATE_PLACED
    assert list(placed.job.assigned_instances) == ["i-1"] and placed.job.reason == "64 trn2 chips in use1-az1"
    stream.cancel()
    await wait_until(_no_listeners(jobs_api), "the watch unsubscribed")


async def test_a_closed_store_answers_unavailable(jobs_api: Served) -> None:
    job = await jobs_api.stub.Submit(submit_request())
    await jobs_api.env.store.close()
    for pending in (
        jobs_api.stub.Get(jobs_pb2.GetJobRequest(job_id=job.job_id)),
        jobs_api.stub.Submit(submit_request("key-2")),
        jobs_api.stub.List(jobs_pb2.ListJobsRequest()),
        drain(jobs_api.stub.Watch(jobs_pb2.WatchJobsRequest())),
    ):
        err = await refusal(pending)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
