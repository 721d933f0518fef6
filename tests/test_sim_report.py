"""Reports: files written, deterministic summary.json, the terminal table, the progress bar."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from test_sim_policies import FLEET

from fleet.types import Priority
from sim.engine import SimConfig, SimResult, simulate
from sim.policy_adapter import router_policy
from sim.report import ProgressBar, format_table, summary_json, write_report
from sim.traces import Assignment, cut_duration, load_trace

MIX = Assignment(priorities=((Priority.CRITICAL, 1.0), (Priority.STANDARD, 2.0), (Priority.SHEDDABLE, 1.0)))
CONFIG = SimConfig(planner_interval_s=15.0, planner_first_run_s=15.0, sample_interval_s=5.0)


def runs(seed: int) -> list[SimResult]:
    mix = Assignment(priorities=MIX.priorities, seed=seed)
    trace = cut_duration(load_trace("builtin:azure-code", mix), 60)
    return [
        simulate(trace, FLEET, router_policy(name, FLEET.serving), CONFIG)
        for name in ("turnout", "random", "round_robin")
    ]


def test_summary_json_is_the_same_bytes_for_the_same_seed(tmp_path: Path) -> None:
    first = write_report(runs(3), tmp_path / "a", plots=False).summary_json.read_bytes()
    second = write_report(runs(3), tmp_path / "b", plots=False).summary_json.read_bytes()
    assert first == second
    other = summary_json(runs(4)).encode()
    assert other != first  # another seed draws other priorities: the figures change


def test_report_files_and_content(tmp_path: Path) -> None:
    results = runs(3)
    files = write_report(results, tmp_path / "out", command="turnout simulate --trace builtin:azure-code")
    assert [p.name for p in files.plots] == ["cost.png", "power.png", "latency_cdf.png", "traffic_share.png"]
    for png in files.plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    data = json.loads(files.summary_json.read_text())
    assert set(data["policies"]) == {"turnout", "random", "round_robin"}
    assert data["trace"]["name"] == "azure-code" and data["trace"]["requests"] == len(results[0].trace)
    turnout = data["policies"]["turnout"]
    assert turnout["requests"] == turnout["completed"] + turnout["rejected"] + turnout["running"]
    assert set(turnout["shed_by_priority"]) == {"critical", "standard", "sheddable"}
    assert len(turnout["timeseries"]["bin_end_s"]) == len(turnout["timeseries"]["fleet_power_w"]) > 5
    assert {z["zone"] for z in turnout["zones"]} == {"a", "b"}
    md = files.report_md.read_text()
    assert "turnout simulate --trace builtin:azure-code" in md
    expected = (
        "## turnout",
        "## random",
        "## round_robin",
        "| policy | USD | USD/Mtok |",
        "![cost](cost.png)",
    )
    for name in expected:
        assert name in md
    assert "Splitwise" in md  # the trace's attribution travels with the figures


def test_terminal_table_has_a_row_per_policy() -> None:
    results = runs(3)
    table = format_table(results).splitlines()
    assert table[0].startswith("policy") and set(table[1]) <= {"-", " "}
    assert [line.split()[0] for line in table[2:]] == ["turnout", "random", "round_robin"]
    usd = [float(line.split()[1].replace(",", "")) for line in table[2:]]
    assert usd == [round(r.summary.total_usd, 2) for r in results]


def test_summary_refuses_duplicate_policy_names() -> None:
    r = runs(3)[0]
    with pytest.raises(ValueError, match="unique"):
        summary_json([r, r])


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal() -> None:
    plain = io.StringIO()
    bar = ProgressBar("turnout", stream=plain)
    bar(5, 10, 12.0)
    bar(10, 10, 20.0)
    bar.close()
    assert plain.getvalue() == ""
    tty = Tty()
    bar = ProgressBar("turnout", stream=tty, min_interval_s=0.0)
    bar(5, 10, 12.0)
    bar(10, 10, 20.0)
    bar.close()
    out = tty.getvalue()
    assert out.startswith("\rturnout [") and " 50.0% 5/10 requests" in out and "100.0% 10/10" in out
    assert out.endswith("\n")


def test_progress_callback_is_called_during_a_run() -> None:
    seen: list[tuple[int, int, float]] = []
    trace = cut_duration(load_trace("builtin:azure-code"), 30)
    simulate(trace, FLEET, router_policy("round_robin", FLEET.serving), progress=lambda *a: seen.append(a))
    assert seen and seen[-1][0] == seen[-1][1] == len(trace)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
