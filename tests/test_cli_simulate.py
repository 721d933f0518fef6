"""``turnout simulate`` through the real command line (``router.cli.main``) on short cuts of the builtin
traces: files written, summary content, exit codes and messages, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.cli import main

CUT = ["--trace", "builtin:azure-conv", "--duration", "45"]


def simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_two_policies_side_by_side_with_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "report"
    code, out, err = simulate(
        capsys, *CUT, "--policy", "turnout", "--policy", "least_loaded", "--out", str(out_dir)
    )
    assert code == 0, err
    for name in (
        "report.md",
        "summary.json",
        "cost.png",
        "power.png",
        "latency_cdf.png",
        "traffic_share.png",
    ):
        assert (out_dir / name).stat().st_size > 0, name
    assert (out_dir / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert list(summary["policies"]) == ["least_loaded", "turnout"]  # sorted keys
    requests = summary["trace"]["requests"]
    assert 100 < requests < 400 and summary["trace"]["duration_cut_s"] == 45.0
    for name, s in summary["policies"].items():
        assert s["requests"] == requests
        assert s["completed"] + s["rejected"] + s["running"] == requests
        assert s["total_usd"] > 0 and s["energy_kwh"] > 0 and 0.0 <= s["slo_attainment"] <= 1.0
        assert summary["settings"][name]["scaling"] == "plan"
        assert summary["settings"][name]["initial_active"] == "all"
    assert summary["run"]["seed"] == 0
    assert summary["run"]["assignment"]["models"] == [["llama-3.1-8b", 1.0]]
    # The terminal table: a header and one row per policy, in the order asked.
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("policy"))
    assert lines[header + 2].startswith("turnout") and lines[header + 3].startswith("least_loaded")
    assert "USD/Mtok" in lines[header] and "SLO met" in lines[header]
    report = (out_dir / "report.md").read_text()
    assert "## turnout" in report and "## least_loaded" in report
    assert "turnout simulate --trace builtin:azure-conv" in report  # the command that produced it
    assert "![cost](cost.png)" in report
    assert "\r" not in err  # stderr is no terminal: no progress bar


def test_same_seed_same_summary_and_another_seed_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mix = ["--priorities", "critical=1,standard=2,sheddable=1", "--policy", "random", "--no-plots"]
    runs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        code, _, err = simulate(capsys, *CUT, *mix, "--seed", seed, "--out", str(tmp_path / name))
        assert code == 0, err
        runs.append((tmp_path / name / "summary.json").read_bytes())
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert json.loads(runs[2])["run"]["seed"] == 8
    assert not (tmp_path / "a" / "cost.png").exists()  # --no-plots


def test_fixed_scaling_and_progress_bar_on_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = simulate(
        capsys, *CUT, "--scaling", "fixed", "--progress", "--no-plots", "--out", str(tmp_path)
    )
    assert code == 0, err
    assert "scaling fixed" in out
    assert "\r" in err and "requests" in err  # the bar, forced
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["turnout"]["scaling"] == "fixed"
    assert summary["policies"]["turnout"]["planner"]["runs"] >= 1  # turnout follows plans either way


def test_unknown_policy_exits_2_listing_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = simulate(capsys, *CUT, "--policy", "fastest", "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert err.strip() == (
        "turnout simulate: --policy: unknown policy 'fastest'; known: cheapest_feasible, least_loaded, "
        "random, round_robin, turnout"
    )
    assert not (tmp_path / "x").exists()


def test_malformed_trace_row_exits_2_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "mine.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,100,20\n0.5,100,twenty\n1.0,100,20\n")
    code, out, err = simulate(capsys, "--trace", str(trace), "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert f"{trace}:3: output_tokens: 'twenty' is not a whole number of tokens" in err


def test_a_good_csv_trace_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "mine.jsonl"
    rows = [
        {"arrival_s": 0.1 * i, "input_tokens": 200 + i, "output_tokens": 30, "priority": "critical"}
        for i in range(50)
    ]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = simulate(capsys, "--trace", str(trace), "--no-plots", "--out", str(tmp_path / "o"))
    assert code == 0, err
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["policies"]["turnout"]["requests"] == 50
    assert s["trace"]["name"] == "mine.jsonl"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trace", "builtin:azure-chat"],
            "builtin:azure-chat: unknown builtin trace; known: builtin:azure-code",
        ),
        (["--trace", "nowhere.csv"], "nowhere.csv: file not found"),
        (
            [*CUT, "--priorities", "urgent=1"],
            "--priorities: 'urgent' is not one of critical, sheddable, standard",
        ),
        ([*CUT, "--models", "llama-3.1-8b=-1"], "--models 'llama-3.1-8b=-1': must be NAME or NAME=WEIGHT"),
        ([*CUT, "--models", "gpt-9"], "model gpt-9 is served by no pool of the fleet"),
        ([*CUT, "--policy", "turnout", "--policy", "turnout"], "--policy: turnout given twice"),
    ],
)
def test_input_errors_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = simulate(capsys, *args, "--out", str(tmp_path / "x"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_bad_fleet_config_names_file_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("zones: [{name: a, region: us-east-1, power_cap_w: -5}]\npools: []\n")
    code, _, err = simulate(capsys, *CUT, "--fleet", str(fleet), "--out", str(tmp_path / "x"))
    assert code == 2
    assert err.startswith(f"turnout simulate: configuration error: {fleet}: zones[0]"), err


def test_bad_numbers_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["simulate", *CUT, "--rate-scale", "0"])
    assert exc.value.code == 2
    assert "--rate-scale: must be a finite number > 0" in capsys.readouterr().err


def test_an_unwritable_out_dir_is_a_runtime_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = simulate(capsys, *CUT, "--no-plots", "--out", str(blocker / "sub"))
    assert code == 1
    assert "cannot be written" in err
