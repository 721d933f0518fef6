"""The global planner and the SLO-feasible capacity it plans with.

The planner is checked against an independent exhaustive search (every on/off subset, the continuous rest
solved as an LP with GLOP) on small seeded random instances, and every published plan is checked against
every constraint by recomputing loads, power and demand from the plan's own numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import pytest
from ortools.linear_solver import pywraplp  # type: ignore[attr-defined]

from fleet.catalog import load_catalog
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
from policies.capacity import class_capacity, power_line
from policies.demand import DEFAULT_BUCKET_BOUNDS, ClassDemand, DemandEstimator, classify
from policies.planner import Planner, PlannerConfig, ProfileSource
from policies.types import EMPTY_PLAN, Plan, TrafficClass

T0 = 1_763_000_000.0
EXACT = PlannerConfig(mip_gap_ratio=0.0)
SLOS = {
    Priority.CRITICAL: LatencySlo(ttft_ms=1000.0, tpot_ms=60.0),
    Priority.STANDARD: LatencySlo(ttft_ms=2000.0, tpot_ms=100.0),
    Priority.SHEDDABLE: LatencySlo(ttft_ms=10000.0, tpot_ms=200.0),
}


# ------------------------------------------------------------------------------------------------ fakes


@dataclass(frozen=True)
class LinearProfile:
    """A ServingProfile in closed form: linear prefill, decode step linear in batch and context."""

    prefill_ms_per_token: float = 0.05
    prefill_overhead_ms: float = 20.0
    step_base_ms: float = 8.0
    step_ms_per_seq: float = 0.2
    step_ms_per_seq_per_ktok: float = 0.05
    kv_capacity_tokens: int = 400_000
    idle_power_w: float = 200.0
    max_power_w: float = 700.0
    fits: bool = True
    source: str = "closed-form test profile"

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        return self.prefill_overhead_ms + (input_tokens + queued_prefill_tokens) * self.prefill_ms_per_token

    def _per_seq_ms(self, context_tokens: int) -> float:
        return self.step_ms_per_seq + self.step_ms_per_seq_per_ktok * context_tokens / 1000.0

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        return self.step_base_ms + batch * self._per_seq_ms(context_tokens)

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        b = math.floor((tpot_ms - self.step_base_ms) / self._per_seq_ms(context_tokens))
        return max(0, min(b, self.kv_capacity_tokens // max(1, context_tokens)))

    def power_w(self, utilization_ratio: float) -> float:
        return self.idle_power_w + (self.max_power_w - self.idle_power_w) * utilization_ratio


def _check_protocol(p: ServingProfile) -> ServingProfile:
    return p


_check_protocol(LinearProfile())


@dataclass(frozen=True)
class PoolDef:
    name: str
    zone: str
    model: str
    hardware: str  # instance type name, keys the profile
    size: int
    price_usd_per_hour: float
    reserved: bool = False
    max_context_tokens: int = 131072
    tp_degree: int = 1
    precision: Precision = Precision.FP8
    accelerator_kind: str = "h100"


def make_snapshot(
    pools: Sequence[PoolDef],
    zones: Mapping[str, float],
    statuses: Mapping[str, EndpointStatus] | None = None,
    ineligible_power_w: Mapping[str, float] | None = None,
) -> FleetSnapshot:
    statuses = statuses or {}
    states = []
    for p in pools:
        for i in range(p.size):
            eid = f"{p.name}-{i:03d}"
            spec = EndpointSpec(
                endpoint_id=eid,
                address=f"{eid}.serving.svc:8000",
                pool=p.name,
                zone=p.zone,
                region="us-east-1",
                instance_type=p.hardware,
                accelerator_kind=p.accelerator_kind,
                model=p.model,
                tp_degree=p.tp_degree,
                precision=p.precision,
                chips=p.tp_degree,
                price_usd_per_hour=p.price_usd_per_hour,
                max_context_tokens=p.max_context_tokens,
                reserved=p.reserved,
            )
            states.append(
                EndpointState(spec=spec, load=EndpointLoad(), status=statuses.get(eid, EndpointStatus.READY))
            )
    states.sort(key=lambda s: s.endpoint_id)
    by_model: dict[str, list[EndpointState]] = {}
    for s in states:
        by_model.setdefault(s.spec.model, []).append(s)
    return FleetSnapshot(
        version=1,
        taken_at_s=T0,
        endpoints=tuple(states),
        by_id=MappingProxyType({s.endpoint_id: s for s in states}),
        by_model=MappingProxyType({m: tuple(v) for m, v in by_model.items()}),
        zones=MappingProxyType(
            {z: ZoneSpec(name=z, region="us-east-1", power_cap_w=c) for z, c in zones.items()}
        ),
        zone_ineligible_power_w=MappingProxyType(dict(ineligible_power_w or {})),
    )


def profile_source(profiles: Mapping[str, ServingProfile] | ProfileSource) -> ProfileSource:
    """Profiles keyed by instance type (the fakes), or a profile source as it is (the real model)."""
    if callable(profiles):
        return profiles

    def source(spec: EndpointSpec) -> ServingProfile:
        return profiles[spec.instance_type]

    return source


def demand_of(rates: Mapping[TrafficClass, float]) -> dict[TrafficClass, ClassDemand]:
    return {
        c: ClassDemand(
            rate_per_s=r,
            mean_input_tokens=0.6 * c.input_bucket_tokens,
            mean_output_tokens=0.6 * c.output_bucket_tokens,
            slo=SLOS[c.priority],
        )
        for c, r in rates.items()
    }


def plan_with_active(ids: Sequence[str], generation: int = 7) -> Plan:
    return dataclasses.replace(
        EMPTY_PLAN, generation=generation, status="optimal", active_endpoint_ids=frozenset(ids)
    )


# ------------------------------------------------------------------------------ independent evaluation


@dataclass(frozen=True)
class Instance:
    snapshot: FleetSnapshot
    demand: Mapping[TrafficClass, ClassDemand]
    profiles: Mapping[str, ServingProfile] | ProfileSource
    previous: Plan
    config: PlannerConfig

    def profile(self, spec: EndpointSpec) -> ServingProfile:
        return profile_source(self.profiles)(spec)

    def cap(self, spec: EndpointSpec, cls: TrafficClass) -> float:
        if spec.model != cls.model:
            return 0.0
        return class_capacity(
            self.profile(spec),
            cls,
            self.demand[cls],
            max_context_tokens=spec.max_context_tokens,
            headroom_ratio=self.config.headroom_ratio,
        ).requests_per_s

    def penalty(self, cls: TrafficClass) -> float:
        return self.config.unserved_usd_per_request(cls.priority)


def check_plan(inst: Instance, plan: Plan) -> float:
    """Assert every constraint on the published plan; return its objective, all from the plan's numbers."""
    snap, cfg = inst.snapshot, inst.config
    classes = {c.name: c for c in inst.demand}
    tol = 1e-7
    # (ineligible) only eligible endpoints are active; (reserved) eligible reserved endpoints are active.
    for eid in plan.active_endpoint_ids:
        assert snap.by_id[eid].eligible, f"{eid} is {snap.by_id[eid].status} but active"
    for st in snap.endpoints:
        if st.eligible and st.spec.reserved:
            assert st.endpoint_id in plan.active_endpoint_ids, f"reserved {st.endpoint_id} is off"
    # Shares only on active endpoints, only for classes the endpoint can serve.
    served = dict.fromkeys(classes, 0.0)
    load: dict[str, float] = {}
    for eid, shares in plan.share.items():
        assert eid in plan.active_endpoint_ids, f"{eid} has a share but is not active"
        spec = snap.by_id[eid].spec
        for name, s in shares.items():
            c = classes[name]
            assert s >= 0.0
            cap = inst.cap(spec, c)
            assert cap > 0.0, f"{eid} takes {name} it cannot serve within its SLO"
            rate = inst.demand[c].rate_per_s
            served[name] += s * rate
            load[eid] = load.get(eid, 0.0) + s * rate / cap
    # (capacity) every endpoint's load fits its SLO-feasible capacity.
    for eid, v in load.items():
        assert v <= 1.0 + tol, f"{eid} is loaded {v:.9f} > 1"
    # (demand) served + unserved = rate for every class.
    for name, c in classes.items():
        rate = inst.demand[c].rate_per_s
        unserved = plan.unserved_rate_per_s[name]
        assert unserved >= -tol
        assert served[name] + unserved == pytest.approx(rate, rel=1e-7, abs=1e-9), name
    # (power) recomputed per zone, with what its ineligible endpoints draw, under each cap, and equal to
    # the published figure.
    zone_power = {z: snap.zone_ineligible_power_w.get(z, 0.0) for z in snap.zones}
    price = 0.0
    for eid in plan.active_endpoint_ids:
        spec = snap.by_id[eid].spec
        pl = power_line(inst.profile(spec))
        zone_power[spec.zone] += pl.active_w + pl.load_w * load.get(eid, 0.0)
        price += spec.price_usd_per_hour
    for z, w in zone_power.items():
        assert w <= snap.zones[z].power_cap_w * (1 + tol) + tol, f"zone {z}: {w} W over its cap"
        assert plan.predicted_zone_power_w[z] == pytest.approx(w, rel=1e-7, abs=1e-6)
    # desired replicas per pool = active endpoints of the pool.
    pools: dict[str, int] = {}
    for st in snap.endpoints:
        pools.setdefault(st.spec.pool, 0)
        pools[st.spec.pool] += st.endpoint_id in plan.active_endpoint_ids
    assert dict(plan.desired_replicas) == pools
    plan_power_w = sum(zone_power.values()) - sum(snap.zone_ineligible_power_w.values())
    energy = cfg.energy_usd_per_kwh * plan_power_w / 1000.0
    assert plan.predicted_cost_usd_per_hour == pytest.approx(price + energy, rel=1e-9)
    prev = inst.previous.active_endpoint_ids & frozenset(snap.by_id)
    churn = len(plan.active_endpoint_ids ^ prev)
    penalty = 3600.0 * sum(inst.penalty(c) * plan.unserved_rate_per_s[c.name] for c in inst.demand)
    return price + energy + penalty + cfg.churn_penalty_usd_per_hour * churn


