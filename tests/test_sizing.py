"""The sizing model (``policies.sizing``) against an independent exhaustive search.

On small seeded random problems every vector of instance counts within the bounds is tried; for each, the
continuous rest (traffic shares) is an LP solved with GLOP through pywraplp, written here from the
formulation, to decide whether the counts can serve every class within the power caps and with how little
power. The model's answer must cost exactly the least feasible price and, among those, draw the least
power; every published mix is checked against every constraint from its own numbers.
"""

from __future__ import annotations

import itertools
import math
import random
import re

import pytest
from ortools.linear_solver import pywraplp  # type: ignore[attr-defined]

from policies.sizing import (
    STATUS_INFEASIBLE,
    STATUS_OPTIMAL,
    SizingClass,
    SizingOption,
    SizingProblem,
    SizingResult,
    SizingZone,
    size_fleet,
)


def _least_power_w(problem: SizingProblem, counts: dict[tuple[int, int], int]) -> float | None:
    """The least power (W) at which these instance counts serve every class within the caps, or None."""
    solver = pywraplp.Solver.CreateSolver("GLOP")
    zones, options, classes = problem.zones, problem.options, problem.classes
    share = {
        (z, k, c): solver.NumVar(0.0, 1.0, f"s{z}_{k}_{c}")
        for z in range(len(zones))
        for k, opt in enumerate(options)
        for c, cls in enumerate(classes)
        if opt.capacity_per_s.get(cls.name, 0.0) > 0.0
    }
    for c in range(len(classes)):
        solver.Add(sum(v for (_, _, cc), v in share.items() if cc == c) == 1.0)
    load = {}
    for z in range(len(zones)):
        for k, opt in enumerate(options):
            load[z, k] = sum(
                classes[c].rate_per_s * v / opt.capacity_per_s[classes[c].name]
                for (zz, kk, c), v in share.items()
                if zz == z and kk == k
            )
            solver.Add(load[z, k] <= counts[z, k])
    power = {
        z: sum(
            options[k].idle_w * counts[z, k] + options[k].dynamic_w * load[z, k] for k in range(len(options))
        )
        for z in range(len(zones))
    }
    for z, zone in enumerate(zones):
        if math.isfinite(zone.power_cap_w):
            solver.Add(power[z] <= zone.power_cap_w)
    solver.Minimize(sum(power.values()))
    if solver.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    return float(solver.Objective().Value())


def _exhaustive(problem: SizingProblem) -> tuple[float, float] | None:
    """(least price, least power at that price) over every count vector, or None if none is feasible.

    Counts per zone and option go up to ceil(Σ_c rate_c / cap[k, c]): with more, the option's load still
    fits in that many, so dropping the extra instances stays feasible and saves price and idle power.
    Vectors are tried in order of price; the search stops after the first price level with a feasible one.
    """
    keys = [(z, k) for z in range(len(problem.zones)) for k in range(len(problem.options))]
    rates = {c.name: c.rate_per_s for c in problem.classes}
    bound = {
        k: math.ceil(sum(rates[c] / v for c, v in opt.capacity_per_s.items() if v > 0) - 1e-9)
        for k, opt in enumerate(problem.options)
    }
    vectors = itertools.product(*(range(bound[k] + 1) for _, k in keys))
    priced = sorted(
        (sum(problem.options[k].price_usd_per_hour * n for (_, k), n in zip(keys, v, strict=True)), v)
        for v in vectors
    )
    best: tuple[float, float] | None = None
    for price, vector in priced:
        if best is not None and price > best[0] + 1e-9:
            break
        power = _least_power_w(problem, dict(zip(keys, vector, strict=True)))
        if power is not None and (best is None or power < best[1]):
            best = (price, power)
    return best


