"""Measured serving profiles: benchmark tables that override the roofline for an endpoint class.

File format (CSV, UTF-8, one header line; blank lines and lines starting with ``#`` are ignored; no
field may span lines)::

    model,instance_type,tp_degree,precision,batch,input_tokens,context_tokens,ttft_ms,tpot_ms,source
    llama-3.1-8b,p5.48xlarge,1,fp8,1,512,640,18.2,6.9,"vllm bench serve, 2026-10-02, run 17"
    llama-3.1-8b,p5.48xlarge,1,fp8,32,512,640,95.0,8.4,"vllm bench serve, 2026-10-02, run 18"

=================  ==========================================================================================
column             meaning
=================  ==========================================================================================
model              canonical model name (``llama-3.1-8b``)
instance_type      EC2 instance type (``p5.48xlarge``)
tp_degree          chips per replica (integer >= 1; Neuron: chips, not NeuronCores)
precision          ``bf16``, ``fp8``, ``fp4`` or ``int8``
batch              sequences decoding together (integer >= 1)
input_tokens       prompt length of each request (integer >= 1)
context_tokens     mean context (prompt + generated so far) of the decoding sequences (integer >= 1)
ttft_ms            time to first token, ms (> 0): the time to prefill ``batch x input_tokens`` tokens,
                   i.e. the request's own prompt behind ``batch - 1`` others of the same length
tpot_ms            time per output token at (``batch``, ``context_tokens``), ms (> 0)
source             where the row comes from (non-empty): tool, date, run
=================  ==========================================================================================

Rows are grouped by (model, instance_type, tp_degree, precision): one :class:`MeasuredProfile` per
group. A profile predicts by monotone interpolation, so the :class:`fleet.types.ServingProfile` contract
holds whatever the measurements' noise:

* TPOT: at each measured batch the points are sorted by context and replaced by their running maximum;
  each batch level is then raised to at least the level below it; values are interpolated bilinearly
  on the union grid of measured contexts. Below the smallest context or batch the first value holds;
  beyond the largest context the steepest final slope so far continues; beyond the largest batch TPOT
  grows in proportion to batch (the compute-bound worst case).
* TTFT: points at ``batch x input_tokens`` prefill tokens, running maximum, linear interpolation; below
  the smallest the first value holds, beyond the largest it grows at least in proportion to tokens.
* ``max_batch_for_tpot`` never exceeds the largest measured batch (capacity is not extrapolated).

Errors name the file, the line and the column: ``profiles/h100.csv:7: column 'tpot_ms': must be a
finite number > 0, got 'abc'``.

A profile read from a file knows no memory size or power; :meth:`MeasuredProfile.with_fallback` (which
:meth:`fleet.perf.PerformanceModel.with_measured` applies) takes ``fits``, ``kv_capacity_tokens`` and
power from the class's roofline profile. Unbound, ``kv_capacity_tokens`` is the largest
``batch x context_tokens`` measured and power is 0 W.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.types import Precision, ServingProfile

COLUMNS = (
    "model",
    "instance_type",
    "tp_degree",
    "precision",
    "batch",
    "input_tokens",
    "context_tokens",
    "ttft_ms",
    "tpot_ms",
    "source",
)


@dataclass(frozen=True, slots=True)
class MeasuredPoint:
    """One row of a measured-profile file."""

    batch: int
    input_tokens: int
    context_tokens: int
    ttft_ms: float
    tpot_ms: float
    source: str
    line: int


class MeasuredProfile:
    """A serving profile from measurements; implements :class:`fleet.types.ServingProfile`."""

    __slots__ = (
        "_batches",
        "_contexts",
        "_fits",
        "_idle_power_w",
        "_kv_capacity_tokens",
        "_max_power_w",
        "_tail_slopes",
        "_tpot_grid",
        "_ttft_tokens",
        "_ttft_values",
        "instance_type",
        "model",
        "origin",
        "points",
        "precision",
        "tp_degree",
    )

    def __init__(
        self,
        *,
        model: str,
        instance_type: str,
        tp_degree: int,
        precision: Precision,
        points: Sequence[MeasuredPoint],
        origin: str,
    ) -> None:
        if not points:
            raise ValueError(f"{origin}: a measured profile needs at least one row")
        self.model = model
        self.instance_type = instance_type
        self.tp_degree = tp_degree
        self.precision = precision
        self.points = tuple(points)
        self.origin = origin

        # TPOT table: batch levels x union of contexts, monotone in both.
        self._batches = sorted({p.batch for p in points})
        self._contexts = [float(c) for c in sorted({p.context_tokens for p in points})]
        grid: list[list[float]] = []
        tail_slopes: list[float] = []
        for b in self._batches:
            level = sorted((p.context_tokens, p.tpot_ms) for p in points if p.batch == b)
            xs: list[float] = []
            ys: list[float] = []
            for c, t in level:
                t = max(t, ys[-1]) if ys else t
                if xs and xs[-1] == c:
                    ys[-1] = t
                else:
                    xs.append(float(c))
                    ys.append(t)
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
            row = [
                ys[-1] + slope * (c - xs[-1]) if c > xs[-1] else _interpolate(xs, ys, c)
                for c in self._contexts
            ]
            if grid:
                row = [max(a, below) for a, below in zip(row, grid[-1], strict=True)]
                slope = max(slope, tail_slopes[-1])
            grid.append(row)
            tail_slopes.append(slope)
        self._tpot_grid = grid
        self._tail_slopes = tail_slopes

        # TTFT curve over prefill tokens (batch x input), running maximum.
        ttft_points = sorted((p.batch * p.input_tokens, p.ttft_ms) for p in points)
        tokens: list[float] = []
        values: list[float] = []
        for x, t in ttft_points:
            t = max(t, values[-1]) if values else t
            if tokens and tokens[-1] == x:
                values[-1] = t
            else:
                tokens.append(float(x))
                values.append(t)
        self._ttft_tokens = tokens
        self._ttft_values = values

        self._fits = True
        self._kv_capacity_tokens = max(p.batch * p.context_tokens for p in points)
        self._idle_power_w = 0.0
        self._max_power_w = 0.0

    def with_fallback(self, roofline: ServingProfile) -> MeasuredProfile:
        """This profile with ``fits``, ``kv_capacity_tokens`` and power taken from ``roofline``."""
        bound = MeasuredProfile.__new__(MeasuredProfile)
        for name in MeasuredProfile.__slots__:
            setattr(bound, name, getattr(self, name))
        bound._fits = roofline.fits
        bound._kv_capacity_tokens = roofline.kv_capacity_tokens
        bound._idle_power_w = roofline.idle_power_w
        bound._max_power_w = roofline.max_power_w
        return bound

    # --- ServingProfile ------------------------------------------------------------------------

    @property
    def fits(self) -> bool:
        return self._fits

    @property
    def kv_capacity_tokens(self) -> int:
        return self._kv_capacity_tokens

    @property
    def idle_power_w(self) -> float:
        return self._idle_power_w

    @property
    def max_power_w(self) -> float:
        return self._max_power_w

    @property
    def source(self) -> str:
        return f"measured:{self.origin}"

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        x = float(max(input_tokens, 1) + max(queued_prefill_tokens, 0))
        xs, ys = self._ttft_tokens, self._ttft_values
        if x >= xs[-1]:
            slope = max(ys[-1] / xs[-1], (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0)
            return ys[-1] + slope * (x - xs[-1])
        return _interpolate(xs, ys, x)

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        b = float(max(batch, 1))
        c = float(max(context_tokens, 0))
        levels = self._batches
        if b >= levels[-1]:
            return self._level_tpot(len(levels) - 1, c) * (b / levels[-1])
        i = bisect.bisect_right(levels, b) - 1
        if i < 0:
            return self._level_tpot(0, c)
        lo, hi = self._level_tpot(i, c), self._level_tpot(i + 1, c)
        return lo + (hi - lo) * (b - levels[i]) / (levels[i + 1] - levels[i])

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        c = max(int(context_tokens), 1)
        limit = min(self._batches[-1], self._kv_capacity_tokens // c)
        if limit < 1 or not self.tpot_ms(1, c) <= tpot_ms:
            return 0
        lo, hi = 1, limit  # tpot(lo) <= target; find the largest such batch
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.tpot_ms(mid, c) <= tpot_ms:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def power_w(self, utilization_ratio: float) -> float:
        u = min(max(utilization_ratio, 0.0), 1.0) if utilization_ratio == utilization_ratio else 0.0
        return self._idle_power_w + (self._max_power_w - self._idle_power_w) * u

    # --- helpers ---------------------------------------------------------------------------------

    def _level_tpot(self, i: int, c: float) -> float:
        row = self._tpot_grid[i]
        contexts = self._contexts
        if c >= contexts[-1]:
            return row[-1] + self._tail_slopes[i] * (c - contexts[-1])
        return _interpolate(contexts, row, c)

    def __repr__(self) -> str:
        return (
            f"MeasuredProfile({self.model}, {self.instance_type}, tp={self.tp_degree}, "
            f"{self.precision.value}, {len(self.points)} rows from {self.origin})"
        )


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys) (xs strictly increasing); constant below xs[0] and above xs[-1]."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    j = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _int(text: str, where: str, column: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: column {column!r}: must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{where}: column {column!r}: must be an integer >= 1, got {text!r}")
    return value


def _positive(text: str, where: str, column: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: column {column!r}: must be a finite number > 0, got {text!r}")
    return value


def _name(text: str, where: str, column: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError(f"{where}: column {column!r}: must not be empty")
    return value


def csv_lines(
    text: str, origin: str, error: Callable[[str], Exception] = ValueError
) -> Iterator[tuple[int, str, list[str]]]:
    """``(line number, "origin:line", fields)`` of each line of a CSV text that is neither blank nor a
    ``#`` comment, one line per record; a line the csv module cannot parse raises
    ``error("origin:line: malformed CSV line: ...")``."""
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{origin}:{number}"
        try:
            fields = next(csv.reader([raw]))
        except csv.Error as exc:
            raise error(f"{where}: malformed CSV line: {exc}") from None
        yield number, where, fields


def load_measured_profiles(path: str | Path) -> list[MeasuredProfile]:
    """Read a measured-profile CSV (format in the module docstring): one profile per endpoint class.

    Raises ``ValueError`` naming the file, line and column of the first bad value, a missing or unknown
    header column, or a file without data rows; ``OSError`` if the file cannot be read.
    """
    origin = str(path)
    text = Path(path).read_text(encoding="utf-8")
    header: list[str] | None = None
    groups: dict[tuple[str, str, int, Precision], list[MeasuredPoint]] = {}
    for number, where, fields in csv_lines(text, origin):
        if header is None:
            header = [f.strip() for f in fields]
            missing = [c for c in COLUMNS if c not in header]
            unknown = [c for c in header if c not in COLUMNS]
            if missing:
                raise ValueError(
                    f"{where}: header: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
                )
            if unknown:
                raise ValueError(
                    f"{where}: header: unknown column(s) {', '.join(unknown)}; expected {','.join(COLUMNS)}"
                )
            if len(set(header)) != len(header):
                raise ValueError(f"{where}: header: a column is repeated")
            continue
        if len(fields) != len(header):
            raise ValueError(f"{where}: expected {len(header)} fields, got {len(fields)}")
        row = dict(zip(header, fields, strict=True))
        precision_text = row["precision"].strip()
        try:
            precision = Precision(precision_text)
        except ValueError:
            allowed = ", ".join(p.value for p in Precision)
            raise ValueError(
                f"{where}: column 'precision': must be one of {allowed}, got {precision_text!r}"
            ) from None
        key = (
            _name(row["model"], where, "model"),
            _name(row["instance_type"], where, "instance_type"),
            _int(row["tp_degree"], where, "tp_degree"),
            precision,
        )
        point = MeasuredPoint(
            batch=_int(row["batch"], where, "batch"),
            input_tokens=_int(row["input_tokens"], where, "input_tokens"),
            context_tokens=_int(row["context_tokens"], where, "context_tokens"),
            ttft_ms=_positive(row["ttft_ms"], where, "ttft_ms"),
            tpot_ms=_positive(row["tpot_ms"], where, "tpot_ms"),
            source=_name(row["source"], where, "source"),
            line=number,
        )
        groups.setdefault(key, []).append(point)
    if header is None:
        raise ValueError(f"{origin}: empty file: expected the header {','.join(COLUMNS)}")
    if not groups:
        raise ValueError(f"{origin}: no data rows after the header")
    return [
        MeasuredProfile(model=m, instance_type=i, tp_degree=t, precision=p, points=pts, origin=origin)
        for (m, i, t, p), pts in groups.items()
    ]
