"""The router's own policies (policies/) driven through the simulator's adapter, planner included."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.catalog import load_catalog
from fleet.models import load_models
from fleet.perf import PerformanceModel
from fleet.types import LatencySlo, PoolSpec, Precision, Priority, ZoneSpec
from policies.registry import UnknownPluginError
from router.config import ConfigError
from sim.engine import SimConfig, SimFleet, fleet_from_pools, load_fleet, simulate
from sim.policy_adapter import RouterPolicy, router_policy
from sim.traces import cut_duration, load_trace

_PERFORMANCE = PerformanceModel(load_catalog(), load_models())


def small_fleet() -> SimFleet:
    """Six llama-3.1-8b endpoints: 2 on H100 (zone a), 2 on inf2 (zone a), 2 on trn1 (zone b)."""

    def pool(name: str, zone: str, instance_type: str, tp: int, precision: Precision) -> PoolSpec:
        return PoolSpec(
            name=name,
            zone=zone,
            instance_type=instance_type,
            model="llama-3.1-8b",
            tp_degree=tp,
            precision=precision,
            instances=1,
            address_template="{pool}-{index}:8000",
            replicas_per_instance=2,
        )

    return fleet_from_pools(
        [
            pool("h100", "a", "p5.48xlarge", 1, Precision.FP8),
            pool("inf2", "a", "inf2.48xlarge", 2, Precision.BF16),
            pool("trn1", "b", "trn1.32xlarge", 2, Precision.BF16),
        ],
        [ZoneSpec("a", "us-east-1", 5000.0), ZoneSpec("b", "us-east-1", 3000.0)],
        performance=_PERFORMANCE,
        source="small test fleet",
    )


FLEET = small_fleet()
TRACE = cut_duration(load_trace("builtin:azure-conv"), 120.0)
PLANNED = SimConfig(planner_interval_s=20.0, planner_first_run_s=20.0, telemetry_interval_s=1.0)


@pytest.mark.parametrize("name", ["turnout", "round_robin", "least_loaded", "random", "cheapest_feasible"])
def test_every_registered_policy_runs_and_leaves_no_lease_behind(name: str) -> None:
    policy = router_policy(name, FLEET.serving)
    assert isinstance(policy, RouterPolicy) and policy.name == name
    result = simulate(TRACE, FLEET, policy, PLANNED)
    s = result.summary
    assert s.requests == len(TRACE)
    assert s.completed + s.rejected == len(TRACE) and s.running == 0
    assert policy.placements + policy.refusals == len(TRACE)
    assert policy.placements == s.completed + s.rejected_by_reason.get("endpoint_kv_capacity", 0)
    assert len(policy.ledger) == 0  # every lease completed (or expired), nothing leaks
    assert s.total_usd > 0 and s.energy_kwh > 0
    # The policy's predictions are recorded beside what the simulation observed.
    assert s.prediction_ratio["ttft_observed_over_predicted_p50"] is not None


def test_round_robin_spreads_and_cheapest_feasible_concentrates() -> None:
    rr = simulate(TRACE, FLEET, router_policy("round_robin", FLEET.serving), PLANNED).summary
    assert all(p.requests > 0 for p in rr.pools)
    counts = [p.requests for p in rr.pools]
    assert max(counts) - min(counts) <= 2  # two endpoints per pool, placed in turn
    cf = simulate(TRACE, FLEET, router_policy("cheapest_feasible", FLEET.serving), PLANNED).summary
    assert len([p for p in cf.pools if p.requests > 0]) < len(cf.pools)


def test_turnout_follows_the_plans_of_the_real_planner() -> None:
    policy = router_policy("turnout", FLEET.serving)
    s = simulate(TRACE, FLEET, policy, PLANNED).summary
    assert s.planner["runs"] >= 5  # at 20, 40, ..., 120 s
    assert s.planner["statuses"].get("optimal", 0) >= 1
    assert policy.plan.generation >= 1
    assert s.placement_reasons.get("no_plan", 0) > 0  # before the first plan
    assert s.placement_reasons.get("plan", 0) > 0
    history = s.planner["history"]
    times = [h["t_s"] for h in history]
    assert times[0] == 20.0 and times == sorted(times)
    assert all(h["demand_rate_per_s"] > 0 for h in history)


def test_plan_driven_autoscaling_turns_idle_endpoints_off() -> None:
    fixed = simulate(TRACE, FLEET, router_policy("turnout", FLEET.serving), PLANNED).summary
    scaled_cfg = SimConfig(
        scaling="plan", planner_interval_s=20.0, planner_first_run_s=20.0, provisioning_delay_s=30.0
    )
    scaled = simulate(TRACE, FLEET, router_policy("turnout", FLEET.serving), scaled_cfg).summary
    assert scaled.total_usd < fixed.total_usd
    assert sum(p.mean_active_endpoints for p in scaled.pools) < len(FLEET.endpoints)
    assert sum(p.mean_active_endpoints for p in fixed.pools) == pytest.approx(len(FLEET.endpoints))
    assert scaled.completed + scaled.rejected == len(TRACE)


def test_baselines_ignore_the_planner() -> None:
    s = simulate(TRACE, FLEET, router_policy("least_loaded", FLEET.serving), PLANNED).summary
    assert s.planner["runs"] == 0
    assert set(s.placement_reasons) == {"no_plan"}


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(UnknownPluginError, match="unknown policy 'fastest'; known: cheapest_feasible"):
        router_policy("fastest", FLEET.serving)


CONFIG_YAML = """
slo:
  defaults: {standard: {ttft_ms: 1500, tpot_ms: 80}}