def _check_mix(problem: SizingProblem, result: SizingResult) -> None:
    """Every constraint of the formulation, recomputed from the published mix."""
    rates = {c.name: c.rate_per_s for c in problem.classes}
    options = {k.name: k for k in problem.options}
    served = dict.fromkeys(rates, 0.0)
    power = {z.name: 0.0 for z in problem.zones}
    for e in result.mix:
        opt = options[e.option]
        load = 0.0
        for cls, s in e.share.items():
            assert 0.0 <= s <= 1.0 + 1e-9
            assert opt.capacity_per_s[cls] > 0.0  # (k, c) ∈ F
            served[cls] += s
            load += rates[cls] * s / opt.capacity_per_s[cls]
        assert load == pytest.approx(e.load, rel=1e-9, abs=1e-9)
        assert load <= e.instances + 1e-6  # (capacity)
        assert e.price_usd_per_hour == pytest.approx(e.instances * opt.price_usd_per_hour)
        assert e.power_w == pytest.approx(e.instances * opt.idle_w + opt.dynamic_w * load, rel=1e-6)
        power[e.zone] += e.power_w
    for cls, total in served.items():
        assert total == pytest.approx(1.0, abs=1e-6), cls  # (demand)
    for z in problem.zones:
        assert power[z.name] <= z.power_cap_w * (1 + 1e-6) + 1e-6  # (power)
        assert result.power_w[z.name] == pytest.approx(power[z.name], rel=1e-9, abs=1e-9)
    assert result.price_usd_per_hour == pytest.approx(sum(e.price_usd_per_hour for e in result.mix))


def _random_problem(rng: random.Random) -> SizingProblem:
    zone_count = rng.randint(1, 2)
    classes = tuple(SizingClass(f"c{i}", round(rng.uniform(2.0, 10.0), 2)) for i in range(rng.randint(1, 3)))
    options = []
    for k in range(rng.randint(2, 3) if zone_count == 1 else 2):
        capacity = {c.name: round(rng.uniform(3.0, 12.0), 2) for c in classes if k == 0 or rng.random() < 0.7}
        options.append(
            SizingOption(
                name=f"k{k}",
                price_usd_per_hour=float(rng.choice([3, 4, 5, 7, 10])),
                idle_w=float(rng.choice([100, 200, 400])),
                dynamic_w=float(rng.choice([300, 600, 900])),
                capacity_per_s=capacity,
            )
        )
    zones = tuple(
        SizingZone(f"z{z}", rng.choice([math.inf, 700.0, 1000.0, 1500.0, 2500.0])) for z in range(zone_count)
    )
    return SizingProblem(classes=classes, options=tuple(options), zones=zones)


@pytest.mark.parametrize("seed", range(30))
def test_matches_exhaustive_search_on_small_random_problems(seed: int) -> None:
    rng = random.Random(seed)
    problem = _random_problem(rng)
    expected = _exhaustive(problem)
    result = size_fleet(problem, time_limit_s=20.0)
    if expected is None:
        assert result.status == STATUS_INFEASIBLE
        assert result.reason.startswith("power:")
        return
    assert result.status == STATUS_OPTIMAL, result.reason
    assert result.price_usd_per_hour == pytest.approx(expected[0], abs=1e-6)
    assert sum(result.power_w.values()) == pytest.approx(expected[1], rel=1e-6, abs=1e-3)
    _check_mix(problem, result)


def test_the_random_problems_are_not_all_easy() -> None:
    """Among the seeds above: problems the caps make infeasible, mixes split over two zones by their caps,
    and a problem whose cap makes the cheapest fleet dearer than without it."""
    infeasible = split = dearer = 0
    for seed in range(30):
        problem = _random_problem(random.Random(seed))
        result = size_fleet(problem)
        uncapped = SizingProblem(
            problem.classes, problem.options, tuple(SizingZone(z.name, math.inf) for z in problem.zones)
        )
        infeasible += result.status == STATUS_INFEASIBLE
        split += len({e.zone for e in result.mix}) == 2
        dearer += result.solved and result.price_usd_per_hour > size_fleet(uncapped).price_usd_per_hour + 1e-9
    assert infeasible >= 2 and split >= 2 and dearer >= 1


def test_a_mix_beats_every_single_option_when_classes_favour_different_options() -> None:
    # "a" is served cheaply by k0 only; "b" by k1 only: the cheapest fleet needs both.
    problem = SizingProblem(
        classes=(SizingClass("a", 10.0), SizingClass("b", 10.0)),
        options=(
            SizingOption("k0", 10.0, 100.0, 400.0, {"a": 10.0, "b": 1.0}),
            SizingOption("k1", 10.0, 100.0, 400.0, {"a": 1.0, "b": 10.0}),
        ),
        zones=(SizingZone("z", math.inf),),
    )
    result = size_fleet(problem)
    assert result.status == STATUS_OPTIMAL
    assert {e.option: e.instances for e in result.mix} == {"k0": 1, "k1": 1}
    assert size_fleet(problem.restricted(["k0"])).price_usd_per_hour == pytest.approx(110.0)  # 1 + 10
    _check_mix(problem, result)


