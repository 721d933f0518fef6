"""Trace readers: the shipped Azure traces, CSV and JSON-lines schemas, malformed rows, transforms."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from fleet.types import Priority
from sim.traces import (
    Assignment,
    Trace,
    TraceError,
    cut_duration,
    load_trace,
    parse_trace_text,
    scale_rate,
)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def data_rows_in_file(file_name: str) -> tuple[str, list[str]]:
    """The header line and the non-blank data lines of a shipped trace, counted from the raw text."""
    raw = resources.files("sim").joinpath("data", file_name).read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    return lines[0], lines[1:]


# ------------------------------------------------------------------------------------------ builtin traces


@pytest.mark.parametrize(
    ("spec", "file_name", "rows"),
    [
        ("builtin:azure-conv", "AzureLLMInferenceTrace_conv.csv", 19366),
        ("builtin:azure-code", "AzureLLMInferenceTrace_code.csv", 8819),
    ],
)
def test_builtin_traces_hold_every_data_row_and_skip_the_header(spec: str, file_name: str, rows: int) -> None:
    header, data = data_rows_in_file(file_name)
    assert header == "TIMESTAMP,ContextTokens,GeneratedTokens"
    assert len(data) == rows  # what is really in the file, header excluded
    trace = load_trace(spec)
    assert len(trace) == rows
    # The first request is the first data row (not the header), at time 0; the last is the last row.
    first = data[0].split(",")
    last = data[-1].split(",")
    assert trace.requests[0].arrival_s == 0.0
    assert (trace.requests[0].input_tokens, trace.requests[0].output_tokens) == (int(first[1]), int(first[2]))
    assert (trace.requests[-1].input_tokens, trace.requests[-1].output_tokens) == (int(last[1]), int(last[2]))
    assert all(b.arrival_s >= a.arrival_s for a, b in zip(trace.requests, trace.requests[1:], strict=False))
    assert "CC-BY 4.0" in trace.source and "b469a113cedca53ddc3bdea71a143dc4b7d8700c" in trace.source


def test_builtin_conversation_trace_figures_match_the_published_ones() -> None:
    trace = load_trace("builtin:azure-conv")
    # /traces README: span 3,502 s, mean input 1154.7, mean output 211.1 tokens.
    assert round(trace.span_s) == 3502
    assert trace.input_tokens / len(trace) == pytest.approx(1154.7, abs=0.05)
    assert trace.output_tokens / len(trace) == pytest.approx(211.1, abs=0.05)
    # Seven fractional digits kept exactly: 18:15:50.9951690 - 18:15:46.6805900.
    assert trace.requests[1].arrival_s == pytest.approx(4.314579, abs=1e-9)
    assert {r.model for r in trace} == {"llama-3.1-8b"}
    assert {r.priority for r in trace} == {Priority.STANDARD}


def test_package_data_ships_the_licence_and_the_attribution() -> None:
    data = resources.files("sim").joinpath("data")
    attribution = data.joinpath("ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "Azure/AzurePublicDataset" in attribution
    assert "b469a113cedca53ddc3bdea71a143dc4b7d8700c" in attribution
    assert "Splitwise" in attribution and "ISCA 2024" in attribution
    assert "Attribution 4.0 International" in data.joinpath("LICENSE").read_text(encoding="utf-8")


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(TraceError, match=r"azure-chat: unknown builtin trace; known: builtin:azure-code"):
        load_trace("builtin:azure-chat")


# ------------------------------------------------------------------------------------------ schemas


def test_azure_schema_csv_relative_times(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 18:15:46.6805900,374,44\r\n"
        "2023-11-16 18:15:50.9951690,396,109\r\n"
        "2023-11-16 18:16:00,10,1",
    )
    trace = load_trace(path)
    assert [r.arrival_s for r in trace] == pytest.approx([0.0, 4.314579, 13.31941], abs=1e-9)
    assert [(r.input_tokens, r.output_tokens) for r in trace] == [(374, 44), (396, 109), (10, 1)]
    assert trace.name == "t.csv"


def test_generic_csv_with_optional_columns_and_assignment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "g.csv",
        "arrival_s,input_tokens,output_tokens,model,priority,tenant\n"
        "100.5,10,5,llama-3.1-70b,critical,acme\n"
        "\n"
        "101.0,20,6,,,\n"
        "103.25,30,7,llama-3.1-8b,SHEDDABLE,\n",
    )
    assignment = Assignment(models=(("llama-3.1-8b", 1.0),), tenant="anyone")
    trace = load_trace(path, assignment)
    assert [r.arrival_s for r in trace] == [0.0, 0.5, 2.75]
    assert [r.model for r in trace] == ["llama-3.1-70b", "llama-3.1-8b", "llama-3.1-8b"]
    assert [r.priority for r in trace] == [Priority.CRITICAL, Priority.STANDARD, Priority.SHEDDABLE]
    assert [r.tenant for r in trace] == ["acme", "anyone", "anyone"]


def test_json_lines_both_schemas(tmp_path: Path) -> None:
    generic = write(
        tmp_path,
        "g.jsonl",
        "\n".join(
            json.dumps(d)
            for d in (
                {"arrival_s": 5, "input_tokens": 100, "output_tokens": 10, "priority": "critical"},
                {"arrival_s": 6.5, "input_tokens": 200.0, "output_tokens": 20, "model": "llama-3.1-70b"},
            )
        )
        + "\n",
    )
    trace = load_trace(generic)
    assert [(r.arrival_s, r.input_tokens, r.model, r.priority) for r in trace] == [
        (0.0, 100, "llama-3.1-8b", Priority.CRITICAL),
        (1.5, 200, "llama-3.1-70b", Priority.STANDARD),
    ]
    azure = write(
        tmp_path,
        "a.trace",  # no suffix hint: sniffed from the first character
        '{"TIMESTAMP": "2023-11-16 18:15:46.6805900", "ContextTokens": 374, "GeneratedTokens": 44}\n'
        '{"TIMESTAMP": "2023-11-16 18:15:47.0000000", "ContextTokens": 3, "GeneratedTokens": 2}\n',
    )
    trace = load_trace(azure)
    assert [r.arrival_s for r in trace] == pytest.approx([0.0, 0.31941], abs=1e-9)


def test_seeded_mix_is_deterministic_and_follows_the_weights() -> None:
    text = "arrival_s,input_tokens,output_tokens\n" + "".join(f"{i},10,10\n" for i in range(2000))
    mix = Assignment(
        models=(("llama-3.1-8b", 3.0), ("llama-3.1-70b", 1.0)),
        priorities=((Priority.CRITICAL, 1.0), (Priority.STANDARD, 1.0)),
        seed=7,
    )
    a = parse_trace_text(text, file="x", name="x", source="x", assignment=mix, json_lines=False)
    b = parse_trace_text(text, file="x", name="x", source="x", assignment=mix, json_lines=False)
    c = parse_trace_text(
        text,
        file="x",
        name="x",
        source="x",
        assignment=Assignment(models=mix.models, priorities=mix.priorities, seed=8),
        json_lines=False,
    )
    assert a == b
    assert a.requests != c.requests
    share_8b = sum(r.model == "llama-3.1-8b" for r in a) / len(a)
    assert 0.70 < share_8b < 0.80
    assert 0.45 < sum(r.priority is Priority.CRITICAL for r in a) / len(a) < 0.55


# ------------------------------------------------------------------------------------------ malformed rows

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:47.1,1x0,5\n",
            3,
            "ContextTokens: '1x0' is not a whole number of tokens",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,-5\n",
            2,
            "GeneratedTokens: negative token count -5",
        ),
        (
            AZURE_HEADER + "2023-11-16 18:15:46.1,10,5\n2023-11-16 18:15:45.1,10,5\n",
            3,
            "arrival goes back in time: 1 s before the previous row's (line 2)",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10\n",
            2,
            "missing column GeneratedTokens",
        ),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.1,10\n", 1, "missing column GeneratedTokens"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,5,9\n",
            2,
            "4 values but the header names 3 columns",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n16/11/2023 18:15,10,5\n",
            2,
            "TIMESTAMP: '16/11/2023 18:15'",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-02-30 18:15:46,10,5\n", 2, "not a valid date"),
        ("arrival_s,input_tokens,output_tokens\n1,2,3\nnan,2,3\n", 3, "arrival_s: must be a finite number"),
        ("arrival_s,input_tokens,output_tokens\n1,2,3\nabc,2,3\n", 3, "arrival_s: 'abc' is not a number"),
        ("arrival_s,input_tokens,output_tokens\n\n\n1,0,3\n", 4, "input_tokens: must be >= 1"),
        (
            "arrival_s,input_tokens,output_tokens,priority\n1,2,3,urgent\n",
            2,
            "priority: 'urgent' is not one of",
        ),
        ("arrival_s,input_tokens,output_tokens,colour\n1,2,3,red\n", 1, "unknown column colour"),
        ("arrival_s,input_tokens,input_tokens,output_tokens\n", 1, "column 'input_tokens' appears twice"),
    ],
)
def test_malformed_csv_rows_name_file_line_and_rule(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert info.value.file == path
    assert info.value.line == line
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            '{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3}\n{"arrival_s": 1, "input_tokens": 2}\n',
            2,
            "missing field output_tokens",
        ),
        (
            '{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3}\n\n'
            '{"arrival_s": 2, "input_tokens": 2.5, "output_tokens": 3}\n',
            3,
            "input_tokens: must be a whole number of tokens, got 2.5",
        ),
        (
            '{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3}\n{"arrival_s": 0.5, "input_tokens": 2, '
            '"output_tokens": 3}\n',
            2,
            "arrival goes back in time: 0.5 s",
        ),
        ('{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3\n', 1, "is not valid JSON"),
        ("[1, 2, 3]\n", 1, "must be a JSON object, got list"),
        (
            '{"arrival_s": "1", "input_tokens": 2, "output_tokens": 3}\n',
            1,
            "arrival_s: must be a number, got a string",
        ),
        (
            '{"arrival_s": 1, "input_tokens": true, "output_tokens": 3}\n',
            1,
            "input_tokens: must be a whole number",
        ),
        (
            '{"arrival_s": 1, "input_tokens": 2, "output_tokens": -3}\n',
            1,
            "output_tokens: negative token count -3",
        ),
        ('{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3, "extra": 1}\n', 1, "unknown field extra"),
        (
            '{"arrival_s": 1, "input_tokens": 2, "output_tokens": 3}\n'
            '{"TIMESTAMP": "2023-11-16 18:15:46", "ContextTokens": 2, "GeneratedTokens": 3}\n',
            2,
            "mixes the Azure",
        ),
    ],
)
def test_malformed_json_lines_name_file_line_and_rule(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert (info.value.line, info.value.file) == (line, path)
    assert message in info.value.message


def test_missing_empty_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="file not found"):
        load_trace(str(tmp_path / "nope.csv"))
    with pytest.raises(TraceError, match="is empty"):
        load_trace(write(tmp_path, "empty.csv", "\n\n"))
    with pytest.raises(TraceError, match="holds no request"):
        load_trace(write(tmp_path, "header.csv", "arrival_s,input_tokens,output_tokens\n"))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"arrival_s,input_tokens,output_tokens\n1,2,3\n\xff\xfe,1,1\n")
    with pytest.raises(TraceError) as info:
        load_trace(str(binary))
    assert info.value.line == 3 and "not UTF-8" in info.value.message


# ------------------------------------------------------------------------------------------ transforms


def small_trace() -> Trace:
    text = "arrival_s,input_tokens,output_tokens\n0,10,1\n1,10,2\n2.5,10,3\n4,10,4\n"
    return parse_trace_text(text, file="s", name="s", source="s", json_lines=False)


def test_scale_rate_compresses_time_and_keeps_requests() -> None:
    trace = small_trace()
    fast = scale_rate(trace, 10)
    assert [r.arrival_s for r in fast] == pytest.approx([0.0, 0.1, 0.25, 0.4])
    assert [r.output_tokens for r in fast] == [r.output_tokens for r in trace]
    assert fast.rate_scale == 10 and fast.mean_rate_per_s == pytest.approx(10 * trace.mean_rate_per_s)
    assert scale_rate(trace, 1.0) is trace
    for bad in (0, -1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="rate scale"):
            scale_rate(trace, bad)


def test_cut_duration_keeps_arrivals_before_the_cut() -> None:
    trace = small_trace()
    cut = cut_duration(trace, 2.5)
    assert [r.arrival_s for r in cut] == [0.0, 1.0]
    assert cut.duration_cut_s == 2.5
    assert "cut at 2.5 s" in cut.describe()
    with pytest.raises(ValueError, match="duration"):
        cut_duration(trace, 0)
    scaled_then_cut = cut_duration(scale_rate(trace, 2), 1.3)
    assert [r.arrival_s for r in scaled_then_cut] == [0.0, 0.5, 1.25]


def test_assignment_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="weight"):
        Assignment(models=(("llama-3.1-8b", 0.0),))
    with pytest.raises(ValueError, match="at least one"):
        Assignment(priorities=())
