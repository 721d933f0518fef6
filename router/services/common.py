"""What every servicer shares: answering a refusal, and counting INVALID_ARGUMENT per method."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
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


class UndecodableMessage(Exception):
    """A streamed request message whose bytes did not parse: raised where the servicer reads it, so the
    call ends (:class:`InvalidArgumentCounter`'s wrapper answers INVALID_ARGUMENT) without a check on
    every message."""


def _lenient(deserialize: Callable[[bytes], Any] | None, streaming: bool) -> Callable[[bytes], Any] | None:
    """``deserialize`` answering :data:`UNDECODABLE` for bytes that do not parse, or for a streamed
    request (``streaming``) raising :class:`UndecodableMessage`."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            return UNDECODABLE

    def parse_streamed(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            raise UndecodableMessage from None

    return parse_streamed if streaming else parse


async def _refuse_undecodable(context: ServicerContext, method: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"request: is not a valid protobuf message for {method}"
    )
    raise AssertionError("abort returned")  # pragma: no cover - it always raises


class _Registrar:
    """Receives what a generated ``add_*Servicer_to_server`` function registers, instead of a server."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, grpc.RpcMethodHandler]]] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers come again, by name, in add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services.append((service, handlers))


class InvalidArgumentCounter:
    """Registers Turnout's servicers (:meth:`register`) with every method wrapped so that it calls
    ``on_invalid(method)`` for every call that ends with INVALID_ARGUMENT (``method`` is
    ``"turnout.v1.Router/Place"``), and logs calls that end with an unexpected exception (a servicer
    raised something it should have turned into a status).

    It also makes undecodable request bytes an INVALID_ARGUMENT ("request: is not a valid protobuf
    message") instead of gRPC's default INTERNAL: bad input is never an internal error. In a client
    stream, an undecodable message ends the call (it has no request id a result could answer).

    The methods are wrapped once, when they are registered, rather than by a server interceptor: an
    interceptor runs (a coroutine of its own, and gRPC's interceptor pipeline) on every call, which cost
    about 35 us per unary call and 30 us per streamed message on this stack (``bench/place_load.py
    --server fixed``); a wrapped method costs one extra frame per call.
    """

    def __init__(self, on_invalid: Callable[[str], None]) -> None:
        self._on_invalid = on_invalid

    def register(self, server: aio.Server, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
        """What ``add_to_server(servicer, server)`` (generated: ``add_RouterServicer_to_server``) does,
        with every method wrapped."""
        registrar = _Registrar()
        add_to_server(servicer, registrar)
        if not registrar.services:
            raise RuntimeError(f"{add_to_server.__name__} registered no methods by name")
        for service, handlers in registrar.services:
            wrapped = {name: self._wrap(h, f"{service}/{name}") for name, h in handlers.items()}
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
            server.add_registered_method_handlers(service, wrapped)

    def _after(self, method: str, context: ServicerContext) -> None:
        code = context.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._on_invalid(method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        h: Any = handler
        kwargs = {
            "request_deserializer": _lenient(h.request_deserializer, h.request_streaming),
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(h.unary_unary, method), **kwargs)
        if h.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._wrap_unary(h.stream_unary, method), **kwargs)
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._wrap_stream(h.unary_stream, method), **kwargs)
        return grpc.stream_stream_rpc_method_handler(self._wrap_stream(h.stream_stream, method), **kwargs)

    def _wrap_unary(self, behaviour: Any, method: str) -> Any:
        async def call(request: Any, context: ServicerContext) -> Any:
            try:
                if request is UNDECODABLE:
                    await _refuse_undecodable(context, method)
                return await behaviour(request, context)
            except UndecodableMessage:
                await _refuse_undecodable(context, method)
            except Exception:
                if not isinstance(context.code(), grpc.StatusCode):
                    log.exception("unhandled error in %s", method)
                raise
            finally:
                self._after(method, context)

        return call

    def _wrap_stream(self, behaviour: Any, method: str) -> Any:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: ServicerContext) -> AsyncIterator[Any]:
                try:
                    if request is UNDECODABLE:
                        await _refuse_undecodable(context, method)
                    async for response in behaviour(request, context):
                        yield response
                except UndecodableMessage:
                    await _refuse_undecodable(context, method)
                finally:
                    self._after(method, context)

            return stream
        # A coroutine writing with context.write().
        return self._wrap_unary(behaviour, method)
