"""Configuration loading: good files load into frozen values; every bad one is refused naming the file,
the path inside it and the rule."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import dump, small_fleet, write_config

from fleet.types import LatencySlo, Precision, Priority
from policies.planner import PlannerConfig
from router.config import (
    ConfigError,
    FleetModel,
    TurnoutConfig,
    build_fleet,
    load_config,
    parse_config,
)

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: object) -> Mutation:
    """A mutation setting ``a.b[2].c`` in the config dict."""

    def apply(d: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        node: Any = d
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        last = parts[-1]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _delete(path: str) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        node: Any = d
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[parts[-1]]

    return apply


def _also(*mutations: Mutation) -> Mutation:
    def apply(d: dict[str, Any]) -> None:
        for m in mutations:
            m(d)

    return apply


def _dup_pool_name(d: dict[str, Any]) -> None:
    d["pools"][1]["name"] = d["pools"][0]["name"]


def _dup_zone(d: dict[str, Any]) -> None:
    d["zones"].append(dict(d["zones"][0]))


# (case id, mutation, expected path, a part of the expected rule)
SHAPE_ERRORS: list[tuple[str, Mutation, str, str]] = [
    ("unknown top-level key", _set("srever", {}), "srever", "unknown key; allowed:"),
    ("unknown server key", _set("server.port", 1), "server.port", "unknown key"),
    ("address without port", _set("server.grpc_addr", "localhost"), "server.grpc_addr", "HOST:PORT"),
    ("port out of range", _set("server.http_addr", "0.0.0.0:70000"), "server.http_addr", "0 to 65535"),
    ("negative grace", _set("server.shutdown_grace_s", -1), "server.shutdown_grace_s", ">= 0"),
    ("boolean grace", _set("server.shutdown_grace_s", True), "server.shutdown_grace_s", "got a boolean"),
    ("tiny gc threshold", _set("server.gc_gen0_threshold", 10), "server.gc_gen0_threshold", "integer >= 100"),
    ("float gc threshold", _set("server.gc_gen0_threshold", 5e3), "server.gc_gen0_threshold", "integer"),
    ("string number", _set("telemetry.stale_after_s", "15"), "telemetry.stale_after_s", "got a string"),
    ("zero staleness", _set("telemetry.stale_after_s", 0), "telemetry.stale_after_s", "> 0"),
    ("nan staleness", _set("telemetry.stale_after_s", math.nan), "telemetry.stale_after_s", "finite"),
    (
        "timeout above interval",
        _set("telemetry.scrape_timeout_s", 9),
        "telemetry.scrape_timeout_s",
        "must not exceed telemetry.scrape_interval_s",
    ),
    ("no zones", _set("zones", []), "zones", "at least one zone"),
    ("zones not a list", _set("zones", {"a": 1}), "zones", "must be a list"),
    ("duplicate zone", _dup_zone, "zones[2].name", "duplicate zone name 'test-az1' (also zones[0])"),
    ("negative cap", _set("zones[0].power_cap_w", -5), "zones[0].power_cap_w", "> 0"),
    ("bad zone name", _set("zones[0].name", "Bad_Zone"), "zones[0].name", "lowercase letters"),
    ("zone without region", _delete("zones[1].region"), "zones[1].region", "is required"),
    ("no pools", _set("pools", []), "pools", "at least one pool"),
    ("pools missing", _delete("pools"), "pools", "is required"),
    ("tp zero", _set("pools[2].tp_degree", 0), "pools[2].tp_degree", "must be an integer >= 1"),
    ("tp string", _set("pools[2].tp_degree", "2"), "pools[2].tp_degree", "must be an integer >= 1"),
    ("tp fraction", _set("pools[2].tp_degree", 1.5), "pools[2].tp_degree", "must be an integer >= 1"),
    ("tp boolean", _set("pools[2].tp_degree", True), "pools[2].tp_degree", "must be an integer >= 1"),
    (
        "unknown zone",
        _set("pools[0].zone", "use1-az9"),
        "pools[0].zone",
        "unknown zone 'use1-az9'; zones: test-az1, test-az2",
    ),
    ("duplicate pool", _dup_pool_name, "pools[1].name", "duplicate pool name 'h100-llama8b' (also pools[0])"),
    ("bad precision", _set("pools[0].precision", "fp16"), "pools[0].precision", "must be one of bf16, fp8"),
    (
        "engine sequence limit below one",
        _set("pools[0].max_batch_sequences", 0),
        "pools[0].max_batch_sequences",
        ">= 1",
    ),
    (
        "engine token budget below two",
        _set("pools[0].max_batched_tokens", 1),
        "pools[0].max_batched_tokens",
        ">= 2",
    ),
    (
        "bad telemetry mode",
        _set("pools[0].telemetry", "sometimes"),
        "pools[0].telemetry",
        "must be one of required, none",
    ),
    (
        "metrics url not http",
        _set("pools[0].metrics_url_template", "ftp://{pool}/m"),
        "pools[0].metrics_url_template",
        "http:// or https://",
    ),
    (
        "unknown placeholder",
        _set("pools[0].address_template", "{host}:80"),
        "pools[0].address_template",
        "{pool} and {index}",
    ),
    (
        "broken template",
        _set("pools[0].address_template", "{pool:80"),
        "pools[0].address_template",
        "not a valid template",
    ),
    (
        "metrics url with telemetry none",
        _set("pools[1].metrics_url_template", "http://{pool}-{index}/metrics"),
        "pools[1].metrics_url_template",
        "must be null when telemetry is none",
    ),
    ("zero instances", _set("pools[0].instances", 0), "pools[0].instances", "must be an integer >= 1"),
    ("zero price", _set("pools[0].price_usd_per_hour", 0), "pools[0].price_usd_per_hour", "> 0"),
    ("string bool", _set("pools[0].reserved", "yes"), "pools[0].reserved", "true or false"),
    ("unknown pool key", _set("pools[0].replicas", 2), "pools[0].replicas", "unknown key"),
    ("missing model", _delete("pools[0].model"), "pools[0].model", "is required"),
    ("empty model", _set("pools[0].model", " "), "pools[0].model", "must not be empty"),
    (
        "replicas per instance zero",
        _set("pools[0].replicas_per_instance", 0),
        "pools[0].replicas_per_instance",
        ">= 1",
    ),
    ("unknown job store", _set("jobs.store", "redis"), "jobs.store", "must be one of memory, postgres"),
    (
        "postgres without dsn",
        _set("jobs.store", "postgres"),
        "jobs.dsn",
        "is required when jobs.store is postgres",
    ),
    ("dsn for memory", _set("jobs.dsn", "postgresql://x"), "jobs.dsn", "must be null"),
    (
        "override without source",
        _set("catalog.overrides", {"p5.48xlarge": {"price_usd_per_hour": {"value": 1}}}),
        'catalog.overrides["p5.48xlarge"].price_usd_per_hour.source',
        "is required",
    ),
    (
        "override nan",
        _set(
            "catalog.overrides", {"p5.48xlarge": {"price_usd_per_hour": {"value": math.inf, "source": "x"}}}
        ),
        'catalog.overrides["p5.48xlarge"].price_usd_per_hour.value',
        "finite",
    ),
    (
        "unknown priority",
        _set("slo.defaults", {"urgent": {"ttft_ms": 1}}),
        "slo.defaults.urgent",
        "unknown key",
    ),
    ("zero slo", _set("slo.defaults", {"standard": {"ttft_ms": 0}}), "slo.defaults.standard.ttft_ms", "> 0"),
    ("models not a list", _set("models", "llama"), "models", "must be a list"),
    ("missing profile", _set("profiles", ["nope.csv"]), "profiles[0]", "file not found"),
    ("planner not a mapping", _set("planner", [1]), "planner", "must be a mapping"),
]


@pytest.mark.parametrize(
    ("mutation", "path", "rule_part"), [c[1:] for c in SHAPE_ERRORS], ids=[c[0] for c in SHAPE_ERRORS]
)
def test_shape_errors_name_file_path_and_rule(
    mutation: Mutation, path: str, rule_part: str, tmp_path: Path
) -> None:
    data = small_fleet()
    mutation(data)
    file = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    err = info.value
    assert (err.file, err.path) == (str(file), path), str(err)
    assert rule_part in err.rule, str(err)
    assert str(err) == f"{file}: {path}: {err.rule}"


def test_message_reads_file_path_rule() -> None:
    data = small_fleet()
    data["pools"][2]["tp_degree"] = -1
    with pytest.raises(ConfigError) as info:
        parse_config(dump(data), source="fleet.yaml", base_dir=Path.cwd())
    assert str(info.value) == "fleet.yaml: pools[2].tp_degree: must be an integer >= 1"


@pytest.mark.parametrize(
    ("text", "path", "rule_part"),
    [
        ("zones: []\nzones: []\npools: []\n", "zones", "duplicate key (line 2)"),
        ("zones:\n  - {name: a, name: b}\n", "zones[0].name", "duplicate key"),
        ("zones: [\n", "line 2, column 1", "is not valid YAML"),
        ("", "", "is empty"),
        ("- 1\n- 2\n", "(top level)", "must be a mapping"),
        ("zones: !!python/object:os.system {}\npools: []\n", "line 1, column 8", "is not valid YAML"),
    ],
)
def test_yaml_level_errors(text: str, path: str, rule_part: str, tmp_path: Path) -> None:
    file = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.path == path, str(info.value)
    assert rule_part in info.value.rule
    assert str(file) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: file not found"):
        load_config("nowhere.yaml")


def test_good_config_is_frozen_and_complete(tmp_path: Path) -> None:
    data = small_fleet()
    data["slo"] = {"models": {"llama-3.1-70b": {"standard": {"ttft_ms": 3000}}}}
    data["catalog"] = {
        "overrides": {"trn2.48xlarge": {"price_usd_per_hour": {"value": 40.0, "source": "rate"}}}
    }
    cfg = load_config(write_config(tmp_path, data))
    assert isinstance(cfg, TurnoutConfig)
    assert cfg.server.grpc_addr == "127.0.0.1:0" and cfg.server.shutdown_grace_s == 2.0
    assert cfg.server.gc_gen0_threshold == 10_000  # the default
    assert [p.name for p in cfg.pools] == ["h100-llama8b", "inf2-llama8b", "h200-llama70b"]
    assert cfg.pools[0].precision is Precision.FP8 and cfg.pools[0].expects_telemetry
    assert not cfg.pools[1].expects_telemetry
    # A partial per-model SLO inherits the missing field from the defaults.
    assert cfg.slo.slo_for("llama-3.1-70b", Priority.STANDARD) == LatencySlo(3000.0, 100.0)
    assert cfg.slo.slo_for("llama-3.1-8b", Priority.SHEDDABLE) == LatencySlo(10000.0, 200.0)
    assert cfg.catalog_overrides["trn2.48xlarge"]["price_usd_per_hour"] == (40.0, "rate")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pools = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.catalog_overrides["x"] = {}  # type: ignore[index]


def test_profiles_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "prof").mkdir()
    (tmp_path / "prof" / "m.csv").write_text("x\n")
    data = small_fleet()
    data["profiles"] = ["prof/m.csv"]
    cfg = load_config(write_config(tmp_path, data))
    assert cfg.profiles == (tmp_path / "prof" / "m.csv",)


# --- checks against the catalog, the model registry and the inventory rules


SEMANTIC_ERRORS: list[tuple[str, Mutation, str, str]] = [
    (
        "unknown instance type",
        _set("pools[0].instance_type", "p9.huge"),
        "pools[0].instance_type",
        "unknown instance type 'p9.huge'; known: ",
    ),
    ("unknown model", _set("pools[0].model", "gpt-5"), "pools[0].model", "unknown model 'gpt-5'; known: "),
    (
        "slo for unknown model",
        _set("slo.models", {"gpt-5": {"standard": {"ttft_ms": 1}}}),
        'slo.models["gpt-5"]',
        "unknown model",
    ),
    (
        "override of unknown instance type",
        _set("catalog.overrides", {"p9.huge": {"price_usd_per_hour": {"value": 1, "source": "s"}}}),
        "catalog.overrides.p9.huge",
        "unknown instance type",
    ),
    (
        "override of unknown field",
        _set("catalog.overrides", {"p5.48xlarge": {"warp_factor": {"value": 1, "source": "s"}}}),
        "catalog.overrides.p5.48xlarge.warp_factor",
        "unknown catalog field",
    ),
    ("bad extra model", _set("models", [{"name": "tiny"}]), "models[0]", ""),
]


@pytest.mark.parametrize(
    ("mutation", "path", "rule_part"), [c[1:] for c in SEMANTIC_ERRORS], ids=[c[0] for c in SEMANTIC_ERRORS]
)
def test_fleet_errors_name_file_path_and_rule(mutation: Mutation, path: str, rule_part: str) -> None:
    data = small_fleet()
    mutation(data)
    cfg = parse_config(dump(data), source="fleet.yaml", base_dir=Path.cwd())
    with pytest.raises(ConfigError) as info:
        build_fleet(cfg)
    assert info.value.file == "fleet.yaml"
    assert info.value.path.startswith(path), str(info.value)
    assert rule_part in info.value.rule, str(info.value)


@pytest.mark.parametrize(
    ("pool", "path_prefix"),
    [
        # 16 chips per replica on an 8-GPU instance
        ({"instance_type": "p5en.48xlarge", "tp_degree": 16}, "pools[2]"),
        # Llama-3.1-70B in bf16 (141 GB) on one 80 GB H100
        ({"instance_type": "p5.48xlarge", "tp_degree": 1, "precision": "bf16"}, "pools[2]"),
    ],
)
def test_inventory_rules_are_config_errors(pool: dict[str, object], path_prefix: str) -> None:
    data = small_fleet()
    data["pools"][2].update(pool)
    cfg = parse_config(dump(data), source="fleet.yaml", base_dir=Path.cwd())
    with pytest.raises(ConfigError) as info:
        build_fleet(cfg)
    assert info.value.path.startswith(path_prefix), str(info.value)
    assert info.value.rule


def test_embedded_default_fleet_builds() -> None:
    cfg = load_config()
    assert cfg.source.startswith("default_fleet.yaml")
    fleet = build_fleet(cfg)
    assert isinstance(fleet, FleetModel)
    kinds = {e.accelerator_kind for e in fleet.endpoints}
    assert kinds == {"h100", "h200", "b200", "trn1", "trn2", "inf2"}
    assert {e.model for e in fleet.endpoints} == {"llama-3.1-8b", "llama-3.1-70b"}
    assert {e.zone for e in fleet.endpoints} == {"use1-az1", "use1-az2"}
    assert all(not e.expects_telemetry for e in fleet.endpoints)
    for e in fleet.endpoints:
        profile = fleet.performance.profile(
            e.model, e.instance_type, e.tp_degree, e.precision, e.max_context_tokens
        )
        assert profile.fits, e.endpoint_id
    # Each zone's cap binds only at peak: above the idle draw, below everything at full power.
    for zone in cfg.zones:
        members = [e for e in fleet.endpoints if e.zone == zone.name]
        profiles = [
            fleet.performance.profile(
                e.model, e.instance_type, e.tp_degree, e.precision, e.max_context_tokens
            )
            for e in members
        ]
        idle = sum(p.idle_power_w for p in profiles)
        peak = sum(p.max_power_w for p in profiles)
        assert idle < zone.power_cap_w < peak, (zone.name, idle, zone.power_cap_w, peak)


# --------------------------------------------------------------------------------------------- planner

_STATIC = {"model": "llama-3.1-8b", "priority": "standard", "input_tokens": 1000, "output_tokens": 200}

# (case id, the planner section, expected path, a part of the expected rule)
PLANNER_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown key", {"interval": 5}, "planner.interval", "unknown key; allowed:"),
    ("interval zero", {"interval_s": 0}, "planner.interval_s", "> 0"),
    ("interval a string", {"interval_s": "30"}, "planner.interval_s", "got a string"),
    ("interval beyond plan age", {"interval_s": 90}, "planner.interval_s", "max_plan_age_s (60)"),
    ("time limit over interval", {"interval_s": 10, "time_limit_s": 10}, "planner.time_limit_s", "below"),
    ("enabled not a bool", {"enabled": "yes"}, "planner.enabled", "true or false"),
    ("negative replan interval", {"min_replan_interval_s": -1}, "planner.min_replan_interval_s", ">= 0"),
    ("change ratio above one", {"fleet_change_ratio": 1.5}, "planner.fleet_change_ratio", "<= 1"),
    ("headroom zero", {"headroom_ratio": 0}, "planner.headroom_ratio", "> 0"),
    ("headroom nan", {"headroom_ratio": math.nan}, "planner.headroom_ratio", "finite"),
    (
        "penalty negative",
        {"unserved_usd_per_request": {"standard": -1}},
        "planner.unserved_usd_per_request.standard",
        ">= 0",
    ),
    (
        "penalty order",
        {"unserved_usd_per_request": {"sheddable": 50}},
        "planner.unserved_usd_per_request",
        "critical >= standard >= sheddable",
    ),
    (
        "penalty unknown priority",
        {"unserved_usd_per_request": {"urgent": 1}},
        "planner.unserved_usd_per_request.urgent",
        "unknown key",
    ),
    (
        "energy price without source",
        {"energy_usd_per_kwh": 0.08},
        "planner.energy_price_source",
        "is required",
    ),
    ("energy price infinite", {"energy_usd_per_kwh": math.inf}, "planner.energy_usd_per_kwh", "finite"),
    (
        "churn a bool",
        {"churn_penalty_usd_per_hour": True},
        "planner.churn_penalty_usd_per_hour",
        "got a boolean",
    ),
    ("half-life zero", {"demand": {"half_life_s": 0}}, "planner.demand.half_life_s", "> 0"),
    (
        "merge unknown",
        {"demand": {"static_merge": "min"}},
        "planner.demand.static_merge",
        "must be one of max, sum",
    ),
    ("demand unknown key", {"demand": {"rate": 1}}, "planner.demand.rate", "unknown key"),
    ("static not a list", {"demand": {"static": {}}}, "planner.demand.static", "must be a list"),
    (
        "static without rate",
        {"demand": {"static": [_STATIC]}},
        "planner.demand.static[0].rate_per_s",
        "is required",
    ),
    (
        "static for an unserved model",
        {"demand": {"static": [{**_STATIC, "model": "llama-3.1-405b", "rate_per_s": 1}]}},
        "planner.demand.static[0].model",
        "no pool serves 'llama-3.1-405b'",
    ),
    (
        "static zero rate",
        {"demand": {"static": [{**_STATIC, "rate_per_s": 0}]}},
        "planner.demand.static[0].rate_per_s",
        "> 0",
    ),
    (
        "static bad priority",
        {"demand": {"static": [{**_STATIC, "priority": "urgent", "rate_per_s": 1}]}},
        "planner.demand.static[0].priority",
        "must be one of critical, standard, sheddable",
    ),
    (
        "static class twice",
        {
            "demand": {
                "static": [{**_STATIC, "rate_per_s": 1}, {**_STATIC, "input_tokens": 900, "rate_per_s": 2}]
            }
        },
        "planner.demand.static[1]",
        "same traffic class llama-3.1-8b/in1024/out512/standard as planner.demand.static[0]",
    ),
    ("sweep zero", {"leases": {"expiry_sweep_s": 0}}, "planner.leases.expiry_sweep_s", "> 0"),
    ("remember negative", {"leases": {"remember_ended": -5}}, "planner.leases.remember_ended", ">= 0"),
    ("placement not a mapping", {"placement": [1]}, "planner.placement", "must be a mapping"),
    ("placement unknown key", {"placement": {"polciy": "x"}}, "planner.placement.polciy", "unknown key"),
    (
        "placement shed fraction",
        {"placement": {"shedding": {"standard": 1.5}}},
        "planner.placement.shedding.standard",
        "<= 1",
    ),
    (
        "placement shed order",
        {"placement": {"shedding": {"sheddable": 0.95}}},
        "planner.placement.shedding",
        "sheddable <= standard <= critical",
    ),
    (
        "placement unknown policy",
        {"placement": {"policy": "fastest"}},
        "planner.placement.policy",
        "unknown policy 'fastest'",
    ),
    (
        "placement unknown filter",
        {"placement": {"spill_profile": {"filters": ["latency", "vibes"], "scorers": {"cost": 1}}}},
        "planner.placement.spill_profile",
        "unknown filter 'vibes'",
    ),
    (
        "placement too many fallbacks",
        {"placement": {"max_fallbacks": 5}},
        "planner.placement.max_fallbacks",
        "at most 3",
    ),
    (
        "placement buckets",
        {"placement": {"buckets": {"input_tokens": [512, 256]}}},
        "planner.placement.buckets.input_tokens[1]",
        "strictly increasing",
    ),
    ("placement lease ttl", {"placement": {"lease_grace_s": 0}}, "planner.placement.lease_grace_s", "> 0"),
]


@pytest.mark.parametrize(
    ("section", "path", "rule_part"), [c[1:] for c in PLANNER_ERRORS], ids=[c[0] for c in PLANNER_ERRORS]
)
def test_planner_errors_name_file_path_and_rule(
    section: dict[str, Any], path: str, rule_part: str, tmp_path: Path
) -> None:
    data = small_fleet()
    data["planner"] = section
    file = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(file)
    err = info.value
    assert (err.file, err.path) == (str(file), path), str(err)
    assert rule_part in err.rule, str(err)


def test_planner_section_loads_into_frozen_settings(tmp_path: Path) -> None:
    data = small_fleet()
    data["planner"] = {
        "enabled": False,
        "interval_s": 20,
        "time_limit_s": 1.5,
        "min_replan_interval_s": 2,
        "fleet_change_ratio": 0.25,
        "headroom_ratio": 0.7,
        "unserved_usd_per_request": {"critical": 500, "sheddable": 0.5},
        "churn_penalty_usd_per_hour": 0.1,
        "energy_usd_per_kwh": 0.08,
        "energy_price_source": "utility tariff, 2026",
        "mip_gap_ratio": 0.001,
        "demand": {
            "half_life_s": 120,
            "static_merge": "sum",
            "static": [{**_STATIC, "priority": "critical", "input_tokens": 3000, "rate_per_s": 2.5}],
        },
        "leases": {"expiry_sweep_s": 0.5, "remember_ended": 10},
        "placement": {"policy": "cheapest_feasible", "max_plan_age_s": 45, "lease_grace_s": 10},
    }
    cfg = load_config(write_config(tmp_path, data))
    p = cfg.planning
    assert (p.enabled, p.interval_s, p.time_limit_s, p.min_replan_interval_s, p.fleet_change_ratio) == (
        False,
        20.0,
        1.5,
        2.0,
        0.25,
    )
    s = p.solver
    assert (s.headroom_ratio, s.churn_penalty_usd_per_hour, s.energy_usd_per_kwh, s.mip_gap_ratio) == (
        0.7,
        0.1,
        0.08,
        0.001,
    )
    assert s.accept_gap_ratio == PlannerConfig().accept_gap_ratio  # not given: the planner's default
    # A partial penalty table keeps the defaults of the priorities it does not name.
    assert (
        s.critical_unserved_usd_per_request,
        s.standard_unserved_usd_per_request,
        s.sheddable_unserved_usd_per_request,
    ) == (500.0, 10.0, 0.5)
    assert p.energy_price_source == "utility tariff, 2026"
    assert (p.demand_half_life_s, p.static_merge) == (120.0, "sum")
    (static,) = p.static_demand
    # Classified with the placement policy's buckets, exactly as Place traffic is.
    assert static.traffic_class.name == "llama-3.1-8b/in4096/out512/critical"
    assert (static.rate_per_s, static.mean_input_tokens, static.mean_output_tokens) == (2.5, 3000.0, 200.0)
    assert (p.leases.expiry_sweep_s, p.leases.remember_ended) == (0.5, 10)
    assert (p.placement.policy, p.placement.max_plan_age_s, p.placement.lease_grace_s) == (
        "cheapest_feasible",
        45.0,
        10.0,
    )
    assert cfg.planner["interval_s"] == 20  # the section as written stays available
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.interval_s = 1  # type: ignore[misc]


def test_planner_defaults_without_a_section() -> None:
    cfg = parse_config(dump(small_fleet()), source="fleet.yaml", base_dir=Path.cwd())
    p = cfg.planning
    assert p.enabled and p.interval_s < p.placement.max_plan_age_s and p.time_limit_s < p.interval_s
    assert p.static_demand == () and p.placement.policy == "turnout"
