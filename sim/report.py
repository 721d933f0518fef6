"""Reports of simulated runs: ``summary.json``, ``report.md``, PNG plots, a terminal table, a progress bar.

:func:`write_report` writes, for the runs of one trace on one fleet (one run per policy):

* ``summary.json``: the trace, the fleet, the settings and every policy's
  :class:`~sim.accounting.PolicyResult` (keys sorted, two-space indent). Deterministic: the same runs
  give the same bytes (no wall-clock figure is written; those go to the terminal only).
* ``report.md``: the comparison table, then per policy its latencies, zones, pools, shedding and planner
  activity, and the plots.
* ``cost.png`` (cumulative cost and cost rate over time per policy), ``power.png`` (mean power per zone
  per time bin, per policy, against the zone's cap), ``latency_cdf.png`` (TTFT and TPOT CDFs per policy),
  ``traffic_share.png`` (share of placements per accelerator kind over time, one panel per policy).

Plots are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so a report
can be written from any thread or process without a display.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sim.accounting import COMPLETED, PolicyResult, to_plain
from sim.engine import SimConfig, SimResult
from sim.traces import Trace

__all__ = [
    "ProgressBar",
    "ReportFiles",
    "format_table",
    "summary_data",
    "summary_json",
    "write_report",
]


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """Paths written by :func:`write_report`."""

    summary_json: Path
    report_md: Path
    plots: tuple[Path, ...]


# ---------------------------------------------------------------------------------------------------------
# summary.json
# ---------------------------------------------------------------------------------------------------------


def _trace_data(trace: Trace) -> dict[str, Any]:
    return {
        "name": trace.name,
        "source": trace.source,
        "requests": len(trace),
        "span_s": trace.span_s,
        "mean_rate_per_s": trace.mean_rate_per_s,
        "rate_scale": trace.rate_scale,
        "duration_cut_s": trace.duration_cut_s,
        "input_tokens": trace.input_tokens,
        "output_tokens": trace.output_tokens,
    }


def _config_data(config: SimConfig) -> dict[str, Any]:
    data: dict[str, Any] = to_plain(config)
    return data


def summary_data(results: Sequence[SimResult], run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``summary.json`` for runs of one trace on one fleet (one per policy, names unique).
    ``run`` (e.g. the seed and the model/priority assignment of the command) is written under ``run``."""
    if not results:
        raise ValueError("results: at least one run is needed")
    first = results[0]
    names = [r.policy for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"results: policy names must be unique, got {names}")
    for r in results[1:]:
        if r.trace is not first.trace and r.trace != first.trace:
            raise ValueError("results: every run must replay the same trace")
    data: dict[str, Any] = {
        "trace": _trace_data(first.trace),
        "fleet": {"source": first.fleet_source},
        "settings": {r.policy: _config_data(r.config) for r in results},
        "policies": {r.policy: r.summary.to_dict() for r in results},
    }
    if run is not None:
        data["run"] = to_plain(dict(run))
    return data


def summary_json(results: Sequence[SimResult], run: Mapping[str, Any] | None = None) -> str:
    """``summary.json`` text: sorted keys, no NaN (a ``ValueError`` would say a figure is not finite)."""
    return json.dumps(summary_data(results, run), sort_keys=True, indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def _peak_vs_cap(s: PolicyResult) -> str:
    return ", ".join(f"{z.zone} {z.peak_bin_mean_w / 1000:.1f}/{z.cap_w / 1000:.1f} kW" for z in s.zones)


_COLUMNS = (
    ("policy", "l"),
    ("USD", "r"),
    ("USD/Mtok", "r"),
    ("in USD/Mtok", "r"),
    ("out USD/Mtok", "r"),
    ("SLO met", "r"),
    ("p99 TTFT ms", "r"),
    ("p99 TPOT ms", "r"),
    ("J/token", "r"),
    ("rejected", "r"),
    ("peak power / cap (bin mean)", "l"),
)


def _rows(results: Sequence[SimResult]) -> list[list[str]]:
    rows = []
    for r in results:
        s = r.summary
        rows.append(
            [
                s.policy,
                _num(s.total_usd),
                _num(s.usd_per_million_tokens, 3),
                _num(s.usd_per_million_input_tokens, 3),
                _num(s.usd_per_million_output_tokens, 3),
                _pct(s.slo_attainment),
                _num(s.ttft_ms.p99, 0),
                _num(s.tpot_ms.p99, 1),
                _num(s.joules_per_token, 2),
                f"{s.rejected:,}",
                _peak_vs_cap(s),
            ]
        )
    return rows


def format_table(results: Sequence[SimResult]) -> str:
    """The comparison as a fixed-width text table (for the terminal)."""
    header = [c for c, _ in _COLUMNS]
    rows = _rows(results)
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for (_, align), cell, w in zip(_COLUMNS, cells, widths, strict=True):
            parts.append(cell.ljust(w) if align == "l" else cell.rjust(w))
        return "  ".join(parts).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    spec = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in spec]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# report.md
