"""``turnout plan`` through ``router.cli.main``: exit codes, the JSON schema, the fleet file, measured
profiles and price overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from fleet.catalog import load_catalog
from fleet.types import Priority
from router.cli import main
from router.config import build_fleet, load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sizing"
WORKLOAD = str(EXAMPLES / "workload.yaml")
PROFILES = str(EXAMPLES / "profiles.csv")
TYPES = "p5.4xlarge,p5.48xlarge,trn2.48xlarge,inf2.48xlarge"


def _plan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["plan", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


@pytest.fixture(scope="module")
def example_plan() -> dict[str, Any]:
    """The plan of the example workload on four instance types (one run shared by several tests)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["plan", "--workload", WORKLOAD, "--instance-types", TYPES, "--json"])
    assert code == 0
    data: dict[str, Any] = json.loads(buf.getvalue())
    return data


def test_json_schema_and_figures_are_consistent(example_plan: dict[str, Any]) -> None:
    d = example_plan
    assert d["schema"] == "turnout.plan/1"
    assert set(d) == {
        "schema", "workload", "slo", "headroom_ratio", "power_share", "zones", "plan", "single_type",
        "candidates", "excluded", "seconds",
    }  # fmt: skip
    # The example's standard traffic may fill 90 % of a zone's cap (placement.shedding): sized within it.
    assert d["power_share"] == pytest.approx(0.9)
    for z in d["zones"]:
        assert d["plan"]["power_w"].get(z["name"], 0.0) <= 0.9 * z["power_cap_w"] + 1e-6
    plan = d["plan"]
    assert plan["status"] == "optimal"
    assert set(plan) == {
        "status", "reason", "usd_per_hour", "usd_per_million_tokens", "instances", "power_w", "power_w_total",
        "power_cap_w", "solve_seconds", "bound_usd_per_hour", "mix",
    }  # fmt: skip
    catalog = load_catalog()
    assert plan["usd_per_hour"] == pytest.approx(
        sum(m["instances"] * catalog.instance(m["instance_type"]).price_usd_per_hour for m in plan["mix"])
    )
    tokens_per_hour = d["workload"]["tokens_per_s"] * 3600
    assert plan["usd_per_million_tokens"] == pytest.approx(plan["usd_per_hour"] / tokens_per_hour * 1e6)
    assert sum(m["request_share"] for m in plan["mix"]) == pytest.approx(1.0)
    for m in plan["mix"]:
        assert 0.0 < m["load_ratio"] <= 1.0 + 1e-6
        assert m["power_w"] <= plan["power_cap_w"][m["zone"]]
    for z, w in plan["power_w"].items():
        assert w <= plan["power_cap_w"][z]
    assert d["slo"] == [
        {"model": "llama-3.1-8b", "priority": "standard", "ttft_ms": 2000.0, "tpot_ms": 100.0}
    ]
    # The mix is never dearer than the cheapest single-type fleet, and equal to one here or cheaper.
    singles = {s["instance_type"]: s for s in d["single_type"]}
    assert list(singles) == TYPES.split(",")
    feasible = [s["usd_per_hour"] for s in singles.values() if s["status"] == "optimal"]
    assert plan["usd_per_hour"] <= min(feasible) + 1e-9
    # inf2 misses the TTFT target for the longer prompts, and says so.
    assert singles["inf2.48xlarge"]["status"] == "infeasible"
    assert "TTFT of its longest prompt" in singles["inf2.48xlarge"]["reason"]
    assert singles["inf2.48xlarge"]["mix"] == []
    # Every candidate carries its price and power sources.
    for c in d["candidates"]:
        assert (
            c["price_source"] and c["power_source"] and c["capacity_source"].startswith("performance model")
        )
    trn2 = next(c for c in d["candidates"] if c["instance_type"] == "trn2.48xlarge")
    assert trn2["price_estimated"] is True  # a marked catalog estimate
    assert d["seconds"]["solve"] > 0


def test_text_output_shows_the_mix_and_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--workload", WORKLOAD, "--instance-types", "p5.4xlarge,inf2.48xlarge"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Cheapest fleet: optimal" in out
    assert "Cheapest fleet of one instance type:" in out
    assert "USD per million tokens" in out and "of 16.00 kW" in out
    assert "inf2.48xlarge" in out and "infeasible: no configuration serves" in out
    assert "Solve time:" in out


def test_fleet_out_is_a_loadable_fleet_with_the_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "planned.yaml"
    code, d, _ = _plan(capsys, "--workload", WORKLOAD, "--instance-types", TYPES, "--fleet-out", str(out))
    assert code == 0
    config = load_config(out)
    fleet = build_fleet(config)  # every inventory rule: TP divides the chips, the model fits, ...
    planned = {(m["zone"], m["instance_type"], m["tp_degree"], m["precision"]): m for m in d["plan"]["mix"]}
    pools = {(p.zone, p.instance_type, p.tp_degree, p.precision.value): p for p in config.pools}
    assert set(pools) == set(planned)
    for key, pool in pools.items():
        assert pool.instances == planned[key]["instances"]
        assert pool.model == "llama-3.1-8b"
        assert pool.max_batched_tokens == planned[key]["max_batched_tokens"]
    assert len(fleet.endpoints) == sum(m["replicas"] for m in d["plan"]["mix"])
    slo = config.slo.slo_for("llama-3.1-8b", Priority.STANDARD)
    assert (slo.ttft_ms, slo.tpot_ms) == (2000.0, 100.0)
    assert {z.name: z.power_cap_w for z in config.zones} == d["plan"]["power_cap_w"]
    assert config.planning.solver.headroom_ratio == d["headroom_ratio"]


