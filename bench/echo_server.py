"""The ceilings: ``turnout.v1.Router`` servers that decide nothing.

``bench/place_load.py --server echo`` runs this instead of ``turnout serve`` to measure what the same k6
load reaches against the same service definition, the same gRPC stack (``grpc.aio``, reflection) and the
same machine when the server does no work beyond decoding each request and encoding a fixed placement
(the chosen candidate and three fallbacks, as ``Place`` answers): the transport ceiling.

``--server fixed`` (``--config PATH``) runs Turnout's own servicer stack instead
(``bench/fixed_decision_server.py``): its method wrappers,
:class:`~router.services.router_service.RouterService` (conversion, validation, outcome metrics, encoding
of the answer) and the same collector setting as ``turnout serve``, with an engine that answers every
``Place`` with one placement the real engine decided at start-up on that config's fleet. What it reaches is
the ceiling for any decision code on this stack: everything a call costs except the decision, the lease
and the ledger.

The figures ``turnout serve`` reaches are read against these ceilings: what it loses below the first is
Turnout's own cost per call, below the second the decision's.

Usage: ``.venv/bin/python bench/echo_server.py --ports-file PATH [--config PATH]`` (gRPC on 127.0.0.1,
port 0; SIGTERM stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from grpc import aio
from grpc_reflection.v1alpha import reflection

from turnout.v1 import common_pb2, router_pb2, router_pb2_grpc


def _candidate(i: int) -> router_pb2.Candidate:
    return router_pb2.Candidate(
        endpoint=common_pb2.EndpointRef(endpoint_id=f"endpoint-{i}"),
        predicted_ttft_ms=120.0 + i,
        predicted_tpot_ms=18.0 + i,
        predicted_cost_usd=0.0004,
        cost_usd_per_million_tokens=0.9,
        predicted_energy_joules=35.0,
    )


class EchoRouter(router_pb2_grpc.RouterServicer):
    """Answers every request with the same placement (its request id copied)."""

    def __init__(self) -> None:
        self._chosen = _candidate(0)
        self._fallbacks = [_candidate(i) for i in range(1, 4)]

    def _placement(self, request: router_pb2.PlaceRequest) -> router_pb2.Placement:
        p = router_pb2.Placement(
            lease_id="lease-0",
            request_id=request.request_id,
            chosen=self._chosen,
            fallbacks=self._fallbacks,
            plan_generation=1,
            reason="plan",
            snapshot_version=1,
        )
        p.lease_expires_at.seconds = 1
        return p

    async def Place(self, request: router_pb2.PlaceRequest, context: object) -> router_pb2.Placement:
        return self._placement(request)

    async def PlaceStream(
        self, request_iterator: AsyncIterator[router_pb2.PlaceRequest], context: object
    ) -> AsyncIterator[router_pb2.PlaceResult]:
        async for request in request_iterator:
            yield router_pb2.PlaceResult(request_id=request.request_id, placement=self._placement(request))

    async def Complete(self, request: router_pb2.Completion, context: object) -> router_pb2.CompleteResponse:
        return router_pb2.CompleteResponse()


async def serve(ports_file: Path, config_path: Path | None) -> None:
    if config_path is None:
        server = aio.server()
        router_pb2_grpc.add_RouterServicer_to_server(EchoRouter(), server)
    else:
        # Imported here: the bare echo server loads none of Turnout's own modules.
        from fixed_decision_server import fixed_router

        from router.app import prepare_gc_for_serving

        service, counter, gc_gen0_threshold = await fixed_router(config_path)
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        counter.register(server, router_pb2_grpc.add_RouterServicer_to_server, service)
        prepare_gc_for_serving(gc_gen0_threshold)  # as `turnout serve` does after start-up
    reflection.enable_server_reflection(
        (router_pb2.DESCRIPTOR.services_by_name["Router"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = ports_file.with_name(ports_file.name + ".tmp")
    tmp.write_text(json.dumps({"grpc_port": port, "http_port": 0}))
    tmp.rename(ports_file)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ports-file", type=Path, required=True)
    ap.add_argument(
        "--config", type=Path, help="serve Turnout's servicer stack with a fixed decision on this fleet"
    )
    args = ap.parse_args()
    asyncio.run(serve(args.ports_file, args.config))


if __name__ == "__main__":
    main()