zones: [{name: use1-az1, region: us-east-1, power_cap_w: 20000}]
pools:
  - {name: h100, zone: use1-az1, instance_type: p5.48xlarge, model: llama-3.1-8b, tp_degree: 1,
     precision: fp8, instances: 1, replicas_per_instance: 2, address_template: "{pool}-{index}:8000",
     telemetry: none}
  - {name: inf2, zone: use1-az1, instance_type: inf2.48xlarge, model: llama-3.1-8b, tp_degree: 2,
     precision: bf16, instances: 1, replicas_per_instance: 2, address_template: "{pool}-{index}:8000",
     telemetry: none}
planner:
  interval_s: 20
  min_replan_interval_s: 7
  demand: {half_life_s: 30}
  placement: {max_plan_age_s: 90, random_seed: 5}
"""


def test_a_configuration_file_gives_the_fleet_the_slos_and_the_planner_settings(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(CONFIG_YAML, encoding="utf-8")
    fleet = load_fleet(path)
    assert fleet.source == str(path)
    assert [e.endpoint_id for e in fleet.endpoints] == [
        "use1-az1/h100/0", "use1-az1/h100/1", "use1-az1/inf2/0", "use1-az1/inf2/1"
    ]  # fmt: skip
    assert fleet.slo_for("llama-3.1-8b", Priority.STANDARD) == LatencySlo(1500.0, 80.0)
    assert fleet.planning is not None
    cfg = SimConfig.from_planning(fleet.planning, planner_first_run_s=10.0)
    assert (cfg.planner_interval_s, cfg.replan_min_interval_s, cfg.demand_half_life_s) == (20.0, 7.0, 30.0)
    assert cfg.planner_time_limit_s == 10.0  # at least the simulator's default, for determinism
    policy = router_policy("turnout", fleet.serving, fleet.planning.placement)
    trace = cut_duration(load_trace("builtin:azure-conv"), 60.0)
    s = simulate(trace, fleet, policy, cfg).summary
    assert s.planner["history"][0]["t_s"] == 10.0
    outcomes = simulate(trace, fleet, router_policy("random", fleet.serving), cfg).outcomes
    assert {o.slo_ttft_ms for o in outcomes} == {1500.0}


def test_a_bad_configuration_file_names_the_path_and_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG_YAML.replace("tp_degree: 2", "tp_degree: 5"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pools\[1\]\.tp_degree"):
        load_fleet(path)
