"""What every servicer shares: answering a refusal, and counting INVALID_ARGUMENT per method."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias

import grpc
from grpc import aio

from router.errors import RpcError, to_status

log = logging.getLogger(__name__)

ServicerContext: TypeAlias = aio.ServicerContext[Any, Any]


async def refuse(context: ServicerContext, err: RpcError) -> NoReturn:
    """Ends the call with ``err``'s code, message and rich details (``google.rpc.Status`` trailers)."""
    await context.abort_with_status(to_status(err))
    raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises


class _Undecodable:
    """Stands for a request message whose bytes did not parse."""


UNDECODABLE = _Undecodable()


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return UNDECODABLE

    return parse


async def _refuse_undecodable(context: ServicerContext, method: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"request: is not a valid protobuf message for {method}"
    )
    raise AssertionError("abort returned")  # pragma: no cover - it always raises


class InvalidArgumentCounter(aio.ServerInterceptor):
    """Calls ``on_invalid(method)`` for every call that ends with INVALID_ARGUMENT, whatever servicer
    answered it (``method`` is ``"turnout.v1.Router/Place"``), and logs calls that end with an
    unexpected exception (a servicer raised something it should have turned into a status).

    It also makes undecodable request bytes an INVALID_ARGUMENT ("request: is not a valid protobuf
    message") instead of gRPC's default INTERNAL: bad input is never an internal error. In a client
    stream, an undecodable message ends the call (it has no request id a result could answer).

    Wrapped handlers are cached per method, so the cost per call is one extra frame.
    """

    def __init__(self, on_invalid: Callable[[str], None]) -> None:
        self._on_invalid = on_invalid
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method.lstrip("/"))
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _after(self, method: str, context: ServicerContext) -> None:
        code = context.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._on_invalid(method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        h: Any = handler
        kwargs = {
            "request_deserializer": _lenient(h.request_deserializer),
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(h.unary_unary, method), **kwargs)
        if h.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(h.stream_unary, method, streaming_request=True), **kwargs
            )
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(h.unary_stream, method, False), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._wrap_stream(h.stream_stream, method, True), **kwargs
        )

    @staticmethod
    def _checked(request: Any, context: ServicerContext, method: str, streaming_request: bool) -> Any:
        """The request, or for a stream an iterator refusing undecodable messages when it meets one."""
        if not streaming_request:
            return request

        async def messages() -> AsyncIterator[Any]:
            async for message in request:
                if message is UNDECODABLE:
                    await _refuse_undecodable(context, method)
                yield message

        return messages()

    def _wrap_unary(self, behaviour: Any, method: str, *, streaming_request: bool = False) -> Any:
        async def call(request: Any, context: ServicerContext) -> Any:
            try:
                if request is UNDECODABLE:
                    await _refuse_undecodable(context, method)
                return await behaviour(self._checked(request, context, method, streaming_request), context)
            except Exception:
                if not isinstance(context.code(), grpc.StatusCode):
                    log.exception("unhandled error in %s", method)
                raise
            finally:
                self._after(method, context)

        return call

    def _wrap_stream(self, behaviour: Any, method: str, streaming_request: bool) -> Any:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                try:
                    if request is UNDECODABLE:
                        await _refuse_undecodable(context, method)
                    async for response in behaviour(
                        self._checked(request, context, method, streaming_request), context
                    ):
                        yield response
                finally:
                    self._after(method, context)

            return stream
        # A coroutine writing with context.write().
        return self._wrap_unary(behaviour, method, streaming_request=streaming_request)