def exhaustive_optimum(inst: Instance) -> float:
    """Minimum objective over every on/off subset, each subset's flows solved as an LP (GLOP)."""
    snap, cfg = inst.snapshot, inst.config
    eligible = [st.spec for st in snap.endpoints if st.eligible]
    prev = inst.previous.active_endpoint_ids & frozenset(snap.by_id)
    classes = sorted(inst.demand, key=lambda c: c.name)
    caps = {(s.endpoint_id, c.name): inst.cap(s, c) for s in eligible for c in classes}
    k = cfg.energy_usd_per_kwh / 1000.0
    subsets = []
    free = [s for s in eligible if not s.reserved]
    fixed_on = [s for s in eligible if s.reserved]
    for r in range(len(free) + 1):
        for combo in itertools.combinations(free, r):
            on = fixed_on + list(combo)
            ids = frozenset(s.endpoint_id for s in on)
            fixed = sum(s.price_usd_per_hour + k * power_line(inst.profile(s)).active_w for s in on)
            fixed += cfg.churn_penalty_usd_per_hour * len(ids ^ prev)
            subsets.append((fixed, on))
    subsets.sort(key=lambda t: t[0])
    best = math.inf
    for fixed, on in subsets:
        if fixed >= best:
            break  # the LP part is >= 0
        solver = pywraplp.Solver.CreateSolver("GLOP")
        assert solver is not None
        inf = solver.infinity()
        x = {}
        for s in on:
            for c in classes:
                if caps[s.endpoint_id, c.name] > 0.0:
                    x[s.endpoint_id, c.name] = solver.NumVar(0.0, inf, "")
        u = {c.name: solver.NumVar(0.0, inf, "") for c in classes}
        loads = {}
        for s in on:
            loads[s.endpoint_id] = sum(
                x[s.endpoint_id, c.name] / caps[s.endpoint_id, c.name]
                for c in classes
                if (s.endpoint_id, c.name) in x
            )
            solver.Add(loads[s.endpoint_id] <= 1.0)
        for c in classes:
            solver.Add(
                sum(x[s.endpoint_id, c.name] for s in on if (s.endpoint_id, c.name) in x) + u[c.name]
                == inst.demand[c].rate_per_s
            )
        feasible = True
        for z, zs in snap.zones.items():
            in_zone = [s for s in on if s.zone == z]
            idle = sum(power_line(inst.profile(s)).active_w for s in in_zone)
            if idle > zs.power_cap_w:
                feasible = False
                break
            dyn = [(power_line(inst.profile(s)).load_w, loads[s.endpoint_id]) for s in in_zone]
            if dyn:
                solver.Add(sum(d * ld for d, ld in dyn) <= zs.power_cap_w - idle)
        if not feasible:
            continue
        objective = 3600.0 * sum(inst.penalty(c) * u[c.name] for c in classes)
        if k > 0:
            objective += sum(k * power_line(inst.profile(s)).load_w * loads[s.endpoint_id] for s in on)
        solver.Minimize(objective)
        assert solver.Solve() == pywraplp.Solver.OPTIMAL
        best = min(best, fixed + solver.Objective().Value())
    return best