def test_single_instance_type_gives_a_homogeneous_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h100.yaml"
    code, d, _ = _plan(
        capsys,
        "--workload",
        WORKLOAD,
        "--instance-types",
        "p5.48xlarge",
        "--fleet-out",
        str(out),
        "--ttft-ms",
        "1500",
    )
    assert code == 0
    assert {m["instance_type"] for m in d["plan"]["mix"]} == {"p5.48xlarge"}
    assert d["single_type"][0]["usd_per_hour"] == d["plan"]["usd_per_hour"]
    config = load_config(out)
    assert {p.instance_type for p in config.pools} == {"p5.48xlarge"}
    assert config.slo.slo_for("llama-3.1-8b", Priority.STANDARD).ttft_ms == 1500.0
    # The planned workload travels as the planner's static demand.
    assert sum(s.rate_per_s for s in config.planning.static_demand) == pytest.approx(
        d["workload"]["rate_per_s"]
    )


def test_price_override_changes_the_plan_and_travels_with_its_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At its catalog price p5.4xlarge wins; make it dear and trn2 takes over.
    out = tmp_path / "f.yaml"
    code, d, _ = _plan(
        capsys,
        "--workload", WORKLOAD, "--instance-types", "p5.4xlarge,trn2.48xlarge",
        "--price", "p5.4xlarge=40", "--price", "trn2.48xlarge=30", "--fleet-out", str(out),
    )  # fmt: skip
    assert code == 0
    assert {m["instance_type"] for m in d["plan"]["mix"]} == {"trn2.48xlarge"}
    trn2 = next(c for c in d["candidates"] if c["instance_type"] == "trn2.48xlarge")
    assert trn2["price_usd_per_hour"] == 30.0 and trn2["price_estimated"] is False
    assert trn2["price_source"] == "override: turnout plan --price trn2.48xlarge=30"
    assert d["plan"]["usd_per_hour"] == pytest.approx(30.0 * d["plan"]["instances"])
    fleet = build_fleet(load_config(out))
    assert fleet.catalog.instance("trn2.48xlarge").price_usd_per_hour == 30.0


def test_measured_profiles_replace_the_performance_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, d, _ = _plan(capsys, "--workload", WORKLOAD, "--profiles", PROFILES, "--instance-types", TYPES)
    assert code == 0
    for c in d["candidates"]:
        assert c["capacity_source"] == f"measured: {PROFILES}"
        assert (c["tp_degree"], c["precision"]) == (1, "fp8")
    p5 = next(c for c in d["candidates"] if c["instance_type"] == "p5.4xlarge")
    bucket = "llama-3.1-8b/in1-1024/out1-256/standard"
    assert p5["capacity_per_s"][bucket] == pytest.approx(0.8 * 92.6)  # the row's max_rps x headroom
    inf2 = next(s for s in d["single_type"] if s["instance_type"] == "inf2.48xlarge")
    assert (
        inf2["status"] == "infeasible" and "the measured profile has no row for this bucket" in inf2["reason"]
    )


def test_doubling_measured_rates_halves_the_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = Path(PROFILES).read_text(encoding="utf-8").splitlines()
    doubled = []
    for line in rows:
        if line.startswith("p5.4xlarge,"):
            cells = line.split(",")
            cells[5] = str(2 * float(cells[5]))
            line = ",".join(cells)
        doubled.append(line)
    fast = tmp_path / "fast.csv"
    fast.write_text("\n".join(doubled) + "\n", encoding="utf-8")
    base = _plan(capsys, "--workload", WORKLOAD, "--profiles", PROFILES, "--instance-types", "p5.4xlarge")[1]
    quick = _plan(capsys, "--workload", WORKLOAD, "--profiles", str(fast), "--instance-types", "p5.4xlarge")[
        1
    ]
    need = base["plan"]["mix"][0]["load_ratio"] * base["plan"]["instances"]
    assert base["plan"]["instances"] == math.ceil(need - 1e-9)
    assert quick["plan"]["instances"] == math.ceil(need / 2 - 1e-9)


def test_trace_input_plans_for_a_high_percentile_rate(capsys: pytest.CaptureFixture[str]) -> None:
    code, d, _ = _plan(capsys, "--trace", "builtin:azure-code", "--instance-types", "p5.4xlarge")
    assert code == 0
    w = d["workload"]
    assert w["requests"] == 8819
    assert w["mean_rate_per_s"] < w["rate_per_s"] <= w["peak_rate_per_s"]
    assert w["rate_basis"].startswith("p95 of requests by the request rate of their 10 s window")
    assert sum(b["share"] for b in w["buckets"]) == pytest.approx(1.0)


