"""The global planner: which endpoints should be active and what share of each traffic class each takes.

A mixed-integer program over the fleet, solved with OR-Tools: the model_builder API, SCIP for the MIP and
GLOP for its LP relaxation. Pure computation: the snapshot, the demand, the profiles, the previous plan and
the time are passed in; no clock is read except ``time.perf_counter`` to measure and bound the solve.

Formulation (per endpoint)
==========================
Sets
    E           endpoints in the snapshot; E_on ⊆ E the eligible ones (ready: fresh, healthy, not drained)
    C           traffic classes with a positive demand rate
    Z           zones;  E_z  the endpoints in zone z
    F           feasible pairs (e, c): e ∈ E_on serves the model of c and cap[e, c] > 0
Parameters
    rate_c      demand of class c, requests/s
    cap[e, c]   SLO-feasible capacity of e for c, with utilisation headroom, requests/s (policies.capacity)
    price_e     USD/h of e while active
    act_e       power of e while active, W;  dyn_e  load-proportional power on top, W (policies.capacity:
                act_e = the profile's full power and dyn_e = 0, since an engine with work is busy)
    pcap_z      power budget of zone z, W: its cap less what its endpoints outside E_on draw now (stale,
                unhealthy or drained endpoints draw power until they are gone; the snapshot's
                ``zone_ineligible_power_w``)
    pen_c       penalty per unserved request of c, USD (critical >> standard >> sheddable)
    k           energy price, USD/kWh (0: energy not priced);  κ  churn penalty, USD/h per switched endpoint
    prev_e      1 if e is active in the previous plan, else 0;  res_e  1 if e is reserved
Variables
    on_e ∈ {0, 1}         e is active
    x[e, c] >= 0          requests/s of c sent to e, for (e, c) ∈ F
    load_e ∈ [0, 1]       share of e's SLO-feasible capacity in use
    u_c ∈ [0, rate_c]     unserved requests/s of c
    chg_e >= 0            |on_e - prev_e| (churn)
Objective (USD/h)
    minimise   Σ_e price_e on_e                                   price of active endpoints
             + (k / 1000) Σ_e (act_e on_e + dyn_e load_e)         energy
             + 3600 Σ_c pen_c u_c                                 unserved requests
             + κ Σ_e chg_e                                        churn against the previous plan
Constraints
    (demand)     Σ_e x[e, c] + u_c = rate_c                          ∀ c
    (load)       Σ_c x[e, c] / cap[e, c] = load_e                    ∀ e
    (capacity)   load_e <= on_e                                      ∀ e
    (power)      Σ_{e ∈ E_z} (act_e on_e + dyn_e load_e) <= pcap_z    ∀ z
    (churn)      chg_e >= on_e - prev_e,  chg_e >= prev_e - on_e      ∀ e
    (reserved)   on_e = 1 for e ∈ E_on with res_e = 1
    (ineligible) on_e = 0 and no x[e, ·] for e ∉ E_on; no x[e, c] for (e, c) ∉ F

Solved formulation: exact aggregation
=====================================
Eligible endpoints with the same zone, model, instance type, TP degree, precision, context length and
engine batch limit (``max_batch_sequences``) have the same profile, so the same capacities and power: they
form a *capacity group* h (whatever their pools).
Within h, endpoints that also share price and reserved flag are interchangeable: they form a *tier* t with
N_t members, R_t of them reserved (0 or N_t), P_t previously active. The solver works on

    n[t] ∈ {R_t, …, N_t} integer   active replicas of tier t
    x[h, c] >= 0                   requests/s of class c on group h, for groups that can serve c
    load[h] ∈ [0, Σ_{t ∈ h} N_t]   replicas' worth of capacity in use in group h
    u[c] ∈ [0, rate_c]             unserved requests/s of class c
    chg[t] >= 0                    replicas of tier t switched against the previous plan

with the objective and constraints above summed over groups and tiers: (load) per group, (capacity)
``load[h] <= Σ_{t ∈ h} n[t]``, (power) ``Σ_{h ∈ z} (act_h Σ_{t ∈ h} n[t] + dyn_h load[h]) <= pcap_z``,
(churn) ``chg[t] >= ±(n[t] - P_t)``, (reserved) ``n[t] = N_t`` for reserved tiers. This is exact, not a
heuristic: summing any per-endpoint solution over groups and tiers gives a solution of the same objective
or lower (the triangle inequality on churn); conversely :func:`_disaggregate` turns a group solution into a
per-endpoint one of the same objective: it activates the n[t] first members of each tier, previously active
ones first (each part by endpoint id), so exactly |n[t] - P_t| switch, and splits x[h, c] evenly over the
group's active members (each member's load is load[h] / Σ n[t] <= 1). Ineligible endpoints are off; those
active in the previous plan add a constant churn. The model grows with the number of distinct hardware
configurations per zone and of classes, not with endpoints or pools: 10,000 endpoints solve as a MIP with a
few hundred integers.

Solver choice: the flows are continuous and the integers few, a textbook MIP for SCIP (branch and bound
on an LP relaxation with exact continuous flows). CP-SAT would need the flows scaled to integers and
relies on a parallel portfolio the router's 2-core machine cannot spare (with one worker it found no
solution to the 1,000-endpoint model within 3 s). model_builder builds the model from lists of variables
and coefficients in few calls, and the one model is solved by GLOP (the relaxation: GLOP ignores
integrality), by GLOP again for the hint's routing, and by SCIP, where pywraplp would build it per solver.

Solving
=======
1. Data: groups, tiers, classes, capacities (once per hardware configuration and class), power lines.
2. Model: built in the order above, variables in dicts keyed like ``x[h, c]``.
3. LP relaxation (GLOP): its optimum is ``Plan.lp_bound_usd_per_hour``, a lower bound on the objective.
4. Hint: the previous plan's active replicas per tier or, if that is not already within the tolerance
   below and is beaten, the LP's counts rounded by a short dive (:func:`_rounding_dive`); the counts are
   fixed and GLOP routes today's demand over them: a complete feasible solution, SCIP's first incumbent.
5. MIP (SCIP, one thread) within what is left of ``time_limit_s``, stopping once its incumbent is proven
   within ``mip_gap_ratio`` x the fleet's cost (of the LP relaxation's plan) of the optimum.
6. Status check before reading any value: OPTIMAL publishes "optimal"; FEASIBLE (time limit hit with an
   incumbent) publishes "feasible" if proven within ``accept_gap_ratio`` of the optimum, else the previous
   plan's content comes back as "timeout_kept_previous", as when no incumbent came in time; anything else
   (infeasible: the reserved endpoints' active power exceeds a zone's cap; a solver error) returns the
   previous plan's content as "failed_kept_previous".
7. Extract: round n[t], remove tolerance-sized excesses (:func:`_feasible`), disaggregate, and recompute
   every published figure from the per-endpoint plan (loads, power per zone, unserved rates, cost).

Contracts
=========
``profiles(spec)`` must depend only on (model, instance type, TP degree, precision, max context tokens) of
``spec`` (the endpoint class and the context it must hold): it is called once per such class. Zones of the
snapshot cap power; an endpoint in a zone the snapshot does not list has no cap. The published plan meets
every constraint above up to floating-point rounding (where the solver's tolerances left a constraint
over, flows are scaled down by that much and the difference counted unserved). ``solve`` never raises for a
well-formed snapshot and demand: failures come back as a status. Shedding order: with the default
penalties (ratio 100 between priorities) sheddable traffic is left unserved before standard, and standard
before critical, as long as one request of the higher priority does not use more than 100 times the
capacity of one of the lower; raise the ratios for a stricter order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from ortools.linear_solver.python import model_builder as mb

from fleet.types import EndpointSpec, FleetSnapshot, Precision, Priority, ServingProfile
from policies.capacity import DEFAULT_HEADROOM_RATIO, PowerLine, class_capacity, power_line
from policies.demand import ClassDemand
from policies.types import Plan, TrafficClass

__all__ = [
    "STATUS_FAILED",
    "STATUS_FEASIBLE",
    "STATUS_OPTIMAL",
    "STATUS_TIMEOUT",
    "PlanReport",
    "Planner",
    "PlannerConfig",
    "ProfileSource",
]

ProfileSource = Callable[[EndpointSpec], ServingProfile]

STATUS_OPTIMAL = "optimal"
STATUS_FEASIBLE = "feasible"
STATUS_TIMEOUT = "timeout_kept_previous"
STATUS_FAILED = "failed_kept_previous"

_SECONDS_PER_HOUR = 3600.0
_W_PER_KW = 1000.0
# The rounding dive (see _hint) may use this share of the time left after the LP relaxation, at most
# _DIVE_MAX_S and _DIVE_ROUNDS LP re-solves: it pays off on fleets of about a thousand endpoints, where
# SCIP's own rounding lands just above the tolerance; on larger fleets SCIP is within it at the root.
_DIVE_SHARE = 0.25
_DIVE_MAX_S = 0.3
_DIVE_ROUNDS = 20


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """Planner settings (the ``planner:`` section of the config file).

    Penalties are USD per unserved request (the objective charges them per hour: x 3600 per req/s).
    ``churn_penalty_usd_per_hour`` is charged, in the objective's unit, for every endpoint whose on/off
    state differs from the previous plan: small, so it only breaks ties and damps flapping (an idle
    endpoint is switched off only when its price exceeds it). ``energy_usd_per_kwh`` = 0 leaves energy out
    of the objective and of the predicted cost. Optimality tolerances are shares of the fleet's cost (price
    plus energy of the LP relaxation's plan), not of the objective, whose penalties for unserved requests
    can dwarf the price of hardware. SCIP stops once its incumbent is proven within ``mip_gap_ratio`` of
    the optimum (default 1%: about one 405B replica on a 1,000-endpoint fleet; re-plans of such a fleet then
    take under a second on one core, see ``bench/planner_scale.py``; 0 asks for a proven optimum). When the
    time limit hits first, the incumbent is published (status "feasible") if proven within
    ``accept_gap_ratio`` (default 5%: better than keeping a plan made for other demand), else the previous
    plan is kept.
    """

    headroom_ratio: float = DEFAULT_HEADROOM_RATIO
    critical_unserved_usd_per_request: float = 1000.0
    standard_unserved_usd_per_request: float = 10.0
    sheddable_unserved_usd_per_request: float = 0.1
    churn_penalty_usd_per_hour: float = 0.05
    energy_usd_per_kwh: float = 0.0
    mip_gap_ratio: float = 0.01
    accept_gap_ratio: float = 0.05

    def __post_init__(self) -> None:
        if not (isinstance(self.headroom_ratio, int | float) and 0.0 < self.headroom_ratio <= 1.0):
            raise ValueError(f"headroom_ratio: must be in (0, 1], got {self.headroom_ratio!r}")
        for name in (
            "critical_unserved_usd_per_request",
            "standard_unserved_usd_per_request",
            "sheddable_unserved_usd_per_request",
            "churn_penalty_usd_per_hour",
            "energy_usd_per_kwh",
            "mip_gap_ratio",
            "accept_gap_ratio",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, int | float) and math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
        if not (
            self.critical_unserved_usd_per_request
            >= self.standard_unserved_usd_per_request
            >= self.sheddable_unserved_usd_per_request
        ):
            raise ValueError(
                "critical_unserved_usd_per_request >= standard_unserved_usd_per_request >= "
                "sheddable_unserved_usd_per_request must hold"
            )
        if self.accept_gap_ratio < self.mip_gap_ratio:
            raise ValueError("accept_gap_ratio: must be >= mip_gap_ratio")

    def unserved_usd_per_request(self, priority: Priority) -> float:
        if priority is Priority.CRITICAL:
            return self.critical_unserved_usd_per_request
        if priority is Priority.STANDARD:
            return self.standard_unserved_usd_per_request
        return self.sheddable_unserved_usd_per_request


@dataclass(frozen=True)
class PlanReport:
    """A solve's plan and how it was obtained (for metrics, logs, the bench and the tests).

    ``objective_usd_per_hour`` is the formulation's objective recomputed from the published per-endpoint
    plan (None when the previous plan was kept). ``lp_bound_usd_per_hour`` is the LP relaxation's optimum
    and ``mip_bound_usd_per_hour`` the MIP solver's final bound (both lower bounds on the objective).
    ``unavoidable_usd_per_hour`` is the part of the objective no decision changes: penalties of classes no
    eligible endpoint can serve within their SLO, and the churn of previously active endpoints that are no
    longer eligible. Gaps: ``gap_to_lp_ratio`` = (objective - LP bound) / (objective - unavoidable);
    ``cost_gap_to_lp_ratio`` = (objective - LP bound) / predicted cost (the stricter figure when penalties
    for unserved traffic make up much of the objective). ``groups`` and ``tiers`` count the solved model's
    capacity groups and integer variables.
    """

    plan: Plan
    objective_usd_per_hour: float | None
    lp_bound_usd_per_hour: float | None
    mip_bound_usd_per_hour: float | None
    gap_to_lp_ratio: float | None
    cost_gap_to_lp_ratio: float | None
    unavoidable_usd_per_hour: float
    solver_status: str
    message: str
    groups: int
    tiers: int
    flow_variables: int
    capacity_seconds: float
    build_seconds: float
    lp_seconds: float
    hint_seconds: float
    mip_seconds: float


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------

_HardwareKey = tuple[str, str, int, Precision, int]  # model, instance type, tp, precision, context
# zone, model, instance type, tp, precision, context, max batch sequences, max batched tokens
_GroupKey = tuple[str, str, str, int, str, int, int, int]


@dataclass(frozen=True, slots=True)
class _Tier:
    """Interchangeable eligible endpoints of one capacity group: same price and reserved flag."""

    index: int
    group: int
    members: tuple[str, ...]  # endpoint ids, previously active first, each part sorted by id
    previously_active: int  # P_t
    reserved: bool
    price_usd_per_hour: float

    @property
    def size(self) -> int:  # N_t
        return len(self.members)

    @property
    def min_active(self) -> int:  # R_t
        return self.size if self.reserved else 0


@dataclass(frozen=True, slots=True)
class _Group:
    """Eligible endpoints with the same profile in the same zone (see the module docstring)."""

    index: int
    zone: str
    model: str
    power: PowerLine
    tiers: tuple[int, ...]  # indices into _Data.tiers
    size: int  # endpoints in all its tiers


@dataclass(frozen=True, slots=True)
class _Data:
    classes: tuple[TrafficClass, ...]
    rates: tuple[float, ...]
    penalties_usd_per_request: tuple[float, ...]
    groups: tuple[_Group, ...]
    tiers: tuple[_Tier, ...]
    cap: Mapping[tuple[int, int], float]  # (h, c) -> requests/s per replica; only entries > 0
    zones: Mapping[str, float]  # zone -> power budget, W: cap less the ineligible endpoints' draw
    ineligible_power_w: Mapping[str, float]  # zone -> power its ineligible endpoints draw, W
    servable: tuple[int, ...]  # classes some group can serve (the others are all unserved: a constant)
    unavoidable_usd_per_hour: float  # objective terms no decision changes
    pool_of: Mapping[str, str]  # endpoint id -> pool, for every endpoint in the snapshot
    all_pools: tuple[str, ...]


def _hardware_key(spec: EndpointSpec) -> _HardwareKey:
    return (spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens)


def _group_key(spec: EndpointSpec) -> _GroupKey:
    return (
        spec.zone,
        spec.model,
        spec.instance_type,
        spec.tp_degree,
        spec.precision.value,
        spec.max_context_tokens,
        spec.max_batch_sequences,
        spec.max_batched_tokens,
    )


def _prepare(
    snapshot: FleetSnapshot,
    demand: Mapping[TrafficClass, ClassDemand],
    profiles: ProfileSource,
    previous: Plan,
    config: PlannerConfig,
) -> _Data:
    classes = tuple(sorted((c for c, d in demand.items() if d.rate_per_s > 0.0), key=lambda c: c.name))
    rates = tuple(demand[c].rate_per_s for c in classes)
    penalties = tuple(config.unserved_usd_per_request(c.priority) for c in classes)
    classes_by_model: dict[str, list[int]] = {}
    for ci, c in enumerate(classes):
        classes_by_model.setdefault(c.model, []).append(ci)

    # Eligible endpoints by capacity group, then by tier; ineligible ones only count for churn.
    prev_active = previous.active_endpoint_ids
    by_group: dict[_GroupKey, dict[tuple[float, bool], list[EndpointSpec]]] = {}
    ineligible_prev_active = 0
    for st in snapshot.endpoints:
        if not st.eligible:
            ineligible_prev_active += st.endpoint_id in prev_active
            continue
        tier_key = (st.spec.price_usd_per_hour, st.spec.reserved)
        by_group.setdefault(_group_key(st.spec), {}).setdefault(tier_key, []).append(st.spec)

    profile_cache: dict[_HardwareKey, ServingProfile] = {}
    capacity_cache: dict[tuple[_HardwareKey, tuple[int, int], int], float] = {}
    groups: list[_Group] = []
    tiers: list[_Tier] = []
    cap: dict[tuple[int, int], float] = {}
    for gkey in sorted(by_group):
        tier_specs = by_group[gkey]
        spec = next(iter(tier_specs.values()))[0]
        hw = _hardware_key(spec)
        profile = profile_cache.get(hw)
        if profile is None:
            profile = profiles(spec)
            profile_cache[hw] = profile
        gi = len(groups)
        tier_indices: list[int] = []
        for price, reserved in sorted(tier_specs):
            specs = tier_specs[price, reserved]
            was_on = sorted(s.endpoint_id for s in specs if s.endpoint_id in prev_active)
            was_off = sorted(s.endpoint_id for s in specs if s.endpoint_id not in prev_active)
            tier_indices.append(len(tiers))
            tiers.append(
                _Tier(
                    index=len(tiers),
                    group=gi,
                    members=tuple(was_on + was_off),
                    previously_active=len(was_on),
                    reserved=reserved,
                    price_usd_per_hour=price,
                )
            )
        groups.append(
            _Group(
                index=gi,
                zone=spec.zone,
                model=spec.model,
                power=power_line(profile),
                tiers=tuple(tier_indices),
                size=sum(tiers[t].size for t in tier_indices),
            )
        )
        engine = (spec.max_batch_sequences, spec.max_batched_tokens)
        for ci in classes_by_model.get(spec.model, ()):
            value = capacity_cache.get((hw, engine, ci))
            if value is None:
                c = classes[ci]
                value = class_capacity(
                    profile,
                    c,
                    demand[c],
                    max_context_tokens=spec.max_context_tokens,
                    max_batch_sequences=spec.max_batch_sequences,
                    max_batched_tokens=spec.max_batched_tokens,
                    headroom_ratio=config.headroom_ratio,
                ).requests_per_s
                capacity_cache[hw, engine, ci] = value
            if value > 0.0:
                cap[gi, ci] = value

    servable = tuple(sorted({ci for _, ci in cap}))
    servable_set = set(servable)
    unservable_usd_per_hour = _SECONDS_PER_HOUR * sum(
        penalties[ci] * rates[ci] for ci in range(len(classes)) if ci not in servable_set
    )
    pool_of = {st.endpoint_id: st.spec.pool for st in snapshot.endpoints}
    held_w = {z: snapshot.zone_ineligible_power_w.get(z, 0.0) for z in snapshot.zones}
    return _Data(
        classes=classes,
        rates=rates,
        penalties_usd_per_request=penalties,
        groups=tuple(groups),
        tiers=tuple(tiers),
        cap=MappingProxyType(cap),
        zones=MappingProxyType(
            {z.name: max(0.0, z.power_cap_w - held_w[z.name]) for z in snapshot.zones.values()}
        ),
        ineligible_power_w=MappingProxyType(held_w),
        servable=servable,
        unavoidable_usd_per_hour=unservable_usd_per_hour
        + config.churn_penalty_usd_per_hour * ineligible_prev_active,
        pool_of=MappingProxyType(pool_of),
        all_pools=tuple(sorted(set(pool_of.values()))),
    )


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    model: mb.Model
    n: Mapping[int, mb.Variable]  # n[t]: active replicas of tier t
    x: Mapping[tuple[int, int], mb.Variable]  # x[h, c]: requests/s of class c on group h
    load: Mapping[int, mb.Variable]  # load[h]: replicas' worth of capacity in use in group h
    u: Mapping[int, mb.Variable]  # u[c]: unserved requests/s of class c
    chg: Mapping[int, mb.Variable]  # chg[t]: replicas of tier t switched against the previous plan


def _build(data: _Data, config: PlannerConfig) -> _Model:
    """The aggregated MIP, in the docstring's order: variables, objective, constraints.

    Classes no group can serve have no variable: their unserved rate is their whole rate, and their
    penalty, like the churn of ineligible endpoints, is ``data.unavoidable_usd_per_hour``, left out of the
    model's objective.
    """
    m = mb.Model()
    groups, tiers, rates = data.groups, data.tiers, data.rates

    # --- Variables ---------------------------------------------------------------------------------------
    # n[t] ∈ {R_t..N_t}: active replicas of tier t (reserved tiers are all on).
    n = {t.index: m.new_int_var(t.min_active, t.size, f"n[{t.index}]") for t in tiers}
    # x[h, c] >= 0: requests/s of class c on group h, only where the group serves c within its SLO.
    x = {(hi, ci): m.new_num_var(0.0, rates[ci], f"x[{hi},{ci}]") for (hi, ci) in sorted(data.cap)}
    # load[h] ∈ [0, N_h]: replicas' worth of SLO-feasible capacity in use in group h.
    load = {h.index: m.new_num_var(0.0, float(h.size), f"load[{h.index}]") for h in groups}
    # u[c] ∈ [0, rate_c]: unserved requests/s of class c.
    u = {ci: m.new_num_var(0.0, rates[ci], f"u[{ci}]") for ci in data.servable}
    # chg[t] >= 0: replicas of tier t switched on or off against the previous plan.
    chg = {t.index: m.new_num_var(0.0, float(t.size), f"chg[{t.index}]") for t in tiers}

    # --- Objective (USD/h) -------------------------------------------------------------------------------
    usd_per_w_hour = config.energy_usd_per_kwh / _W_PER_KW
    terms: list[mb.Variable] = []
    coefs: list[float] = []
    for t in tiers:
        # price of active replicas, plus the energy of their active power
        terms.append(n[t.index])
        coefs.append(t.price_usd_per_hour + usd_per_w_hour * groups[t.group].power.active_w)
        # churn against the previous plan
        terms.append(chg[t.index])
        coefs.append(config.churn_penalty_usd_per_hour)
    if usd_per_w_hour > 0.0:
        for h in groups:
            # energy of the load-proportional power
            terms.append(load[h.index])
            coefs.append(usd_per_w_hour * h.power.load_w)
    for ci in data.servable:
        # penalty for unserved requests
        terms.append(u[ci])
        coefs.append(_SECONDS_PER_HOUR * data.penalties_usd_per_request[ci])
    m.minimize(mb.LinearExpr.weighted_sum(terms, coefs))

    # --- Constraints -------------------------------------------------------------------------------------
    groups_serving: dict[int, list[int]] = {}
    classes_served: dict[int, list[int]] = {}
    for hi, ci in sorted(data.cap):
        groups_serving.setdefault(ci, []).append(hi)
        classes_served.setdefault(hi, []).append(ci)

    # (demand) every request of class c is either sent to a group or counted unserved.
    for ci in data.servable:
        hs = groups_serving[ci]
        m.add(
            mb.LinearExpr.weighted_sum([x[hi, ci] for hi in hs] + [u[ci]], [1.0] * (len(hs) + 1)) == rates[ci]
        )

    for h in groups:
        cs = classes_served.get(h.index, [])
        # (load) a group's load is its flows, each as a share of one replica's capacity for the class.
        m.add(
            mb.LinearExpr.weighted_sum(
                [x[h.index, ci] for ci in cs] + [load[h.index]],
                [1.0 / data.cap[h.index, ci] for ci in cs] + [-1.0],
            )
            == 0.0
        )
        # (capacity) the load fits in the group's active replicas.
        m.add(
            mb.LinearExpr.weighted_sum(
                [load[h.index]] + [n[t] for t in h.tiers], [1.0] + [-1.0] * len(h.tiers)
            )
            <= 0.0
        )

    # (power) active replicas' power plus load-proportional power stays under each zone's cap.
    for zone, cap_w in sorted(data.zones.items()):
        zone_groups = [h for h in groups if h.zone == zone]
        if not zone_groups:
            continue
        zone_terms: list[mb.Variable] = []
        zone_coefs: list[float] = []
        for h in zone_groups:
            zone_terms += [n[t] for t in h.tiers] + [load[h.index]]
            zone_coefs += [h.power.active_w] * len(h.tiers) + [h.power.load_w]
        m.add(mb.LinearExpr.weighted_sum(zone_terms, zone_coefs) <= cap_w)

    for t in tiers:
        p = float(t.previously_active)
        # (churn) chg[t] >= n[t] - P_t (replicas switched on) and chg[t] >= P_t - n[t] (switched off).
        m.add(mb.LinearExpr.weighted_sum([chg[t.index], n[t.index]], [1.0, -1.0]) >= -p)
        m.add(mb.LinearExpr.weighted_sum([chg[t.index], n[t.index]], [1.0, 1.0]) >= p)

    # (reserved) is the lower bound R_t = N_t of reserved tiers; (ineligible) endpoints are in no tier.
    return _Model(m, n, x, load, u, chg)


@dataclass(frozen=True, slots=True)
class _Solution:
    n: tuple[int, ...]  # per tier
    x: Mapping[tuple[int, int], float]  # (h, c) -> requests/s, >= 0


def _feasible(sol: _Solution, data: _Data) -> _Solution:
    """A solution meeting every constraint, by lowering counts and scaling flows down where needed.

    Counts are clamped to [R_t, N_t]; a zone whose active replicas' power alone exceeds its cap
    (possible for a hint built from an old plan, never for a solver's answer) falls back to its reserved
    replicas. Flows are then scaled down: per class to its rate, per group to its active replicas, per
    zone to its power cap. Scaling down only moves traffic to "unserved", so the other constraints keep
    holding. Used on the solver's answer to remove excesses of the size of its tolerances, and for hints.
    """
    n = [min(max(v, t.min_active), t.size) for v, t in zip(sol.n, data.tiers, strict=True)]
    for zone, cap_w in data.zones.items():
        zone_groups = [h for h in data.groups if h.zone == zone]
        if sum(h.power.active_w * n[t] for h in zone_groups for t in h.tiers) > cap_w:
            for h in zone_groups:
                for t in h.tiers:
                    n[t] = data.tiers[t].min_active
    x = {k: max(0.0, v) for k, v in sol.x.items()}
    # Per class, no more than its rate.
    served = [0.0] * len(data.classes)
    for (_, ci), v in x.items():
        served[ci] += v
    for (hi, ci), v in x.items():
        if served[ci] > data.rates[ci]:
            x[hi, ci] = v * data.rates[ci] / served[ci]
    # Per group, load within the active replicas; per zone, power within the cap.
    load = [0.0] * len(data.groups)
    for (hi, ci), v in x.items():
        load[hi] += v / data.cap[hi, ci]
    active = [sum(n[t] for t in h.tiers) for h in data.groups]
    scale = [1.0] * len(data.groups)
    for h in data.groups:
        if load[h.index] > active[h.index]:
            scale[h.index] = active[h.index] / load[h.index]
    for zone, cap_w in data.zones.items():
        zone_groups = [h for h in data.groups if h.zone == zone]
        idle = sum(h.power.active_w * active[h.index] for h in zone_groups)
        dyn = sum(h.power.load_w * load[h.index] * scale[h.index] for h in zone_groups)
        if idle + dyn > cap_w and dyn > 0.0:
            f = max(0.0, (cap_w - idle) / dyn)
            for h in zone_groups:
                scale[h.index] *= f
    for (hi, ci), v in x.items():
        if scale[hi] < 1.0:
            x[hi, ci] = v * scale[hi] * (1.0 - 1e-12)
    return _Solution(tuple(n), x)


def _route(sm: _Model, data: _Data, counts: tuple[int, ...], time_limit_s: float) -> _Solution | None:
    """Today's best routing over fixed active counts (GLOP with n[t] fixed), or None if it did not solve.

    The counts' bounds are restored afterwards.
    """
    for t in data.tiers:
        var = sm.n[t.index]
        var.lower_bound = var.upper_bound = float(counts[t.index])
    routing = mb.Solver("glop")
    routing.set_time_limit_in_seconds(max(1e-3, time_limit_s))
    status = routing.solve(sm.model)
    for t in data.tiers:
        var = sm.n[t.index]
        var.lower_bound, var.upper_bound = float(t.min_active), float(t.size)
    if status != mb.SolveStatus.OPTIMAL:
        return None
    return _Solution(counts, {k: routing.value(v) for k, v in sm.x.items()})


def _rounding_dive(
    sm: _Model, data: _Data, lp_counts: list[float], deadline: float
) -> tuple[int, ...] | None:
    """Integral counts from the LP relaxation: round every fractional count to the nearest integer, fix
    it, re-solve the LP (the other counts absorb the difference), until no count is fractional. None if a
    round makes the LP infeasible (a zone's active power), after ``_DIVE_ROUNDS`` rounds, or when
    ``deadline`` (perf_counter time) passes."""
    lo = [float(t.min_active) for t in data.tiers]
    hi = [float(t.size) for t in data.tiers]
    values = lp_counts
    result: tuple[int, ...] | None = None
    for _ in range(_DIVE_ROUNDS):
        if time.perf_counter() >= deadline:
            break
        fractional = [i for i, v in enumerate(values) if abs(v - round(v)) > 1e-6]
        if not fractional:
            result = tuple(round(v) for v in values)
            break
        for i in fractional:
            lo[i] = hi[i] = float(math.floor(values[i] + 0.5))
        for t in data.tiers:
            sm.n[t.index].lower_bound, sm.n[t.index].upper_bound = lo[t.index], hi[t.index]
        lp = mb.Solver("glop")
        lp.set_time_limit_in_seconds(max(1e-3, deadline - time.perf_counter()))
        if lp.solve(sm.model) != mb.SolveStatus.OPTIMAL:
            break
        values = [float(lp.value(sm.n[t.index])) for t in data.tiers]
    for t in data.tiers:
        sm.n[t.index].lower_bound, sm.n[t.index].upper_bound = float(t.min_active), float(t.size)
    return result


def _objective(sol: _Solution, data: _Data, config: PlannerConfig) -> float:
    """The model's objective (USD/h, without the unavoidable constant) of a feasible aggregated solution."""
    usd_per_w_hour = config.energy_usd_per_kwh / _W_PER_KW
    load = [0.0] * len(data.groups)
    served = [0.0] * len(data.classes)
    for (hi, ci), v in sol.x.items():
        load[hi] += v / data.cap[hi, ci]
        served[ci] += v
    total = 0.0
    for t in data.tiers:
        active_w = data.groups[t.group].power.active_w
        total += (t.price_usd_per_hour + usd_per_w_hour * active_w) * sol.n[t.index]
        total += config.churn_penalty_usd_per_hour * abs(sol.n[t.index] - t.previously_active)
    total += sum(usd_per_w_hour * h.power.load_w * load[h.index] for h in data.groups)
    total += _SECONDS_PER_HOUR * sum(
        data.penalties_usd_per_request[ci] * max(0.0, data.rates[ci] - served[ci]) for ci in data.servable
    )
    return total


def _hint(
    sm: _Model,
    data: _Data,
    config: PlannerConfig,
    lp_counts: list[float],
    good_enough_usd_per_hour: float,
    dive_deadline: float,
    deadline: float,
) -> float | None:
    """Hint SCIP with a complete feasible solution, its first incumbent; return its objective (or None).

    Two candidates, the better one wins: the previous plan's active replicas per tier (clamped to today's
    eligible members and reserved minimums; a zone whose active power alone would exceed its cap falls back
    to its reserved replicas), and, unless that one's objective is already ``good_enough_usd_per_hour``
    (SCIP would stop at once), counts rounded from the LP relaxation by :func:`_rounding_dive` (while time
    is before ``dive_deadline``), each with today's demand routed over it by GLOP. The previous plan keeps
    churn low when demand has not moved much; the dive is better when it has.
    """
    candidates: list[_Solution] = []
    previous_counts = _feasible(_Solution(tuple(t.previously_active for t in data.tiers), {}), data).n
    routed = _route(sm, data, previous_counts, deadline - time.perf_counter())
    if routed is not None:
        candidates.append(_feasible(routed, data))
        if _objective(candidates[0], data, config) <= good_enough_usd_per_hour:
            dive_deadline = 0.0
    dived = _rounding_dive(sm, data, lp_counts, dive_deadline)
    if dived is not None and dived != previous_counts:
        routed = _route(sm, data, dived, deadline - time.perf_counter())
        if routed is not None:
            candidates.append(_feasible(routed, data))
    if not candidates:
        return None
    scored = [(_objective(c, data, config), k) for k, c in enumerate(candidates)]
    best_objective, best = min(scored)
    sol = candidates[best]
    load = [0.0] * len(data.groups)
    served = [0.0] * len(data.classes)
    for (hi, ci), v in sol.x.items():
        load[hi] += v / data.cap[hi, ci]
        served[ci] += v
    m = sm.model
    for t in data.tiers:
        m.add_hint(sm.n[t.index], float(sol.n[t.index]))
        m.add_hint(sm.chg[t.index], float(abs(sol.n[t.index] - t.previously_active)))
    for h in data.groups:
        m.add_hint(sm.load[h.index], load[h.index])
    for key, var in sm.x.items():
        m.add_hint(var, sol.x.get(key, 0.0))
    for ci, var in sm.u.items():
        m.add_hint(var, max(0.0, data.rates[ci] - served[ci]))
    return best_objective


# ---------------------------------------------------------------------------------------------------------
# Solve
# ---------------------------------------------------------------------------------------------------------


def _fleet_cost_usd_per_hour(sm: _Model, solver: mb.Solver, data: _Data, config: PlannerConfig) -> float:
    """Price plus energy of a solution's active replicas: the scale of the optimality tolerances."""
    usd_per_w_hour = config.energy_usd_per_kwh / _W_PER_KW
    tiers = sum(
        (t.price_usd_per_hour + usd_per_w_hour * data.groups[t.group].power.active_w)
        * solver.value(sm.n[t.index])
        for t in data.tiers
    )
    return tiers + sum(usd_per_w_hour * h.power.load_w * solver.value(sm.load[h.index]) for h in data.groups)


def _scip_parameters(abs_gap_usd_per_hour: float) -> str:
    """SCIP settings, in SCIP's own "name = value" format.

    The stopping rule is an absolute gap in USD/h (see :class:`PlannerConfig`). One round of root cuts
    and no ALNS heuristic: the aggregated model's LP bound is close and the previous plan's hint or SCIP's
    rounding heuristics (RENS) reach the tolerance at the root, while longer cut loops and ALNS only delay
    that by up to a second on a 1,000-endpoint fleet (measured with ``bench/planner_scale.py``).
    """
    return (
        f"limits/gap = 0\nlimits/absgap = {abs_gap_usd_per_hour!r}\n"
        "separating/maxroundsroot = 1\nheuristics/alns/freq = -1\n"
    )


def _read(sm: _Model, solver: mb.Solver, data: _Data) -> _Solution:
    return _Solution(
        n=tuple(round(solver.value(sm.n[t.index])) for t in data.tiers),
        x={k: solver.value(v) for k, v in sm.x.items()},
    )


# ---------------------------------------------------------------------------------------------------------
# Extract: disaggregate to endpoints and compute the published figures
# ---------------------------------------------------------------------------------------------------------


def _disaggregate(
    sol: _Solution,
    data: _Data,
    snapshot: FleetSnapshot,
    previous: Plan,
    config: PlannerConfig,
    now_s: float,
    status: str,
    lp_bound: float | None,
) -> tuple[Plan, float]:
    """The per-endpoint plan of an aggregated solution, and its objective recomputed per endpoint."""
    active: list[str] = []
    share: dict[str, Mapping[str, float]] = {}
    desired: dict[str, int] = dict.fromkeys(data.all_pools, 0)
    zone_power: dict[str, float] = dict(data.ineligible_power_w)  # drawn until those endpoints are gone
    served = [0.0] * len(data.classes)
    price = 0.0
    power_w = 0.0
    flows: dict[int, list[tuple[int, float]]] = {}
    for (hi, ci), v in sorted(sol.x.items()):
        if v > 0.0:
            flows.setdefault(hi, []).append((ci, v))
    for h in data.groups:
        chosen: list[str] = []
        for ti in h.tiers:
            t = data.tiers[ti]
            k = sol.n[ti]
            chosen.extend(t.members[:k])  # previously active first, then by id
            price += k * t.price_usd_per_hour
        if not chosen:
            continue
        k_h = len(chosen)
        active.extend(chosen)
        for eid in chosen:
            desired[data.pool_of[eid]] += 1
        group_flows = flows.get(h.index, [])
        per_replica: dict[str, float] = {}
        for ci, v in group_flows:
            served[ci] += v
            per_replica[data.classes[ci].name] = v / k_h / data.rates[ci]
        if per_replica:
            frozen = MappingProxyType(per_replica)
            for eid in chosen:
                share[eid] = frozen
        load_per_replica = sum(v / data.cap[h.index, ci] for ci, v in group_flows) / k_h
        group_power = k_h * h.power.power_w(load_per_replica)
        zone_power[h.zone] = zone_power.get(h.zone, 0.0) + group_power
        power_w += group_power
    unserved = {c.name: max(0.0, data.rates[ci] - served[ci]) for ci, c in enumerate(data.classes)}
    energy_usd_per_hour = config.energy_usd_per_kwh * power_w / _W_PER_KW
    active_set = frozenset(active)
    churn = len(active_set ^ (previous.active_endpoint_ids & frozenset(snapshot.by_id)))
    penalty = _SECONDS_PER_HOUR * sum(
        p * unserved[c.name] for c, p in zip(data.classes, data.penalties_usd_per_request, strict=True)
    )
    objective = price + energy_usd_per_hour + penalty + config.churn_penalty_usd_per_hour * churn
    plan = Plan(
        generation=previous.generation + 1,
        created_at_s=now_s,
        status=status,
        active_endpoint_ids=active_set,
        share=MappingProxyType(share),
        desired_replicas=MappingProxyType(desired),
        predicted_cost_usd_per_hour=price + energy_usd_per_hour,
        predicted_zone_power_w=MappingProxyType(zone_power),
        unserved_rate_per_s=MappingProxyType(unserved),
        solve_seconds=0.0,
        lp_bound_usd_per_hour=lp_bound,
        objective_usd_per_hour=objective,
    )
    return plan, objective


# ---------------------------------------------------------------------------------------------------------
# The planner
# ---------------------------------------------------------------------------------------------------------


def _infeasibility(data: _Data) -> str | None:
    """Why the model has no solution at all, if so: reserved endpoints' power over a zone's cap."""
    for zone, cap_w in sorted(data.zones.items()):
        idle = sum(
            h.power.active_w * data.tiers[t].min_active
            for h in data.groups
            if h.zone == zone
            for t in h.tiers
        )
        if idle > cap_w:
            held_w = data.ineligible_power_w.get(zone, 0.0)
            held = f" (its cap less {held_w:.0f} W drawn by endpoints that may not take work)"
            return (
                f"zone {zone}: the reserved endpoints' power {idle:.0f} W (active) exceeds its power budget "
                f"{cap_w:.0f} W{held if held_w else ''}; unreserve endpoints or raise the cap"
            )
    return None


class Planner:
    """Solves the global placement plan (formulation in the module docstring). Stateless and reentrant."""

    def solve(
        self,
        snapshot: FleetSnapshot,
        demand: Mapping[TrafficClass, ClassDemand],
        profiles: ProfileSource,
        previous: Plan,
        now_s: float,
        time_limit_s: float,
        config: PlannerConfig | None = None,
    ) -> Plan:
        """The new plan (generation ``previous.generation + 1``, ``created_at_s = now_s``), or the previous
        plan's content with status "timeout_kept_previous" / "failed_kept_previous" (and this solve's
        ``solve_seconds``) when no acceptable solution came within ``time_limit_s``."""
        return self.solve_with_report(snapshot, demand, profiles, previous, now_s, time_limit_s, config).plan

    def solve_with_report(
        self,
        snapshot: FleetSnapshot,
        demand: Mapping[TrafficClass, ClassDemand],
        profiles: ProfileSource,
        previous: Plan,
        now_s: float,
        time_limit_s: float,
        config: PlannerConfig | None = None,
    ) -> PlanReport:
        """As :meth:`solve`, with the objective, bounds, solver status, model size and timings."""
        cfg = config if config is not None else PlannerConfig()
        t0 = time.perf_counter()
        deadline = t0 + max(0.0, time_limit_s)
        timings = {"capacity": 0.0, "build": 0.0, "lp": 0.0, "hint": 0.0, "mip": 0.0}
        sizes = {"groups": 0, "tiers": 0, "flows": 0}
        constant = 0.0

        def kept(
            status: str,
            solver_status: str,
            message: str,
            lp_bound: float | None = None,
            mip_bound: float | None = None,
        ) -> PlanReport:
            return PlanReport(
                plan=replace(previous, status=status, solve_seconds=time.perf_counter() - t0),
                objective_usd_per_hour=None,
                lp_bound_usd_per_hour=lp_bound,
                mip_bound_usd_per_hour=mip_bound,
                gap_to_lp_ratio=None,
                cost_gap_to_lp_ratio=None,
                unavoidable_usd_per_hour=constant,
                solver_status=solver_status,
                message=message,
                groups=sizes["groups"],
                tiers=sizes["tiers"],
                flow_variables=sizes["flows"],
                capacity_seconds=timings["capacity"],
                build_seconds=timings["build"],
                lp_seconds=timings["lp"],
                hint_seconds=timings["hint"],
                mip_seconds=timings["mip"],
            )

        # --- Data ---------------------------------------------------------------------------------------
        try:
            data = _prepare(snapshot, demand, profiles, previous, cfg)
        except (KeyError, ValueError, ArithmeticError) as exc:
            return kept(STATUS_FAILED, "DATA_ERROR", f"planner input: {exc}")
        timings["capacity"] = time.perf_counter() - t0
        sizes.update(groups=len(data.groups), tiers=len(data.tiers), flows=len(data.cap))
        constant = data.unavoidable_usd_per_hour
        reason = _infeasibility(data)
        if reason is not None:
            return kept(STATUS_FAILED, "INFEASIBLE", reason)
        if time.perf_counter() >= deadline:
            return kept(STATUS_TIMEOUT, "NOT_SOLVED", "time limit reached while preparing the data")

        # --- Model and hint -----------------------------------------------------------------------------
        t1 = time.perf_counter()
        sm = _build(data, cfg)
        timings["build"] = time.perf_counter() - t1
        if time.perf_counter() >= deadline:
            return kept(STATUS_TIMEOUT, "NOT_SOLVED", "time limit reached while building the model")

        # --- LP relaxation: the bound, and the scale of the tolerances ----------------------------------
        t2 = time.perf_counter()
        lp = mb.Solver("glop")
        lp.set_time_limit_in_seconds(max(1e-3, deadline - t2))
        lp_status = lp.solve(sm.model)
        timings["lp"] = time.perf_counter() - t2
        if lp_status == mb.SolveStatus.INFEASIBLE:
            return kept(STATUS_FAILED, "INFEASIBLE", "the LP relaxation is infeasible")
        if lp_status != mb.SolveStatus.OPTIMAL:
            if time.perf_counter() >= deadline:
                return kept(STATUS_TIMEOUT, lp_status.name, "time limit reached in the LP relaxation")
            return kept(STATUS_FAILED, lp_status.name, f"LP relaxation: {lp.status_string}")
        lp_bound = lp.objective_value + constant
        cost_scale = max(_fleet_cost_usd_per_hour(sm, lp, data, cfg), 1e-6)

        # --- Hint: the previous plan's active set or the LP's counts rounded, routed for today ----------
        t_hint = time.perf_counter()
        lp_counts = [float(lp.value(sm.n[t.index])) for t in data.tiers]
        dive_deadline = t_hint + min(_DIVE_SHARE * (deadline - t_hint), _DIVE_MAX_S)
        good_enough = lp.objective_value + cfg.mip_gap_ratio * cost_scale
        _hint(sm, data, cfg, lp_counts, good_enough, dive_deadline, deadline)
        timings["hint"] = time.perf_counter() - t_hint

        # --- MIP ----------------------------------------------------------------------------------------
        remaining = deadline - time.perf_counter()
        if remaining <= 0.0:
            return kept(STATUS_TIMEOUT, "NOT_SOLVED", "time limit reached before the MIP", lp_bound)
        t3 = time.perf_counter()
        mip = mb.Solver("scip")
        mip.set_time_limit_in_seconds(remaining)
        mip.set_solver_specific_parameters(_scip_parameters(cfg.mip_gap_ratio * cost_scale))
        mip_status = mip.solve(sm.model)
        timings["mip"] = time.perf_counter() - t3

        # --- Status check, before reading any value -----------------------------------------------------
        if mip_status == mb.SolveStatus.OPTIMAL:
            status = STATUS_OPTIMAL
        elif mip_status == mb.SolveStatus.FEASIBLE:
            proven_gap = (mip.objective_value - mip.best_objective_bound) / cost_scale
            if proven_gap > cfg.accept_gap_ratio:
                return kept(
                    STATUS_TIMEOUT,
                    mip_status.name,
                    f"time limit reached with an incumbent {proven_gap:.2%} of the fleet's cost above the "
                    "bound",
                    lp_bound,
                    mip.best_objective_bound + constant,
                )
            status = STATUS_FEASIBLE
        elif mip_status in (mb.SolveStatus.NOT_SOLVED, mb.SolveStatus.UNKNOWN_STATUS) and (
            time.perf_counter() >= deadline - 1e-3
        ):
            return kept(STATUS_TIMEOUT, mip_status.name, "time limit reached before a solution", lp_bound)
        else:
            return kept(STATUS_FAILED, mip_status.name, f"MIP: {mip.status_string}", lp_bound)
        mip_bound = mip.best_objective_bound + constant

        # --- Extract ------------------------------------------------------------------------------------
        sol = _feasible(_read(sm, mip, data), data)
        plan, objective = _disaggregate(sol, data, snapshot, previous, cfg, now_s, status, lp_bound)
        decided = objective - constant
        gap = (objective - lp_bound) / decided if decided > 0.0 else 0.0
        plan = replace(plan, solve_seconds=time.perf_counter() - t0, gap_to_lp_ratio=gap)
        cost = plan.predicted_cost_usd_per_hour
        return PlanReport(
            plan=plan,
            objective_usd_per_hour=objective,
            lp_bound_usd_per_hour=lp_bound,
            mip_bound_usd_per_hour=mip_bound,
            gap_to_lp_ratio=gap,
            cost_gap_to_lp_ratio=(objective - lp_bound) / cost if cost > 0.0 else 0.0,
            unavoidable_usd_per_hour=constant,
            solver_status=mip_status.name,
            message="",
            groups=len(data.groups),
            tiers=len(data.tiers),
            flow_variables=len(data.cap),
            capacity_seconds=timings["capacity"],
            build_seconds=timings["build"],
            lp_seconds=timings["lp"],
            hint_seconds=timings["hint"],
            mip_seconds=timings["mip"],
        )
