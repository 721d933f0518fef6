"""Policy configuration: defaults, validation, and loading from YAML data with paths in errors."""

from __future__ import annotations

import pytest

from fleet.types import Priority
from policies.config import (
    DataGravity,
    PolicyConfig,
    ProfileConfig,
    RetryBounds,
    ShedFractions,
    WeightedScorer,
)


def test_defaults_are_a_working_configuration() -> None:
    c = PolicyConfig()
    assert c.policy == "turnout" and c.max_fallbacks == 3
    assert [c.shedding.of(p) for p in (Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE)] == [
        1.0,
        0.9,
        0.8,
    ]
    assert c.gravity.latency_ms("r1", "r1") == 0.0 and c.gravity.latency_ms("", "r2") == 0.0
    assert c.gravity.latency_ms("r1", "r2") == 70.0


def test_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="sheddable <= standard <= critical"):
        ShedFractions(critical=1.0, standard=0.7, sheddable=0.8)
    with pytest.raises(ValueError, match="standard: must be <= 1"):
        ShedFractions(standard=1.5)
    with pytest.raises(ValueError, match="min_s: must be <= max_s"):
        RetryBounds(min_s=5.0, max_s=1.0)
    with pytest.raises(ValueError, match="weight: must be > 0"):
        WeightedScorer("cost", 0.0)
    with pytest.raises(ValueError, match="filters: a filter is listed twice"):
        ProfileConfig(filters=("context", "context"), scorers=(), picker="max_score")
    with pytest.raises(ValueError, match="max_fallbacks: must be in"):
        PolicyConfig(max_fallbacks=-1)
    with pytest.raises(ValueError, match="lease_max_ttl_s: must be >= lease_grace_s"):
        PolicyConfig(lease_grace_s=100.0, lease_max_ttl_s=10.0)
    with pytest.raises(ValueError, match="egress_usd_per_gb: must be a finite number"):
        DataGravity(egress_usd_per_gb=float("nan"))


def test_from_mapping_reads_every_section() -> None:
    c = PolicyConfig.from_mapping(
        {
            "policy": "cheapest_feasible",
            "max_plan_age_s": 30,
            "max_fallbacks": 2,
            "power_visible_after_s": None,
            "plan_profile": {
                "filters": ["context", "latency"],
                "scorers": {"cost": 2, "load": 1},
                "picker": "max_score",
            },
            "buckets": {"input_tokens": [512, 4096], "output_tokens": [256]},
            "shedding": {"standard": 0.95},
            "retry": {"max_s": 10},
            "data_gravity": {
                "egress_usd_per_gb": 0.01,
                "pairs": [{"from": "us-east-1", "to": "us-west-2", "latency_ms": 65}],
            },
        }
    )
    assert c.policy == "cheapest_feasible" and c.max_plan_age_s == 30.0 and c.max_fallbacks == 2
    assert c.plan_profile.filters == ("context", "latency")
    assert c.plan_profile.scorers == (WeightedScorer("cost", 2.0), WeightedScorer("load", 1.0))
    assert c.buckets.input_tokens == (512, 4096) and c.buckets.output_tokens == (256,)
    assert c.shedding.standard == 0.95 and c.shedding.sheddable == 0.8
    assert c.retry.max_s == 10.0 and c.retry.min_s == 0.05
    assert c.gravity.egress_usd_per_gb == 0.01
    assert c.gravity.latency_ms("us-west-2", "us-east-1") == 65.0
    assert PolicyConfig.from_mapping({}) == PolicyConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "planner.placement: must be a mapping"),
        ({"polcy": "x"}, "planner.placement.polcy: unknown key"),
        ({"max_fallbacks": 2.5}, "planner.placement.max_fallbacks: must be an integer"),
        ({"max_plan_age_s": True}, "planner.placement.max_plan_age_s: must be a number"),
        ({"max_plan_age_s": 0}, "planner.placement.max_plan_age_s: must be > 0"),
        ({"shedding": {"standard": 1.2}}, "planner.placement.shedding.standard: must be <= 1"),
        ({"shedding": {"critcal": 1.0}}, "planner.placement.shedding.critcal: unknown key"),
        (
            {"plan_profile": {"scorers": {"cost": -1}}},
            "planner.placement.plan_profile.scorers.cost: weight must be > 0",
        ),
        ({"plan_profile": {"filters": "context"}}, "planner.placement.plan_profile.filters: must be a list"),
        (
            {"buckets": {"input_tokens": [10, 5]}},
            r"planner.placement.buckets.input_tokens\[1\]: bounds must be strictly",
        ),
        (
            {"buckets": {"input_tokens": ["a"]}},
            r"planner.placement.buckets.input_tokens\[0\]: must be a number",
        ),
        (
            {"data_gravity": {"pairs": [{"from": "a", "to": "b"}]}},
            r"data_gravity.pairs\[0\].latency_ms: must be a number",
        ),
        ({"retry": {"min_s": 0}}, "planner.placement.retry.min_s: must be > 0"),
    ],
)
def test_from_mapping_errors_name_the_path_and_rule(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyConfig.from_mapping(data)
