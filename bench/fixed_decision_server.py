"""Turnout's Router servicer answering a fixed decision: what ``bench/echo_server.py --config`` serves
(``bench/place_load.py --server fixed``), and the in-process start-up the benches share.

Not a benchmark of its own (``make bench`` skips ``*_server.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.decision import Placed
from policies.types import PlacementRequest
from router.app import TurnoutApp
from router.config import TurnoutConfig, load_config
from router.convert.router import place_input_from_proto
from router.services.common import InvalidArgumentCounter
from router.services.router_service import CompletionResult, RouterService
from router.validation import CompletionReport, validate_place_request
from turnout.v1 import router_pb2


async def start_with_first_plan(config: TurnoutConfig, timeout_s: float) -> TurnoutApp:
    """The service started in-process on loopback port 0, once its planner has published a plan (or
    ``timeout_s`` has passed). The caller stops it."""
    app = TurnoutApp(config, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0")
    await app.start()
    deadline = time.monotonic() + timeout_s
    while app.plan().generation == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return app


class FixedDecisionEngine:
    """What :class:`RouterService` calls of the placement engine, answering every ``Place`` with one
    placement decided by the real engine (its request replaced by the caller's) and every ``Complete``
    as a first completion: no decision, no lease, no ledger."""

    def __init__(self, placed: Placed, lease_expires_at_s: float) -> None:
        self._placed = placed
        self._expires_at_s = lease_expires_at_s

    def place(self, request: PlacementRequest) -> Placed:
        return dataclasses.replace(self._placed, request=request)

    def lease_expires_at_s(self, decision: Placed) -> float:
        return self._expires_at_s

    def complete(self, report: CompletionReport) -> CompletionResult:
        return CompletionResult(already_completed=False, cost_usd=0.0)


async def fixed_router(config_path: Path) -> tuple[RouterService, InvalidArgumentCounter, int]:
    """Turnout's Router servicer and method wrappers over a :class:`FixedDecisionEngine` whose placement the
    service, started in-process on ``config_path`` and stopped again, decided once it had a plan; and
    the config's collector threshold."""
    config = load_config(config_path)
    app = await start_with_first_plan(config, 60.0)
    try:
        context = app.place_context()
        msg = router_pb2.PlaceRequest(
            request_id="fixed-0",
            model="llama-3.1-8b",
            tenant="bench",
            input_tokens=1000,
            max_output_tokens=512,
            expected_output_tokens=256,
        )
        decision = app.engine.place(validate_place_request(place_input_from_proto(msg), context))
        if not isinstance(decision, Placed):
            raise RuntimeError(f"the fleet refused the fixed request: {decision}")
        engine = FixedDecisionEngine(decision, app.engine.lease_expires_at_s(decision))
        metrics = app.metrics
    finally:
        await app.stop()
    service = RouterService(context=context, engine=engine, metrics=metrics)  # type: ignore[arg-type]
    counter = InvalidArgumentCounter(lambda m: metrics.rpc_invalid_argument.labels(m).inc())
    return service, counter, config.server.gc_gen0_threshold
