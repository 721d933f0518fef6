"""Turnout's own CPU per ``Place``, without the gRPC transport.

Runs the service in-process (``TurnoutApp`` on loopback port 0, the fleet of ``bench/place_load.py``: the
default fleet with every pool and power cap x3 and short leases), waits for its first plan, and calls the
Router servicer's decision path (conversion, validation, the policy, the lease, metrics, encoding of the
answer) directly on ``PlaceRequest`` messages shaped like the k6 scripts' (3:1 llama-3.1-8b:70b, prompts of
200-4,000 tokens, 256-1,024 output tokens, mixed priorities). Every placement is completed after
``--in-flight`` later requests, so the ledger holds a steady number of leases (fewer when leases expire
first: they live 1-2 s; the median number held is printed). Prints the CPU time of the calling thread per
call (median and spread over ``--runs``), for ``candidates_per_decision`` as configured (12) and 0 (rank
every feasible endpoint), and the share of refusals; then how that splits between the
decision itself (``PlacementEngine.place``: the policy, the lease booking, the planner's demand estimate)
and the rest (conversion, validation, metrics, encoding of the answer). ``--stream`` writes each answer
into a ``PlaceResult`` as ``PlaceStream`` does, instead of a ``Placement`` as ``Place`` does.

Usage: ``.venv/bin/python bench/place_cpu.py [--requests 4000] [--runs 3] [--in-flight 200]
[--candidates 12 0] [--stream] [--gc-gen0-threshold T]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fixed_decision_server import start_with_first_plan  # noqa: E402
from place_load import write_config  # noqa: E402

from policies.decision import Placed, Refused  # noqa: E402
from policies.types import PlacementRequest  # noqa: E402
from router.app import prepare_gc_for_serving  # noqa: E402
from router.config import load_config  # noqa: E402
from router.errors import RpcError  # noqa: E402
from router.services.router_service import RouterService  # noqa: E402
from turnout.v1 import common_pb2, router_pb2  # noqa: E402

MODELS = ("llama-3.1-8b", "llama-3.1-8b", "llama-3.1-8b", "llama-3.1-70b")
PRIORITIES = (
    common_pb2.PRIORITY_STANDARD,
    common_pb2.PRIORITY_STANDARD,
    common_pb2.PRIORITY_CRITICAL,
    common_pb2.PRIORITY_SHEDDABLE,
)


def requests(n: int, seed: int) -> list[router_pb2.PlaceRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        max_out = rng.choice((256, 512, 1024))
        out.append(
            router_pb2.PlaceRequest(
                request_id=f"r{seed}-{i}",
                model=rng.choice(MODELS),
                tenant=f"tenant-{i % 8}",
                priority=rng.choice(PRIORITIES),
                input_tokens=200 + rng.randrange(3800),
                max_output_tokens=max_out,
                expected_output_tokens=max_out // 2,
            )
        )
    return out


@dataclass(frozen=True)
class RunResult:
    cpu_s_per_call: float
    engine_s_per_call: float  # of which in PlacementEngine.place
    refused_share: float
    live_leases: float  # median number of live leases in the ledger


async def one_run(candidates: int, args: argparse.Namespace, seed: int) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        path = Path(tmp) / "fleet.yaml"
        write_config(path, 3)
        data = yaml.safe_load(path.read_text())
        data["planner"]["placement"]["candidates_per_decision"] = candidates
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(path)
    app = await start_with_first_plan(config, 30.0)
    try:
        engine = app.engine
        service = RouterService(context=app.place_context(), engine=engine, metrics=app.metrics)
        engine_s = 0.0
        place = engine.place

        def timed_place(request: PlacementRequest) -> Placed | Refused:
            nonlocal engine_s
            started = time.thread_time()
            try:
                return place(request)
            finally:
                engine_s += time.thread_time() - started

        engine.place = timed_place  # type: ignore[method-assign]
        msgs = requests(args.requests, seed)
        live: deque[str] = deque()
        refused = 0
        held: list[int] = []
        # as `turnout serve` does after start-up
        saved_thresholds = prepare_gc_for_serving(
            config.server.gc_gen0_threshold if args.gc_gen0_threshold is None else args.gc_gen0_threshold
        )
        started = time.thread_time()
        for i, msg in enumerate(msgs):
            try:
                if args.stream:
                    result = router_pb2.PlaceResult(request_id=msg.request_id)
                    lease_id = service._decide(msg, result.placement).lease_id
                else:
                    lease_id = service._decide(msg).lease_id
            except RpcError:
                refused += 1
            else:
                live.append(lease_id)
                if len(live) > args.in_flight:
                    engine.ledger.release(live.popleft())
            if i % 100 == 0:
                held.append(len(engine.ledger))
        cpu_s = time.thread_time() - started
        gc.unfreeze()
        gc.set_threshold(*saved_thresholds)
        n = len(msgs)
        return RunResult(cpu_s / n, engine_s / n, refused / n, statistics.median(held))
    finally:
        await app.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=200, help="placements held before the oldest completes")
    ap.add_argument(
        "--candidates",
        type=int,
        nargs="+",
        default=[12, 0],
        help="candidates_per_decision values to measure (0: every feasible endpoint)",
    )
    ap.add_argument("--stream", action="store_true", help="answer into a PlaceResult, as PlaceStream does")
    ap.add_argument(
        "--gc-gen0-threshold",
        type=int,
        default=None,
        help="the collector's young-generation threshold (default: the config's server.gc_gen0_threshold)",
    )
    args = ap.parse_args()
    print(
        f"place_cpu: {args.requests} requests per run, {args.in_flight} held in flight, {args.runs} runs, "
        f"answers as {'PlaceResult (PlaceStream)' if args.stream else 'Placement (Place)'}"
    )
    for candidates in args.candidates:
        runs = [asyncio.run(one_run(candidates, args, seed)) for seed in range(args.runs)]
        per_call_us = [1e6 * r.cpu_s_per_call for r in runs]
        engine_us = [1e6 * r.engine_s_per_call for r in runs]
        rest_us = [a - b for a, b in zip(per_call_us, engine_us, strict=True)]
        refused = statistics.median(r.refused_share for r in runs)
        leases = statistics.median(r.live_leases for r in runs)
        label = f"candidates_per_decision={candidates}" + (
            " (every feasible endpoint)" if not candidates else ""
        )
        print(
            f"  {label}: CPU per Place median {statistics.median(per_call_us):.0f} us "
            f"(min {min(per_call_us):.0f}, max {max(per_call_us):.0f}); refused {refused:.1%}; "
            f"{leases:.0f} live leases (median)\n"
            f"    of which PlacementEngine.place (policy, lease, demand) {statistics.median(engine_us):.0f} "
            f"us (min {min(engine_us):.0f}, max {max(engine_us):.0f}); conversion, validation, metrics and "
            f"encoding {statistics.median(rest_us):.0f} us (min {min(rest_us):.0f}, max {max(rest_us):.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
