"""Planner solve time and gap to the LP relaxation bound at 100, 1,000 and 10,000 endpoints x 200 classes.

Fleets are synthetic but built from the catalog: pools of real serving configurations (model x instance type
x TP degree x precision, each instance hosting chips / TP replicas, each replica priced at its share of the
catalog's instance price) spread over availability zones whose power caps are 30-60% of what their
accelerators draw at full power (oversubscribed), so some caps bind. Profiles come from the fitted roofline
performance model (fleet.perf). About 2% of endpoints are stale, unhealthy or drained; about 10% of pools
are reserved.

Demand: 200 traffic classes (four Llama models x 6 input buckets x 3 output buckets x 3 priorities, the
first 200 in name order), mean shape 0.6 x the bucket bounds, class weights log-normal (seeded), scaled so
the whole mix would load each model's endpoints to about 60% of their SLO-feasible capacity. Each fleet is
solved from no plan, then re-solved ROUNDS times with every class's rate perturbed by up to +/-10% and the
previous plan as the hint (what the router's planner loop does every interval).

Each solve gets the target's time budget for its fleet size (1 s up to 1,000 endpoints, 10 s above).
Prints figures only: per fleet, the model size, the statuses, solve time (median, max, each) and the gap
to the LP relaxation bound (objective - LP bound) / (objective - unavoidable penalties), also per fleet cost
and to SCIP's own proven bound, then the targets. The fleets also include 10,000 endpoints split into one
pool per instance, with the catalog's prices and with a price per pool. Usage:

    .venv/bin/python bench/planner_scale.py [--rounds N] [--sizes 100,1000,10000] [--fragmented N]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.catalog import Catalog, load_catalog
from fleet.models import load_models
from fleet.perf import PerformanceModel, default_performance_model
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
from policies.capacity import class_capacity
from policies.demand import ClassDemand
from policies.planner import Planner, PlannerConfig, PlanReport
from policies.types import EMPTY_PLAN, Plan, TrafficClass

SEED = 20261121


def time_limit_s(endpoints: int) -> float:
    """The solve's time budget: the target for the fleet's size (1 s up to 1,000 endpoints, 10 s above)."""
    return 1.0 if endpoints <= 2000 else 10.0


MODELS = ("llama-3.1-405b", "llama-3.1-70b", "llama-3.1-8b", "llama-3.3-70b")
MODEL_WEIGHT = {"llama-3.1-8b": 0.45, "llama-3.1-70b": 0.25, "llama-3.3-70b": 0.15, "llama-3.1-405b": 0.15}
INPUT_BUCKETS = (256, 1024, 2048, 4096, 8192, 16384)
OUTPUT_BUCKETS = (128, 512, 2048)
SLOS = {  # the default config's SLOs
    Priority.CRITICAL: LatencySlo(ttft_ms=1000.0, tpot_ms=60.0),
    Priority.STANDARD: LatencySlo(ttft_ms=2000.0, tpot_ms=100.0),
    Priority.SHEDDABLE: LatencySlo(ttft_ms=10000.0, tpot_ms=200.0),
}


@dataclass(frozen=True)
class Config:
    """One serving configuration: a model on an instance type at a TP degree (chips) and precision."""

    model: str
    instance_type: str
    tp_degree: int
    precision: Precision
    weight: float  # relative share of the model's endpoints


_70B = (
    ("p5.48xlarge", 2, Precision.FP8, 3.0),
    ("p5en.48xlarge", 1, Precision.FP8, 2.0),
    ("p6-b200.48xlarge", 1, Precision.FP8, 2.0),
    ("trn2.48xlarge", 4, Precision.BF16, 2.0),
    ("trn1.32xlarge", 8, Precision.BF16, 1.0),
)
CONFIGS = (
    Config("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8, 3.0),
    Config("llama-3.1-8b", "p5en.48xlarge", 1, Precision.FP8, 1.0),
    Config("llama-3.1-8b", "p6-b200.48xlarge", 1, Precision.FP8, 1.0),
    Config("llama-3.1-8b", "trn1.32xlarge", 2, Precision.BF16, 2.0),
    Config("llama-3.1-8b", "trn2.48xlarge", 1, Precision.BF16, 2.0),
    Config("llama-3.1-8b", "inf2.48xlarge", 2, Precision.BF16, 3.0),
    Config("llama-3.1-8b", "g6.xlarge", 1, Precision.FP8, 2.0),
    *(Config("llama-3.1-70b", it, tp, pr, w) for it, tp, pr, w in _70B),
    *(Config("llama-3.3-70b", it, tp, pr, w) for it, tp, pr, w in _70B),
    Config("llama-3.1-405b", "p5.48xlarge", 8, Precision.FP8, 2.0),
    Config("llama-3.1-405b", "p5en.48xlarge", 8, Precision.FP8, 1.0),
    Config("llama-3.1-405b", "p6-b200.48xlarge", 4, Precision.FP4, 2.0),
    Config("llama-3.1-405b", "trn2.48xlarge", 16, Precision.BF16, 1.0),
)
REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1")


def zones_for(endpoints: int) -> tuple[tuple[str, str], ...]:
    count = 2 if endpoints <= 200 else 4 if endpoints <= 2000 else 8
    return tuple((f"{REGIONS[i // 2]}-az{i % 2 + 1}", REGIONS[i // 2]) for i in range(count))


def build_fleet(
    endpoints: int,
    catalog: Catalog,
    perf: PerformanceModel,
    rng: random.Random,
    pool_instances: int | None = None,
    price_jitter: float = 0.0,
) -> tuple[FleetSnapshot, dict[str, float]]:
    """A fleet of about ``endpoints`` replicas. ``pool_instances`` caps the instances in one pool (more,
    smaller pools); ``price_jitter`` gives each pool its own price, up to that share off the catalog's
    (each pool then is its own price tier: one integer variable per pool instead of per configuration)."""
    zones = zones_for(endpoints)
    per_model_weight = {m: sum(c.weight for c in CONFIGS if c.model == m) for m in MODELS}
    specs: list[EndpointSpec] = []
    max_power: dict[str, float] = {z: 0.0 for z, _ in zones}
    for zone, region in zones:
        for cfg in CONFIGS:
            inst = catalog.instance(cfg.instance_type)
            per_instance = inst.chips // cfg.tp_degree
            share = MODEL_WEIGHT[cfg.model] * cfg.weight / per_model_weight[cfg.model] / len(zones)
            jitter = rng.uniform(0.7, 1.3)
            # Stochastic rounding: small fleets hold only some configurations in each zone.
            instances = math.floor(endpoints * share * jitter / per_instance + rng.random())
            if instances == 0:
                continue
            base = f"{zone}-{cfg.model}-{cfg.instance_type}-tp{cfg.tp_degree}-{cfg.precision.value}"
            profile = perf.profile(cfg.model, cfg.instance_type, cfg.tp_degree, cfg.precision)
            chunk = pool_instances or instances
            for first in range(0, instances, chunk):
                pool = base if pool_instances is None else f"{base}-{first // chunk:03d}"
                reserved = rng.random() < 0.10
                # Per-pool prices (negotiated rates, spot): every pool its own tier.
                price = (
                    inst.price_usd_per_hour / per_instance * (1.0 + rng.uniform(-price_jitter, price_jitter))
                )
                for i in range(min(chunk, instances - first) * per_instance):
                    eid = f"{pool}-{i:04d}"
                    specs.append(
                        EndpointSpec(
                            endpoint_id=eid,
                            address=f"{eid}.serving.svc:8000",
                            pool=pool,
                            zone=zone,
                            region=region,
                            instance_type=cfg.instance_type,
                            accelerator_kind=inst.accelerator_kind,
                            model=cfg.model,
                            tp_degree=cfg.tp_degree,
                            precision=cfg.precision,
                            chips=cfg.tp_degree,
                            price_usd_per_hour=price,
                            max_context_tokens=perf.models.get(cfg.model).max_context_tokens,
                            reserved=reserved,
                        )
                    )
                    max_power[zone] += profile.max_power_w
    bad = (EndpointStatus.STALE, EndpointStatus.UNHEALTHY, EndpointStatus.DRAINED)
    states = sorted(
        (
            EndpointState(
                spec=s,
                load=EndpointLoad(),
                status=rng.choice(bad) if rng.random() < 0.02 else EndpointStatus.READY,
            )
            for s in specs
        ),
        key=lambda st: st.endpoint_id,
    )
    by_model: dict[str, list[EndpointState]] = {}
    for st in states:
        by_model.setdefault(st.spec.model, []).append(st)
    # Power budgets below the accelerators' full draw (oversubscribed), tighter in some zones than others.
    zone_specs = {
        z: ZoneSpec(name=z, region=r, power_cap_w=round(rng.uniform(0.3, 0.6) * max_power[z]))
        for z, r in zones
    }
    snapshot = FleetSnapshot(
        version=1,
        taken_at_s=0.0,
        endpoints=tuple(states),
        by_id=MappingProxyType({st.endpoint_id: st for st in states}),
        by_model=MappingProxyType({m: tuple(v) for m, v in by_model.items()}),
        zones=MappingProxyType(zone_specs),
    )
    return snapshot, max_power


def build_demand(
    snapshot: FleetSnapshot, perf: PerformanceModel, rng: random.Random
) -> dict[TrafficClass, ClassDemand]:
    classes = sorted(
        (
            TrafficClass(m, i, o, p)
            for m, i, o, p in itertools.product(MODELS, INPUT_BUCKETS, OUTPUT_BUCKETS, list(Priority))
        ),
        key=lambda c: c.name,
    )[:200]
    shapes = {
        c: ClassDemand(1.0, 0.6 * c.input_bucket_tokens, 0.6 * c.output_bucket_tokens, SLOS[c.priority])
        for c in classes
    }
    weights = {c: rng.lognormvariate(0.0, 1.0) for c in classes}
    demand: dict[TrafficClass, ClassDemand] = {}
    for model in MODELS:
        eps = [st.spec for st in snapshot.by_model.get(model, ()) if st.eligible]
        hw = {(s.instance_type, s.tp_degree, s.precision): s for s in eps}
        count = {k: sum(1 for s in eps if (s.instance_type, s.tp_degree, s.precision) == k) for k in hw}
        mine = [c for c in classes if c.model == model]
        # Replicas' worth of load one unit of the weighted mix puts on the model's average endpoint.
        load_per_unit = 0.0
        servable = set()
        for c in mine:
            caps = []
            for k, s in hw.items():
                p = perf.profile(s.model, s.instance_type, s.tp_degree, s.precision)
                cap = class_capacity(p, c, shapes[c], max_context_tokens=s.max_context_tokens).requests_per_s
                caps.extend([cap] * count[k])
            mean_cap = statistics.fmean(caps) if caps else 0.0
            if mean_cap > 0:
                load_per_unit += weights[c] / mean_cap
                servable.add(c)
        scale = 0.6 * len(eps) / load_per_unit if load_per_unit > 0 else 0.0
        for c in mine:
            d = shapes[c]
            # Classes no configuration can serve within their SLO still arrive, at a trickle.
            rate = max(1e-3, weights[c] * scale) if c in servable else 0.01
            demand[c] = ClassDemand(rate, d.mean_input_tokens, d.mean_output_tokens, d.slo)
    return demand


def perturbed(demand: dict[TrafficClass, ClassDemand], rng: random.Random) -> dict[TrafficClass, ClassDemand]:
    return {
        c: ClassDemand(d.rate_per_s * rng.uniform(0.9, 1.1), d.mean_input_tokens, d.mean_output_tokens, d.slo)
        for c, d in demand.items()
    }


def run_size(
    endpoints: int,
    rounds: int,
    catalog: Catalog,
    perf: PerformanceModel,
    config: PlannerConfig,
    pool_instances: int | None,
    price_jitter: float = 0.0,
) -> None:
    rng = random.Random(SEED + endpoints)
    snapshot, _ = build_fleet(endpoints, catalog, perf, rng, pool_instances, price_jitter)
    demand = build_demand(snapshot, perf, rng)

    def profiles(spec: EndpointSpec) -> ServingProfile:
        return perf.profile(
            spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
        )

    planner = Planner()
    limit_s = time_limit_s(len(snapshot.endpoints))
    previous: Plan = EMPTY_PLAN
    reports: list[PlanReport] = []
    for r in range(rounds + 1):
        d = demand if r == 0 else perturbed(demand, rng)
        rep = planner.solve_with_report(snapshot, d, profiles, previous, float(r * 30), limit_s, config)
        reports.append(rep)
        if rep.plan.status in ("optimal", "feasible"):
            previous = rep.plan
    times = [rep.plan.solve_seconds for rep in reports]
    solved = [rep for rep in reports if rep.objective_usd_per_hour is not None]
    gaps = [rep.gap_to_lp_ratio for rep in solved if rep.gap_to_lp_ratio is not None]
    cost_gaps = [rep.cost_gap_to_lp_ratio for rep in solved if rep.cost_gap_to_lp_ratio is not None]
    mip_gaps = [
        (rep.objective_usd_per_hour - rep.mip_bound_usd_per_hour) / rep.plan.predicted_cost_usd_per_hour
        for rep in solved
        if rep.objective_usd_per_hour is not None
        and rep.mip_bound_usd_per_hour is not None
        and rep.plan.predicted_cost_usd_per_hour > 0
    ]
    counts = collections.Counter(rep.plan.status for rep in reports)
    statuses = [f"{k}:{v}" for k, v in sorted(counts.items())]
    last = reports[-1]
    unserved = sum(last.plan.unserved_rate_per_s.values())
    total = sum(d.rate_per_s for d in demand.values())
    layout = "one pool per zone and configuration" if pool_instances is None else "one pool per instance"
    if price_jitter:
        layout += f", each pool priced within {price_jitter:.0%} of the catalog"
    print(
        f"endpoints={len(snapshot.endpoints):>6} pools={len({s.spec.pool for s in snapshot.endpoints}):>4} "
        f"({layout}) zones={len(snapshot.zones)} classes={len(demand)}"
    )
    print(
        f"    model: groups={last.groups} tiers={last.tiers} flow_vars={last.flow_variables}  "
        f"solves={len(reports)} (1 cold + {rounds} re-plans) time_limit_s={limit_s:g}"
    )
    print(
        f"    status {' '.join(statuses)} (optimal: proven within mip_gap_ratio; feasible: time limit hit, "
        "incumbent proven within accept_gap_ratio)"
    )
    print(
        f"    solve_s median={statistics.median(times):.3f} max={max(times):.3f} "
        f"all=[{' '.join(f'{t:.2f}' for t in times)}]  "
        f"(last: capacity {last.capacity_seconds:.3f} build {last.build_seconds:.3f} "
        f"lp {last.lp_seconds:.3f} hint {last.hint_seconds:.3f} mip {last.mip_seconds:.3f})"
    )
    if gaps:
        print(
            f"    gap_to_lp median={statistics.median(gaps):.3%} max={max(gaps):.3%}  "
            f"(per fleet cost: median={statistics.median(cost_gaps):.3%} max={max(cost_gaps):.3%}; "
            f"to SCIP's proven bound: max={max(mip_gaps):.3%})"
        )
    print(
        f"    last plan: active={len(last.plan.active_endpoint_ids)} "
        f"cost_usd_per_hour={last.plan.predicted_cost_usd_per_hour:,.2f} demand_req_per_s={total:,.1f} "
        f"unserved_req_per_s={unserved:,.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=4, help="re-plans after the first solve, per fleet")
    ap.add_argument("--sizes", default="100,1000,10000", help="fleet sizes in endpoints, comma-separated")
    ap.add_argument(
        "--fragmented",
        type=int,
        default=10000,
        help="also solve a fleet of this size split into one-instance pools, with the catalog's prices and "
        "with a price per pool (0: skip)",
    )
    args = ap.parse_args()
    t = time.perf_counter()
    catalog = load_catalog()
    perf = default_performance_model(catalog, load_models())
    config = PlannerConfig()
    print(
        f"setup: catalog + fitted performance model in {time.perf_counter() - t:.2f} s; "
        f"planner defaults: mip_gap_ratio={config.mip_gap_ratio}, accept_gap_ratio={config.accept_gap_ratio}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(size, args.rounds, catalog, perf, config, None)
    if args.fragmented:
        run_size(args.fragmented, args.rounds, catalog, perf, config, 1)
        run_size(args.fragmented, args.rounds, catalog, perf, config, 1, price_jitter=0.05)
    print("targets: solve_s <= 1 at 1,000 endpoints, <= 10 at 10,000; gap_to_lp <= 1%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
