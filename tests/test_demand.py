"""Demand estimation: classification into traffic classes, the decaying rate estimate, static demand."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.types import LatencySlo, Priority
from policies.demand import (
    DEFAULT_BUCKET_BOUNDS,
    BucketBounds,
    ClassDemand,
    DemandEstimator,
    StaticDemand,
    bucket_upper_bound,
    classify,
)
from policies.types import TrafficClass, model_and_priority_of

T0 = 1_763_000_000.0
BOUNDS = BucketBounds(input_tokens=(512, 2048, 8192), output_tokens=(128, 1024))
SLO = LatencySlo(ttft_ms=2000.0, tpot_ms=100.0)
CLS = TrafficClass("llama-3.1-8b", 2048, 128, Priority.STANDARD)


def slo_for(_: TrafficClass) -> LatencySlo:
    return SLO


# ------------------------------------------------------------------------------------------ classify


def test_classify_puts_lengths_in_the_first_bucket_whose_bound_holds_them() -> None:
    c = classify("llama-3.1-8b", 512, 129, Priority.CRITICAL, BOUNDS)
    assert c == TrafficClass("llama-3.1-8b", 512, 1024, Priority.CRITICAL)
    assert classify("m", 0, 0, Priority.SHEDDABLE, BOUNDS).input_bucket_tokens == 512
    assert classify("m", 513, 128, Priority.STANDARD, BOUNDS).input_bucket_tokens == 2048
    # Longer than the last bound: the last bucket.
    assert classify("m", 100_000, 5000, Priority.STANDARD, BOUNDS) == TrafficClass(
        "m", 8192, 1024, Priority.STANDARD
    )
    assert c.name == "llama-3.1-8b/in512/out1024/critical"


@given(st.integers(min_value=0, max_value=300_000))
def test_bucket_bound_is_the_smallest_bound_holding_the_length(n: int) -> None:
    bounds = DEFAULT_BUCKET_BOUNDS.input_tokens
    b = bucket_upper_bound(n, bounds)
    assert b in bounds
    if n <= bounds[-1]:
        assert n <= b
        smaller = [x for x in bounds if x < b]
        assert all(n > x for x in smaller)
    else:
        assert b == bounds[-1]


@pytest.mark.parametrize(
    ("inputs", "outputs", "field"),
    [
        ((), (128,), "input_tokens"),
        ((512, 512), (128,), "input_tokens[1]"),
        ((512,), (0,), "output_tokens[0]"),
        ((512,), (256, 128), "output_tokens[1]"),
    ],
)
def test_bucket_bounds_refuse_bad_bounds_naming_the_field(
    inputs: tuple[int, ...], outputs: tuple[int, ...], field: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(field)):
        BucketBounds(input_tokens=inputs, output_tokens=outputs)


def test_classify_refuses_negative_lengths() -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        classify("m", -1, 10, Priority.STANDARD, BOUNDS)
    with pytest.raises(ValueError, match="output_tokens"):
        classify("m", 1, -10, Priority.STANDARD, BOUNDS)


# ---------------------------------------------------------------------------------------- estimator


def test_steady_poisson_stream_is_estimated_within_a_few_percent() -> None:
    rng = random.Random(7)
    est = DemandEstimator(half_life_s=30.0)
    t = T0
    rate = 40.0
    while t < T0 + 600.0:
        t += rng.expovariate(rate)
        est.observe(CLS, t, input_tokens=1500, output_tokens=100)
    got = est.rates(t)[CLS]
    # Relative standard deviation of the estimate is 1 / sqrt(2 * rate * H / ln 2) ~ 2.4% here.
    assert got == pytest.approx(rate, rel=0.1)
    assert est.mean_tokens(CLS, t) == pytest.approx((1500.0, 100.0))


def test_rate_halves_every_half_life_without_traffic() -> None:
    est = DemandEstimator(half_life_s=20.0)
    for i in range(100):
        est.observe(CLS, T0 + i * 0.1)
    r0 = est.rates(T0 + 10.0)[CLS]
    assert est.rates(T0 + 30.0)[CLS] == pytest.approx(r0 / 2)
    assert est.rates(T0 + 50.0)[CLS] == pytest.approx(r0 / 4)
    # Each request adds ln(2) / H requests/s the moment it arrives.
    single = DemandEstimator(half_life_s=20.0)
    single.observe(CLS, T0)
    assert single.rates(T0)[CLS] == pytest.approx(math.log(2) / 20.0)


def test_classes_decayed_below_the_floor_disappear() -> None:
    est = DemandEstimator(half_life_s=1.0, min_rate_per_s=0.01)
    est.observe(CLS, T0)
    assert CLS in est.rates(T0)
    assert CLS not in est.rates(T0 + 60.0)
    assert est.demand(T0 + 60.0, slo_for) == {}


def test_time_going_backwards_does_not_inflate_or_decay_the_estimate() -> None:
    est = DemandEstimator(half_life_s=10.0)
    est.observe(CLS, T0 + 100.0)
    before = est.rates(T0 + 100.0)[CLS]
    est.observe(CLS, T0 + 50.0)  # an out-of-order report counts as arriving now
    assert est.rates(T0 + 100.0)[CLS] == pytest.approx(2 * before)
    assert est.rates(T0)[CLS] == pytest.approx(2 * before)  # querying the past does not grow it


def test_mean_tokens_are_weighted_towards_recent_requests() -> None:
    est = DemandEstimator(half_life_s=10.0)
    est.observe(CLS, T0, input_tokens=1000, output_tokens=100)
    est.observe(CLS, T0 + 10.0, input_tokens=2000, output_tokens=50)
    # Weights 1/2 and 1 at T0 + 10.
    mean_in, mean_out = est.mean_tokens(CLS, T0 + 10.0)
    assert mean_in == pytest.approx((0.5 * 1000 + 2000) / 1.5)
    assert mean_out == pytest.approx((0.5 * 100 + 50) / 1.5)
    # Without token counts the shape is the bucket's bound (the conservative assumption).
    other = TrafficClass("m", 8192, 1024, Priority.SHEDDABLE)
    est.observe(other, T0)
    assert est.mean_tokens(other, T0) == (8192.0, 1024.0)


def test_demand_carries_rate_shape_and_slo_and_is_immutable() -> None:
    est = DemandEstimator(half_life_s=10.0)
    est.observe(CLS, T0, input_tokens=1800, output_tokens=90, count=5)
    d = est.demand(T0, slo_for)
    assert d[CLS] == ClassDemand(
        rate_per_s=5 * math.log(2) / 10.0, mean_input_tokens=1800.0, mean_output_tokens=90.0, slo=SLO
    )
    with pytest.raises(TypeError):
        d[CLS] = d[CLS]  # type: ignore[index]


def test_static_demand_is_a_floor_with_max_and_added_with_sum() -> None:
    static = [StaticDemand(CLS, rate_per_s=10.0, mean_input_tokens=1000.0, mean_output_tokens=64.0)]
    only_static = TrafficClass("llama-3.1-70b", 512, 128, Priority.CRITICAL)
    static.append(StaticDemand(only_static, rate_per_s=2.0))
    est_max = DemandEstimator(half_life_s=10.0, static=static)
    est_sum = DemandEstimator(half_life_s=10.0, static=static, static_merge="sum")
    for est in (est_max, est_sum):
        est.observe(CLS, T0, input_tokens=2000, output_tokens=100, count=30)  # ~2.08 req/s observed
    observed = 30 * math.log(2) / 10.0
    # max: the static 10 req/s wins, with its own shape.
    assert est_max.rates(T0)[CLS] == pytest.approx(10.0)
    assert est_max.mean_tokens(CLS, T0) == (1000.0, 64.0)
    # sum: both, with the rate-weighted shape.
    assert est_sum.rates(T0)[CLS] == pytest.approx(10.0 + observed)
    assert est_sum.mean_tokens(CLS, T0)[0] == pytest.approx(
        (10.0 * 1000 + observed * 2000) / (10.0 + observed)
    )
    # A class known only from config, with the bucket bounds as its shape.
    assert est_max.rates(T0)[only_static] == 2.0
    assert est_max.mean_tokens(only_static, T0) == (512.0, 128.0)
    # Observed traffic above the static floor wins under max.
    est_max.observe(CLS, T0, input_tokens=2000, output_tokens=100, count=300)
    assert est_max.rates(T0)[CLS] == pytest.approx(330 * math.log(2) / 10.0)
    assert est_max.mean_tokens(CLS, T0) == pytest.approx((2000.0, 100.0))


def test_estimator_refuses_bad_settings_naming_them() -> None:
    with pytest.raises(ValueError, match="half_life_s"):
        DemandEstimator(half_life_s=0.0)
    with pytest.raises(ValueError, match="static_merge"):
        DemandEstimator(static_merge="avg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"static\[1\]"):
        DemandEstimator(static=[StaticDemand(CLS, 1.0), StaticDemand(CLS, 2.0)])
    with pytest.raises(ValueError, match="rate_per_s"):
        StaticDemand(CLS, rate_per_s=float("nan"))
    with pytest.raises(ValueError, match="count"):
        DemandEstimator().observe(CLS, T0, count=0)
    with pytest.raises(ValueError, match=r"slo\.tpot_ms"):
        ClassDemand(1.0, 10.0, 10.0, LatencySlo(ttft_ms=100.0, tpot_ms=0.0))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=1000.0), st.integers(min_value=1, max_value=5)),
        min_size=1,
        max_size=40,
    ),
    st.floats(min_value=1.0, max_value=300.0),
)
def test_rate_equals_the_sum_of_decayed_impulses(events: list[tuple[float, int]], half_life_s: float) -> None:
    est = DemandEstimator(half_life_s=half_life_s, min_rate_per_s=0.0)
    events = sorted(events)
    for t, k in events:
        est.observe(CLS, T0 + t, count=k)
    now = T0 + events[-1][0] + 5.0
    expected = (
        sum(k * 2.0 ** (-(now - (T0 + t)) / half_life_s) for t, k in events) * math.log(2) / half_life_s
    )
    assert est.rates(now)[CLS] == pytest.approx(expected, rel=1e-9)


def test_pruning_frees_decayed_classes_and_keeps_live_ones() -> None:
    est = DemandEstimator(half_life_s=1.0, min_rate_per_s=0.01)
    stale = TrafficClass("m", 512, 128, Priority.SHEDDABLE)
    est.observe(stale, T0)
    for i in range(DemandEstimator._PRUNE_EVERY):
        est.observe(CLS, T0 + 100.0 + i * 1e-3)
    assert stale not in est._state
    assert CLS in est._state


def test_a_class_name_gives_back_its_model_and_priority() -> None:
    cls = TrafficClass("org/model-8b", 2048, 512, Priority.SHEDDABLE)  # a model name may hold a slash
    assert model_and_priority_of(cls.name) == ("org/model-8b", "sheddable")
    assert model_and_priority_of("not-a-class") is None
