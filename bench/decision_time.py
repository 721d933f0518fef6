"""Server-side decision time of the "turnout" fast path: p50/p99 of ``FastPath.place``.

Fleet: 1,000 endpoints serving 20 models (50 each) in 4 zones of 2 regions, on the real roofline
performance model (``fleet.perf``, prior efficiencies). Each synthetic model ``model-NN`` is served with
the architecture of Llama-3.1-8B (even NN) or Llama-3.1-70B (odd NN) on five endpoint classes (H100, H200,
B200, Inferentia2, Trainium2), ten replicas each, with random live load. A fresh plan gives each traffic
class a share on a few endpoints of its model. Requests arrive at 2,500/s of simulated time with random
models, lengths, priorities, SLOs and (for a fifth of them) a data region; every placement is reserved in
the ledger and completed after a random duration, so the ledger holds a realistic number of leases.

Scenarios:
* ``static``: one snapshot for the whole run.
* ``churn``: a new snapshot version every 4 ms of simulated time (one endpoint's telemetry changes), as
  when the store publishes on every telemetry report; the policy's per-snapshot index is rebuilt lazily.

Printed per scenario and run: wall-clock p50, p90, p99, p99.9 and max of the ``place`` call alone; its
thread CPU time p50/p99 (what the decision costs without the preemption of a shared machine); and p50/p99
of the whole decision cycle (``expire`` + ``place`` + ``lease_for`` + ``reserve``). The fleet and plan are
moved out of the garbage collector's reach after loading and its young generation's threshold set to
``server.gc_gen0_threshold``'s default or to ``--gc-gen0-threshold``
(:func:`router.app.prepare_gc_for_serving`, as ``turnout serve`` does after start-up); the tail (p99.9,
max) still includes collector pauses over the live leases.
Target: p99 <= 1 ms at 1,000 endpoints.
Usage: ``.venv/bin/python bench/decision_time.py [--requests N] [--runs R] [--gc-gen0-threshold T]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import heapq
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

from fleet.catalog import load_catalog
from fleet.models import load_models
from fleet.perf import PerformanceModel
from fleet.types import (
    EndpointLoad,
    EndpointSpec,
    EndpointState,
    EndpointStatus,
    FleetSnapshot,
    LatencySlo,
    Precision,
    Priority,
    ServingProfile,
    ZoneSpec,
)
from policies.config import PolicyConfig
from policies.decision import Placed
from policies.demand import classify
from policies.ledger import ReservationLedger
from policies.registry import build_policy
from policies.types import PlacementRequest, Plan
from router.app import prepare_gc_for_serving
from router.config import ServerConfig

MODELS = 20
REPLICAS_PER_CLASS = 10
ZONES = (
    ZoneSpec("use1-az1", "us-east-1", 400_000.0),
    ZoneSpec("use1-az2", "us-east-1", 400_000.0),
    ZoneSpec("usw2-az1", "us-west-2", 400_000.0),
    ZoneSpec("usw2-az2", "us-west-2", 400_000.0),
)
# (instance type, accelerator kind, replicas per instance, tp chips, precision) per architecture
CLASSES = {
    "llama-3.1-8b": (
        ("p5.48xlarge", "h100", 8, 1, Precision.FP8),
        ("p5en.48xlarge", "h200", 8, 1, Precision.FP8),
        ("p6-b200.48xlarge", "b200", 8, 1, Precision.FP8),
        ("inf2.48xlarge", "inf2", 6, 2, Precision.BF16),
        ("trn2.48xlarge", "trn2", 4, 4, Precision.BF16),
    ),
    "llama-3.1-70b": (
        ("p5.48xlarge", "h100", 2, 4, Precision.FP8),
        ("p5en.48xlarge", "h200", 4, 2, Precision.BF16),
        ("p6-b200.48xlarge", "b200", 4, 2, Precision.FP8),
        ("inf2.48xlarge", "inf2", 1, 12, Precision.BF16),
        ("trn2.48xlarge", "trn2", 4, 4, Precision.BF16),
    ),
}


def architecture(model: str) -> str:
    return "llama-3.1-8b" if int(model.split("-")[1]) % 2 == 0 else "llama-3.1-70b"


def build_fleet(rng: random.Random) -> tuple[list[EndpointSpec], dict[str, EndpointLoad]]:
    catalog = load_catalog()
    specs: list[EndpointSpec] = []
    for m in range(MODELS):
        model = f"model-{m:02d}"
        for instance_type, kind, per_instance, tp, precision in CLASSES[architecture(model)]:
            price = catalog.instance(instance_type).price_usd_per_hour / per_instance
            for r in range(REPLICAS_PER_CLASS):
                zone = ZONES[(m + r) % len(ZONES)]
                eid = f"{model}-{kind}-{r}"
                specs.append(
                    EndpointSpec(
                        endpoint_id=eid,
                        address=f"{eid}.bench:8000",
                        pool=f"{model}-{kind}",
                        zone=zone.name,
                        region=zone.region,
                        instance_type=instance_type,
                        accelerator_kind=kind,
                        model=model,
                        tp_degree=tp,
                        precision=precision,
                        chips=tp,
                        price_usd_per_hour=price,
                        max_context_tokens=131072,
                    )
                )
    loads = {s.endpoint_id: random_load(rng) for s in specs}
    return specs, loads


def random_load(rng: random.Random) -> EndpointLoad:
    return EndpointLoad(
        running_requests=rng.randint(0, 24),
        waiting_requests=rng.choice((0, 0, 0, 1, 2)),
        kv_cache_usage_ratio=rng.uniform(0.0, 0.5),
        power_w=None,
        utilization_ratio=None,
    )


def snapshot_of(version: int, specs: list[EndpointSpec], states: dict[str, EndpointState]) -> FleetSnapshot:
    ordered = tuple(states[s.endpoint_id] for s in sorted(specs, key=lambda s: s.endpoint_id))
    by_model: dict[str, list[EndpointState]] = {}
    for st in ordered:
        by_model.setdefault(st.spec.model, []).append(st)
    zone_power = {z.name: 0.0 for z in ZONES}
    for st in ordered:
        zone_power[st.spec.zone] += 1000.0 * (0.3 + 0.02 * st.load.running_requests)
    return FleetSnapshot(
        version=version,
        taken_at_s=0.0,
        endpoints=ordered,
        by_id=MappingProxyType({s.endpoint_id: s for s in ordered}),
        by_model=MappingProxyType({m: tuple(v) for m, v in by_model.items()}),
        zones=MappingProxyType({z.name: z for z in ZONES}),
        zone_power_w=MappingProxyType(zone_power),
    )


def random_request(rng: random.Random, i: int) -> PlacementRequest:
    model = f"model-{rng.randrange(MODELS):02d}"
    priority = rng.choice((Priority.CRITICAL, Priority.STANDARD, Priority.STANDARD, Priority.SHEDDABLE))
    input_tokens = min(100_000, int(rng.lognormvariate(7.0, 1.0)) + 1)
    max_out = rng.choice((256, 512, 1024, 2048))
    expected = max(1, min(max_out, int(rng.lognormvariate(5.3, 0.8))))
    slo = {
        Priority.CRITICAL: LatencySlo(ttft_ms=1000.0, tpot_ms=60.0),
        Priority.STANDARD: LatencySlo(ttft_ms=2000.0, tpot_ms=100.0),
        Priority.SHEDDABLE: LatencySlo(ttft_ms=10000.0, tpot_ms=200.0),
    }[priority]
    return PlacementRequest(
        request_id=f"req-{i}",
        model=model,
        tenant=f"tenant-{i % 7}",
        priority=priority,
        input_tokens=input_tokens,
        max_output_tokens=max_out,
        expected_output_tokens=expected,
        slo=slo,
        data_region=rng.choice(("", "", "", "", "us-west-2")),
    )


def build_plan(rng: random.Random, specs: list[EndpointSpec], config: PolicyConfig, now_s: float) -> Plan:
    """Each class of every model gets shares on 2-6 endpoints of its model (what a planner would spread)."""
    by_model: dict[str, list[str]] = {}
    for s in specs:
        by_model.setdefault(s.model, []).append(s.endpoint_id)
    share: dict[str, dict[str, float]] = {}
    for model, ids in by_model.items():
        for b_in in config.buckets.input_tokens:
            for b_out in config.buckets.output_tokens:
                for p in Priority:
                    cls = classify(model, b_in, b_out, p, config.buckets).name
                    for eid in rng.sample(ids, rng.randint(2, 6)):
                        share.setdefault(eid, {})[cls] = rng.uniform(0.05, 1.0)
    return Plan(
        generation=1,
        created_at_s=now_s,
        status="optimal",
        active_endpoint_ids=frozenset(share),
        share=MappingProxyType({e: MappingProxyType(c) for e, c in share.items()}),
        desired_replicas=MappingProxyType({}),
        predicted_cost_usd_per_hour=0.0,
    )


def percentile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def run_once(
    seed: int, requests: int, churn: bool, perf: PerformanceModel, gc_gen0_threshold: int
) -> dict[str, object]:
    rng = random.Random(seed)
    specs, loads = build_fleet(rng)
    states = {s.endpoint_id: EndpointState(s, loads[s.endpoint_id], EndpointStatus.READY) for s in specs}
    # A few endpoints are not eligible, as in any real fleet.
    for s in rng.sample(specs, 20):
        states[s.endpoint_id] = dataclasses.replace(states[s.endpoint_id], status=EndpointStatus.STALE)
    version = 1
    snapshot = snapshot_of(version, specs, states)

    profiles: dict[tuple[str, str, int, Precision], ServingProfile] = {}

    def serving(spec: EndpointSpec) -> ServingProfile:
        key = (architecture(spec.model), spec.instance_type, spec.tp_degree, spec.precision)
        p = profiles.get(key)
        if p is None:
            p = profiles[key] = perf.profile(*key)
        return p

    config = PolicyConfig()
    policy = build_policy(config, serving)
    ledger = ReservationLedger()
    now = 1_000.0
    plan = build_plan(rng, specs, config, now)
    reqs = [random_request(rng, i) for i in range(requests)]
    completions: list[tuple[float, str]] = []
    place_s: list[float] = []
    place_cpu_s: list[float] = []
    cycle_s: list[float] = []
    outcomes: Counter[str] = Counter()
    next_churn = now
    perf_counter = time.perf_counter
    thread_time = time.thread_time
    warmup = min(2000, requests // 10)
    # What a server does once its fleet and plan are loaded: move them out of the collector's way and
    # raise the young generation's threshold to the configured default.
    saved_thresholds = prepare_gc_for_serving(gc_gen0_threshold)
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = perf_counter()
        else:
            pauses.append((info["generation"], perf_counter() - started[0]))

    gc.callbacks.append(on_gc)
    for i, req in enumerate(reqs):
        now += 0.0004  # 2,500 requests/s
        if churn and now >= next_churn:
            next_churn = now + 0.004
            version += 1
            s = rng.choice(specs)
            states[s.endpoint_id] = dataclasses.replace(states[s.endpoint_id], load=random_load(rng))
            snapshot = _replace_one(snapshot, states[s.endpoint_id], version)
        while completions and completions[0][0] <= now:
            _, lid = heapq.heappop(completions)
            ledger.release(lid)
        t0 = perf_counter()
        ledger.expire(now)
        c1 = thread_time()
        t1 = perf_counter()
        d = policy.place(req, snapshot, plan, ledger, now)
        t2 = perf_counter()
        c2 = thread_time()
        if isinstance(d, Placed):
            lease = policy.lease_for(d, f"lease-{i}", now)
            ledger.reserve(lease)
            t3 = perf_counter()
            done = (
                now
                + (d.chosen.prediction.ttft_ms + req.expected_output_tokens * d.chosen.prediction.tpot_ms)
                / 1000
            )
            heapq.heappush(completions, (done, lease.lease_id))
            outcomes[d.reason.value] += 1
        else:
            t3 = perf_counter()
            outcomes[f"refused:{d.reason.value}"] += 1
        if i >= warmup:
            place_s.append(t2 - t1)
            place_cpu_s.append(c2 - c1)
            cycle_s.append(t3 - t0)
    gc.callbacks.remove(on_gc)
    gc.unfreeze()
    gc.set_threshold(*saved_thresholds)
    place_s.sort()
    place_cpu_s.sort()
    cycle_s.sort()
    return {
        "place": place_s,
        "place_cpu": place_cpu_s,
        "cycle": cycle_s,
        "outcomes": outcomes,
        "gc": pauses,
        "leases": len(ledger),
        "versions": version,
    }


def _replace_one(snapshot: FleetSnapshot, state: EndpointState, version: int) -> FleetSnapshot:
    """A new snapshot version with one endpoint's state replaced (copy-on-write, as the store does)."""
    eid = state.endpoint_id
    endpoints = tuple(state if s.endpoint_id == eid else s for s in snapshot.endpoints)
    model_states = tuple(state if s.endpoint_id == eid else s for s in snapshot.by_model[state.spec.model])
    by_model: Mapping[str, tuple[EndpointState, ...]] = MappingProxyType(
        {**snapshot.by_model, state.spec.model: model_states}
    )
    by_id = MappingProxyType({**snapshot.by_id, eid: state})
    return dataclasses.replace(snapshot, version=version, endpoints=endpoints, by_id=by_id, by_model=by_model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000, help="requests per run (default 20000)")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    ap.add_argument(
        "--gc-gen0-threshold",
        type=int,
        default=ServerConfig().gc_gen0_threshold,
        help="the collector's young-generation threshold while deciding (default: the server's, "
        "server.gc_gen0_threshold; CPython's own is 700; 0 turns automatic collection off)",
    )
    args = ap.parse_args()
    perf = PerformanceModel(load_catalog(), load_models())
    print(
        f"decision time of FastPath.place: 1000 endpoints, {MODELS} models, {args.requests} requests per run"
    )
    load1, load5, _ = os.getloadavg()
    print(
        f"  machine: {os.cpu_count()} CPUs, load average {load1:.2f} (1 min) {load5:.2f} (5 min) at start; "
        "wall times include preemption by other processes, CPU times do not; garbage collector's young "
        f"generation threshold {args.gc_gen0_threshold} while deciding"
    )
    for scenario in ("static", "churn"):
        p99s = []
        for run in range(args.runs):
            r = run_once(
                seed=run,
                requests=args.requests,
                churn=scenario == "churn",
                perf=perf,
                gc_gen0_threshold=args.gc_gen0_threshold,
            )
            place = r["place"]
            cpu = r["place_cpu"]
            cycle = r["cycle"]
            assert isinstance(place, list) and isinstance(cycle, list) and isinstance(cpu, list)
            us = [1e6 * percentile(place, q) for q in (0.5, 0.9, 0.99, 0.999)]
            p99s.append(us[2])
            cpu_us = [1e6 * percentile(cpu, q) for q in (0.5, 0.99)]
            cycle_us = [1e6 * percentile(cycle, q) for q in (0.5, 0.99)]
            print(
                f"  {scenario:6s} run {run}: place wall p50 {us[0]:4.0f} us  p90 {us[1]:4.0f} us  "
                f"p99 {us[2]:5.0f} us  p99.9 {us[3]:5.0f} us  max {1e6 * place[-1]:6.0f} us | "
                f"place cpu p50 {cpu_us[0]:4.0f} us  p99 {cpu_us[1]:4.0f} us | "
                f"cycle wall p50 {cycle_us[0]:4.0f} us  p99 {cycle_us[1]:5.0f} us"
            )
            pauses = r["gc"]
            assert isinstance(pauses, list)
            full = [d for g, d in pauses if g == 2]
            longest_ms = 1e3 * max((d for _, d in pauses), default=0.0)
            print(
                f"           garbage collector: {len(pauses)} collections, {len(full)} full, longest pause "
                f"{longest_ms:.1f} ms; {r['leases']} live leases at the end; {r['versions']} snapshots"
            )
            if run == 0:
                outcomes = r["outcomes"]
                assert isinstance(outcomes, Counter)
                print("           outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
        median = statistics.median(p99s)
        print(f"  {scenario:6s} median p99 over {args.runs} runs: {median:.0f} us (target <= 1000 us)")


if __name__ == "__main__":
    main()
