"""The turnout.v1.Jobs servicer: the training-job queue over gRPC.

Requests are validated and converted by ``router.convert.jobs``; state lives in a ``jobs.store.JobStore``.
Until gang placement exists, submitted jobs stay PENDING with the reason
``jobs.types.PENDING_REASON_NO_PLACER``; a placer moves them on through the same store and every
watcher sees it.

Refusals (all with a message naming the field and the rule):

- INVALID_ARGUMENT with ``google.rpc.BadRequest`` details: malformed fields, a page token that did not
  come from a List call with the same filters.
- NOT_FOUND: an unknown model (listing the known ones), an unknown job id.
- ALREADY_EXISTS: an idempotency key reused with a different spec.
- ABORTED: a watcher that fell too far behind (watch again).
- UNAVAILABLE: the job database is unreachable, or the server is shutting down during a watch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection

from jobs.store import (
    BadPageToken,
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    JobStore,
    JobStoreError,
    StoreClosed,
    StoreUnavailable,
    WatchLagged,
)
from router.convert.jobs import (
    JobRules,
    cancel_from_proto,
    event_to_proto,
    get_from_proto,
    job_to_proto,
    list_from_proto,
    list_to_proto,
    submit_from_proto,
    watch_from_proto,
)
from router.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    RpcError,
    Unavailable,
)
from router.services.common import ServicerContext, refuse
from turnout.v1 import jobs_pb2, jobs_pb2_grpc

_log = logging.getLogger(__name__)


def _as_rpc_error(exc: RpcError | JobStoreError) -> RpcError:
    """The refusal a client sees for a validation error or a store error."""
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, BadPageToken):
        return InvalidArgument([FieldViolation("page_token", str(exc))])
    if isinstance(exc, JobNotFound):
        return NotFound(f"job_id: no job with id {exc.job_id!r}")
    if isinstance(exc, IdempotencyConflict):
        return AlreadyExists(f"idempotency_key: {exc}")
    if isinstance(exc, WatchLagged):
        return Aborted(str(exc))
    if isinstance(exc, StoreClosed):
        return Unavailable("the job store is shutting down; retry")
    if isinstance(exc, StoreUnavailable):
        return Unavailable(f"the job store is unavailable; retry: {exc}")
    if isinstance(exc, IllegalTransition):
        return FailedPrecondition(str(exc))
    return Unavailable(f"the job store refused the call: {exc}")


class JobsService(jobs_pb2_grpc.JobsServicer):
    """Serves ``turnout.v1.Jobs`` from ``store``.

    ``known_models``: model names a job may train; ``accelerator_kinds``: every kind in the catalog;
    ``trainable_kinds``: those the catalog says can train (a subset); ``zones``: if given, the only zone
    names accepted; ``clock``: unix seconds now. The store is borrowed: whoever opened it closes it, after
    the server has stopped.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        known_models: Collection[str],
        accelerator_kinds: Collection[str],
        trainable_kinds: Collection[str],
        clock: Callable[[], float],
        zones: Collection[str] | None = None,
    ) -> None:
        stray = set(trainable_kinds) - set(accelerator_kinds)
        if stray:
            raise ValueError(f"trainable kinds {sorted(stray)} are not among the accelerator kinds")
        self._store = store
        self._rules = JobRules(
            known_models=frozenset(known_models),
            accelerator_kinds=frozenset(accelerator_kinds),
            trainable_kinds=frozenset(trainable_kinds),
            zones=frozenset(zones) if zones is not None else None,
        )
        self._clock = clock

    async def Submit(self, request: jobs_pb2.SubmitJobRequest, context: ServicerContext) -> jobs_pb2.Job:
        try:
            key, spec = submit_from_proto(request, self._rules)
            job, created = await self._store.submit(key, spec, self._clock())
        except (RpcError, JobStoreError) as exc:
            await refuse(context, _as_rpc_error(exc))
        if created:
            _log.info(
                "job %s submitted (tenant %s, %d chips of %s)",
                job.job_id,
                spec.tenant,
                spec.chips,
                spec.model,
            )
        return job_to_proto(job)

    async def Get(self, request: jobs_pb2.GetJobRequest, context: ServicerContext) -> jobs_pb2.Job:
        try:
            job_id = get_from_proto(request)
            job = await self._store.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
        except (RpcError, JobStoreError) as exc:
            await refuse(context, _as_rpc_error(exc))
        return job_to_proto(job)

    async def Cancel(self, request: jobs_pb2.CancelJobRequest, context: ServicerContext) -> jobs_pb2.Job:
        try:
            job_id, reason = cancel_from_proto(request)
            job = await self._store.cancel(job_id, reason, self._clock())
            if job is None:
                raise JobNotFound(job_id)
        except (RpcError, JobStoreError) as exc:
            await refuse(context, _as_rpc_error(exc))
        return job_to_proto(job)

    async def List(
        self, request: jobs_pb2.ListJobsRequest, context: ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        try:
            query = list_from_proto(request)
            jobs, next_token = await self._store.list(
                query.page_size, query.page_token, query.tenant, query.states
            )
        except (RpcError, JobStoreError) as exc:
            await refuse(context, _as_rpc_error(exc))
        return list_to_proto(jobs, next_token)

    async def Watch(
        self, request: jobs_pb2.WatchJobsRequest, context: ServicerContext
    ) -> AsyncIterator[jobs_pb2.JobEvent]:
        """Streams until the watched job is final; a watch of every job runs until the client leaves.

        The store's subscription is closed as soon as this generator stops, whether the job finished, the
        client cancelled (the server cancels the handler) or the server is stopping.
        """
        try:
            job_id = watch_from_proto(request)
            if job_id is not None and await self._store.get(job_id) is None:
                raise JobNotFound(job_id)
            async with contextlib.aclosing(self._store.watch(job_id)) as events:
                async for event in events:
                    yield event_to_proto(event)
                    if job_id is not None and event.job.state.is_final:
                        return
            # The store ended the watch early: it is closing.
            raise StoreClosed("the job store closed during the watch")
        except (RpcError, JobStoreError) as exc:
            await refuse(context, _as_rpc_error(exc))
