"""Inputs of ``turnout plan``: a workload (histogram file or trace) and measured per-bucket profiles.

Workload file (YAML, or JSON: the same fields)
==============================================
::

    model: llama-3.1-8b        # required: a model of the registry (fleet/data/models.yaml)
    priority: standard         # optional, default standard: the SLO class of every request
    rate_per_s: 12.0           # required: total request rate to plan for, requests/s (> 0)
    source: "what the numbers come from"   # optional, free text, shown in the output
    histogram:                 # required: the share of requests per bucket
      - {input_min: 1, input_max: 1024, output_min: 1, output_max: 256, share: 0.6}
      - {input_min: 1025, input_max: 4096, output_min: 1, output_max: 512, share: 0.4,
         mean_input_tokens: 2000, mean_output_tokens: 150}

A bucket holds requests whose prompt has ``input_min..input_max`` tokens and whose output has
``output_min..output_max`` tokens (inclusive, integers >= 1, min <= max). ``share`` is in [0, 1] and the
shares sum to 1 (within 0.001). ``mean_input_tokens`` / ``mean_output_tokens`` (optional, within the
bucket's range) give the mean request shape the capacity model uses; the default is the middle of the
range. Two buckets may not overlap (both ranges overlapping). Unknown keys, duplicate keys, wrong types
and out-of-range values are refused with ``FILE:LINE:COLUMN: PATH: RULE``.

Measured-profile CSV
====================
::

    instance_type,input_min,input_max,output_min,output_max,max_rps,source
    p5.48xlarge,1,1024,1,256,310.0,"vllm bench serve 0.6.3, 2026-10-02, run 4"

One header line, then one row per (instance type, bucket): ``max_rps`` (> 0) is the highest request rate
one instance sustains while meeting the SLO for requests of that bucket, as an operator's own benchmark
measures it. Optional columns: ``source`` (where the row comes from), ``model`` (the model the row was
measured with; blank or absent: the workload's model), ``tp_degree`` and ``precision`` (how the instance
was deployed, carried into ``--fleet-out``; one deployment per instance type and model). Blank lines and
lines starting with ``#`` are ignored. Errors name the file, the line and the column:
``profiles.csv:7: column 6 (max_rps): must be a finite number > 0, got 'abc'``.

Trace
=====
:func:`workload_from_trace` turns a trace (``sim.traces``) into the same workload: requests are grouped
into buckets (the policy's length buckets, or the measured profile's grid), each bucket's share and mean
shape are those of its requests, and its capacity is computed for its longest request as observed. The
total rate planned for is a percentile (default the 95th) *of requests* by the request rate of the window
(default 10 s of replayed time, after ``--rate-scale``) each arrives in: P % of the requests arrive in
windows no busier than the planned rate. The mean rate would leave the fleet short through every
busier-than-average stretch, and bursts within a window are left to the capacity headroom. The percentile
is over requests, not windows, because the SLO is met or missed per request and busy windows hold more of
them: on the code trace the busiest 5 % of its 10 s windows hold 32 % of its requests, so a fleet sized for
the 95th percentile of windows (12.6 requests/s) saw a third of the trace arrive faster than it was planned
for, where the 95th percentile of requests is 23.4 requests/s. Windows start at the first request; a last
partial window counts when it spans at least half a window.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import yaml

from fleet.measured import csv_lines
from fleet.types import Precision, Priority
from policies.demand import BucketBounds
from sim.traces import Trace

__all__ = [
    "DEFAULT_RATE_WINDOW_S",
    "BucketProfileRow",
    "BucketProfiles",
    "InputError",
    "Workload",
    "WorkloadBucket",
    "load_bucket_profiles",
    "load_workload",
    "workload_from_trace",
]

SHARE_SUM_TOLERANCE = 0.001
DEFAULT_RATE_WINDOW_S = 10.0
"""Window of the per-window request rates a trace is planned for. A burst longer than a few TTFT targets
cannot be absorbed by queueing (at 2 s TTFT, a rate 35 % over capacity for 6 s already misses it), so the
rate that matters is the one over a few seconds, not over a minute: with 60 s windows the fleets sized for
the conversation trace at 60x (one window covering its 58 s) missed 5-7 % of requests in its busier
5-10 s stretches; with 10 s windows they meet the SLO for 99.8 %."""

PROFILE_REQUIRED = ("instance_type", "input_min", "input_max", "output_min", "output_max", "max_rps")
PROFILE_OPTIONAL = ("source", "model", "tp_degree", "precision")


class InputError(ValueError):
    """An input file that cannot be used; ``str()`` names the file, the line (and column) and the rule."""


# ---------------------------------------------------------------------------------------------------------
# The workload
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkloadBucket:
    """One bucket of a workload: model, priority, length ranges, share of the requests and mean shape.

    ``longest_input_tokens`` / ``longest_output_tokens`` are the longest request the bucket's capacity
    must hold: the range's upper ends for a histogram, the longest observed for a trace.
    """

    model: str
    priority: Priority
    input_min_tokens: int
    input_max_tokens: int
    output_min_tokens: int
    output_max_tokens: int
    share: float
    mean_input_tokens: float
    mean_output_tokens: float
    longest_input_tokens: int
    longest_output_tokens: int

    @property
    def name(self) -> str:
        return (
            f"{self.model}/in{self.input_min_tokens}-{self.input_max_tokens}"
            f"/out{self.output_min_tokens}-{self.output_max_tokens}/{self.priority.value}"
        )

    @property
    def ranges(self) -> tuple[int, int, int, int]:
        return (self.input_min_tokens, self.input_max_tokens, self.output_min_tokens, self.output_max_tokens)


@dataclass(frozen=True)
class Workload:
    """What to plan for: a total request rate and the buckets that share it.

    ``rate_basis`` says where ``rate_per_s`` comes from; ``mean_rate_per_s`` and ``peak_rate_per_s``
    (traces only) put it in context; ``requests`` counts the trace's requests (0 for a histogram).
    """

    source: str
    rate_per_s: float
    buckets: tuple[WorkloadBucket, ...]
    rate_basis: str
    mean_rate_per_s: float | None = None
    peak_rate_per_s: float | None = None
    requests: int = 0

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted({b.model for b in self.buckets}))

    def rate_of(self, bucket: WorkloadBucket) -> float:
        return self.rate_per_s * bucket.share

    @property
    def tokens_per_s(self) -> float:
        """Input plus output tokens per second at the planned rate."""
        return sum(
            self.rate_of(b) * (b.mean_input_tokens + b.mean_output_tokens)
            for b in self.buckets
            if b.share > 0
        )


# --- positioned YAML ---------------------------------------------------------------------------------------


class _Doc:
    """Walks a composed YAML node tree, failing with ``FILE:LINE:COLUMN: PATH: RULE``."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, node: yaml.Node | None, path: str, rule: str) -> InputError:
        if node is None:
            return InputError(f"{self.file}: {path}: {rule}" if path else f"{self.file}: {rule}")
        mark = node.start_mark
        where = f"{self.file}:{mark.line + 1}:{mark.column + 1}"
        return InputError(f"{where}: {path}: {rule}" if path else f"{where}: {rule}")

    def mapping(
        self, node: yaml.Node, path: str, allowed: Sequence[str], required: Sequence[str]
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"must be a mapping, got {_node_kind(node)}")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            at = f"{path}.{key}" if path else key
            if key not in allowed:
                raise self.fail(key_node, at, f"unknown key; allowed: {', '.join(allowed)}")
            if key in out:
                raise self.fail(key_node, at, "duplicate key")
            out[key] = value_node
        for key in required:
            if key not in out:
                raise self.fail(node, path, f"missing required key {key!r}")
        return out

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, path, f"must be a list, got {_node_kind(node)}")
        return list(node.value)

    def scalar(self, node: yaml.Node, path: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, f"must be a single value, got {_node_kind(node)}")
        return _construct(node)

    def text(self, node: yaml.Node, path: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(node, path, f"must be a non-empty string, got {value!r}")
        return value.strip()

    def number(
        self, node: yaml.Node, path: str, *, minimum: float, strict: bool, maximum: float = math.inf
    ) -> float:
        value = self.scalar(node, path)
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if not (
            math.isfinite(number)
            and number >= minimum
            and not (strict and number == minimum)
            and number <= maximum
        ):
            low = f"> {minimum:g}" if strict else f">= {minimum:g}"
            high = f" and <= {maximum:g}" if math.isfinite(maximum) else ""
            raise self.fail(node, path, f"must be a finite number {low}{high}, got {value!r}")
        return number

    def integer(self, node: yaml.Node, path: str, *, minimum: int) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(node, path, f"must be an integer >= {minimum}, got {value!r}")
        return value


def _construct(node: yaml.ScalarNode) -> object:
    """The Python value of a scalar node, as yaml.safe_load would give it."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = _construct(node) if isinstance(node, yaml.ScalarNode) else None
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string"


def _compose(text: str, file: str) -> yaml.Node:
    is_json = file.lower().endswith(".json") or text.lstrip().startswith(("{", "["))
    if is_json:
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{file}:{exc.lineno}:{exc.colno}: is not valid JSON: {exc.msg}") from None
        # JSON allows tabs between tokens where YAML does not; inside JSON strings a raw tab is invalid, so
        # replacing every tab by a space changes no value and keeps every column.
        text = text.replace("\t", " ")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{where}: is not valid YAML: {problem}") from None
    if node is None:
        raise InputError(f"{file}: is empty; expected a mapping with model, rate_per_s and histogram")
    return node


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1] and a[2] <= b[3] and b[2] <= a[3]


def _read_input(path: str | Path, encoding: str) -> str:
    """The text of an input file; :class:`InputError` naming the file when it is missing or unreadable."""
    try:
        return Path(path).read_text(encoding=encoding)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from None


def load_workload(path: str | Path, *, known_models: Collection[str] | None = None) -> Workload:
    """Reads a workload file (module docstring). ``known_models``: if given, ``model`` must be one of them.

    Raises :class:`InputError` naming the file, line, column, the path inside the file and the rule.
    """
    file = str(path)
    text = _read_input(path, "utf-8")
    doc = _Doc(file)
    root = _compose(text, file)
    top = doc.mapping(
        root,
        "",
        ("model", "priority", "rate_per_s", "source", "histogram"),
        ("model", "rate_per_s", "histogram"),
    )
    model = doc.text(top["model"], "model")
    if known_models is not None and model not in known_models:
        raise doc.fail(
            top["model"], "model", f"unknown model {model!r}; known: {', '.join(sorted(known_models))}"
        )
    priority = Priority.STANDARD
    if "priority" in top:
        ptext = doc.text(top["priority"], "priority")
        try:
            priority = Priority(ptext)
        except ValueError:
            allowed = ", ".join(p.value for p in Priority)
            raise doc.fail(top["priority"], "priority", f"must be one of {allowed}, got {ptext!r}") from None
    rate = doc.number(top["rate_per_s"], "rate_per_s", minimum=0.0, strict=True)
    source = doc.text(top["source"], "source") if "source" in top else file
    items = doc.sequence(top["histogram"], "histogram")
    if not items:
        raise doc.fail(top["histogram"], "histogram", "must list at least one bucket")
    buckets: list[WorkloadBucket] = []
    nodes: list[yaml.Node] = []
    keys = (
        "input_min",
        "input_max",
        "output_min",
        "output_max",
        "share",
        "mean_input_tokens",
        "mean_output_tokens",
    )
    for i, item in enumerate(items):
        at = f"histogram[{i}]"
        m = doc.mapping(item, at, keys, keys[:5])
        lo_in = doc.integer(m["input_min"], f"{at}.input_min", minimum=1)
        hi_in = doc.integer(m["input_max"], f"{at}.input_max", minimum=1)
        lo_out = doc.integer(m["output_min"], f"{at}.output_min", minimum=1)
        hi_out = doc.integer(m["output_max"], f"{at}.output_max", minimum=1)
        if hi_in < lo_in:
            raise doc.fail(m["input_max"], f"{at}.input_max", f"must be >= input_min ({lo_in}), got {hi_in}")
        if hi_out < lo_out:
            raise doc.fail(
                m["output_max"], f"{at}.output_max", f"must be >= output_min ({lo_out}), got {hi_out}"
            )
        share = doc.number(m["share"], f"{at}.share", minimum=0.0, strict=False, maximum=1.0)
        mean_in = (lo_in + hi_in) / 2.0
        mean_out = (lo_out + hi_out) / 2.0
        if "mean_input_tokens" in m:
            mean_in = doc.number(m["mean_input_tokens"], f"{at}.mean_input_tokens", minimum=0.0, strict=False)
            if not lo_in <= mean_in <= hi_in:
                raise doc.fail(
                    m["mean_input_tokens"],
                    f"{at}.mean_input_tokens",
                    f"must lie in {lo_in}..{hi_in}, got {mean_in:g}",
                )
        if "mean_output_tokens" in m:
            mean_out = doc.number(
                m["mean_output_tokens"], f"{at}.mean_output_tokens", minimum=0.0, strict=False
            )
            if not lo_out <= mean_out <= hi_out:
                raise doc.fail(
                    m["mean_output_tokens"],
                    f"{at}.mean_output_tokens",
                    f"must lie in {lo_out}..{hi_out}, got {mean_out:g}",
                )
        bucket = WorkloadBucket(
            model=model,
            priority=priority,
            input_min_tokens=lo_in,
            input_max_tokens=hi_in,
            output_min_tokens=lo_out,
            output_max_tokens=hi_out,
            share=share,
            mean_input_tokens=mean_in,
            mean_output_tokens=mean_out,
            longest_input_tokens=hi_in,
            longest_output_tokens=hi_out,
        )
        for j, other in enumerate(buckets):
            if _overlap(bucket.ranges, other.ranges):
                raise doc.fail(
                    item,
                    at,
                    f"overlaps histogram[{j}] (line {nodes[j].start_mark.line + 1}); buckets must be "
                    "disjoint",
                )
        buckets.append(bucket)
        nodes.append(item)
    total = math.fsum(b.share for b in buckets)
    if abs(total - 1.0) > SHARE_SUM_TOLERANCE:
        raise doc.fail(
            top["histogram"],
            "histogram",
            f"shares must sum to 1 (within {SHARE_SUM_TOLERANCE}), got {total:.6g}",
        )
    return Workload(
        source=source,
        rate_per_s=rate,
        buckets=tuple(buckets),
        rate_basis=f"rate_per_s of {file}",
    )


# --- from a trace -----------------------------------------------------------------------------------------


def bucket_ranges(bounds: Sequence[int], longest: int) -> list[tuple[int, int]]:
    """The inclusive token ranges of buckets with these upper bounds; the last one reaches ``longest`` if
    that is beyond its bound (the last bucket holds every longer request)."""
    out: list[tuple[int, int]] = []
    low = 1
    for i, b in enumerate(bounds):
        high = max(b, longest) if i == len(bounds) - 1 else b
        out.append((low, high))
        low = b + 1
    return out


def _find(ranges: Sequence[tuple[int, int]], tokens: int) -> int:
    for i, (lo, hi) in enumerate(ranges):
        if lo <= tokens <= hi:
            return i
    raise AssertionError(tokens)  # ranges from bucket_ranges cover 1..longest


def _rate_percentile(trace: Trace, percentile: float, window_s: float) -> tuple[float, str, float | None]:
    """(planned rate, how it was obtained, peak window rate) for a trace (module docstring).

    Windows start at the first request; a last, partial window counts (at its own length) when it spans at
    least half a window, so that a cut trace is not judged on its first windows only.
    """
    span = trace.span_s
    full = int(span // window_s)
    rest_s = span - full * window_s
    lengths = [window_s] * full + ([rest_s] if rest_s >= window_s / 2 else [])
    if not lengths:
        rate = len(trace) / span if span > 0 else 0.0
        return (
            rate,
            f"mean rate over the trace's {span:.0f} s (shorter than half a {window_s:g} s window)",
            None,
        )
    counts = [0] * len(lengths)
    for r in trace.requests:
        w = int(r.arrival_s // window_s)
        if w < len(lengths):
            counts[w] += 1
    windows = sorted((c / length, c) for c, length in zip(counts, lengths, strict=True))
    # The rate of the window the percentile's request arrives in: walk the windows from the quietest,
    # adding their requests, until the share reaches the percentile. Arrivals count from the first
    # request, so the first window holds one and the walk always ends on a window.
    requests_up_to = list(accumulate(count for _, count in windows))
    rank = max(1, math.ceil(percentile / 100.0 * requests_up_to[-1]))
    rate = windows[bisect_left(requests_up_to, rank)][0]
    basis = (
        f"p{percentile:g} of requests by the request rate of their {window_s:g} s window "
        f"({len(windows)} windows)"
    )
    return rate, basis, windows[-1][0]


def workload_from_trace(
    trace: Trace,
    *,
    bounds: BucketBounds | None = None,
    grid: Sequence[tuple[int, int, int, int]] | None = None,
    grid_source: str = "",
    rate_percentile: float = 95.0,
    window_s: float = DEFAULT_RATE_WINDOW_S,
) -> Workload:
    """The workload of a trace (module docstring): buckets from ``bounds`` (the policy's length buckets) or
    from ``grid`` (the (input_min, input_max, output_min, output_max) ranges of a measured profile, which
    must not overlap: ``InputError`` names the first request outside every one).

    ``rate_percentile`` in (0, 100] of the requests, by the rate of the ``window_s`` window each arrives
    in, is the planned total rate (the mean rate when the trace is shorter than one window).
    """
    if not 0.0 < rate_percentile <= 100.0:
        raise ValueError(f"rate percentile: must be in (0, 100], got {rate_percentile!r}")
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"rate window: must be a finite number of seconds > 0, got {window_s!r}")
    if len(trace) == 0:
        raise InputError(f"{trace.name}: holds no request")
    rate, basis, peak = _rate_percentile(trace, rate_percentile, window_s)
    if rate <= 0.0:
        raise InputError(
            f"{trace.name}: a single request (or all at one instant) gives no request rate to plan for"
        )

    # Group requests: key = (model, priority, range index).
    groups: dict[tuple[str, Priority, tuple[int, int, int, int]], list[tuple[int, int]]] = {}
    if grid is not None:
        cells = list(grid)
        for i, a in enumerate(cells):
            for b in cells[i + 1 :]:
                if _overlap(a, b):
                    raise InputError(
                        f"{grid_source}: buckets {_fmt_ranges(a)} and {_fmt_ranges(b)} overlap; a trace can "
                        "only be split over disjoint buckets"
                    )
        for k, r in enumerate(trace.requests):
            cell = next(
                (c for c in cells if c[0] <= r.input_tokens <= c[1] and c[2] <= r.output_tokens <= c[3]), None
            )
            if cell is None:
                raise InputError(
                    f"{trace.name}: request {k + 1} ({r.input_tokens} input, {r.output_tokens} output "
                    f"tokens) falls in no bucket of {grid_source}; add a bucket that holds it"
                )
            groups.setdefault((r.model, r.priority, cell), []).append((r.input_tokens, r.output_tokens))
    else:
        from policies.demand import DEFAULT_BUCKET_BOUNDS

        lengths = bounds if bounds is not None else DEFAULT_BUCKET_BOUNDS
        in_ranges = bucket_ranges(lengths.input_tokens, max(r.input_tokens for r in trace.requests))
        out_ranges = bucket_ranges(lengths.output_tokens, max(r.output_tokens for r in trace.requests))
        for r in trace.requests:
            ri = in_ranges[_find(in_ranges, r.input_tokens)]
            ro = out_ranges[_find(out_ranges, r.output_tokens)]
            groups.setdefault((r.model, r.priority, (ri[0], ri[1], ro[0], ro[1])), []).append(
                (r.input_tokens, r.output_tokens)
            )
    total = len(trace)
    buckets = [
        WorkloadBucket(
            model=model,
            priority=priority,
            input_min_tokens=cell[0],
            input_max_tokens=cell[1],
            output_min_tokens=cell[2],
            output_max_tokens=cell[3],
            share=len(reqs) / total,
            mean_input_tokens=math.fsum(x for x, _ in reqs) / len(reqs),
            mean_output_tokens=math.fsum(y for _, y in reqs) / len(reqs),
            longest_input_tokens=max(x for x, _ in reqs),
            longest_output_tokens=max(y for _, y in reqs),
        )
        for (model, priority, cell), reqs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1].value, kv[0][2])
        )
    ]
    return Workload(
        source=trace.describe(),
        rate_per_s=rate,
        buckets=tuple(buckets),
        rate_basis=basis,
        mean_rate_per_s=trace.mean_rate_per_s,
        peak_rate_per_s=peak,
        requests=total,
    )


def _fmt_ranges(r: tuple[int, int, int, int]) -> str:
    return f"in {r[0]}-{r[1]} x out {r[2]}-{r[3]}"


# ---------------------------------------------------------------------------------------------------------
# Measured per-bucket profiles
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketProfileRow:
    """One row of a measured-profile CSV (module docstring)."""

    instance_type: str
    model: str | None
    input_min_tokens: int
    input_max_tokens: int
    output_min_tokens: int
    output_max_tokens: int
    max_rps: float
    source: str
    tp_degree: int | None
    precision: Precision | None
    line: int

    @property
    def ranges(self) -> tuple[int, int, int, int]:
        return (self.input_min_tokens, self.input_max_tokens, self.output_min_tokens, self.output_max_tokens)


@dataclass(frozen=True)
class BucketProfiles:
    """The rows of one measured-profile file, looked up by instance type, model and bucket."""

    origin: str
    rows: tuple[BucketProfileRow, ...]

    @property
    def instance_types(self) -> tuple[str, ...]:
        return tuple(sorted({r.instance_type for r in self.rows}))

    @property
    def grid(self) -> tuple[tuple[int, int, int, int], ...]:
        """The distinct bucket ranges of the file, sorted."""
        return tuple(sorted({r.ranges for r in self.rows}))

    def rows_for(self, instance_type: str, model: str) -> tuple[BucketProfileRow, ...]:
        """The rows of ``instance_type`` measured with ``model`` (rows naming no model count for any)."""
        return tuple(
            r for r in self.rows if r.instance_type == instance_type and (r.model is None or r.model == model)
        )

    def lookup(
        self, instance_type: str, model: str, ranges: tuple[int, int, int, int]
    ) -> BucketProfileRow | None:
        """The row for exactly this bucket (a row naming the model wins over one naming none)."""
        found = [r for r in self.rows_for(instance_type, model) if r.ranges == ranges]
        found.sort(key=lambda r: r.model is None)
        return found[0] if found else None


def _cell(where: str, index: int, column: str, rule: str, text: str) -> InputError:
    return InputError(f"{where}: column {index} ({column}): {rule}, got {text!r}")


def load_bucket_profiles(
    path: str | Path,
    *,
    known_instance_types: Collection[str] | None = None,
    known_models: Collection[str] | None = None,
) -> BucketProfiles:
    """Reads a measured per-bucket profile CSV (module docstring).

    Raises :class:`InputError` naming the file, the line and the column (number and name) of the first bad
    value; a missing, unknown or repeated header column; a row for a bucket and instance type already given
    (naming both lines); different ``tp_degree``/``precision`` for one instance type and model; an unknown
    instance type or model (when ``known_*`` are given); or a file without data rows.
    """
    origin = str(path)
    text = _read_input(path, "utf-8-sig")
    header: list[str] | None = None
    rows: list[BucketProfileRow] = []
    seen: dict[tuple[str, str | None, tuple[int, int, int, int]], int] = {}
    deployment: dict[tuple[str, str | None], tuple[int | None, Precision | None, int]] = {}
    for number, where, fields in csv_lines(text, origin, InputError):
        if header is None:
            header = [f.strip() for f in fields]
            allowed = PROFILE_REQUIRED + PROFILE_OPTIONAL
            for i, h in enumerate(header, start=1):
                if h not in allowed:
                    raise InputError(
                        f"{where}: column {i} ({h}): unknown header column; allowed: {', '.join(allowed)}"
                    )
                if header.index(h) != i - 1:
                    raise InputError(f"{where}: column {i} ({h}): repeats column {header.index(h) + 1}")
            missing = [c for c in PROFILE_REQUIRED if c not in header]
            if missing:
                raise InputError(
                    f"{where}: header: missing column(s) {', '.join(missing)}; "
                    f"required: {','.join(PROFILE_REQUIRED)}"
                )
            continue
        if len(fields) != len(header):
            raise InputError(f"{where}: expected {len(header)} fields as in the header, got {len(fields)}")
        col = {h: (i + 1, fields[i].strip()) for i, h in enumerate(header)}

        def integer(name: str) -> int:
            index, value = col[name]  # noqa: B023 - used within this iteration only
            try:
                out = int(value)
            except ValueError:
                raise _cell(where, index, name, "must be an integer >= 1", value) from None  # noqa: B023
            if out < 1:
                raise _cell(where, index, name, "must be an integer >= 1", value)  # noqa: B023
            return out

        itype_index, itype = col["instance_type"]
        if not itype:
            raise _cell(where, itype_index, "instance_type", "must not be empty", itype)
        if known_instance_types is not None and itype not in known_instance_types:
            raise _cell(
                where,
                itype_index,
                "instance_type",
                f"unknown instance type; known: {', '.join(sorted(known_instance_types))}",
                itype,
            )
        lo_in, hi_in = integer("input_min"), integer("input_max")
        lo_out, hi_out = integer("output_min"), integer("output_max")
        if hi_in < lo_in:
            raise _cell(
                where,
                col["input_max"][0],
                "input_max",
                f"must be >= input_min ({lo_in})",
                col["input_max"][1],
            )
        if hi_out < lo_out:
            raise _cell(
                where,
                col["output_max"][0],
                "output_max",
                f"must be >= output_min ({lo_out})",
                col["output_max"][1],
            )
        rps_index, rps_text = col["max_rps"]
        try:
            rps = float(rps_text)
        except ValueError:
            rps = math.nan
        if not (math.isfinite(rps) and rps > 0):
            raise _cell(where, rps_index, "max_rps", "must be a finite number > 0", rps_text)
        model: str | None = None
        if "model" in col and col["model"][1]:
            model = col["model"][1]
            if known_models is not None and model not in known_models:
                raise _cell(
                    where,
                    col["model"][0],
                    "model",
                    f"unknown model; known: {', '.join(sorted(known_models))}",
                    model,
                )
        tp: int | None = integer("tp_degree") if "tp_degree" in col and col["tp_degree"][1] else None
        precision: Precision | None = None
        if "precision" in col and col["precision"][1]:
            p_index, p_text = col["precision"]
            try:
                precision = Precision(p_text)
            except ValueError:
                allowed_p = ", ".join(p.value for p in Precision)
                raise _cell(where, p_index, "precision", f"must be one of {allowed_p}", p_text) from None
        source = col["source"][1] if "source" in col and col["source"][1] else f"{origin}:{number}"
        row = BucketProfileRow(
            instance_type=itype,
            model=model,
            input_min_tokens=lo_in,
            input_max_tokens=hi_in,
            output_min_tokens=lo_out,
            output_max_tokens=hi_out,
            max_rps=rps,
            source=source,
            tp_degree=tp,
            precision=precision,
            line=number,
        )
        key = (itype, model, row.ranges)
        if key in seen:
            raise InputError(
                f"{where}: {itype} {_fmt_ranges(row.ranges)} is already given on line {seen[key]}; one row "
                "per instance type and bucket"
            )
        seen[key] = number
        dep = deployment.get((itype, model))
        if dep is None:
            deployment[itype, model] = (tp, precision, number)
        elif (dep[0], dep[1]) != (tp, precision):
            raise InputError(
                f"{where}: {itype}: tp_degree/precision differ from line {dep[2]}; one deployment per "
                "instance type and model"
            )
        rows.append(row)
    if header is None:
        raise InputError(f"{origin}: empty file: expected the header {','.join(PROFILE_REQUIRED)}[,source]")
    if not rows:
        raise InputError(f"{origin}: no data rows after the header")
    return BucketProfiles(origin=origin, rows=tuple(rows))
