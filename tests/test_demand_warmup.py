"""The demand estimator's start-up correction (``DemandEstimator(warmup=True)``): an estimate that is not
biased low while the window observed is shorter than a few half-lives, and the plain estimate after."""

from __future__ import annotations

import math
import random

import pytest

from fleet.types import Priority
from policies.demand import DEFAULT_BUCKET_BOUNDS, DemandEstimator, classify

CLS = classify("llama-3.1-8b", 500, 100, Priority.STANDARD, DEFAULT_BUCKET_BOUNDS)
OTHER = classify("llama-3.1-8b", 5000, 100, Priority.STANDARD, DEFAULT_BUCKET_BOUNDS)
T0 = 1_700_000_000.0


def stream(est: DemandEstimator, rate: float, until_s: float, seed: int = 3) -> None:
    rng = random.Random(seed)
    t = T0
    while True:
        t += rng.expovariate(rate)
        if t >= T0 + until_s:
            return
        est.observe(CLS, t, input_tokens=500, output_tokens=100)


@pytest.mark.parametrize("after_s", [10.0, 30.0, 60.0])
def test_early_estimate_is_the_rate_not_a_fraction_of_it(after_s: float) -> None:
    corrected = DemandEstimator(half_life_s=60.0, warmup=True, observing_since_s=T0)
    plain = DemandEstimator(half_life_s=60.0)
    stream(corrected, 50.0, after_s)
    stream(plain, 50.0, after_s)
    now = T0 + after_s
    assert corrected.rates(now)[CLS] == pytest.approx(50.0, rel=0.15)
    # The plain estimate has seen 1 - 2 ** (-t / H) of its window: 11 %, 29 %, 50 %.
    seen = 1.0 - 2.0 ** (-after_s / 60.0)
    assert plain.rates(now)[CLS] == pytest.approx(50.0 * seen, rel=0.15)


def test_after_many_half_lives_both_estimates_agree() -> None:
    corrected = DemandEstimator(half_life_s=20.0, warmup=True)
    plain = DemandEstimator(half_life_s=20.0)
    stream(corrected, 10.0, 600.0)
    stream(plain, 10.0, 600.0)
    now = T0 + 600.0
    assert corrected.rates(now)[CLS] == pytest.approx(plain.rates(now)[CLS], rel=1e-6)


def test_the_window_starts_at_the_first_observation_and_is_never_shorter_than_the_minimum() -> None:
    est = DemandEstimator(half_life_s=60.0, warmup=True, min_window_s=5.0)
    est.observe(CLS, T0)
    assert est.rates(T0)[CLS] == pytest.approx(1.0 / 5.0)  # not infinite
    for i in range(1, 20):
        est.observe(CLS, T0 + i)  # one a second
    window_s = 60.0 / math.log(2) * (1.0 - 2.0 ** (-20.0 / 60.0))
    weight = sum(2.0 ** (-(20.0 - i) / 60.0) for i in range(20))
    assert est.rates(T0 + 20.0)[CLS] == pytest.approx(weight / window_s)


def test_a_class_first_seen_later_ramps_up_from_the_shared_start() -> None:
    est = DemandEstimator(half_life_s=60.0, warmup=True, observing_since_s=T0)
    est.observe(OTHER, T0 + 600.0)
    # Ten minutes in, the window is ~H / ln 2 long: one request weighs as in the plain estimate.
    assert est.rates(T0 + 600.0)[OTHER] == pytest.approx(math.log(2) / 60.0, rel=0.01)


def test_the_default_is_the_plain_estimate() -> None:
    est = DemandEstimator(half_life_s=20.0)
    assert not est.warmup
    est.observe(CLS, T0)
    assert est.rates(T0)[CLS] == pytest.approx(math.log(2) / 20.0)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="min_window_s"):
        DemandEstimator(warmup=True, min_window_s=0.0)
    with pytest.raises(ValueError, match="observing_since_s"):
        DemandEstimator(warmup=True, observing_since_s=math.nan)
