"""Readers of ``turnout plan``'s inputs: workload histograms, measured per-bucket profiles, traces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fleet.types import Precision, Priority
from policies.demand import BucketBounds
from sim.sizing_inputs import InputError, load_bucket_profiles, load_workload, workload_from_trace
from sim.traces import parse_trace_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sizing"

GOOD = """\
model: llama-3.1-8b
rate_per_s: 10
histogram:
  - {input_min: 1, input_max: 1000, output_min: 1, output_max: 200, share: 0.75}
  - {input_min: 1001, input_max: 4000, output_min: 1, output_max: 200, share: 0.25,
     mean_input_tokens: 2000, mean_output_tokens: 50}
"""


def _write(tmp_path: Path, text: str, name: str = "w.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- workload


def test_example_workload_file_loads() -> None:
    w = load_workload(EXAMPLES / "workload.yaml", known_models={"llama-3.1-8b"})
    assert w.rate_per_s == 60.0
    assert len(w.buckets) == 6
    assert math.fsum(b.share for b in w.buckets) == pytest.approx(1.0, abs=1e-3)
    first = w.buckets[0]
    assert (
        first.input_min_tokens,
        first.input_max_tokens,
        first.output_min_tokens,
        first.output_max_tokens,
    ) == (
        1,
        1024,
        1,
        256,
    )
    assert (first.mean_input_tokens, first.mean_output_tokens) == (363.0, 107.0)
    assert first.longest_input_tokens == 1024 and first.longest_output_tokens == 256


def test_workload_defaults_and_token_rate(tmp_path: Path) -> None:
    w = load_workload(_write(tmp_path, GOOD))
    a, b = w.buckets
    assert a.priority is Priority.STANDARD
    assert (a.mean_input_tokens, a.mean_output_tokens) == (500.5, 100.5)  # middle of the ranges
    assert (b.mean_input_tokens, b.mean_output_tokens) == (2000.0, 50.0)
    assert w.rate_of(a) == pytest.approx(7.5)
    assert w.tokens_per_s == pytest.approx(7.5 * 601.0 + 2.5 * 2050.0)


def test_json_workload_with_tabs(tmp_path: Path) -> None:
    data = {
        "model": "llama-3.1-70b",
        "priority": "critical",
        "rate_per_s": 2.5,
        "histogram": [{"input_min": 1, "input_max": 512, "output_min": 1, "output_max": 64, "share": 1.0}],
    }
    w = load_workload(_write(tmp_path, json.dumps(data, indent="\t"), "w.json"))
    assert w.models == ("llama-3.1-70b",)
    assert w.buckets[0].priority is Priority.CRITICAL


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            GOOD.replace("share: 0.75", "share: lots"),
            ":4:",
            "histogram[0].share: must be a finite number >= 0",
        ),
        (GOOD.replace("share: 0.75", "share: 0.7"), ":4:3:", "shares must sum to 1 (within 0.001), got 0.95"),
        (
            GOOD.replace("input_max: 1000,", "input_max: 1001,"),
            ":5:5:",
            "histogram[1]: overlaps histogram[0]",
        ),
        (
            GOOD.replace("rate_per_s: 10", "rate_per_s: 0"),
            ":2:13:",
            "rate_per_s: must be a finite number > 0",
        ),
        (GOOD.replace("rate_per_s: 10", "rate: 10"), ":2:1:", "rate: unknown key"),
        (GOOD.replace("model: llama-3.1-8b\n", ""), ":1:1:", "missing required key 'model'"),
        (
            GOOD.replace("output_max: 200, share: 0.75", "output_max: 0, share: 0.75"),
            ":4:",
            "output_max: must be",
        ),
        (GOOD.replace("mean_input_tokens: 2000", "mean_input_tokens: 5000"), ":6:", "must lie in 1001..4000"),
        (GOOD.replace("model: llama-3.1-8b", "model: gpt-9"), ":1:8:", "unknown model 'gpt-9'"),
        (GOOD + "model: again\n", ":7:1:", "model: duplicate key"),
        (
            "model: llama-3.1-8b\nrate_per_s: 10\nhistogram: 3\n",
            ":3:12:",
            "histogram: must be a list, got a number",
        ),
        ("model: [unclosed\n", ":2:1:", "is not valid YAML"),
    ],
)
def test_malformed_workloads_name_line_and_column(
    tmp_path: Path, text: str, where: str, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as err:
        load_workload(path, known_models={"llama-3.1-8b"})
    assert str(err.value).startswith(f"{path}{where}"), str(err.value)
    assert message in str(err.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "model": "llama-3.1-8b",\n  "rate_per_s": ,\n}', "w.json")
    with pytest.raises(InputError, match=r"w\.json:3:17: is not valid JSON"):
        load_workload(path)


def test_missing_workload_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nothing\.yaml: file not found"):
        load_workload(tmp_path / "nothing.yaml")


# ---------------------------------------------------------------------------------------------- profiles

HEADER = "instance_type,input_min,input_max,output_min,output_max,max_rps,source\n"


def test_example_profiles_load_and_look_up() -> None:
    p = load_bucket_profiles(
        EXAMPLES / "profiles.csv",
        known_instance_types={"p5.4xlarge", "p5.48xlarge", "trn2.48xlarge", "inf2.48xlarge"},
    )
    assert p.instance_types == ("inf2.48xlarge", "p5.48xlarge", "p5.4xlarge", "trn2.48xlarge")
    row = p.lookup("p5.4xlarge", "llama-3.1-8b", (1, 1024, 1, 256))
    assert row is not None and row.max_rps == 92.6 and row.tp_degree == 1 and row.precision is Precision.FP8
    assert p.lookup("inf2.48xlarge", "llama-3.1-8b", (1025, 4096, 1, 256)) is None
    assert len(p.grid) == 6


def test_profile_rows_naming_a_model_win(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "instance_type,model,input_min,input_max,output_min,output_max,max_rps\n"
        "p5.4xlarge,,1,100,1,100,5\n"
        "p5.4xlarge,llama-3.1-70b,1,100,1,100,2\n",
        "p.csv",
    )
    p = load_bucket_profiles(path)
    assert p.lookup("p5.4xlarge", "llama-3.1-70b", (1, 100, 1, 100)).max_rps == 2  # type: ignore[union-attr]
    assert p.lookup("p5.4xlarge", "llama-3.1-8b", (1, 100, 1, 100)).max_rps == 5  # type: ignore[union-attr]
    assert p.rows[0].source == f"{path}:2"  # no source column value: the file and line


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("p5.4xlarge,1,100,1,100,abc,x\n", ":2: column 6 (max_rps): must be a finite number > 0, got 'abc'"),
        ("p5.4xlarge,1,100,1,100,-1,x\n", ":2: column 6 (max_rps): must be a finite number > 0, got '-1'"),
        ("p5.4xlarge,0,100,1,100,5,x\n", ":2: column 2 (input_min): must be an integer >= 1, got '0'"),
        ("p5.4xlarge,1,100,50,10,5,x\n", ":2: column 5 (output_max): must be >= output_min (50), got '10'"),
        (
            "p9.huge,1,100,1,100,5,x\n",
            ":2: column 1 (instance_type): unknown instance type; known: p5.4xlarge",
        ),
        ("p5.4xlarge,1,100,1,100,5\n", ":2: expected 7 fields as in the header, got 6"),
        (
            "p5.4xlarge,1,100,1,100,5,x\n\n# comment\np5.4xlarge,1,100,1,100,6,y\n",
            ":5: p5.4xlarge in 1-100 x out 1-100 is already given on line 2",
        ),
    ],
)
def test_malformed_profile_rows_name_line_and_column(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, HEADER + body, "p.csv")
    with pytest.raises(InputError) as err:
        load_bucket_profiles(path, known_instance_types={"p5.4xlarge"})
    assert str(err.value) == f"{path}{message}" or str(err.value).startswith(f"{path}{message}"), str(
        err.value
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "instance_type,input_min,input_max,output_min,max_rps\n",
            ":1: header: missing column(s) output_max",
        ),
        (HEADER.replace("source", "notes"), ":1: column 7 (notes): unknown header column"),
        (HEADER, ": no data rows after the header"),
        ("", ": empty file"),
        (
            "instance_type,input_min,input_max,output_min,output_max,max_rps,tp_degree\n"
            "p5.4xlarge,1,100,1,100,5,1\np5.4xlarge,101,200,1,100,5,2\n",
            ":3: p5.4xlarge: tp_degree/precision differ from line 2",
        ),
    ],
)
def test_malformed_profile_files(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text, "p.csv")
    with pytest.raises(InputError) as err:
        load_bucket_profiles(path)
    assert str(err.value).startswith(f"{path}{message}"), str(err.value)


# ------------------------------------------------------------------------------------------------ traces


def _trace(rows: list[tuple[float, int, int]]) -> object:
    text = "arrival_s,input_tokens,output_tokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in rows)
    return parse_trace_text(text, file="t.csv", name="t.csv", source="t.csv", json_lines=False)


def test_trace_buckets_shares_means_and_longest() -> None:
    rows = [(0.0, 100, 10), (1.0, 300, 20), (2.0, 200, 30), (3.0, 5000, 10)]
    w = workload_from_trace(_trace(rows), bounds=BucketBounds((256, 1024), (64,)))  # type: ignore[arg-type]
    by_range = {b.ranges: b for b in w.buckets}
    assert set(by_range) == {(1, 256, 1, 64), (257, 5000, 1, 64)}  # the last bucket reaches the longest
    short = by_range[1, 256, 1, 64]
    assert short.share == 0.5 and short.mean_input_tokens == 150.0 and short.mean_output_tokens == 20.0
    assert short.longest_input_tokens == 200 and short.longest_output_tokens == 30
    long = by_range[257, 5000, 1, 64]
    assert long.longest_input_tokens == 5000 and long.mean_input_tokens == 2650.0
    # 4 requests over 3 s: shorter than half a 60 s window, so the mean rate.
    assert w.rate_per_s == pytest.approx(4 / 3.0)
    assert w.requests == 4


def test_trace_rate_is_a_percentile_of_requests_by_their_window_rate() -> None:
    # Windows of 10 s: 1, 2, 3, ..., 10 requests; then a last partial window of 6 s with 12 requests.
    rows: list[tuple[float, int, int]] = []
    for w in range(10):
        rows += [(10.0 * w + 0.1 * k, 100, 10) for k in range(w + 1)]
    rows += [(100.0 + 0.5 * k, 100, 10) for k in range(12)]
    trace = _trace(rows)
    p50 = workload_from_trace(trace, rate_percentile=50, window_s=10)  # type: ignore[arg-type]
    p100 = workload_from_trace(trace, rate_percentile=100, window_s=10)  # type: ignore[arg-type]
    # 67 requests; from the quietest window the counts add up 1, 3, 6, 10, 15, 21, 28, 36: the 34th request
    # arrives in the 0.8 requests/s window (the median of the 11 window rates would be 0.6: busy windows
    # hold more of the requests).
    assert p50.rate_per_s == pytest.approx(0.8)
    assert p100.rate_per_s == pytest.approx(12 / 5.5)  # span 105.5 s: the partial window is 5.5 s long
    assert p100.peak_rate_per_s == pytest.approx(12 / 5.5)
    assert "11 windows" in p50.rate_basis


def test_trace_on_a_measured_grid() -> None:
    grid = [(1, 1000, 1, 100), (1001, 8000, 1, 100)]
    w = workload_from_trace(_trace([(0.0, 10, 5), (1.0, 2000, 50)]), grid=grid, grid_source="p.csv")  # type: ignore[arg-type]
    assert [b.ranges for b in w.buckets] == grid
    with pytest.raises(
        InputError, match=r"t\.csv: request 2 \(2000 input, 500 output tokens\) falls in no bucket of p\.csv"
    ):
        workload_from_trace(_trace([(0.0, 10, 5), (1.0, 2000, 500)]), grid=grid, grid_source="p.csv")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="overlap"):
        workload_from_trace(
            _trace([(0.0, 10, 5), (1.0, 10, 5)]),
            grid=[(1, 100, 1, 100), (50, 200, 1, 100)],
            grid_source="p.csv",
        )  # type: ignore[arg-type]
