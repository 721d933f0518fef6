"""The ``turnout.v1.Router`` servicer.

Every request is converted and validated first (INVALID_ARGUMENT naming field and rule, NOT_FOUND for a
model the fleet does not serve). There is no placement engine yet: a well-formed ``Place`` is answered
UNIMPLEMENTED, and since no lease has ever been issued, a well-formed ``Complete`` is NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from policies.types import PlacementRequest
from router.convert.router import completion_input_from_proto, place_error_result, place_input_from_proto
from router.errors import NotFound, RpcError, Unimplemented
from router.metrics import OTHER_LABEL, TurnoutMetrics
from router.services.common import ServicerContext, refuse
from router.validation import PlaceContext, validate_completion, validate_place_request
from turnout.v1 import router_pb2, router_pb2_grpc

PLACE_STREAM_METHOD = "turnout.v1.Router/PlaceStream"


class RouterService(router_pb2_grpc.RouterServicer):
    def __init__(self, *, context: PlaceContext, metrics: TurnoutMetrics) -> None:
        self._ctx = context
        self._metrics = metrics

    def _decide(self, msg: router_pb2.PlaceRequest) -> router_pb2.Placement:
        """Converts, validates and places one request; counts the outcome. Raises :class:`RpcError`."""
        model_label = msg.model if msg.model in self._ctx.served_models else OTHER_LABEL
        try:
            request = validate_place_request(place_input_from_proto(msg), self._ctx)
            return self._place(request)
        except RpcError as err:
            self._metrics.place_requests.labels(model_label, _outcome(err.code), "").inc()
            raise

    def _place(self, request: PlacementRequest) -> router_pb2.Placement:
        raise Unimplemented(
            f"placement is not available yet: request {request.request_id!r} is valid, "
            "but no engine decides it"
        )

    async def Place(self, request: router_pb2.PlaceRequest, context: ServicerContext) -> router_pb2.Placement:
        try:
            return self._decide(request)
        except RpcError as err:
            await refuse(context, err)

    async def PlaceStream(
        self, request_iterator: AsyncIterator[router_pb2.PlaceRequest], context: ServicerContext
    ) -> AsyncIterator[router_pb2.PlaceResult]:
        async for msg in request_iterator:
            try:
                placement = self._decide(msg)
            except RpcError as err:
                if err.code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._metrics.rpc_invalid_argument.labels(PLACE_STREAM_METHOD).inc()
                yield place_error_result(msg.request_id, err)
            else:
                yield router_pb2.PlaceResult(request_id=msg.request_id, placement=placement)

    async def Complete(
        self, request: router_pb2.Completion, context: ServicerContext
    ) -> router_pb2.CompleteResponse:
        try:
            report = validate_completion(completion_input_from_proto(request))
            raise NotFound(f"lease {report.lease_id!r} is unknown or expired")
        except RpcError as err:
            await refuse(context, err)


def _outcome(code: grpc.StatusCode) -> str:
    """Outcome label of a refused Place: the status code's name in lower case (a bounded set)."""
    name: str = code.name
    return name.lower()