MODELS = ("model-a", "model-b")


def random_instance(seed: int, max_endpoints: int = 8, max_classes: int = 4) -> Instance:
    rng = random.Random(seed)
    hardware = {
        f"hw{i}": LinearProfile(
            prefill_ms_per_token=rng.uniform(0.02, 0.3),
            prefill_overhead_ms=rng.uniform(5.0, 60.0),
            step_base_ms=rng.uniform(4.0, 30.0),
            step_ms_per_seq=rng.uniform(0.1, 2.0),
            step_ms_per_seq_per_ktok=rng.uniform(0.01, 0.3),
            kv_capacity_tokens=rng.choice([50_000, 200_000, 1_000_000]),
            idle_power_w=rng.uniform(50.0, 400.0),
            max_power_w=rng.uniform(450.0, 1200.0),
        )
        for i in range(3)
    }
    zones = {f"z{i}": rng.uniform(500.0, 6000.0) for i in range(rng.randint(1, 2))}
    n_endpoints = rng.randint(1, max_endpoints)
    pools: list[PoolDef] = []
    left = n_endpoints
    while left > 0:
        size = rng.randint(1, min(3, left))
        left -= size
        if pools and rng.random() < 0.3:
            # A twin of the last pool under another name: ties that only churn and energy break.
            pools.append(dataclasses.replace(pools[-1], name=f"p{len(pools)}", size=size))
            continue
        pools.append(
            PoolDef(
                name=f"p{len(pools)}",
                zone=rng.choice(sorted(zones)),
                model=rng.choice(MODELS),
                hardware=rng.choice(sorted(hardware)),
                size=size,
                price_usd_per_hour=round(rng.uniform(0.5, 30.0), 3),
                reserved=rng.random() < 0.15,
                max_context_tokens=rng.choice([8192, 131072]),
            )
        )
    # Caps random, but never below the power of the zone's reserved endpoints (always active: that is
    # infeasible, tested on its own below).
    for z in zones:
        reserved_idle = sum(
            p.size * hardware[p.hardware].max_power_w for p in pools if p.zone == z and p.reserved
        )
        zones[z] = max(zones[z], 1.05 * reserved_idle)
    all_ids = [f"{p.name}-{i:03d}" for p in pools for i in range(p.size)]
    statuses = {
        eid: rng.choice([EndpointStatus.STALE, EndpointStatus.UNHEALTHY, EndpointStatus.DRAINED])
        for eid in all_ids
        if rng.random() < 0.15
    }
    classes = {
        TrafficClass(
            model=rng.choice(MODELS),
            input_bucket_tokens=rng.choice([256, 1024, 4096, 16384]),
            output_bucket_tokens=rng.choice([128, 512, 2048]),
            priority=rng.choice(list(Priority)),
        )
        for _ in range(rng.randint(1, max_classes))
    }
    previous = plan_with_active([eid for eid in all_ids if rng.random() < 0.4])
    config = PlannerConfig(
        mip_gap_ratio=0.0,
        churn_penalty_usd_per_hour=rng.choice([0.0, 0.05, 2.0, 8.0]),
        energy_usd_per_kwh=rng.choice([0.0, 0.12, 4.0]),
        sheddable_unserved_usd_per_request=rng.choice([0.0001, 0.001, 0.01]),
        standard_unserved_usd_per_request=rng.choice([0.01, 10.0]),
    )
    snapshot = make_snapshot(pools, zones, statuses)
    # Demand sized against the fleet: each class asks for a random share (up to 1.3x) of what the eligible
    # endpoints could serve of it were they given to it alone, split over the classes of its model.
    probe = Instance(snapshot, demand_of(dict.fromkeys(classes, 1.0)), hardware, previous, config)
    per_model = {m: sum(c.model == m for c in classes) for m in MODELS}
    rates = {}
    for c in sorted(classes, key=lambda c: c.name):
        total = sum(probe.cap(st.spec, c) for st in snapshot.endpoints if st.eligible)
        rates[c] = rng.uniform(0.05, 1.3) * total / per_model[c.model] if total > 0 else rng.uniform(0.1, 3.0)
    return Instance(snapshot, demand_of(rates), hardware, previous, config)


def solve(inst: Instance, time_limit_s: float = 10.0, now_s: float = T0) -> Plan:
    return Planner().solve(
        inst.snapshot,
        inst.demand,
        profile_source(inst.profiles),
        inst.previous,
        now_s,
        time_limit_s,
        inst.config,
    )


# --------------------------------------------------------------------------------------------- planner


@pytest.mark.parametrize("seed", range(30))
def test_objective_equals_exhaustive_optimum_and_every_constraint_holds(seed: int) -> None:
    inst = random_instance(seed)
    report = Planner().solve_with_report(
        inst.snapshot, inst.demand, profile_source(inst.profiles), inst.previous, T0, 10.0, inst.config
    )
    plan = report.plan
    assert plan.status == "optimal", report.message
    assert plan.generation == inst.previous.generation + 1
    assert plan.created_at_s == T0
    objective = check_plan(inst, plan)
    best = exhaustive_optimum(inst)
    # Classes no eligible endpoint can serve add the same constant to both; compare what is left.
    unavoidable = 3600.0 * sum(
        inst.penalty(c) * d.rate_per_s
        for c, d in inst.demand.items()
        if not any(inst.cap(st.spec, c) > 0 for st in inst.snapshot.endpoints if st.eligible)
    )
    assert objective - unavoidable == pytest.approx(best - unavoidable, rel=1e-6, abs=1e-6)
    # The report's objective is the same recomputation; the LP bound is a lower bound on it.
    assert report.objective_usd_per_hour == pytest.approx(objective, rel=1e-9, abs=1e-9)
    assert plan.lp_bound_usd_per_hour is not None
    assert plan.lp_bound_usd_per_hour <= objective * (1 + 1e-9) + 1e-9


