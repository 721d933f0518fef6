"""The ``turnout.v1.Fleet`` servicer: telemetry in, snapshot and plan out, drain controls."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

from fleet.store import FleetStore
from fleet.telemetry import TelemetryRejection
from fleet.types import TelemetrySample
from policies.types import Plan
from router.convert.fleet import (
    drain_input_from_proto,
    drain_response_to_proto,
    plan_to_proto,
    report_field,
    snapshot_to_proto,
    telemetry_ack_to_proto,
    telemetry_sample_from_proto,
    undrain_input_from_proto,
)
from router.errors import InvalidArgument, RpcError
from router.metrics import TurnoutMetrics
from router.services.common import ServicerContext, refuse
from router.validation import DrainCommand, validate_drain, validate_model_filter
from turnout.v1 import fleet_pb2, fleet_pb2_grpc

MAX_BATCH = 256  # telemetry samples applied to the store in one call
MAX_ACK_REJECTIONS = 100


class _End:
    """Marks the end of a telemetry stream in the servicer's queue."""


_END = _End()


class FleetService(fleet_pb2_grpc.FleetServicer):
    """Reads one snapshot per call; writes only through the store (on the event loop's thread).

    ``plan()`` returns the current plan (``policies.types.EMPTY_PLAN`` until a planner publishes one);
    ``clock()`` gives unix seconds.
    """

    def __init__(
        self,
        store: FleetStore,
        *,
        plan: Callable[[], Plan],
        metrics: TurnoutMetrics,
        clock: Callable[[], float],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._store = store
        self._plan = plan
        self._metrics = metrics
        self._clock = clock
        self._max_batch = max_batch
        snap = store.snapshot()
        self._endpoint_ids = frozenset(snap.by_id)
        self._pools = frozenset(e.spec.pool for e in snap.endpoints)

    # --- ReportTelemetry

    async def ReportTelemetry(
        self, request_iterator: AsyncIterator[fleet_pb2.TelemetryReport], context: ServicerContext
    ) -> fleet_pb2.TelemetryAck:
        """Applies reports as they arrive, in batches of whatever has arrived (at most ``max_batch``),
        so a slow agent's samples are applied at once and a fast stream costs one publish per batch."""
        queue: asyncio.Queue[fleet_pb2.TelemetryReport | _End] = asyncio.Queue(maxsize=4 * self._max_batch)
        reader = asyncio.create_task(_pump(request_iterator, queue))
        tally = _Tally()
        try:
            index = 0
            done = False
            while not done:
                batch: list[fleet_pb2.TelemetryReport] = []
                item = await queue.get()
                while True:
                    if isinstance(item, _End):
                        done = True
                        break
                    batch.append(item)
                    if len(batch) >= self._max_batch or queue.empty():
                        break
                    item = queue.get_nowait()
                self._apply(batch, index, tally)
                index += len(batch)
            await reader  # re-raises a failure of the stream itself
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        return telemetry_ack_to_proto(tally.accepted, tally.rejected, tally.rejections)

    def _apply(self, reports: list[fleet_pb2.TelemetryReport], first_index: int, tally: _Tally) -> None:
        """Converts a batch, applies its samples in one store call, and counts both in the metrics."""
        samples: list[TelemetrySample] = []
        stream_index: list[int] = []
        for offset, report in enumerate(reports):
            try:
                samples.append(telemetry_sample_from_proto(report))
                stream_index.append(first_index + offset)
            except InvalidArgument as err:
                v = err.violations[0]
                tally.reject(TelemetryRejection(first_index + offset, report.endpoint_id, v.field, v.rule))
        if samples:
            refused = self._store.apply(samples, self._clock())
            for r in refused:
                tally.reject(dataclasses.replace(r, index=stream_index[r.index]))
            tally.accepted += len(samples) - len(refused)
            self._metrics.telemetry_accepted.inc(len(samples) - len(refused))
        for field, n in tally.take_field_counts().items():
            self._metrics.telemetry_rejected.labels(field).inc(n)

    # --- reads

    async def GetSnapshot(
        self, request: fleet_pb2.GetSnapshotRequest, context: ServicerContext
    ) -> fleet_pb2.FleetSnapshot:
        snap = self._store.snapshot()
        try:
            model = validate_model_filter(request.model, snap.by_model)
        except RpcError as err:
            await refuse(context, err)
        return snapshot_to_proto(snap, model)

    async def GetPlan(self, request: fleet_pb2.GetPlanRequest, context: ServicerContext) -> fleet_pb2.Plan:
        return plan_to_proto(self._plan())

    # --- drain controls

    def _targets(self, command: DrainCommand) -> tuple[str, ...]:
        if command.endpoint_id is not None:
            return (command.endpoint_id,)
        assert command.pool is not None
        return self._store.pool_endpoint_ids(command.pool)

    async def Drain(
        self, request: fleet_pb2.DrainRequest, context: ServicerContext
    ) -> fleet_pb2.DrainResponse:
        now_s = self._clock()
        try:
            command = validate_drain(
                drain_input_from_proto(request),
                endpoint_ids=self._endpoint_ids,
                pools=self._pools,
                now_s=now_s,
                is_drain=True,
            )
        except RpcError as err:
            await refuse(context, err)
        assert command.reason is not None
        changed = self._store.drain(self._targets(command), command.reason, command.deadline_s, now_s)
        return drain_response_to_proto(changed)

    async def Undrain(
        self, request: fleet_pb2.UndrainRequest, context: ServicerContext
    ) -> fleet_pb2.DrainResponse:
        now_s = self._clock()
        try:
            command = validate_drain(
                undrain_input_from_proto(request),
                endpoint_ids=self._endpoint_ids,
                pools=self._pools,
                now_s=now_s,
                is_drain=False,
            )
        except RpcError as err:
            await refuse(context, err)
        changed = self._store.undrain(self._targets(command), now_s)
        return drain_response_to_proto(changed)


class _Tally:
    """Counts of one telemetry stream; keeps the first rejections for the ack."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0
        self.rejections: list[TelemetryRejection] = []
        self._field_counts: dict[str, int] = {}

    def reject(self, rejection: TelemetryRejection) -> None:
        self.rejected += 1
        if len(self.rejections) < MAX_ACK_REJECTIONS:
            self.rejections.append(rejection)
        field = report_field(rejection.field)
        self._field_counts[field] = self._field_counts.get(field, 0) + 1

    def take_field_counts(self) -> dict[str, int]:
        counts, self._field_counts = self._field_counts, {}
        return counts


async def _pump(
    source: AsyncIterator[fleet_pb2.TelemetryReport], queue: asyncio.Queue[fleet_pb2.TelemetryReport | _End]
) -> None:
    """Moves the stream's messages into ``queue`` (waiting while it is full), then the end marker; a
    failure of the stream also ends with the marker (and is re-raised for the consumer's ``await``)."""
    try:
        async for report in source:
            await queue.put(report)
    except Exception:
        await queue.put(_END)
        raise
    await queue.put(_END)