def test_the_power_cap_changes_the_mix_and_its_shortfall_is_reported() -> None:
    # k0 is cheaper but power hungry; under a tight cap the fleet must switch to k1.
    classes = (SizingClass("a", 20.0),)
    options = (
        SizingOption("k0", 5.0, 500.0, 1500.0, {"a": 10.0}),
        SizingOption("k1", 8.0, 100.0, 300.0, {"a": 10.0}),
    )
    free = size_fleet(SizingProblem(classes, options, (SizingZone("z", math.inf),)))
    assert {e.option: e.instances for e in free.mix} == {"k0": 2}
    capped = size_fleet(SizingProblem(classes, options, (SizingZone("z", 1500.0),)))
    assert {e.option: e.instances for e in capped.mix} == {"k1": 2}
    assert capped.power_w["z"] == pytest.approx(800.0)
    short = size_fleet(SizingProblem(classes, options, (SizingZone("z", 500.0),)))
    assert short.status == STATUS_INFEASIBLE
    assert "0.8 kW" in short.reason and "z 0.5 kW" in short.reason
    assert short.mix == ()


def test_equal_prices_are_decided_by_power() -> None:
    classes = (SizingClass("a", 5.0),)
    options = (
        SizingOption("hot", 10.0, 300.0, 900.0, {"a": 10.0}),
        SizingOption("cool", 10.0, 100.0, 300.0, {"a": 10.0}),
    )
    for order in (options, options[::-1]):
        result = size_fleet(SizingProblem(classes, order, (SizingZone("z", math.inf),)))
        assert [(e.option, e.instances) for e in result.mix] == [("cool", 1)]
        assert result.power_w["z"] == pytest.approx(100.0 + 300.0 * 0.5)


def test_zones_listed_first_are_filled_first() -> None:
    classes = (SizingClass("a", 25.0),)
    options = (SizingOption("k", 10.0, 100.0, 300.0, {"a": 10.0}),)
    zones = (SizingZone("first", 10_000.0), SizingZone("second", 10_000.0))
    result = size_fleet(SizingProblem(classes, options, zones))
    assert [(e.zone, e.instances) for e in result.mix] == [("first", 3)]


def test_a_class_nobody_serves_is_infeasible_before_solving() -> None:
    problem = SizingProblem(
        classes=(SizingClass("a", 1.0), SizingClass("long", 1.0)),
        options=(SizingOption("k", 1.0, 1.0, 1.0, {"a": 5.0, "long": 0.0}),),
        zones=(SizingZone("z", math.inf),),
    )
    result = size_fleet(problem)
    assert result.status == STATUS_INFEASIBLE
    assert result.reason == "no candidate serves within the SLO: long"


def test_availability_limits() -> None:
    classes = (SizingClass("a", 30.0),)
    options = (
        SizingOption("cheap", 1.0, 0.0, 0.0, {"a": 10.0}, max_instances=2),
        SizingOption("dear", 5.0, 0.0, 0.0, {"a": 10.0}),
    )
    result = size_fleet(SizingProblem(classes, options, (SizingZone("z", math.inf),)))
    assert {e.option: e.instances for e in result.mix} == {"cheap": 2, "dear": 1}
    none = size_fleet(SizingProblem(classes, options[:1], (SizingZone("z", math.inf),)))
    assert none.status == STATUS_INFEASIBLE
    assert "max_instances" in none.reason


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SizingClass("a", 0.0), "class a: rate_per_s: must be a finite number > 0"),
        (lambda: SizingOption("k", -1.0, 0.0, 0.0, {}), "option k: price_usd_per_hour"),
        (lambda: SizingOption("k", 1.0, 0.0, 0.0, {"a": math.nan}), "capacity_per_s[a]"),
        (lambda: SizingZone("z", 0.0), "zone z: power_cap_w must be > 0"),
        (
            lambda: SizingProblem((SizingClass("a", 1.0),), (SizingOption("k", 1.0, 0, 0, {"b": 1.0}),), ()),
            "zones: at least one zone",
        ),
        (
            lambda: SizingProblem(
                (SizingClass("a", 1.0),), (SizingOption("k", 1.0, 0, 0, {"b": 1.0}),), (SizingZone("z", 1.0),)
            ),
            "option k: capacity for unknown class(es) b",
        ),
        (
            lambda: SizingProblem(
                (SizingClass("a", 1.0), SizingClass("a", 2.0)), (), (SizingZone("z", 1.0),)
            ),
            "class 'a' is given twice",
        ),
    ],
)
def test_malformed_problems_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()  # type: ignore[operator]
