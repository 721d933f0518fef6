"""Request traces: reading, rate scaling, duration cuts, and model/priority assignment.

A trace is a list of requests, each with an arrival time, its prompt length and the number of tokens it
generated. :func:`load_trace` reads

* ``builtin:azure-conv`` / ``builtin:azure-code``: the Azure LLM inference traces 2023 shipped in
  ``sim/data/`` (CC-BY 4.0, see ``sim/data/ATTRIBUTION.md``);
* a CSV file, in the Azure schema ``TIMESTAMP,ContextTokens,GeneratedTokens`` (wall-clock timestamps
  ``YYYY-MM-DD HH:MM:SS[.fffffff]``, any number of fractional digits up to nine) or in the generic schema
  ``arrival_s,input_tokens,output_tokens[,model][,priority][,tenant]`` (arrival in seconds, any origin);
* a JSON-lines file (``.jsonl``, ``.ndjson``, or any file whose first non-blank character is ``{``): one
  object per line with the fields of either schema.

Arrival times are made relative to the first request (seconds, float). Blank lines are skipped. Rules,
each a :class:`TraceError` naming the file, the line and what is wrong: a missing or unknown column
(header) or field (JSON), a row with missing or extra columns, a number that does not parse or is not
finite, token counts that are not whole numbers >= 1 (a request has at least one prompt token and produces
at least its first token), an arrival earlier than the previous row's (traces must be sorted), an unknown
priority, and a file with no request. A blank ``model``, ``priority`` or ``tenant`` cell means "not given".

Requests without a ``model`` or ``priority`` get one from the :class:`Assignment` (default: every request
``llama-3.1-8b``, ``standard``, tenant ``default``); a weighted mix is drawn per request in file order from
a generator seeded with ``Assignment.seed``, so the same file and seed always give the same trace.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from fleet.types import Priority

__all__ = [
    "BUILTIN_TRACES",
    "DEFAULT_ASSIGNMENT",
    "Assignment",
    "Trace",
    "TraceError",
    "TraceRequest",
    "cut_duration",
    "load_trace",
    "parse_trace_text",
    "scale_rate",
]

BUILTIN_TRACES: Mapping[str, str] = {
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "azure-code": "AzureLLMInferenceTrace_code.csv",
}
"""``builtin:NAME`` -> file in the package's ``sim/data/``."""

_AZURE_SOURCE = (
    "Azure LLM inference trace 2023 ({name}), Azure/AzurePublicDataset @ "
    'b469a113cedca53ddc3bdea71a143dc4b7d8700c; Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0'
)

_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_GENERIC_REQUIRED = ("arrival_s", "input_tokens", "output_tokens")
_GENERIC_OPTIONAL = ("model", "priority", "tenant")
_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?$"
)