@pytest.mark.parametrize("seed", range(100, 110))
def test_every_constraint_holds_on_larger_instances(seed: int) -> None:
    inst = random_instance(seed, max_endpoints=60, max_classes=12)
    plan = solve(inst)
    assert plan.status in ("optimal", "feasible")
    check_plan(inst, plan)


def _priority_instance(rate_per_class: float) -> Instance:
    """Three classes of the same shape, one per priority, on one pool that cannot grow."""
    profile = LinearProfile()
    pools = [PoolDef(name="pool", zone="z", model="m", hardware="hw", size=2, price_usd_per_hour=5.0)]
    rates = {
        TrafficClass("m", 1024, 512, p): rate_per_class
        for p in (Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE)
    }
    return Instance(
        snapshot=make_snapshot(pools, {"z": 1e6}),
        demand=demand_of(rates),
        profiles={"hw": profile},
        previous=EMPTY_PLAN,
        config=EXACT,
    )


def test_infeasible_demand_sheds_sheddable_first_then_standard() -> None:
    by_priority = {}
    for p in Priority:
        c = TrafficClass("m", 1024, 512, p)
        by_priority[p] = c
    inst0 = _priority_instance(1.0)
    caps = {p: inst0.cap(inst0.snapshot.endpoints[0].spec, c) for p, c in by_priority.items()}
    total = 2 * min(caps.values())  # two replicas
    assert caps[Priority.CRITICAL] < caps[Priority.STANDARD] < caps[Priority.SHEDDABLE]

    # Demand a bit over capacity: only sheddable traffic is left unserved.
    inst = _priority_instance(0.45 * total)
    plan = solve(inst)
    check_plan(inst, plan)
    un = {p: plan.unserved_rate_per_s[c.name] for p, c in by_priority.items()}
    assert un[Priority.SHEDDABLE] > 0.01
    assert un[Priority.STANDARD] == pytest.approx(0.0, abs=1e-9)
    assert un[Priority.CRITICAL] == pytest.approx(0.0, abs=1e-9)

    # Far over capacity: sheddable entirely unserved, standard partly, critical fully served.
    inst = _priority_instance(0.8 * total)
    plan = solve(inst)
    check_plan(inst, plan)
    un = {p: plan.unserved_rate_per_s[c.name] for p, c in by_priority.items()}
    rate = 0.8 * total
    assert un[Priority.SHEDDABLE] == pytest.approx(rate, rel=1e-9)
    assert 0.01 < un[Priority.STANDARD] < rate
    assert un[Priority.CRITICAL] == pytest.approx(0.0, abs=1e-9)


def test_resolve_with_unchanged_inputs_returns_the_same_active_set() -> None:
    for seed in range(200, 210):
        inst = random_instance(seed, max_endpoints=40, max_classes=8)
        inst = dataclasses.replace(
            inst, config=dataclasses.replace(inst.config, churn_penalty_usd_per_hour=0.05)
        )
        first = solve(inst)
        again = solve(dataclasses.replace(inst, previous=first), now_s=T0 + 30.0)
        assert again.status == "optimal"
        assert again.generation == first.generation + 1
        assert again.active_endpoint_ids == first.active_endpoint_ids


def test_previously_active_endpoints_are_kept_when_the_group_shrinks() -> None:
    profile = LinearProfile()
    pools = [PoolDef(name="pool", zone="z", model="m", hardware="hw", size=6, price_usd_per_hour=5.0)]
    snap = make_snapshot(pools, {"z": 1e6})
    cls = TrafficClass("m", 1024, 512, Priority.STANDARD)
    probe = Instance(snap, demand_of({cls: 1.0}), {"hw": profile}, EMPTY_PLAN, EXACT)
    cap = probe.cap(snap.endpoints[0].spec, cls)
    # Two replicas' worth of demand; the previous plan had four on, two of them the last by id.
    previous = plan_with_active(["pool-001", "pool-003", "pool-004", "pool-005"])
    inst = Instance(snap, demand_of({cls: 1.9 * cap}), {"hw": profile}, previous, EXACT)
    plan = solve(inst)
    check_plan(inst, plan)
    assert plan.active_endpoint_ids == {"pool-001", "pool-003"}
    assert plan.desired_replicas == {"pool": 2}
    # Even split over the active members.
    shares = [plan.share[e][cls.name] for e in sorted(plan.active_endpoint_ids)]
    assert shares[0] == pytest.approx(shares[1]) == pytest.approx(0.5)


def test_ineligible_endpoints_are_off_even_when_reserved_and_reserved_ones_stay_on() -> None:
    profile = LinearProfile()
    pools = [
        PoolDef(
            name="res", zone="z", model="m", hardware="hw", size=3, price_usd_per_hour=50.0, reserved=True
        ),
        PoolDef(name="cheap", zone="z", model="m", hardware="hw", size=3, price_usd_per_hour=1.0),
    ]
    statuses = {"res-000": EndpointStatus.DRAINED, "cheap-000": EndpointStatus.STALE}
    snap = make_snapshot(pools, {"z": 1e6}, statuses)
    cls = TrafficClass("m", 256, 128, Priority.STANDARD)
    inst = Instance(snap, demand_of({cls: 0.001}), {"hw": profile}, plan_with_active(["res-000"]), EXACT)
    plan = solve(inst)
    check_plan(inst, plan)
    # No demand to speak of: exactly the eligible reserved endpoints are on.
    assert plan.active_endpoint_ids == {"res-001", "res-002"}