# ---------------------------------------------------------------------------------------------------------


def _report_md(results: Sequence[SimResult], plots: Sequence[Path], command: str | None) -> str:
    first = results[0]
    trace = first.trace
    out: list[str] = ["# Turnout simulation report", ""]
    if command:
        out += ["Produced by:", "", "```", command, "```", ""]
    out += [
        f"- Trace: {trace.describe()}; {trace.input_tokens:,} input and {trace.output_tokens:,} output "
        "tokens.",
        f"- Trace source: {trace.source}.",
        f"- Fleet: {first.fleet_source or 'given in code'}; "
        f"{len(first.summary.pools)} pools, {sum(p.endpoints for p in first.summary.pools)} endpoints.",
    ]
    settings = {r.policy: r.config for r in results}
    distinct = {json.dumps(_config_data(c), sort_keys=True) for c in settings.values()}
    if len(distinct) == 1:
        c = first.config
        scaling = f"scaling {c.scaling}"
        if c.scaling == "plan":
            scaling += (
                f" (provisioning delay {c.provisioning_delay_s:g} s, initially {c.initial_active} on, "
                f"make-before-break {'on' if c.make_before_break else 'off'})"
            )
        demand = f"demand half-life {c.demand_half_life_s:g} s, start-up correction " + (
            "on" if c.demand_warmup else "off"
        )
        if c.static_demand:
            static_rate = sum(d.rate_per_s for d in c.static_demand)
            demand += f", static demand {static_rate:g} req/s ({c.static_demand_merge})"
        out.append(
            f"- Settings: {scaling}, telemetry every {c.telemetry_interval_s:g} s, "
            f"planner every {c.planner_interval_s:g} s ({demand}), "
            "max batch "
            + ("per pool (max_batch_sequences)" if c.max_batch is None else str(c.max_batch))
            + " (all in `summary.json`)."
        )
    else:
        out.append("- Settings differ between policies: see `settings` in `summary.json`.")
    out += [
        "",
        "USD per million tokens counts the prompt and generated tokens of completed requests; the input and "
        "output figures split each endpoint's cost by its prefill and decode busy time (idle time shared in "
        "proportion). SLO met: share of all requests completing within both their TTFT and TPOT targets "
        "(rejected requests are misses). Peak power: the highest mean over a time bin.",
        "",
        "## Comparison",
        "",
        _md_table([c for c, _ in _COLUMNS], _rows(results), "".join(a for _, a in _COLUMNS)),
    ]
    for r in results:
        s = r.summary
        out += [f"## {s.policy}", ""]
        out += [
            f"- Requests: {s.requests:,} ({s.completed:,} completed, {s.rejected:,} rejected, "
            f"{s.running:,} still running); simulated {s.duration_s:,.1f} s.",
            f"- Cost: {_num(s.total_usd)} USD ({_num(s.usd_per_hour)} USD/h on average); prefill "
            f"{_num(s.prefill_usd)}, decode {_num(s.decode_usd)}, idle {_num(s.idle_usd)} USD.",
            f"- Energy: {_num(s.energy_kwh, 3)} kWh, {_num(s.joules_per_token, 3)} J per token.",
            f"- SLO: {_pct(s.slo_attainment)} met (TTFT {_pct(s.ttft_met_ratio)}, "
            f"TPOT {_pct(s.tpot_met_ratio)}); by priority "
            + ", ".join(f"{p} {_pct(v)}" for p, v in s.slo_attainment_by_priority.items() if v is not None)
            + ".",
            "- Shed (rejected) by priority: "
            + ", ".join(f"{p} {n:,}" for p, n in s.shed_by_priority.items())
            + (
                "; reasons: " + ", ".join(f"{k} {v:,}" for k, v in s.rejected_by_reason.items())
                if s.rejected_by_reason
                else ""
            )
            + ".",
            "- Placements by reason: "
            + (", ".join(f"{k} {v:,}" for k, v in s.placement_reasons.items()) or "none")
            + "; by accelerator: "
            + (", ".join(f"{k} {v:,}" for k, v in s.requests_by_kind.items()) or "none")
            + ".",
        ]
        ratio = s.prediction_ratio
        if any(v is not None for v in ratio.values()):
            out.append(
                "- Policy predictions, observed / predicted (median): TTFT "
                f"{_num(ratio.get('ttft_observed_over_predicted_p50'), 3)}, TPOT "
                f"{_num(ratio.get('tpot_observed_over_predicted_p50'), 3)}."
            )
        if s.planner.get("runs"):
            statuses = ", ".join(f"{k} {v}" for k, v in s.planner.get("statuses", {}).items())
            out.append(
                f"- Planner: {s.planner['runs']} runs ({s.planner.get('early_runs', 0)} early; "
                f"{s.planner.get('replans_requested', 0)} re-plans requested); statuses: {statuses}."
            )
        out += [""]
        out.append(
            _md_table(
                ["latency", "count", "mean", "p50", "p90", "p99", "max"],
                [
                    [
                        name,
                        f"{p.count:,}",
                        _num(p.mean, 1),
                        _num(p.p50, 1),
                        _num(p.p90, 1),
                        _num(p.p99, 1),
                        _num(p.max, 1),
                    ]
                    for name, p in (("TTFT ms", s.ttft_ms), ("TPOT ms", s.tpot_ms))
                ],
            )
        )
        out.append(
            _md_table(
                ["zone", "cap kW", "peak kW", "peak bin mean kW", "mean kW", "time over cap s", "kWh"],
                [
                    [
                        z.zone,
                        _num(z.cap_w / 1000),
                        _num(z.peak_w / 1000),
                        _num(z.peak_bin_mean_w / 1000),
                        _num(z.mean_w / 1000),
                        _num(z.time_over_cap_s, 1),
                        _num(z.energy_kwh, 3),
                    ]
                    for z in s.zones
                ],
            )
        )
        out.append(
            _md_table(
                [
                    "pool",
                    "kind",
                    "instance type",
                    "endpoints",
                    "mean on",
                    "utilisation",
                    "USD",
                    "kWh",
                    "requests",
                ],
                [
                    [
                        p.pool,
                        p.accelerator_kind,
                        p.instance_type,
                        str(p.endpoints),
                        _num(p.mean_active_endpoints),
                        _pct(p.utilization_ratio),
                        _num(p.usd),
                        _num(p.energy_kwh, 3),
                        f"{p.requests:,}",
                    ]
                    for p in s.pools
                ],
                "lllrrrrrr",
            )
        )
    if plots:
        out += ["## Plots", ""]
        for p in plots:
            out += [f"![{p.stem}]({p.name})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _minutes(ts: Sequence[float]) -> list[float]:
    return [t / 60.0 for t in ts]


def _steps(bin_end_s: Sequence[float], values: Sequence[float]) -> tuple[list[float], list[float]]:
    """x (minutes: every bin's start, then the last bin's end) and y for a ``where="post"`` step plot."""
    if not bin_end_s:
        return [], []
    starts = [0.0, *bin_end_s[:-1]]
    return _minutes([*starts, bin_end_s[-1]]), [*values, values[-1]]


def _plot_cost(results: Sequence[SimResult], path: Path) -> Path:
    fig = _figure(10, 6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for r in results:
        ts = r.summary.timeseries
        x = [0.0, *_minutes(ts.bin_end_s)]
        ax1.plot(x, [0.0, *ts.cumulative_usd], label=r.policy)
        ax2.step(*_steps(ts.bin_end_s, ts.cost_usd_per_hour), where="post", label=r.policy)
    ax1.set_ylabel("cumulative cost (USD)")
    ax2.set_ylabel("cost rate (USD/h, bin mean)")
    ax2.set_xlabel("simulated time (min)")
    ax1.legend(loc="upper left", fontsize="small")
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    ax1.set_title(f"Cost over time: {results[0].trace.describe()}", fontsize="medium")
    return _save(fig, path)


def _plot_power(results: Sequence[SimResult], path: Path) -> Path:
    zones = [z.zone for z in results[0].summary.zones]
    caps = {z.zone: z.cap_w for z in results[0].summary.zones}
    fig = _figure(10, 2.6 * max(1, len(zones)) + 0.6)
    axes = fig.subplots(max(1, len(zones)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, zone in zip(axes, zones, strict=False):
        for r in results:
            ts = r.summary.timeseries
            kw = [w / 1000 for w in ts.zone_power_w[zone]]
            ax.step(*_steps(ts.bin_end_s, kw), where="post", label=r.policy)
        ax.axhline(caps[zone] / 1000, color="black", linestyle="--", linewidth=1, label="cap")
        ax.set_ylabel(f"{zone} (kW)")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize="small")
    axes[0].set_title("Power per zone (mean per time bin) against the cap", fontsize="medium")
    axes[-1].set_xlabel("simulated time (min)")
    return _save(fig, path)


def _cdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def _plot_latency(results: Sequence[SimResult], path: Path) -> Path:
    fig = _figure(11, 4.5)
    ax1, ax2 = fig.subplots(1, 2)
    for r in results:
        done = [o for o in r.outcomes if o.outcome == COMPLETED]
        ttft = [o.ttft_ms for o in done if o.ttft_ms is not None and o.ttft_ms > 0]
        tpot = [o.tpot_ms for o in done if o.tpot_ms is not None and o.output_tokens > 1 and o.tpot_ms > 0]
        if ttft:
            ax1.plot(*_cdf(ttft), label=r.policy)
        if tpot:
            ax2.plot(*_cdf(tpot), label=r.policy)
    for ax, name in ((ax1, "TTFT (ms)"), (ax2, "TPOT (ms)")):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("share of completed requests")
        ax.grid(alpha=0.3, which="both")
    ax1.legend(loc="lower right", fontsize="small")
    ax1.set_title("TTFT CDF", fontsize="medium")
    ax2.set_title("TPOT CDF", fontsize="medium")
    return _save(fig, path)


def _plot_share(results: Sequence[SimResult], path: Path) -> Path:
    fig = _figure(10, 2.4 * len(results) + 0.6)
    axes = fig.subplots(len(results), 1, sharex=True, squeeze=False)[:, 0]
    for ax, r in zip(axes, results, strict=True):
        ts = r.summary.timeseries
        kinds = sorted(ts.placements_by_kind)
        totals = [sum(ts.placements_by_kind[k][j] for k in kinds) for j in range(len(ts.bin_end_s))]
        shares = [
            [ts.placements_by_kind[k][j] / totals[j] if totals[j] else 0.0 for j in range(len(totals))]
            for k in kinds
        ]
        if kinds and ts.bin_end_s:
            x = _steps(ts.bin_end_s, shares[0])[0]
            ax.stackplot(x, [[*row, row[-1]] for row in shares], labels=kinds, step="post")
        ax.set_ylim(0, 1)
        ax.set_ylabel(r.policy)
        ax.legend(loc="upper left", fontsize="x-small", ncol=max(1, len(kinds)))
    axes[0].set_title("Share of placements per accelerator kind (per time bin)", fontsize="medium")
    axes[-1].set_xlabel("simulated time (min)")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def write_report(
    results: Sequence[SimResult],
    out_dir: str | Path,
    *,
    command: str | None = None,
    plots: bool = True,
    run: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Writes ``summary.json``, ``report.md`` and (``plots=True``) the PNG plots into ``out_dir``
    (created if needed). ``command`` is quoted in the report as the command that produced it; ``run`` goes
    to ``summary.json`` (:func:`summary_data`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary_path.write_text(summary_json(results, run), encoding="utf-8")
    written: list[Path] = []
    if plots:
        written = [
            _plot_cost(results, out / "cost.png"),
            _plot_power(results, out / "power.png"),
            _plot_latency(results, out / "latency_cdf.png"),
            _plot_share(results, out / "traffic_share.png"),
        ]
    report_path = out / "report.md"
    report_path.write_text(_report_md(results, written, command), encoding="utf-8")
    return ReportFiles(summary_json=summary_path, report_md=report_path, plots=tuple(written))


# ---------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on ``stream`` (default stderr), drawn only when the stream is a TTY.

    Use as the ``progress`` callback of :func:`sim.engine.simulate`; call :meth:`close` at the end.
    Redraws at most every ``min_interval_s`` wall seconds.
    """

    def __init__(
        self, label: str, *, stream: IO[str] | None = None, width: int = 30, min_interval_s: float = 0.2
    ) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self._last = -math.inf
        self._drawn = False
        self._start = time.monotonic()

    def __call__(self, done: int, total: int, simulated_s: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval_s:
            return
        self._last = now
        share = done / total if total else 1.0
        filled = round(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(
            f"\r{self.label} [{bar}] {100 * share:5.1f}% {done:,}/{total:,} requests, "
            f"simulated {simulated_s:,.0f} s, {now - self._start:,.0f} s wall"
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
