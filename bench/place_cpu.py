"""Turnout's own CPU per ``Place``, without the gRPC transport.

Runs the service in-process (``TurnoutApp`` on loopback port 0, the fleet of ``bench/place_load.py``: the
default fleet with every pool and power cap x3 and short leases), waits for its first plan, and calls the
Router servicer's decision path (conversion, validation, the policy, the lease, metrics, encoding of the
answer) directly on ``PlaceRequest`` messages shaped like the k6 scripts' (3:1 llama-3.1-8b:70b, prompts of
200-4,000 tokens, 256-1,024 output tokens, mixed priorities). Every placement is completed after
``--in-flight`` later requests, so the ledger holds a steady number of leases. Prints the process CPU time
per call (median and spread over ``--runs``), for ``candidates_per_decision`` as configured (12) and 0
(rank every feasible endpoint), and the share of refusals.

Usage: ``.venv/bin/python bench/place_cpu.py [--requests 4000] [--runs 3] [--in-flight 200]``
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
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from place_load import write_config  # noqa: E402

from router.app import TurnoutApp  # noqa: E402
from router.config import load_config  # noqa: E402
from router.errors import RpcError  # noqa: E402
from router.services.router_service import PlaceContext, RouterService  # noqa: E402
from turnout.v1 import router_pb2  # noqa: E402

MODELS = ("llama-3.1-8b", "llama-3.1-8b", "llama-3.1-8b", "llama-3.1-70b")
PRIORITIES = ("PRIORITY_STANDARD", "PRIORITY_STANDARD", "PRIORITY_CRITICAL", "PRIORITY_SHEDDABLE")


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


async def one_run(candidates: int, args: argparse.Namespace, seed: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        path = Path(tmp) / "fleet.yaml"
        write_config(path, 3)
        data = yaml.safe_load(path.read_text())
        data["planner"]["placement"]["candidates_per_decision"] = candidates
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        config = load_config(path)
    app = TurnoutApp(config, grpc_addr="127.0.0.1:0", http_addr="127.0.0.1:0")
    await app.start()
    try:
        deadline = time.monotonic() + 30
        while app.plan().generation == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        engine = app.engine
        service = RouterService(
            context=PlaceContext(
                served_models=frozenset(app.store.snapshot().by_model),
                accelerator_kinds=app.fleet.catalog.kinds(),
                zone_regions={z.name: z.region for z in config.zones},
                slo=config.slo,
            ),
            engine=engine,
            metrics=app.metrics,
        )
        msgs = requests(args.requests, seed)
        live: deque[str] = deque()
        refused = 0
        gc.collect()
        gc.freeze()
        started = time.process_time()
        for msg in msgs:
            try:
                placement = service._decide(msg)
            except RpcError:
                refused += 1
            else:
                live.append(placement.lease_id)
                if len(live) > args.in_flight:
                    engine.ledger.release(live.popleft())
        cpu_s = time.process_time() - started
        gc.unfreeze()
        return cpu_s / len(msgs), refused / len(msgs)
    finally:
        await app.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=200, help="placements held before the oldest completes")
    args = ap.parse_args()
    print(f"place_cpu: {args.requests} requests per run, {args.in_flight} held in flight, {args.runs} runs")
    for candidates in (12, 0):
        runs = [asyncio.run(one_run(candidates, args, seed)) for seed in range(args.runs)]
        per_call_us = [1e6 * r[0] for r in runs]
        refused = statistics.median(r[1] for r in runs)
        label = f"candidates_per_decision={candidates}" + (
            " (every feasible endpoint)" if not candidates else ""
        )
        print(
            f"  {label}: CPU per Place median {statistics.median(per_call_us):.0f} us "
            f"(min {min(per_call_us):.0f}, max {max(per_call_us):.0f}); refused {refused:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