def test_power_cap_moves_load_to_a_cheaper_watt_zone_and_limits_active_replicas() -> None:
    hot = LinearProfile(idle_power_w=300.0, max_power_w=1000.0)
    pools = [
        PoolDef(name="a", zone="za", model="m", hardware="hw", size=8, price_usd_per_hour=2.0),
        PoolDef(name="b", zone="zb", model="m", hardware="hw", size=8, price_usd_per_hour=3.0),
    ]
    snap = make_snapshot(pools, {"za": 2000.0, "zb": 1e6})
    cls = TrafficClass("m", 1024, 512, Priority.CRITICAL)
    probe = Instance(snap, demand_of({cls: 1.0}), {"hw": hot}, EMPTY_PLAN, EXACT)
    cap = probe.cap(snap.endpoints[0].spec, cls)
    inst = Instance(snap, demand_of({cls: 6 * cap}), {"hw": hot}, EMPTY_PLAN, EXACT)
    plan = solve(inst)
    check_plan(inst, plan)
    # Zone za fits two fully loaded replicas (2 x 1000 W); the rest goes to the dearer zone.
    assert plan.predicted_zone_power_w["za"] <= 2000.0 + 1e-6
    assert plan.desired_replicas["a"] <= 6
    assert plan.unserved_rate_per_s[cls.name] == pytest.approx(0.0, abs=1e-9)
    assert plan.desired_replicas["b"] >= 4


def test_power_drawn_by_endpoints_that_may_not_take_work_is_taken_off_the_zone_cap() -> None:
    hot = LinearProfile(idle_power_w=300.0, max_power_w=1000.0)
    pools = [
        PoolDef(name="a", zone="za", model="m", hardware="hw", size=8, price_usd_per_hour=2.0),
        PoolDef(name="b", zone="zb", model="m", hardware="hw", size=8, price_usd_per_hour=3.0),
    ]
    cls = TrafficClass("m", 1024, 512, Priority.CRITICAL)
    drained = {"a-006": EndpointStatus.DRAINED, "a-007": EndpointStatus.UNHEALTHY}
    free = make_snapshot(pools, {"za": 4000.0, "zb": 1e6}, drained)
    probe = Instance(free, demand_of({cls: 1.0}), {"hw": hot}, EMPTY_PLAN, EXACT)
    demand = demand_of({cls: 6 * probe.cap(free.endpoints[0].spec, cls)})
    plans = {}
    for held_w in (0.0, 2000.0):
        snap = make_snapshot(pools, {"za": 4000.0, "zb": 1e6}, drained, {"za": held_w})
        inst = Instance(snap, demand, {"hw": hot}, EMPTY_PLAN, EXACT)
        plans[held_w] = plan = solve(inst)
        check_plan(inst, plan)  # zone power includes the held draw and stays under the cap
        assert plan.predicted_zone_power_w["za"] <= 4000.0 + 1e-6
        assert plan.unserved_rate_per_s[cls.name] == pytest.approx(0.0, abs=1e-9)
    # 4 kW fit four fully loaded replicas in the cheap zone; with 2 kW still drawn by the drained and
    # unhealthy endpoints only two, and the rest moves to the dearer zone.
    assert plans[0.0].desired_replicas["a"] == 4 and plans[0.0].desired_replicas["b"] == 2
    assert plans[2000.0].desired_replicas["a"] == 2 and plans[2000.0].desired_replicas["b"] == 4
    assert plans[2000.0].predicted_zone_power_w["za"] == pytest.approx(4000.0, rel=1e-6)


def test_reserved_idle_power_over_a_zone_budget_names_the_draw_held_by_ineligible_endpoints() -> None:
    pools = [
        PoolDef(name="r", zone="z", model="m", hardware="hw", size=2, price_usd_per_hour=1.0, reserved=True)
    ]
    snap = make_snapshot(pools, {"z": 500.0}, ineligible_power_w={"z": 300.0})  # 2 x 200 W > 500 - 300
    cls = TrafficClass("m", 256, 128, Priority.STANDARD)
    report = Planner().solve_with_report(
        snap, demand_of({cls: 1.0}), profile_source({"hw": LinearProfile()}), EMPTY_PLAN, T0, 5.0, EXACT
    )
    assert report.plan.status == "failed_kept_previous"
    assert "power budget 200 W (its cap less 300 W drawn by endpoints that may not take work)" in (
        report.message
    )


def test_reserved_idle_power_over_a_zone_cap_fails_and_keeps_the_previous_plan() -> None:
    pools = [
        PoolDef(name="r", zone="z", model="m", hardware="hw", size=4, price_usd_per_hour=1.0, reserved=True)
    ]
    snap = make_snapshot(pools, {"z": 500.0})  # 4 x 200 W idle > 500 W
    cls = TrafficClass("m", 256, 128, Priority.STANDARD)
    previous = plan_with_active(["r-000"], generation=3)
    report = Planner().solve_with_report(
        snap, demand_of({cls: 1.0}), profile_source({"hw": LinearProfile()}), previous, T0, 5.0, EXACT
    )
    assert report.plan.status == "failed_kept_previous"
    assert report.plan.generation == 3
    assert report.plan.active_endpoint_ids == previous.active_endpoint_ids
    assert "zone z" in report.message and "(active) exceeds" in report.message