class TraceError(ValueError):
    """A trace that cannot be read. ``str()`` reads ``FILE:LINE: MESSAGE`` (``FILE: MESSAGE`` without a
    line)."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}" if line is not None else f"{file}: {message}")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace. ``arrival_s`` is seconds after the trace's first request."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    model: str
    priority: Priority
    tenant: str


@dataclass(frozen=True, slots=True)
class Assignment:
    """Model, priority and tenant for requests whose trace row names none.

    ``models`` and ``priorities`` are (value, weight) pairs; with one entry every request gets it, with
    several each request draws one with probability proportional to its weight (seeded by ``seed``).
    """

    models: tuple[tuple[str, float], ...] = (("llama-3.1-8b", 1.0),)
    priorities: tuple[tuple[Priority, float], ...] = ((Priority.STANDARD, 1.0),)
    tenant: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, pairs in (("models", self.models), ("priorities", self.priorities)):
            if not pairs:
                raise ValueError(f"{name}: must list at least one value")
            for value, weight in pairs:
                if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                    raise ValueError(
                        f"{name}: weight of {value!r} must be a finite number > 0, got {weight!r}"
                    )
        for model, _ in self.models:
            if not model:
                raise ValueError("models: a model name must not be empty")
        if not self.tenant:
            raise ValueError("tenant: must not be empty")


DEFAULT_ASSIGNMENT = Assignment()


@dataclass(frozen=True)
class Trace:
    """An immutable, time-ordered list of requests with where it came from.

    ``name`` is short (``azure-conv``, a file name); ``source`` the citation or path; ``rate_scale`` the
    time compression applied (1.0 = real rate) and ``duration_cut_s`` the cut applied, if any.
    """

    name: str
    source: str
    requests: tuple[TraceRequest, ...]
    rate_scale: float = 1.0
    duration_cut_s: float | None = None
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last arrival (0 for an empty or one-request trace)."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def mean_rate_per_s(self) -> float:
        """Requests per second over the span (0 when the span is 0)."""
        span = self.span_s
        return (len(self.requests) - 1) / span if span > 0 else 0.0

    @property
    def input_tokens(self) -> int:
        return sum(r.input_tokens for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)

    def describe(self) -> str:
        """One line: name, requests, span, rate, transforms."""
        parts = [
            f"{self.name}: {len(self.requests)} requests over {self.span_s:.0f} s "
            f"({self.mean_rate_per_s:.2f} req/s)"
        ]
        if self.rate_scale != 1.0:
            parts.append(f"rate x{self.rate_scale:g}")
        if self.duration_cut_s is not None:
            parts.append(f"cut at {self.duration_cut_s:g} s")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------


def scale_rate(trace: Trace, factor: float) -> Trace:
    """The trace replayed ``factor`` times faster: every arrival time divided by ``factor`` (> 0).

    The requests and their order are unchanged; the mean rate is multiplied by ``factor``.
    """
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise ValueError(f"rate scale: must be a number, got {factor!r}")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"rate scale: must be a finite number > 0, got {factor!r}")
    if factor == 1.0:
        return trace
    requests = tuple(
        TraceRequest(r.arrival_s / factor, r.input_tokens, r.output_tokens, r.model, r.priority, r.tenant)
        for r in trace.requests
    )
    return Trace(
        name=trace.name,
        source=trace.source,
        requests=requests,
        rate_scale=trace.rate_scale * factor,
        duration_cut_s=None if trace.duration_cut_s is None else trace.duration_cut_s / factor,
        notes=trace.notes,
    )


def cut_duration(trace: Trace, duration_s: float) -> Trace:
    """The requests arriving before ``duration_s`` (> 0) seconds after the first one."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, int | float):
        raise ValueError(f"duration: must be a number, got {duration_s!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration: must be a finite number of seconds > 0, got {duration_s!r}")
    kept = tuple(r for r in trace.requests if r.arrival_s < duration_s)
    return Trace(
        name=trace.name,
        source=trace.source,
        requests=kept,
        rate_scale=trace.rate_scale,
        duration_cut_s=float(duration_s),
        notes=trace.notes,
    )


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def load_trace(spec: str | Path, assignment: Assignment = DEFAULT_ASSIGNMENT) -> Trace:
    """Reads a trace: ``builtin:azure-conv``, ``builtin:azure-code``, or a CSV / JSON-lines file path.

    Raises :class:`TraceError` (unknown builtin, missing or unreadable file, malformed row: module
    docstring).
    """
    text_spec = str(spec)
    if text_spec.startswith("builtin:"):
        name = text_spec[len("builtin:") :]
        file_name = BUILTIN_TRACES.get(name)
        if file_name is None:
            known = ", ".join(f"builtin:{n}" for n in sorted(BUILTIN_TRACES))
            raise TraceError(text_spec, None, f"unknown builtin trace; known: {known}")
        text = resources.files("sim").joinpath("data", file_name).read_text(encoding="utf-8")
        return parse_trace_text(
            text,
            file=f"{text_spec} ({file_name})",
            name=name,
            source=_AZURE_SOURCE.format(name=name),
            assignment=assignment,
            json_lines=False,
        )
    path = Path(text_spec)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraceError(text_spec, None, "file not found") from None
    except OSError as exc:
        raise TraceError(text_spec, None, f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TraceError(text_spec, line, "is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        json_lines = True
    elif suffix == ".csv":
        json_lines = False
    else:
        json_lines = text.lstrip().startswith("{")
    return parse_trace_text(
        text, file=text_spec, name=path.name, source=text_spec, assignment=assignment, json_lines=json_lines
    )


def parse_trace_text(
    text: str,
    *,
    file: str,
    name: str,
    source: str,
    assignment: Assignment = DEFAULT_ASSIGNMENT,
    json_lines: bool,
) -> Trace:
    """Parses trace text (CSV or JSON lines); ``file`` names it in errors. See :func:`load_trace`."""
    rows = _json_rows(text, file) if json_lines else _csv_rows(text, file)
    requests = _build(rows, file, assignment)
    if not requests:
        raise TraceError(file, None, "holds no request")
    return Trace(name=name, source=source, requests=requests)


@dataclass(frozen=True, slots=True)
class _Row:
    """One parsed row before times are made relative and defaults are assigned."""

    line: int
    time: int | float  # integer nanoseconds (Azure timestamps, exact) or float seconds (generic)
    input_tokens: int
    output_tokens: int
    model: str | None
    priority: Priority | None
    tenant: str | None


def _build(rows: Iterable[_Row], file: str, assignment: Assignment) -> tuple[TraceRequest, ...]:
    rng = random.Random(assignment.seed)
    models = [m for m, _ in assignment.models]
    model_weights = [w for _, w in assignment.models]
    priorities = [p for p, _ in assignment.priorities]
    priority_weights = [w for _, w in assignment.priorities]
    out: list[TraceRequest] = []
    first: int | float = 0
    previous: _Row | None = None
    for row in rows:
        if previous is not None:
            if isinstance(row.time, int) != isinstance(previous.time, int):
                raise TraceError(
                    file,
                    row.line,
                    "mixes the Azure fields (TIMESTAMP, ContextTokens, GeneratedTokens) and the generic ones "
                    f"(arrival_s, input_tokens, output_tokens) with line {previous.line}; use one schema",
                )
            if row.time < previous.time:
                back_s = _seconds_of(previous.time - row.time)
                raise TraceError(
                    file,
                    row.line,
                    f"arrival goes back in time: {_fmt_s(back_s)} s before the previous row's (line "
                    f"{previous.line}); traces must be sorted by arrival",
                )
        else:
            first = row.time
        previous = row
        # Draw in file order, for every row, so that one row naming its model does not shift the draws of
        # the rows after it.
        drawn_model = models[0] if len(models) == 1 else rng.choices(models, model_weights)[0]
        drawn_priority = (
            priorities[0] if len(priorities) == 1 else rng.choices(priorities, priority_weights)[0]
        )
        out.append(
            TraceRequest(
                arrival_s=_seconds_of(row.time - first),
                input_tokens=row.input_tokens,
                output_tokens=row.output_tokens,
                model=row.model if row.model is not None else drawn_model,
                priority=row.priority if row.priority is not None else drawn_priority,
                tenant=row.tenant if row.tenant is not None else assignment.tenant,
            )
        )
    return tuple(out)


def _seconds_of(t: int | float) -> float:
    """Seconds of a time difference: integer nanoseconds or float seconds."""
    return t / 1e9 if isinstance(t, int) else float(t)


def _fmt_s(x: float) -> str:
    return f"{x:.6f}".rstrip("0").rstrip(".")


# --- CSV ---------------------------------------------------------------------------------------------------


def _csv_rows(text: str, file: str) -> Iterator[_Row]:
    lines = text.splitlines()
    header_index = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_index is None:
        raise TraceError(file, None, "is empty")
    header_line = header_index + 1
    header = [h.strip() for h in next(csv.reader([lines[header_index]]))]
    seen: set[str] = set()
    for h in header:
        if h in seen:
            raise TraceError(file, header_line, f"column {h!r} appears twice in the header")
        seen.add(h)
    if all(c in seen for c in _AZURE_COLUMNS):
        kind = "azure"
        allowed: tuple[str, ...] = _AZURE_COLUMNS
    elif all(c in seen for c in _GENERIC_REQUIRED):
        kind = "generic"
        allowed = _GENERIC_REQUIRED + _GENERIC_OPTIONAL
    else:
        azure_missing = [c for c in _AZURE_COLUMNS if c not in seen]
        generic_missing = [c for c in _GENERIC_REQUIRED if c not in seen]
        missing = azure_missing if len(azure_missing) < len(generic_missing) else generic_missing
        raise TraceError(
            file,
            header_line,
            f"missing column {', '.join(missing)}: the header must name either "
            f"{','.join(_AZURE_COLUMNS)} or {','.join(_GENERIC_REQUIRED)}[,{'][,'.join(_GENERIC_OPTIONAL)}], "
            f"got {','.join(header)}",
        )
    unknown = [h for h in header if h not in allowed]
    if unknown:
        raise TraceError(
            file, header_line, f"unknown column {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    index = {h: i for i, h in enumerate(header)}
    width = len(header)
    body = lines[header_index + 1 :]
    for offset, record in enumerate(csv.reader(io.StringIO("\n".join(body)))):
        line = header_line + 1 + offset
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        if len(record) < width:
            missing_cols = ", ".join(header[len(record) :])
            raise TraceError(file, line, f"missing column {missing_cols} ({len(record)} of {width} values)")
        if len(record) > width:
            raise TraceError(file, line, f"{len(record)} values but the header names {width} columns")
        values = {h: record[i].strip() for h, i in index.items()}
        if kind == "azure":
            yield _Row(
                line=line,
                time=_timestamp(values["TIMESTAMP"], file, line, "TIMESTAMP"),
                input_tokens=_tokens(values["ContextTokens"], file, line, "ContextTokens"),
                output_tokens=_tokens(values["GeneratedTokens"], file, line, "GeneratedTokens"),
                model=None,
                priority=None,
                tenant=None,
            )
        else:
            yield _Row(
                line=line,
                time=_seconds(values["arrival_s"], file, line, "arrival_s"),
                input_tokens=_tokens(values["input_tokens"], file, line, "input_tokens"),
                output_tokens=_tokens(values["output_tokens"], file, line, "output_tokens"),
                model=_optional_name(values.get("model"), file, line, "model"),
                priority=_optional_priority(values.get("priority"), file, line),
                tenant=_optional_name(values.get("tenant"), file, line, "tenant"),
            )


# --- JSON lines --------------------------------------------------------------------------------------------


def _json_rows(text: str, file: str) -> Iterator[_Row]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(file, number, f"is not valid JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise TraceError(file, number, f"must be a JSON object, got {type(obj).__name__}")
        keys = set(obj)
        if "TIMESTAMP" in keys or "ContextTokens" in keys or "GeneratedTokens" in keys:
            missing = [c for c in _AZURE_COLUMNS if c not in keys]
            if missing:
                raise TraceError(file, number, f"missing field {', '.join(missing)}")
            unknown = sorted(keys - set(_AZURE_COLUMNS))
            if unknown:
                raise TraceError(
                    file, number, f"unknown field {', '.join(unknown)}; allowed: {', '.join(_AZURE_COLUMNS)}"
                )
            stamp = obj["TIMESTAMP"]
            if not isinstance(stamp, str):
                raise TraceError(file, number, f"TIMESTAMP: must be a string, got {_json_kind(stamp)}")
            yield _Row(
                line=number,
                time=_timestamp(stamp, file, number, "TIMESTAMP"),
                input_tokens=_json_tokens(obj["ContextTokens"], file, number, "ContextTokens"),
                output_tokens=_json_tokens(obj["GeneratedTokens"], file, number, "GeneratedTokens"),
                model=None,
                priority=None,
                tenant=None,
            )
            continue
        missing = [c for c in _GENERIC_REQUIRED if c not in keys]
        if missing:
            raise TraceError(file, number, f"missing field {', '.join(missing)}")
        allowed = set(_GENERIC_REQUIRED + _GENERIC_OPTIONAL)
        unknown = sorted(keys - allowed)
        if unknown:
            raise TraceError(
                file, number, f"unknown field {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        arrival = obj["arrival_s"]
        if isinstance(arrival, bool) or not isinstance(arrival, int | float):
            raise TraceError(file, number, f"arrival_s: must be a number, got {_json_kind(arrival)}")
        if not math.isfinite(arrival):
            raise TraceError(file, number, "arrival_s: must be a finite number")
        yield _Row(
            line=number,
            time=float(arrival),
            input_tokens=_json_tokens(obj["input_tokens"], file, number, "input_tokens"),
            output_tokens=_json_tokens(obj["output_tokens"], file, number, "output_tokens"),
            model=_json_optional_str(obj.get("model"), file, number, "model"),
            priority=_optional_priority(
                _json_optional_str(obj.get("priority"), file, number, "priority"), file, number
            ),
            tenant=_json_optional_str(obj.get("tenant"), file, number, "tenant"),
        )


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _json_tokens(value: object, file: str, line: int, column: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(file, line, f"{column}: must be a whole number of tokens, got {_json_kind(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise TraceError(file, line, f"{column}: must be a whole number of tokens, got {value!r}")
    return _check_tokens(int(value), file, line, column)


def _json_optional_str(value: object, file: str, line: int, column: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TraceError(file, line, f"{column}: must be a string, got {_json_kind(value)}")
    return _optional_name(value, file, line, column)


# --- fields ------------------------------------------------------------------------------------------------


def _tokens(text: str, file: str, line: int, column: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TraceError(file, line, f"{column}: {text!r} is not a whole number of tokens") from None
    return _check_tokens(value, file, line, column)


def _check_tokens(value: int, file: str, line: int, column: str) -> int:
    if value < 0:
        raise TraceError(file, line, f"{column}: negative token count {value}")
    if value < 1:
        raise TraceError(
            file, line, f"{column}: must be >= 1 (a request has a prompt and produces a first token), got 0"
        )
    return value


def _seconds(text: str, file: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(file, line, f"{column}: {text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise TraceError(file, line, f"{column}: must be a finite number of seconds, got {text!r}")
    return value


def _timestamp(text: str, file: str, line: int, column: str) -> int:
    """Unix nanoseconds of ``YYYY-MM-DD HH:MM:SS[.fraction][Z|+HH:MM]`` (no zone: UTC), exact (integers:
    a float of unix seconds would round the seventh fractional digit away)."""
    m = _TIMESTAMP.match(text)
    if m is None:
        raise TraceError(
            file, line, f"{column}: {text!r} is not a timestamp of the form YYYY-MM-DD HH:MM:SS[.fffffff]"
        )
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zone = m.group(7), m.group(8)
    try:
        whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise TraceError(file, line, f"{column}: {text!r} is not a valid date and time ({exc})") from None
    seconds = int(whole.timestamp())
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def _optional_name(value: str | None, file: str, line: int, column: str) -> str | None:
    """A blank cell is "not given" (``None``): the assignment decides."""
    if value is None:
        return None
    return value.strip() or None


_PRIORITIES = {p.value: p for p in Priority}


def _optional_priority(value: str | None, file: str, line: int) -> Priority | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    p = _PRIORITIES.get(text.lower())
    if p is None:
        raise TraceError(file, line, f"priority: {value!r} is not one of {', '.join(sorted(_PRIORITIES))}")
    return p