def test_a_power_cap_too_low_exits_1_with_the_shortfall(capsys: pytest.CaptureFixture[str]) -> None:
    code, d, err = _plan(
        capsys, "--workload", WORKLOAD, "--instance-types", "p5.4xlarge", "--power-cap-kw", "0.5"
    )
    assert code == 1
    assert d["plan"]["status"] == "infeasible"
    assert d["plan"]["reason"].startswith("power: the least power any fleet of these candidates draws")
    assert err.startswith("turnout plan: no fleet: infeasible: power:")
    assert [z["name"] for z in d["zones"]] == ["use1-az1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--workload", WORKLOAD, "--instance-types", "p9.huge"],
            "--instance-types: unknown instance type 'p9.huge'",
        ),
        (
            ["--workload", WORKLOAD, "--price", "p5.4xlarge"],
            "--price 'p5.4xlarge': must be INSTANCE_TYPE=USD_PER_HOUR",
        ),
        (["--workload", WORKLOAD, "--price", "p5.4xlarge=-3"], "the price must be a finite number > 0 USD/h"),
        (["--workload", WORKLOAD, "--headroom", "1.5"], "--headroom: must be in (0, 1], got 1.5"),
        (["--workload", WORKLOAD, "--precisions", "fp7"], "--precisions: unknown precision 'fp7'"),
        (["--workload", WORKLOAD, "--rate-scale", "2"], "--rate-scale: applies to --trace only"),
        (["--trace", "builtin:nope"], "builtin:nope: unknown builtin trace"),
        (["--trace", "builtin:azure-conv", "--model", "gpt-9"], "--model: unknown model 'gpt-9'"),
        (["--workload", "missing.yaml"], "missing.yaml: file not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("turnout plan: ") and message in err, err


def test_malformed_input_files_exit_2_naming_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "w.yaml"
    bad.write_text("model: llama-3.1-8b\nrate_per_s: ten\nhistogram: []\n", encoding="utf-8")
    assert main(["plan", "--workload", str(bad)]) == 2
    assert capsys.readouterr().err == (
        f"turnout plan: {bad}:2:13: rate_per_s: must be a finite number > 0, got 'ten'\n"
    )
    csv = tmp_path / "p.csv"
    csv.write_text("instance_type,input_min,input_max,output_min,output_max,max_rps\np5.4xlarge,1,2,1,2,x\n")
    assert main(["plan", "--workload", WORKLOAD, "--profiles", str(csv)]) == 2
    assert capsys.readouterr().err == (
        f"turnout plan: {csv}:2: column 6 (max_rps): must be a finite number > 0, got 'x'\n"
    )


def test_slow_prefill_gets_a_smaller_step_budget_and_the_fleet_file_carries_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # trn1's prefill is several times slower than an H100's: a full 2048-token chunk of the code trace's
    # longest prompts takes longer than the 100 ms TPOT target, so its configurations step 512 tokens at
    # a time, while the H100's keep the engine's default.
    out = tmp_path / "trn1.yaml"
    code, d, _ = _plan(
        capsys,
        "--trace", "builtin:azure-code",
        "--instance-types", "trn1.32xlarge,p5.48xlarge",
        "--fleet-out", str(out),
    )  # fmt: skip
    assert code == 0
    budgets = {(c["instance_type"], c["tp_degree"]): c["max_batched_tokens"] for c in d["candidates"]}
    assert budgets[("trn1.32xlarge", 16)] == 512
    assert budgets[("p5.48xlarge", 1)] == 2048
    by_type = {s["instance_type"]: s for s in d["single_type"]}
    assert {m["max_batched_tokens"] for m in by_type["trn1.32xlarge"]["mix"]} == {512}


@pytest.mark.parametrize(
    ("instance_type", "tp"),
    [("trn1.32xlarge", 4), ("trn1.32xlarge", 16), ("inf2.48xlarge", 12), ("p5.48xlarge", 1)],
)
def test_the_step_budget_is_the_largest_whose_chunk_step_meets_tpot(instance_type: str, tp: int) -> None:
    from fleet.types import Precision
    from sim.plan_fleet import STEP_BUDGETS, step_budget

    profile = build_fleet(load_config(None)).performance.profile(
        "llama-3.1-8b", instance_type, tp, Precision.FP8
    )
    longest, tpot_ms = 7000, 100.0

    def step_ms(budget: int) -> float:
        return profile.tpot_ms(1, longest) + (budget - 1) * profile.ttft_ms(longest) / longest

    budget = step_budget(profile, longest, tpot_ms)
    assert budget in STEP_BUDGETS
    if budget != STEP_BUDGETS[-1]:
        assert step_ms(budget) <= tpot_ms
    larger = [b for b in STEP_BUDGETS if b > budget]
    assert all(step_ms(b) > tpot_ms for b in larger)