def _big_instance(endpoints: int, classes: int) -> Instance:
    rng = random.Random(5)
    hardware = {
        f"hw{i}": LinearProfile(step_ms_per_seq=0.1 + 0.1 * i, idle_power_w=100.0 + 20 * i) for i in range(8)
    }
    models = [f"model-{i}" for i in range(10)]
    pools = []
    per_pool = 20
    for i in range(endpoints // per_pool):
        pools.append(
            PoolDef(
                name=f"pool{i:04d}",
                zone=f"z{i % 4}",
                model=models[i % len(models)],
                hardware=f"hw{i % 8}",
                size=per_pool,
                price_usd_per_hour=1.0 + (i % 13),
            )
        )
    rates = {}
    for j in range(classes):
        c = TrafficClass(
            model=models[j % len(models)],
            input_bucket_tokens=(256, 1024, 4096, 16384)[(j // 10) % 4],
            output_bucket_tokens=(128, 512, 2048)[(j // 40) % 3],
            priority=list(Priority)[(j // 120) % 3],
        )
        rates[c] = rng.uniform(0.5, 20.0)
    return Instance(
        snapshot=make_snapshot(pools, {f"z{i}": 4e5 for i in range(4)}),
        demand=demand_of(rates),
        profiles=hardware,
        previous=plan_with_active(["pool0000-000"], generation=41),
        config=PlannerConfig(),
    )


def test_tiny_time_limit_on_a_big_instance_keeps_the_previous_plan() -> None:
    inst = _big_instance(2000, 200)
    previous = dataclasses.replace(inst.previous, predicted_cost_usd_per_hour=123.0, created_at_s=T0 - 60.0)
    inst = dataclasses.replace(inst, previous=previous)
    plan = solve(inst, time_limit_s=1e-4)
    assert plan.status == "timeout_kept_previous"
    assert dataclasses.replace(plan, status=previous.status, solve_seconds=previous.solve_seconds) == previous
    # With time to spare the same instance solves.
    full = solve(inst, time_limit_s=30.0)
    assert full.status in ("optimal", "feasible")
    assert full.generation == 42
    check_plan(inst, full)


def test_classes_no_endpoint_can_serve_are_reported_unserved() -> None:
    pools = [
        PoolDef(
            name="p",
            zone="z",
            model="m",
            hardware="hw",
            size=2,
            price_usd_per_hour=1.0,
            max_context_tokens=4096,
        )
    ]
    too_long = TrafficClass("m", 16384, 512, Priority.CRITICAL)  # does not fit the 4096-token context
    other_model = TrafficClass("n", 256, 128, Priority.STANDARD)
    inst = Instance(
        make_snapshot(pools, {"z": 1e6}),
        demand_of({too_long: 2.0, other_model: 3.0}),
        {"hw": LinearProfile()},
        EMPTY_PLAN,
        EXACT,
    )
    plan = solve(inst)
    check_plan(inst, plan)
    assert plan.unserved_rate_per_s == {too_long.name: 2.0, other_model.name: 3.0}
    assert plan.active_endpoint_ids == frozenset()


# -------------------------------------------------------------------------------------------- capacity


def _demand(i: int, o: int, slo: LatencySlo) -> tuple[TrafficClass, ClassDemand]:
    c = TrafficClass("m", i, o, Priority.STANDARD)
    return c, ClassDemand(rate_per_s=1.0, mean_input_tokens=0.6 * i, mean_output_tokens=0.6 * o, slo=slo)


@pytest.mark.parametrize("shape", [(256, 128), (1024, 512), (4096, 512), (16384, 2048)])
def test_capacity_operating_point_meets_both_slos(shape: tuple[int, int]) -> None:
    p = LinearProfile()
    slo = LatencySlo(ttft_ms=2000.0, tpot_ms=100.0)
    c, d = _demand(*shape, slo)
    cap = class_capacity(p, c, d, max_context_tokens=131072, headroom_ratio=1.0)
    assert cap.requests_per_s > 0.0
    lam = cap.requests_per_s
    prefill_s = p.ttft_ms(round(d.mean_input_tokens)) / 1000.0
    ctx = round(d.mean_input_tokens + d.mean_output_tokens / 2)
    step_s = p.tpot_ms(cap.batch, ctx) / 1000.0
    rho = lam * prefill_s
    assert rho < 1.0
    # TPOT including prefill stalls meets the target at the operating batch.
    assert step_s / (1.0 - rho) <= slo.tpot_ms / 1000.0 * (1 + 1e-9)
    # Mean TTFT of the longest prompt, behind the decode step in progress and the M/D/1 queue of prompts
    # (each holding it for its prefill and a decode step per chunk), with a decode step beside each of its
    # own chunks (2048-token steps less one token per decoding sequence), meets its target.
    chunk = 2048 - cap.batch
    queue_s = prefill_s + math.ceil(round(d.mean_input_tokens) / chunk) * step_s
    wait = lam * queue_s * queue_s / (2.0 * (1.0 - lam * queue_s))
    own_steps = 1 + math.ceil(c.input_bucket_tokens / chunk)
    longest_s = p.ttft_ms(c.input_bucket_tokens) / 1000.0 + own_steps * step_s
    assert longest_s + wait <= slo.ttft_ms / 1000.0 * (1 + 1e-9)


def test_capacity_falls_with_a_smaller_step_budget_when_ttft_binds() -> None:
    # Long prompts: TTFT binds. A smaller budget per step splits each prompt into more chunks, each with a
    # decode step beside it, so fewer requests/s meet the TTFT target; the budget cannot add capacity.
    p = LinearProfile()
    c, d = _demand(8192, 256, LatencySlo(ttft_ms=2000.0, tpot_ms=100.0))
    wide = class_capacity(p, c, d, max_context_tokens=131072, max_batched_tokens=16384)
    default = class_capacity(p, c, d, max_context_tokens=131072)
    narrow = class_capacity(p, c, d, max_context_tokens=131072, max_batched_tokens=512)
    assert default.binding == "ttft"
    assert narrow.requests_per_s < default.requests_per_s < wide.requests_per_s


def test_capacity_scales_with_headroom_and_shrinks_with_a_tighter_slo() -> None:
    p = LinearProfile()
    c, loose = _demand(1024, 512, LatencySlo(ttft_ms=2000.0, tpot_ms=100.0))
    _, tight = _demand(1024, 512, LatencySlo(ttft_ms=2000.0, tpot_ms=40.0))
    full = class_capacity(p, c, loose, max_context_tokens=131072, headroom_ratio=1.0).requests_per_s
    eighty = class_capacity(p, c, loose, max_context_tokens=131072, headroom_ratio=0.8).requests_per_s
    assert eighty == pytest.approx(0.8 * full)
    assert class_capacity(p, c, tight, max_context_tokens=131072).requests_per_s < eighty


def test_capacity_is_zero_when_the_class_cannot_be_served() -> None:
    p = LinearProfile()
    c, d = _demand(4096, 512, LatencySlo(ttft_ms=2000.0, tpot_ms=100.0))
    assert class_capacity(p, c, d, max_context_tokens=4096).binding == "context"
    assert class_capacity(p, c, d, max_context_tokens=4096).requests_per_s == 0.0
    slow_prefill = LinearProfile(prefill_ms_per_token=1.0)  # 4096 tokens take > 4 s
    assert class_capacity(slow_prefill, c, d, max_context_tokens=131072).binding == "ttft_idle"
    _, d_fast = _demand(4096, 512, LatencySlo(ttft_ms=2000.0, tpot_ms=5.0))  # below the 8 ms step
    assert class_capacity(p, c, d_fast, max_context_tokens=131072).binding == "tpot_idle"
    assert (
        class_capacity(dataclasses.replace(p, fits=False), c, d, max_context_tokens=131072).binding
        == "no_fit"
    )


def test_capacity_is_limited_by_kv_memory() -> None:
    small_kv = LinearProfile(kv_capacity_tokens=20_000)
    c, d = _demand(4096, 512, LatencySlo(ttft_ms=10000.0, tpot_ms=200.0))
    cap = class_capacity(small_kv, c, d, max_context_tokens=131072)
    ctx = round(d.mean_input_tokens + d.mean_output_tokens / 2)
    assert cap.batch <= 20_000 // ctx
    assert cap.binding == "batch"


def test_power_line_charges_an_active_endpoint_its_full_power() -> None:
    pl = power_line(LinearProfile(idle_power_w=150.0, max_power_w=650.0))
    assert pl.active_w == 650.0 and pl.load_w == 0.0
    assert pl.power_w(0.0) == pl.power_w(0.5) == pl.power_w(2.0) == 650.0


# --------------------------------------------------------------------------- with the real performance model


@pytest.fixture(scope="module")
def perf() -> PerformanceModel:
    return default_performance_model(load_catalog(), load_models())


def _real_source(perf: PerformanceModel) -> ProfileSource:
    def source(spec: EndpointSpec) -> ServingProfile:
        return perf.profile(
            spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
        )

    return source


def _real_pool(
    perf: PerformanceModel,
    name: str,
    zone: str,
    model: str,
    instance_type: str,
    tp: int,
    precision: Precision,
    size: int,
    **kw: object,
) -> PoolDef:
    inst = perf.catalog.instance(instance_type)
    return PoolDef(
        name=name,
        zone=zone,
        model=model,
        hardware=instance_type,
        size=size,
        price_usd_per_hour=inst.price_usd_per_hour / (inst.chips // tp),
        max_context_tokens=perf.models.get(model).max_context_tokens,
        tp_degree=tp,
        precision=precision,
        accelerator_kind=inst.accelerator_kind,
        **kw,  # type: ignore[arg-type]
    )


def _observed_demand(seed: int, models: Sequence[str], rate_per_s: float) -> dict[TrafficClass, ClassDemand]:
    """Demand as the router builds it: requests classified and fed to the estimator."""
    rng = random.Random(seed)
    est = DemandEstimator(half_life_s=30.0)
    t = T0
    while t < T0 + 300.0:
        t += rng.expovariate(rate_per_s)
        inp = min(16000, int(rng.lognormvariate(6.5, 1.0)))
        out = min(2000, int(rng.lognormvariate(5.0, 0.8)))
        prio = rng.choice(list(Priority))
        cls = classify(rng.choice(list(models)), inp, out, prio, DEFAULT_BUCKET_BOUNDS)
        est.observe(cls, t, input_tokens=inp, output_tokens=out)
    return dict(est.demand(t, lambda c: SLOS[c.priority]))


def test_real_model_small_fleet_matches_exhaustive_optimum(perf: PerformanceModel) -> None:
    pools = [
        _real_pool(perf, "h100-8b", "z1", "llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8, 2),
        _real_pool(perf, "inf2-8b", "z1", "llama-3.1-8b", "inf2.48xlarge", 2, Precision.BF16, 3),
        _real_pool(perf, "b200-70b", "z2", "llama-3.1-70b", "p6-b200.48xlarge", 1, Precision.FP8, 2),
        _real_pool(perf, "trn2-70b", "z2", "llama-3.1-70b", "trn2.48xlarge", 4, Precision.BF16, 1),
    ]
    snap = make_snapshot(pools, {"z1": 2500.0, "z2": 3000.0})
    demand = _observed_demand(11, ["llama-3.1-8b", "llama-3.1-70b"], 20.0)
    # Keep the four busiest classes (the exhaustive search is exponential in endpoints, not classes, but
    # the point is a small instance).
    busiest = sorted(demand, key=lambda c: -demand[c].rate_per_s)[:4]
    # Scaled up so that several endpoints are needed and zone z2's power cap binds.
    scaled = {c: dataclasses.replace(demand[c], rate_per_s=20 * demand[c].rate_per_s) for c in busiest}
    inst = Instance(snap, scaled, _real_source(perf), EMPTY_PLAN, EXACT)
    plan = solve(inst)
    assert plan.status == "optimal"
    objective = check_plan(inst, plan)
    assert objective == pytest.approx(exhaustive_optimum(inst), rel=1e-6, abs=1e-6)


def test_real_model_fleet_plans_within_every_constraint(perf: PerformanceModel) -> None:
    pools = [
        _real_pool(perf, "h100-8b", "use1-az1", "llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8, 8),
        _real_pool(perf, "trn1-8b", "use1-az1", "llama-3.1-8b", "trn1.32xlarge", 2, Precision.BF16, 8),
        _real_pool(perf, "inf2-8b", "use1-az1", "llama-3.1-8b", "inf2.48xlarge", 2, Precision.BF16, 6),
        _real_pool(perf, "b200-70b", "use1-az1", "llama-3.1-70b", "p6-b200.48xlarge", 1, Precision.FP8, 8),
        _real_pool(perf, "h200-70b", "use1-az2", "llama-3.1-70b", "p5en.48xlarge", 2, Precision.BF16, 4),
        _real_pool(
            perf,
            "trn2-70b",
            "use1-az2",
            "llama-3.1-70b",
            "trn2.48xlarge",
            4,
            Precision.BF16,
            4,
            reserved=True,
        ),
    ]
    snap = make_snapshot(
        pools, {"use1-az1": 20000.0, "use1-az2": 22000.0}, {"h100-8b-003": EndpointStatus.DRAINED}
    )
    demand = _observed_demand(12, ["llama-3.1-8b", "llama-3.1-70b"], 60.0)
    inst = Instance(snap, demand, _real_source(perf), EMPTY_PLAN, PlannerConfig(energy_usd_per_kwh=0.1))
    report = Planner().solve_with_report(snap, demand, _real_source(perf), EMPTY_PLAN, T0, 10.0, inst.config)
    plan = report.plan
    assert plan.status in ("optimal", "feasible"), report.message
    objective = check_plan(inst, plan)
    assert report.objective_usd_per_hour == pytest.approx(objective, rel=1e-9)
    assert report.lp_bound_usd_per_hour is not None
    assert report.lp_bound_usd_per_hour <= objective + 1e-6
    # The published plan carries what operators watch: its objective, the bound and the gap between them.
    assert plan.objective_usd_per_hour == report.objective_usd_per_hour
    assert plan.lp_bound_usd_per_hour == report.lp_bound_usd_per_hour
    assert plan.gap_to_lp_ratio == report.gap_to_lp_ratio
    assert plan.gap_to_lp_ratio is not None and 0.0 <= plan.gap_to_lp_ratio <= 1.0
    # Some traffic is served, the reserved pool is on, and not every endpoint is needed.
    assert sum(plan.unserved_rate_per_s.values()) < sum(d.rate_per_s for d in demand.values())
    assert plan.desired_replicas["trn2-70b"] == 4
    assert "h100-8b-003" not in plan.active_endpoint_ids
    assert len(plan.active_endpoint_ids) < len(snap.endpoints)


def _mixed_real_fleet(perf: PerformanceModel) -> tuple[FleetSnapshot, dict[TrafficClass, ClassDemand]]:
    """600 endpoints of 8B, 70B and 405B on six instance types in two zones, about 30% loaded.

    SCIP takes about 20 s on this machine to prove a plan for it optimal (gap 0), and finds one within a
    few USD/h of its bound in well under a second.
    """
    configs = [
        ("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8, 16),
        ("llama-3.1-8b", "inf2.48xlarge", 2, Precision.BF16, 12),
        ("llama-3.1-8b", "trn1.32xlarge", 2, Precision.BF16, 16),
        ("llama-3.1-70b", "p5.48xlarge", 2, Precision.FP8, 16),
        ("llama-3.1-70b", "p6-b200.48xlarge", 1, Precision.FP8, 16),
        ("llama-3.1-70b", "trn2.48xlarge", 4, Precision.BF16, 8),
        ("llama-3.1-405b", "p5.48xlarge", 8, Precision.FP8, 6),
        ("llama-3.1-405b", "p6-b200.48xlarge", 4, Precision.FP4, 6),
        ("llama-3.1-405b", "p5en.48xlarge", 8, Precision.FP8, 4),
    ]
    pools = [
        _real_pool(perf, f"{zone}-{model}-{it}", zone, model, it, tp, pr, 3 * size)
        for zone in ("za", "zb")
        for model, it, tp, pr, size in configs
    ]
    snap = make_snapshot(pools, {"za": 150_000.0, "zb": 110_000.0})
    source = _real_source(perf)
    demand = _observed_demand(13, ["llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"], 30.0)
    # Scale each model's classes to 30% of what its endpoints could serve of the mix.
    for model in ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b"):
        mine = [c for c in demand if c.model == model]
        eps = [st.spec for st in snap.by_model[model]]
        load = 0.0
        for c in mine:
            caps = [
                class_capacity(source(s), c, demand[c], max_context_tokens=s.max_context_tokens) for s in eps
            ]
            mean_cap = sum(k.requests_per_s for k in caps) / len(caps)
            if mean_cap > 0:
                load += demand[c].rate_per_s / mean_cap
        scale = 0.3 * len(eps) / load
        for c in mine:
            demand[c] = dataclasses.replace(demand[c], rate_per_s=demand[c].rate_per_s * scale)
    return snap, demand


@pytest.fixture(scope="module")
def mixed_fleet(perf: PerformanceModel) -> tuple[FleetSnapshot, dict[TrafficClass, ClassDemand]]:
    return _mixed_real_fleet(perf)


def test_time_limit_with_a_good_incumbent_publishes_it_as_feasible(
    perf: PerformanceModel, mixed_fleet: tuple[FleetSnapshot, dict[TrafficClass, ClassDemand]]
) -> None:
    snap, demand = mixed_fleet
    config = PlannerConfig(mip_gap_ratio=0.0)  # ask for a proof it cannot finish in a second
    previous = plan_with_active([], generation=9)
    report = Planner().solve_with_report(snap, demand, _real_source(perf), previous, T0, 2.0, config)
    assert report.plan.status == "feasible", report.message
    assert report.solver_status == "FEASIBLE"
    assert report.plan.generation == 10
    assert report.plan.solve_seconds < 3.0
    objective = check_plan(Instance(snap, demand, _real_source(perf), previous, config), report.plan)
    assert report.mip_bound_usd_per_hour is not None and report.lp_bound_usd_per_hour is not None
    assert report.lp_bound_usd_per_hour <= report.mip_bound_usd_per_hour <= objective + 1e-6
    cost = report.plan.predicted_cost_usd_per_hour
    assert objective - report.mip_bound_usd_per_hour <= config.accept_gap_ratio * cost


def test_time_limit_without_an_acceptable_incumbent_keeps_the_previous_plan(
    perf: PerformanceModel, mixed_fleet: tuple[FleetSnapshot, dict[TrafficClass, ClassDemand]]
) -> None:
    snap, demand = mixed_fleet
    strict = PlannerConfig(mip_gap_ratio=0.0, accept_gap_ratio=0.0)  # only a proven optimum is accepted
    previous = plan_with_active(["za-llama-3.1-8b-p5.48xlarge-000"], generation=9)
    report = Planner().solve_with_report(snap, demand, _real_source(perf), previous, T0, 1.0, strict)
    assert report.plan.status == "timeout_kept_previous"
    assert "time limit" in report.message
    assert dataclasses.replace(report.plan, status=previous.status, solve_seconds=0.0) == previous


def test_capacity_is_bounded_by_the_engines_sequence_limit() -> None:
    """An engine that decodes at most M sequences at once serves at most M / (M p + O t(M)) requests/s,
    whatever the TPOT target would allow."""
    p = LinearProfile()
    slo = LatencySlo(ttft_ms=2000.0, tpot_ms=100.0)
    c, d = _demand(1024, 512, slo)
    free = class_capacity(p, c, d, max_context_tokens=131072, headroom_ratio=1.0)
    assert free.batch > 4
    capped = class_capacity(p, c, d, max_context_tokens=131072, max_batch_sequences=4, headroom_ratio=1.0)
    assert capped.binding == "batch" and capped.batch == 4
    prefill_s = p.ttft_ms(round(d.mean_input_tokens)) / 1000.0
    step_s = p.tpot_ms(4, round(d.mean_input_tokens + d.mean_output_tokens / 2)) / 1000.0
    assert capped.requests_per_s == pytest.approx(4 / (4 * prefill_s + d.mean_output_tokens * step_s))
    assert capped.requests_per_s < free.requests_per_s
