"""Capacity planning: the cheapest fleet that serves a whole workload within its SLO and the power caps.

A mixed-integer program solved with OR-Tools (the model_builder API, SCIP). Pure computation: every
capacity, price and power figure is passed in (``sim.plan_fleet`` derives them from the catalog and the
performance model, or from measured profiles); no clock is read except ``time.perf_counter`` to measure
and bound the solve.

Formulation
===========
Sets
    C       demand classes c (model x input-length range x output-length range x priority), rate_c > 0
    K       candidate configurations k (model x instance type x TP degree x precision); one instance of k
            hosts chips / tp replicas of its model
    Z       zones, each with a power cap
    F       feasible pairs (k, c): one instance of k serves class c within c's SLO at a rate cap[k, c] > 0
Parameters
    rate_c      requests/s of class c to serve
    cap[k, c]   requests/s of class c one instance of k serves within c's SLO, headroom included
    price_k     USD/h of one instance of k
    idle_k      power of one instance of k switched on, W;  dyn_k  its load-proportional power on top, W
                (``turnout plan`` gives idle_k = full power, dyn_k = 0: a busy engine draws its full power)
    pcap_z      power cap of zone z, W
    N_k         most instances of k worth buying: ceil(Σ_{c: (k, c) ∈ F} rate_c / cap[k, c]) (at N_k
                instances k could serve every class it can alone; one more only adds price and idle power),
                lowered to the optional availability limit of k
Variables
    n[z, k] ∈ {0, …, N_k}   instances of k in zone z (integer)
    s[z, k, c] ∈ [0, 1]     share of class c's requests served by k in zone z, for (k, c) ∈ F
    load[z, k] >= 0         instances' worth of k's capacity in use in zone z
Objective (lexicographic)
    1. minimise   P = Σ_{z, k} price_k n[z, k]                                   USD/h
    2. among the fleets of least P, minimise   W = Σ_{z, k} (idle_k n[z, k] + dyn_k load[z, k])   W
       (a second solve with P <= P* as a constraint: equal prices, e.g. one instance of either of two
       configurations, are decided by the power they draw, not by the solver's search order), plus
       δ Σ_{z, k} load[z, k] with δ = 1e-3 W: among fleets of equal power, the one with the most
       SLO-feasible capacity to spare (with every instance charged its full power, configurations of one
       instance type differ only there), plus ε Σ_{z, k} z n[z, k] with ε = 1e-6 W: among fleets of equal
       power and load, instances go to the zones listed first rather than being spread over
       interchangeable zones
Constraints
    (demand)    Σ_{z, k: (k, c) ∈ F} s[z, k, c] = 1                                  ∀ c
    (load)      Σ_{c: (k, c) ∈ F} rate_c s[z, k, c] / cap[k, c] = load[z, k]           ∀ z, k
    (capacity)  load[z, k] <= n[z, k]                                                  ∀ z, k
    (power)     Σ_k (idle_k n[z, k] + dyn_k load[z, k]) <= pcap_z                       ∀ z

Power is counted at the planned load: an instance draws idle_k plus dyn_k times its share of its
SLO-feasible capacity in use (``turnout plan`` charges every instance its full power, as the live planner
does: ``policies.capacity``). The capacity constraint is
summed over classes as in the live planner (``policies.planner``): an instance serving two classes splits
its time between them in proportion to their rates over their capacities.

Solving
=======
1. Check: a class no configuration serves (F has no pair for it) makes the problem infeasible before any
   solve; the result names the classes.
2. Model: built in the order above, variables in dicts keyed like ``s[z, k, c]``.
3. Solve objective 1 with SCIP (one thread) within ``time_limit_s``, to a proven optimum (relative gap
   ``mip_gap_ratio``, default 0).
4. Status check before reading any value: OPTIMAL is "optimal"; FEASIBLE (the time limit hit with an
   incumbent) is "feasible" with the proven bound; INFEASIBLE is "infeasible", and a solve of W without
   the power constraints finds the least power any fleet of the candidates draws at planned load, to say
   by how much the caps fall short; no solution within the time limit is "timeout"; anything else is
   "error".
5. Solve objective 2 with P <= P* (P* the price found, plus a relative 1e-9 for rounding), within what is
   left of the time limit (at least 1 s); its solution replaces step 3's only if it is OPTIMAL or FEASIBLE
   (it cannot cost more).
6. Extract: counts rounded, shares clipped to [0, 1] and renormalised per class, loads and power recomputed
   from them, so every published figure satisfies the constraints above up to floating-point rounding.

Contracts: deterministic for a given problem (SCIP's one-thread search is; a solve cut short by its time
limit may differ between runs). :func:`size_fleet` never raises for a well-formed :class:`SizingProblem`:
failures come back as a status with a reason. Malformed problems (non-positive rates, prices or caps,
unknown names) raise ``ValueError`` when the problem is built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ortools.linear_solver.python import model_builder as mb

__all__ = [
    "STATUS_ERROR",
    "STATUS_FEASIBLE",
    "STATUS_INFEASIBLE",
    "STATUS_OPTIMAL",
    "STATUS_TIMEOUT",
    "MixEntry",
    "SizingClass",
    "SizingOption",
    "SizingProblem",
    "SizingResult",
    "SizingZone",
    "size_fleet",
]

STATUS_OPTIMAL = "optimal"
STATUS_FEASIBLE = "feasible"
STATUS_INFEASIBLE = "infeasible"
STATUS_TIMEOUT = "timeout"
STATUS_ERROR = "error"

_W_PER_KW = 1000.0
_ZONE_ORDER_W = 1e-6  # ε of objective 2: prefer the zones listed first among fleets of equal power
_LOAD_TIE_W = 1e-3  # δ of objective 2: prefer spare capacity among fleets of equal power
# Capacities below this many requests/s are treated as "cannot serve": their 1/cap coefficients would
# make the model numerically fragile, and such an instance could not serve one request a day.
_MIN_CAPACITY_PER_S = 1e-6


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizingClass:
    """A demand class c: its name and ``rate_per_s`` (rate_c)."""

    name: str
    rate_per_s: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("class name: must not be empty")
        _positive(f"class {self.name}: rate_per_s", self.rate_per_s)


@dataclass(frozen=True, slots=True)
class SizingOption:
    """A candidate configuration k: price and power of one instance, and its capacity per class.

    ``capacity_per_s[class name]`` is cap[k, c] (requests/s of the class one instance serves within the
    class's SLO, headroom included); classes it does not list, or lists at 0, it cannot serve.
    ``max_instances`` is an availability limit (None: no limit).
    """

    name: str
    price_usd_per_hour: float
    idle_w: float
    dynamic_w: float
    capacity_per_s: Mapping[str, float]
    max_instances: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("option name: must not be empty")
        _positive(f"option {self.name}: price_usd_per_hour", self.price_usd_per_hour)
        _non_negative(f"option {self.name}: idle_w", self.idle_w)
        _non_negative(f"option {self.name}: dynamic_w", self.dynamic_w)
        for c, v in self.capacity_per_s.items():
            _non_negative(f"option {self.name}: capacity_per_s[{c}]", v)
        if self.max_instances is not None and (
            isinstance(self.max_instances, bool)
            or not isinstance(self.max_instances, int)
            or self.max_instances < 0
        ):
            raise ValueError(f"option {self.name}: max_instances must be an integer >= 0 or None")


@dataclass(frozen=True, slots=True)
class SizingZone:
    """A zone z and its power cap pcap_z in W (``math.inf``: no cap)."""

    name: str
    power_cap_w: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("zone name: must not be empty")
        if not (isinstance(self.power_cap_w, int | float) and self.power_cap_w > 0):
            raise ValueError(f"zone {self.name}: power_cap_w must be > 0, got {self.power_cap_w!r}")


@dataclass(frozen=True)
class SizingProblem:
    """Classes, candidate configurations and zones (the formulation's sets and parameters)."""

    classes: tuple[SizingClass, ...]
    options: tuple[SizingOption, ...]
    zones: tuple[SizingZone, ...]

    def __post_init__(self) -> None:
        for what, names in (
            ("class", [c.name for c in self.classes]),
            ("option", [k.name for k in self.options]),
            ("zone", [z.name for z in self.zones]),
        ):
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"{what} {n!r} is given twice")
                seen.add(n)
        if not self.classes:
            raise ValueError("classes: at least one class with a positive rate is needed")
        if not self.zones:
            raise ValueError("zones: at least one zone is needed")
        known = {c.name for c in self.classes}
        for k in self.options:
            unknown = sorted(set(k.capacity_per_s) - known)
            if unknown:
                raise ValueError(f"option {k.name}: capacity for unknown class(es) {', '.join(unknown)}")

    def restricted(self, option_names: Sequence[str]) -> SizingProblem:
        """The same problem with only the named candidate configurations (in their order here)."""
        wanted = set(option_names)
        return SizingProblem(
            classes=self.classes, options=tuple(k for k in self.options if k.name in wanted), zones=self.zones
        )


@dataclass(frozen=True, slots=True)
class MixEntry:
    """Instances of one configuration in one zone, and the traffic they take.

    ``share`` maps class name to the share of that class's requests these instances serve; ``load`` is
    their capacity in use, in instances' worth (<= ``instances``); ``power_w`` their power at that load.
    """

    zone: str
    option: str
    instances: int
    price_usd_per_hour: float  # of all these instances
    load: float
    power_w: float
    share: Mapping[str, float]


@dataclass(frozen=True)
class SizingResult:
    """The outcome of one solve.

    ``status``: "optimal", "feasible" (time limit hit with a solution, ``bound_usd_per_hour`` proven),
    "infeasible", "timeout" (no solution in time) or "error". Without a solution ``mix`` is empty and the
    figures are 0; ``reason`` says why (for "infeasible": the classes nobody serves, or by how much the
    power caps fall short). ``power_w`` is per zone at planned load. ``solve_seconds`` is wall-clock.
    """

    status: str
    reason: str
    mix: tuple[MixEntry, ...]
    price_usd_per_hour: float
    power_w: Mapping[str, float]
    bound_usd_per_hour: float | None
    solve_seconds: float
    integer_variables: int
    share_variables: int

    @property
    def solved(self) -> bool:
        return self.status in (STATUS_OPTIMAL, STATUS_FEASIBLE)

    @property
    def instances(self) -> int:
        return sum(m.instances for m in self.mix)


@dataclass(frozen=True, slots=True)
class _Data:
    """The problem reduced to indices: F as cap[(k, c)] > 0, the bounds N_k, and the caps."""

    rates: tuple[float, ...]
    cap: Mapping[tuple[int, int], float]  # (k, c) -> cap[k, c] > 0
    upper: tuple[int, ...]  # N_k
    caps_w: tuple[float, ...]  # pcap_z (inf: no cap)


def _prepare(problem: SizingProblem) -> tuple[_Data, list[str]]:
    """The indexed data, and the names of the classes no configuration serves."""
    class_index = {c.name: ci for ci, c in enumerate(problem.classes)}
    rates = tuple(c.rate_per_s for c in problem.classes)
    cap: dict[tuple[int, int], float] = {}
    upper: list[int] = []
    for ki, k in enumerate(problem.options):
        need = 0.0
        for name, v in k.capacity_per_s.items():
            if v >= _MIN_CAPACITY_PER_S:
                ci = class_index[name]
                cap[ki, ci] = float(v)
                need += rates[ci] / v
        bound = math.ceil(need - 1e-9) if need > 0 else 0
        if k.max_instances is not None:
            bound = min(bound, k.max_instances)
        upper.append(bound)
    served = {ci for _, ci in cap}
    unserved = [c.name for ci, c in enumerate(problem.classes) if ci not in served]
    return (
        _Data(
            rates=rates,
            cap=MappingProxyType(cap),
            upper=tuple(upper),
            caps_w=tuple(float(z.power_cap_w) for z in problem.zones),
        ),
        unserved,
    )


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Model:
    model: mb.Model
    n: Mapping[tuple[int, int], mb.Variable]  # n[z, k]: instances of k in zone z
    s: Mapping[tuple[int, int, int], mb.Variable]  # s[z, k, c]: share of class c served by k in zone z
    load: Mapping[tuple[int, int], mb.Variable]  # load[z, k]: instances' worth of capacity in use


def _build(
    problem: SizingProblem,
    data: _Data,
    *,
    objective: str = "price",
    price_cap_usd_per_hour: float | None = None,
    power_caps: bool = True,
) -> _Model:
    """The MIP in the docstring's order. ``objective``: "price" (objective 1) or "power" (objective 2);
    ``price_cap_usd_per_hour``: P <= this (objective 2's constraint); ``power_caps``: False drops the
    (power) constraints (the diagnostic of an infeasible problem)."""
    m = mb.Model()
    zones = range(len(problem.zones))
    options = range(len(problem.options))
    pairs = sorted(data.cap)  # F, as (k, c)

    # --- Variables ---------------------------------------------------------------------------------------
    # n[z, k] ∈ {0..N_k}: instances of k in zone z.
    n = {(z, k): m.new_int_var(0, data.upper[k], f"n[{z},{k}]") for z in zones for k in options}
    # s[z, k, c] ∈ [0, 1]: share of class c's requests served by k in zone z, only for (k, c) ∈ F.
    s = {(z, k, c): m.new_num_var(0.0, 1.0, f"s[{z},{k},{c}]") for z in zones for (k, c) in pairs}
    # load[z, k] ∈ [0, N_k]: instances' worth of k's capacity in use in zone z.
    load = {
        (z, k): m.new_num_var(0.0, float(data.upper[k]), f"load[{z},{k}]") for z in zones for k in options
    }

    # --- Objective ---------------------------------------------------------------------------------------
    counts = [n[z, k] for z in zones for k in options]
    loads = [load[z, k] for z in zones for k in options]
    price = [problem.options[k].price_usd_per_hour for _ in zones for k in options]
    idle = [problem.options[k].idle_w for _ in zones for k in options]
    dynamic = [problem.options[k].dynamic_w for _ in zones for k in options]
    if objective == "price":
        # 1. USD/h: the price of every instance bought.
        m.minimize(mb.LinearExpr.weighted_sum(counts, price))
    else:
        # 2. W: idle power of every instance plus the load-proportional power, and ε W per instance per
        # zone index (fill the zones listed first) ...
        # zone index (fill the zones listed first) and, before that, δ W per instance's worth of capacity
        # in use (of equal fleets, the one with the most SLO-feasible capacity to spare) ...
        zone_order = [_ZONE_ORDER_W * z for z in zones for _ in options]
        m.minimize(
            mb.LinearExpr.weighted_sum(
                counts + loads,
                [i + o for i, o in zip(idle, zone_order, strict=True)] + [d + _LOAD_TIE_W for d in dynamic],
            )
        )
        if price_cap_usd_per_hour is not None:
            # ... among the fleets that cost no more than the least price.
            m.add(mb.LinearExpr.weighted_sum(counts, price) <= price_cap_usd_per_hour)

    # --- Constraints -------------------------------------------------------------------------------------
    options_serving: dict[int, list[int]] = {}
    classes_served: dict[int, list[int]] = {}
    for k, c in pairs:
        options_serving.setdefault(c, []).append(k)
        classes_served.setdefault(k, []).append(c)

    # (demand) every request of class c is served by some configuration in some zone.
    for c, ks in sorted(options_serving.items()):
        terms = [s[z, k, c] for z in zones for k in ks]
        m.add(mb.LinearExpr.weighted_sum(terms, [1.0] * len(terms)) == 1.0)

    for z in zones:
        for k in options:
            cs = classes_served.get(k, [])
            # (load) the capacity in use: each class's rate on k as a share of one instance's capacity.
            m.add(
                mb.LinearExpr.weighted_sum(
                    [s[z, k, c] for c in cs] + [load[z, k]],
                    [data.rates[c] / data.cap[k, c] for c in cs] + [-1.0],
                )
                == 0.0
            )
            # (capacity) the load fits in the instances bought.
            m.add(load[z, k] <= n[z, k])

    if power_caps:
        for z in zones:
            if math.isinf(data.caps_w[z]):
                continue
            # (power) idle power of the zone's instances plus their load-proportional power, within its cap.
            m.add(
                mb.LinearExpr.weighted_sum(
                    [n[z, k] for k in options] + [load[z, k] for k in options],
                    [problem.options[k].idle_w for k in options]
                    + [problem.options[k].dynamic_w for k in options],
                )
                <= data.caps_w[z]
            )
    return _Model(model=m, n=MappingProxyType(n), s=MappingProxyType(s), load=MappingProxyType(load))


# ---------------------------------------------------------------------------------------------------------
# Solve and extract
# ---------------------------------------------------------------------------------------------------------


def _scip(time_limit_s: float, mip_gap_ratio: float) -> mb.Solver:
    solver = mb.Solver("scip")
    solver.set_time_limit_in_seconds(max(1e-3, time_limit_s))
    solver.set_solver_specific_parameters(f"limits/gap = {mip_gap_ratio!r}\nparallel/maxnthreads = 1\n")
    return solver


def _extract(problem: SizingProblem, data: _Data, sm: _Model, solver: mb.Solver) -> tuple[MixEntry, ...]:
    """The mix of a solution: counts rounded, shares clipped and renormalised per class, loads and power
    recomputed from them (docstring, step 5)."""
    zones = range(len(problem.zones))
    raw = {key: min(1.0, max(0.0, float(solver.value(v)))) for key, v in sm.s.items()}
    total = [0.0] * len(problem.classes)
    for (_, _, c), v in raw.items():
        total[c] += v
    shares = {key: v / total[key[2]] for key, v in raw.items() if v > 1e-12 and total[key[2]] > 0}
    mix: list[MixEntry] = []
    for z in zones:
        for k, opt in enumerate(problem.options):
            count = round(solver.value(sm.n[z, k]))
            if count <= 0:
                continue
            own = {
                problem.classes[c].name: v for (zz, kk, c), v in sorted(shares.items()) if zz == z and kk == k
            }
            load = sum(
                data.rates[c] * v / data.cap[k, c] for (zz, kk, c), v in shares.items() if zz == z and kk == k
            )
            mix.append(
                MixEntry(
                    zone=problem.zones[z].name,
                    option=opt.name,
                    instances=count,
                    price_usd_per_hour=count * opt.price_usd_per_hour,
                    load=load,
                    power_w=count * opt.idle_w + opt.dynamic_w * min(load, float(count)),
                    share=MappingProxyType(own),
                )
            )
    return tuple(mix)


def _least_power_w(
    problem: SizingProblem, data: _Data, deadline: float, mip_gap_ratio: float
) -> float | None:
    """The least total power at planned load of any fleet of the candidates that serves every class (no
    caps), or None if that solve does not finish in time."""
    sm = _build(problem, data, objective="power", power_caps=False)
    solver = _scip(deadline - time.perf_counter(), mip_gap_ratio)
    status = solver.solve(sm.model)
    if status == mb.SolveStatus.OPTIMAL:
        return float(solver.objective_value)
    if status == mb.SolveStatus.FEASIBLE:
        return float(solver.best_objective_bound)  # a lower bound: still proves the caps short
    if status == mb.SolveStatus.INFEASIBLE:
        return math.inf  # the availability limits alone leave the workload unserved
    return None


def _power_reason(problem: SizingProblem, least_w: float | None) -> str:
    caps = [z.power_cap_w for z in problem.zones]
    total_cap_w = sum(caps)
    zones = ", ".join(f"{z.name} {z.power_cap_w / _W_PER_KW:.1f} kW" for z in problem.zones)
    if least_w is None:
        return f"no fleet fits the power caps ({zones}); the least power needed could not be found in time"
    if math.isinf(least_w):
        return "the instances available (max_instances) cannot serve the workload, whatever the power caps"
    if least_w > total_cap_w * (1 + 1e-9):
        return (
            f"power: the least power any fleet of these candidates draws at planned load is "
            f"{least_w / _W_PER_KW:.1f} kW, above the power caps ({zones})"
        )
    return (
        f"power: a fleet needs at least {least_w / _W_PER_KW:.1f} kW at planned load, but whole instances "
        f"cannot be split across the zones' caps ({zones})"
    )


def size_fleet(
    problem: SizingProblem, *, time_limit_s: float = 10.0, mip_gap_ratio: float = 0.0
) -> SizingResult:
    """The cheapest fleet for ``problem`` (module docstring: formulation and solving steps)."""
    _positive("time_limit_s", time_limit_s)
    _non_negative("mip_gap_ratio", mip_gap_ratio)
    t0 = time.perf_counter()
    deadline = t0 + time_limit_s
    sizes = {"ints": len(problem.zones) * len(problem.options), "shares": 0}

    def result(
        status: str,
        reason: str,
        mix: tuple[MixEntry, ...] = (),
        bound: float | None = None,
    ) -> SizingResult:
        power = dict.fromkeys((z.name for z in problem.zones), 0.0)
        for e in mix:
            power[e.zone] += e.power_w
        return SizingResult(
            status=status,
            reason=reason,
            mix=mix,
            price_usd_per_hour=math.fsum(e.price_usd_per_hour for e in mix),
            power_w=MappingProxyType(power),
            bound_usd_per_hour=bound,
            solve_seconds=time.perf_counter() - t0,
            integer_variables=sizes["ints"],
            share_variables=sizes["shares"],
        )

    # --- 1. Check ----------------------------------------------------------------------------------------
    data, unserved = _prepare(problem)
    sizes["shares"] = len(problem.zones) * len(data.cap)
    if unserved:
        return result(STATUS_INFEASIBLE, f"no candidate serves within the SLO: {', '.join(unserved)}")

    # --- 2. Model ----------------------------------------------------------------------------------------
    sm = _build(problem, data)

    # --- 3. Solve: objective 1 ------------------------------------------------------------------------
    solver = _scip(deadline - time.perf_counter(), mip_gap_ratio)
    status = solver.solve(sm.model)

    # --- 4. Status check, before reading any value -------------------------------------------------------
    if status == mb.SolveStatus.INFEASIBLE:
        least = _least_power_w(problem, data, max(deadline, time.perf_counter() + 1.0), mip_gap_ratio)
        return result(STATUS_INFEASIBLE, _power_reason(problem, least))
    if status in (mb.SolveStatus.NOT_SOLVED, mb.SolveStatus.UNKNOWN_STATUS) and (
        time.perf_counter() >= deadline - 1e-3
    ):
        return result(STATUS_TIMEOUT, f"no solution within the time limit of {time_limit_s:g} s")
    if status not in (mb.SolveStatus.OPTIMAL, mb.SolveStatus.FEASIBLE):
        return result(STATUS_ERROR, f"solver status {status.name}: {solver.status_string}")
    price = float(solver.objective_value)
    bound = float(solver.best_objective_bound) if status == mb.SolveStatus.FEASIBLE else price
    final, final_model = solver, sm

    # --- 5. Objective 2: the least power among the cheapest fleets ---------------------------------------
    sm2 = _build(problem, data, objective="power", price_cap_usd_per_hour=price * (1 + 1e-9) + 1e-9)
    solver2 = _scip(max(1.0, deadline - time.perf_counter()), mip_gap_ratio)
    if solver2.solve(sm2.model) in (mb.SolveStatus.OPTIMAL, mb.SolveStatus.FEASIBLE):
        final, final_model = solver2, sm2

    # --- 6. Extract --------------------------------------------------------------------------------------
    mix = _extract(problem, data, final_model, final)
    if status == mb.SolveStatus.OPTIMAL:
        return result(STATUS_OPTIMAL, "", mix, bound)
    return result(STATUS_FEASIBLE, f"time limit reached; proven lower bound {bound:.2f} USD/h", mix, bound)
