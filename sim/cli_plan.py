"""``turnout plan``: the cheapest fleet that serves a workload within its SLO and the zones' power caps.

    turnout plan (--trace SPEC [--rate-scale X] [--model NAME] [--rate-percentile P] [--rate-window-s S]
                  | --workload FILE)
                 [--fleet CONFIG] [--ttft-ms MS] [--tpot-ms MS] [--instance-types A,B,..]
                 [--precisions bf16,fp8] [--tp 1,2,..] [--max-context-tokens N] [--power-cap-kw KW]
                 [--profiles CSV] [--price TYPE=USD_PER_HOUR ...] [--headroom R] [--time-limit-s S]
                 [--json] [--fleet-out PATH]

The workload (``sim.sizing_inputs``), the candidate configurations and their capacity per bucket
(``sim.plan_fleet``) and the sizing model (``policies.sizing``) are documented in their modules. The command
solves the sizing model once over every candidate (the mix) and once per instance type (the cheapest
single-type fleet of each, for comparison), prints a table or, with ``--json``, one JSON object (schema
below), and with ``--fleet-out`` writes the mix as a fleet config that ``turnout serve --config`` and
``turnout simulate --fleet`` load.

Exit codes: 0 a fleet was found; 1 no fleet of the candidates meets the SLO within the power caps (the
output says why) or the solver failed; 2 a usage or input error (one line on stderr naming the file, line,
column or option and the rule).

JSON schema (``"schema": "turnout.plan/1"``; fields are only ever added)::

    {
      "schema": "turnout.plan/1",
      "workload": {"source": str, "models": [str], "rate_per_s": float, "rate_basis": str,
                   "mean_rate_per_s": float|null, "peak_rate_per_s": float|null, "requests": int,
                   "tokens_per_s": float,
                   "buckets": [{"name": str, "model": str, "priority": str, "input_min": int,
                                "input_max": int, "output_min": int, "output_max": int, "share": float,
                                "rate_per_s": float, "mean_input_tokens": float,
                                "mean_output_tokens": float, "longest_input_tokens": int,
                                "longest_output_tokens": int}]},
      "slo": [{"model": str, "priority": str, "ttft_ms": float, "tpot_ms": float}],
      "headroom_ratio": float, "power_share": float,
      "zones": [{"name": str, "region": str, "power_cap_w": float}],
      "plan": PLAN,                                       # the cheapest fleet over every candidate
      "single_type": [{"instance_type": str, ...PLAN}],   # the cheapest fleet of each instance type
      "candidates": [{"name": str, "model": str, "instance_type": str, "tp_degree": int,
                      "precision": str, "max_batched_tokens": int,
                      "replicas_per_instance": int, "price_usd_per_hour": float,
                      "price_source": str, "price_estimated": bool, "idle_w": float, "max_w": float,
                      "power_source": str, "capacity_source": str,
                      "capacity_per_s": {BUCKET: float}, "binding": {BUCKET: str}}],
      "excluded": {INSTANCE_TYPE: str},                   # types with no candidate, and why
      "seconds": {"prepare": float, "solve": float, "single_type_solves": float, "total": float}
    }
    PLAN = {"status": "optimal"|"feasible"|"infeasible"|"timeout"|"error", "reason": str,
            "usd_per_hour": float, "usd_per_million_tokens": float|null, "instances": int,
            "power_w": {ZONE: float}, "power_w_total": float, "power_cap_w": {ZONE: float},
            "solve_seconds": float, "bound_usd_per_hour": float|null,
            "mix": [{"zone": str, "instance_type": str, "model": str, "tp_degree": int,
                     "precision": str, "max_batched_tokens": int, "instances": int, "replicas": int,
                     "usd_per_hour": float,
                     "load_ratio": float, "power_w": float, "request_share": float,
                     "share_by_bucket": {BUCKET: float}}]}

``usd_per_million_tokens`` is the fleet's USD/h over the workload's input plus output tokens per hour at
the planned rate; ``power_w`` is at planned load; ``load_ratio`` is the share of the instances'
SLO-feasible capacity (headroom included) in use; ``request_share`` the share of all requests they serve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleet.catalog import Catalog
from fleet.types import LatencySlo, Precision, Priority, ZoneSpec
from policies.demand import BucketBounds
from policies.sizing import SizingResult, size_fleet
from sim.plan_fleet import (
    Candidate,
    CandidateSet,
    SloFor,
    build_candidates,
    fleet_config_text,
    sizing_problem,
    type_reason,
)
from sim.sizing_inputs import (
    DEFAULT_RATE_WINDOW_S,
    BucketProfiles,
    InputError,
    Workload,
    load_bucket_profiles,
    load_workload,
    workload_from_trace,
)

DESCRIPTION = (
    "Find the cheapest fleet (instances of each type, with TP degree and precision) that serves a workload "
    "within its SLO and the zones' power caps, with an OR-Tools model; compare with the cheapest fleet of "
    "each single instance type. The workload is a trace (--trace) or a histogram file (--workload); capacity "
    "comes from the performance model or from measured per-bucket profiles (--profiles)."
)

SCHEMA = "turnout.plan/1"
_TOKENS_PER_MILLION = 1e6
_SECONDS_PER_HOUR = 3600.0


class UsageError(ValueError):
    """A bad option or input: exit code 2 with the message on stderr."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds this command's arguments to its sub-parser."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--trace", metavar="SPEC", help="builtin:azure-conv, builtin:azure-code, or a CSV/JSONL file"
    )
    src.add_argument("--workload", metavar="FILE", help="workload histogram, YAML or JSON (see the README)")
    parser.add_argument(
        "--rate-scale", type=float, default=1.0, metavar="X", help="replay the trace X times faster"
    )
    parser.add_argument(
        "--model", metavar="NAME", help="model of the trace's requests that name none (default llama-3.1-8b)"
    )
    parser.add_argument(
        "--rate-percentile",
        type=float,
        default=95.0,
        metavar="P",
        help=(
            "plan for the request rate of the window this percentile of requests arrives in "
            "(default 95; 100 = the busiest window)"
        ),
    )
    parser.add_argument(
        "--rate-window-s",
        type=float,
        default=DEFAULT_RATE_WINDOW_S,
        metavar="S",
        help=f"window of that rate, s (default {DEFAULT_RATE_WINDOW_S:g})",
    )
    parser.add_argument(
        "--fleet",
        metavar="CONFIG",
        help="fleet config for the SLO, zones, catalog overrides and buckets (default: the embedded one)",
    )
    parser.add_argument("--ttft-ms", type=float, metavar="MS", help="TTFT target for every request")
    parser.add_argument("--tpot-ms", type=float, metavar="MS", help="TPOT target for every request")
    parser.add_argument(
        "--instance-types",
        metavar="A,B,..",
        help="candidate instance types (default: every catalog type that can serve)",
    )
    parser.add_argument(
        "--precisions", default="bf16,fp8", metavar="P,..", help="candidate precisions (default bf16,fp8)"
    )
    parser.add_argument(
        "--tp", metavar="N,..", help="candidate TP degrees (default: every divisor of the chips)"
    )
    parser.add_argument(
        "--max-context-tokens",
        type=int,
        metavar="N",
        help="context each replica must hold (default: the model's)",
    )
    parser.add_argument(
        "--power-cap-kw",
        type=float,
        metavar="KW",
        help="one zone with this power cap instead of the fleet config's zones",
    )
    parser.add_argument(
        "--profiles", metavar="CSV", help="measured max request rate per instance type and bucket"
    )
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="TYPE=USD_PER_HOUR",
        help="price override per instance type (repeatable)",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        metavar="R",
        help="share of SLO-feasible capacity to fill (default: the fleet config's planner.headroom_ratio)",
    )
    parser.add_argument(
        "--time-limit-s", type=float, default=10.0, metavar="S", help="time limit of each solve (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object (schema: sim/cli_plan.py)")
    parser.add_argument("--fleet-out", metavar="PATH", help="write the planned fleet as a fleet config YAML")


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def _names(text: str | None, option: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{option}: must list at least one name")
    return list(dict.fromkeys(names))


def _positive(value: float | None, option: str) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option}: must be a finite number > 0, got {value:g}")


def _prices(items: Sequence[str], catalog: Catalog) -> dict[str, Mapping[str, tuple[float, str]]]:
    out: dict[str, Mapping[str, tuple[float, str]]] = {}
    for item in items:
        itype, sep, value = item.partition("=")
        itype = itype.strip()
        if not sep or not itype:
            raise UsageError(f"--price {item!r}: must be INSTANCE_TYPE=USD_PER_HOUR")
        if itype not in catalog.instance_types:
            known = ", ".join(sorted(catalog.instance_types))
            raise UsageError(f"--price {item!r}: unknown instance type {itype!r}; known: {known}")
        try:
            usd = float(value)
        except ValueError:
            usd = math.nan
        if not (math.isfinite(usd) and usd > 0):
            raise UsageError(f"--price {item!r}: the price must be a finite number > 0 USD/h")
        if itype in out:
            raise UsageError(f"--price: {itype} is given twice")
        out[itype] = {"price_usd_per_hour": (usd, f"turnout plan --price {itype}={value.strip()}")}
    return out


@dataclasses.dataclass(frozen=True)
class _Inputs:
    workload: Workload
    catalog: Catalog
    candidates: CandidateSet
    slo_for: SloFor
    slo_defaults: Mapping[Priority, LatencySlo]
    zones: tuple[ZoneSpec, ...]
    headroom_ratio: float
    catalog_overrides: Mapping[str, Mapping[str, tuple[float, str]]]
    extra_models: tuple[Mapping[str, Any], ...]
    profile_paths: tuple[Path, ...]
    measured: BucketProfiles | None
    bounds: BucketBounds
    # Share of each zone's cap the workload's lowest priority may fill (the router's shed filter,
    # placement.shedding): the fleet is sized within it, or the router would refuse the work it was
    # sized for.
    power_share: float = 1.0


def _inputs(args: argparse.Namespace) -> _Inputs:
    """Everything the solves need, from the options; ``UsageError`` / ``InputError`` / ``ConfigError``."""
    from fleet.catalog import load_catalog
    from router.config import build_fleet, load_config
    from sim.traces import Assignment, TraceError, load_trace, scale_rate

    for value, option in (
        (args.ttft_ms, "--ttft-ms"),
        (args.tpot_ms, "--tpot-ms"),
        (args.power_cap_kw, "--power-cap-kw"),
        (args.time_limit_s, "--time-limit-s"),
        (args.rate_window_s, "--rate-window-s"),
    ):
        _positive(value, option)
    if args.headroom is not None and not (0.0 < args.headroom <= 1.0):
        raise UsageError(f"--headroom: must be in (0, 1], got {args.headroom:g}")
    if not 0.0 < args.rate_percentile <= 100.0:
        raise UsageError(f"--rate-percentile: must be in (0, 100], got {args.rate_percentile:g}")
    if args.max_context_tokens is not None and args.max_context_tokens < 1:
        raise UsageError(f"--max-context-tokens: must be an integer >= 1, got {args.max_context_tokens}")
    if args.workload is not None:
        for option in ("model", "rate_scale"):
            default = None if option == "model" else 1.0
            if getattr(args, option) != default:
                raise UsageError(f"--{option.replace('_', '-')}: applies to --trace only")

    config = load_config(args.fleet)
    base_catalog = load_catalog(config.catalog_overrides)
    overrides = {k: dict(v) for k, v in config.catalog_overrides.items()}
    for itype, fields in _prices(args.price, base_catalog).items():
        overrides.setdefault(itype, {}).update(fields)
    config = dataclasses.replace(config, catalog_overrides=overrides)
    fleet = build_fleet(config)
    catalog, models, performance = fleet.catalog, fleet.models, fleet.performance

    precisions: list[Precision] = []
    for name in _names(args.precisions, "--precisions") or []:
        try:
            precisions.append(Precision(name))
        except ValueError:
            allowed = ", ".join(p.value for p in Precision)
            raise UsageError(f"--precisions: unknown precision {name!r}; known: {allowed}") from None
    tp_choices: list[int] | None = None
    if args.tp is not None:
        try:
            tp_choices = [int(t) for t in _names(args.tp, "--tp") or []]
        except ValueError:
            raise UsageError(f"--tp: must list integers >= 1, got {args.tp!r}") from None
        if any(t < 1 for t in tp_choices):
            raise UsageError(f"--tp: must list integers >= 1, got {args.tp!r}")
    types = _names(args.instance_types, "--instance-types")
    if types is None:
        types = sorted(n for n, t in catalog.instance_types.items() if t.can_serve)
    for t in types:
        if t not in catalog.instance_types:
            known = ", ".join(sorted(catalog.instance_types))
            raise UsageError(f"--instance-types: unknown instance type {t!r}; known: {known}")

    measured = None
    if args.profiles is not None:
        measured = load_bucket_profiles(
            args.profiles, known_instance_types=set(catalog.instance_types), known_models=set(models.names)
        )

    if args.workload is not None:
        workload = load_workload(args.workload, known_models=set(models.names))
    else:
        if args.model is not None and args.model not in models:
            raise UsageError(f"--model: unknown model {args.model!r}; known: {', '.join(models.names)}")
        assignment = Assignment() if args.model is None else Assignment(models=((args.model, 1.0),))
        try:
            trace = scale_rate(load_trace(args.trace, assignment), args.rate_scale)
        except TraceError as exc:
            raise InputError(str(exc)) from None
        except ValueError as exc:
            raise UsageError(f"--rate-scale: {exc}") from None
        unknown = sorted({r.model for r in trace.requests} - set(models.names))
        if unknown:
            raise InputError(
                f"{args.trace}: unknown model(s) {', '.join(unknown)}; known: {', '.join(models.names)}"
            )
        workload = workload_from_trace(
            trace,
            bounds=config.planning.placement.buckets,
            grid=measured.grid if measured is not None else None,
            grid_source=measured.origin if measured is not None else "",
            rate_percentile=args.rate_percentile,
            window_s=args.rate_window_s,
        )
    if args.max_context_tokens is not None:
        for model in workload.models:
            limit = models.get(model).max_context_tokens
            if args.max_context_tokens > limit:
                raise UsageError(f"--max-context-tokens: {model} holds at most {limit} tokens")

    def slo_for(model: str, priority: Priority) -> LatencySlo:
        base = config.slo.slo_for(model, priority)
        return LatencySlo(
            ttft_ms=args.ttft_ms if args.ttft_ms is not None else base.ttft_ms,
            tpot_ms=args.tpot_ms if args.tpot_ms is not None else base.tpot_ms,
        )

    if args.power_cap_kw is not None:
        first = config.zones[0]
        zones: tuple[ZoneSpec, ...] = (ZoneSpec(first.name, first.region, args.power_cap_kw * 1000.0),)
    else:
        zones = tuple(config.zones)
    headroom = args.headroom if args.headroom is not None else config.planning.solver.headroom_ratio
    candidates = build_candidates(
        workload,
        catalog=catalog,
        performance=performance,
        slo_for=slo_for,
        instance_types=types,
        precisions=precisions,
        tp_choices=tp_choices,
        max_context_tokens=args.max_context_tokens,
        headroom_ratio=headroom,
        measured=measured,
    )
    return _Inputs(
        workload=workload,
        catalog=catalog,
        candidates=candidates,
        slo_for=slo_for,
        slo_defaults=config.slo.defaults,
        zones=zones,
        headroom_ratio=headroom,
        power_share=min(
            (config.planning.placement.shedding.of(b.priority) for b in workload.buckets if b.share > 0),
            default=1.0,
        ),
        catalog_overrides={k: dict(v) for k, v in overrides.items()},
        extra_models=config.models,
        profile_paths=config.profiles,
        measured=measured,
        bounds=config.planning.placement.buckets,
    )


# ---------------------------------------------------------------------------------------------------------
# Solves
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Solved:
    plan: SizingResult
    single: tuple[tuple[str, SizingResult], ...]
    solve_seconds: float
    single_seconds: float


def _explained(result: SizingResult, candidates: Sequence[Candidate], inputs: _Inputs) -> SizingResult:
    """The result with a reason naming, for classes no candidate serves, what limits them."""
    prefix = "no candidate serves within the SLO: "
    if result.status != "infeasible" or not result.reason.startswith(prefix):
        return result
    unserved = result.reason[len(prefix) :].split(", ")
    return dataclasses.replace(
        result, reason=type_reason(candidates, unserved, inputs.slo_for, inputs.workload)
    )


def _solve(inputs: _Inputs, time_limit_s: float) -> _Solved:
    cands = inputs.candidates
    t0 = time.perf_counter()
    if cands.candidates:
        problem = sizing_problem(inputs.workload, cands.candidates, inputs.zones, inputs.power_share)
        plan = _explained(size_fleet(problem, time_limit_s=time_limit_s), cands.candidates, inputs)
    else:
        why = "; ".join(f"{t}: {reason}" for t, reason in cands.excluded.items())
        plan = _no_candidates(inputs, f"no candidate configuration: {why}")
    t1 = time.perf_counter()
    single: list[tuple[str, SizingResult]] = []
    for itype in cands.instance_types:
        own = cands.of_type(itype)
        if not own:
            single.append((itype, _no_candidates(inputs, cands.excluded.get(itype, "no configuration"))))
            continue
        problem = sizing_problem(inputs.workload, own, inputs.zones, inputs.power_share)
        single.append((itype, _explained(size_fleet(problem, time_limit_s=time_limit_s), own, inputs)))
    t2 = time.perf_counter()
    return _Solved(plan=plan, single=tuple(single), solve_seconds=t1 - t0, single_seconds=t2 - t1)


def _no_candidates(inputs: _Inputs, reason: str) -> SizingResult:
    return SizingResult(
        status="infeasible",
        reason=reason,
        mix=(),
        price_usd_per_hour=0.0,
        power_w={z.name: 0.0 for z in inputs.zones},
        bound_usd_per_hour=None,
        solve_seconds=0.0,
        integer_variables=0,
        share_variables=0,
    )


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------


def _usd_per_million(result: SizingResult, workload: Workload) -> float | None:
    tokens_per_hour = workload.tokens_per_s * _SECONDS_PER_HOUR
    if not result.solved or tokens_per_hour <= 0:
        return None
    return result.price_usd_per_hour / tokens_per_hour * _TOKENS_PER_MILLION


def _plan_data(result: SizingResult, inputs: _Inputs) -> dict[str, Any]:
    by_name = {c.name: c for c in inputs.candidates.candidates}
    rates = {b.name: inputs.workload.rate_of(b) for b in inputs.workload.buckets}
    total_rate = inputs.workload.rate_per_s
    mix = []
    for e in result.mix:
        c = by_name[e.option]
        mix.append(
            {
                "zone": e.zone,
                "instance_type": c.instance_type,
                "model": c.model,
                "tp_degree": c.tp_degree,
                "precision": c.precision.value,
                "max_batched_tokens": c.max_batched_tokens,
                "instances": e.instances,
                "replicas": e.instances * c.replicas_per_instance,
                "usd_per_hour": e.price_usd_per_hour,
                "load_ratio": e.load / e.instances,
                "power_w": e.power_w,
                "request_share": sum(rates[b] * s for b, s in e.share.items()) / total_rate,
                "share_by_bucket": dict(e.share),
            }
        )
    return {
        "status": result.status,
        "reason": result.reason,
        "usd_per_hour": result.price_usd_per_hour,
        "usd_per_million_tokens": _usd_per_million(result, inputs.workload),
        "instances": result.instances,
        "power_w": dict(result.power_w),
        "power_w_total": sum(result.power_w.values()),
        "power_cap_w": {z.name: z.power_cap_w for z in inputs.zones},
        "solve_seconds": result.solve_seconds,
        "bound_usd_per_hour": result.bound_usd_per_hour,
        "mix": mix,
    }


def _json(inputs: _Inputs, solved: _Solved, prepare_s: float, total_s: float) -> dict[str, Any]:
    w = inputs.workload
    slo_rows = sorted({(b.model, b.priority) for b in w.buckets}, key=lambda mp: (mp[0], mp[1].value))
    return {
        "schema": SCHEMA,
        "workload": {
            "source": w.source,
            "models": list(w.models),
            "rate_per_s": w.rate_per_s,
            "rate_basis": w.rate_basis,
            "mean_rate_per_s": w.mean_rate_per_s,
            "peak_rate_per_s": w.peak_rate_per_s,
            "requests": w.requests,
            "tokens_per_s": w.tokens_per_s,
            "buckets": [
                {
                    "name": b.name,
                    "model": b.model,
                    "priority": b.priority.value,
                    "input_min": b.input_min_tokens,
                    "input_max": b.input_max_tokens,
                    "output_min": b.output_min_tokens,
                    "output_max": b.output_max_tokens,
                    "share": b.share,
                    "rate_per_s": w.rate_of(b),
                    "mean_input_tokens": b.mean_input_tokens,
                    "mean_output_tokens": b.mean_output_tokens,
                    "longest_input_tokens": b.longest_input_tokens,
                    "longest_output_tokens": b.longest_output_tokens,
                }
                for b in w.buckets
            ],
        },
        "slo": [
            {
                "model": m,
                "priority": p.value,
                "ttft_ms": inputs.slo_for(m, p).ttft_ms,
                "tpot_ms": inputs.slo_for(m, p).tpot_ms,
            }
            for m, p in slo_rows
        ],
        "headroom_ratio": inputs.headroom_ratio,
        "power_share": inputs.power_share,
        "zones": [{"name": z.name, "region": z.region, "power_cap_w": z.power_cap_w} for z in inputs.zones],
        "plan": _plan_data(solved.plan, inputs),
        "single_type": [{"instance_type": t, **_plan_data(r, inputs)} for t, r in solved.single],
        "candidates": [
            {
                "name": c.name,
                "model": c.model,
                "instance_type": c.instance_type,
                "tp_degree": c.tp_degree,
                "precision": c.precision.value,
                "max_batched_tokens": c.max_batched_tokens,
                "replicas_per_instance": c.replicas_per_instance,
                "price_usd_per_hour": c.price_usd_per_hour,
                "price_source": c.price_source,
                "price_estimated": c.price_estimated,
                "idle_w": c.idle_w,
                "max_w": c.max_w,
                "power_source": c.power_source,
                "capacity_source": c.capacity_source,
                "capacity_per_s": {b: cap.requests_per_s for b, cap in c.capacity.items()},
                "binding": {b: cap.binding for b, cap in c.capacity.items()},
            }
            for c in inputs.candidates.candidates
        ],
        "excluded": dict(inputs.candidates.excluded),
        "seconds": {
            "prepare": prepare_s,
            "solve": solved.solve_seconds,
            "single_type_solves": solved.single_seconds,
            "total": total_s,
        },
    }


def _table(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _short(text: str, limit: int = 150) -> str:
    """``text`` cut to ``limit`` characters for the table (``--json`` has it whole)."""
    return text if len(text) <= limit else text[: limit - 24].rstrip() + " ... (whole in --json)"


def _kw(w: float) -> str:
    return f"{w / 1000.0:.2f}"


def _text(inputs: _Inputs, solved: _Solved, prepare_s: float, total_s: float) -> str:
    w = inputs.workload
    lines: list[str] = []
    lines.append(f"Workload: {w.source}; model {', '.join(w.models)}")
    context = ""
    if w.mean_rate_per_s is not None:
        peak = f", peak {w.peak_rate_per_s:.2f}" if w.peak_rate_per_s is not None else ""
        context = f"; mean {w.mean_rate_per_s:.2f}{peak} req/s"
    lines.append(f"  planned rate {w.rate_per_s:.2f} req/s = {w.rate_basis}{context}")
    lines.append(
        f"  {sum(1 for b in w.buckets if b.share > 0)} buckets; "
        f"{w.tokens_per_s * _SECONDS_PER_HOUR / 1e6:.1f} M tokens/h (input + output) at the planned rate"
    )
    slos = sorted({(b.model, b.priority) for b in w.buckets}, key=lambda mp: (mp[0], mp[1].value))
    slo_text = "; ".join(
        f"{m} {p.value} TTFT {inputs.slo_for(m, p).ttft_ms:g} ms, TPOT {inputs.slo_for(m, p).tpot_ms:g} ms"
        for m, p in slos
    )
    lines.append(f"SLO: {slo_text}; capacity filled to {inputs.headroom_ratio:g} of SLO-feasible")
    share = f" (sized within {inputs.power_share:.0%} of each: the share its priority may fill)"
    caps = ", ".join(f"{z.name} {z.power_cap_w / 1000:.1f} kW" for z in inputs.zones)
    lines.append("Power caps: " + caps + (share if inputs.power_share < 1.0 else ""))
    lines.append("")
    by_name = {c.name: c for c in inputs.candidates.candidates}
    plan = solved.plan
    data = _plan_data(plan, inputs)
    estimated = False
    if plan.solved:
        lines.append(
            f"Cheapest fleet: {plan.status}, {plan.instances} instance(s), "
            f"solved in {plan.solve_seconds:.2f} s"
        )
        rows = [
            [
                "zone",
                "instance type",
                "model",
                "tp",
                "prec",
                "step",
                "inst",
                "replicas",
                "USD/h",
                "requests",
                "load",
                "kW",
            ]
        ]
        for e, d in zip(plan.mix, data["mix"], strict=True):
            c = by_name[e.option]
            estimated |= c.price_estimated
            rows.append(
                [
                    e.zone,
                    c.instance_type + ("*" if c.price_estimated else ""),
                    c.model,
                    str(c.tp_degree),
                    c.precision.value,
                    str(c.max_batched_tokens),
                    str(e.instances),
                    str(d["replicas"]),
                    f"{e.price_usd_per_hour:.2f}",
                    f"{100 * d['request_share']:.1f} %",
                    f"{100 * d['load_ratio']:.0f} %",
                    _kw(e.power_w),
                ]
            )
        lines.extend(_table(rows, {3, 5, 6, 7, 8, 9, 10, 11}))
        caps = ", ".join(
            f"{z.name} {_kw(plan.power_w.get(z.name, 0.0))} of {_kw(z.power_cap_w)} kW" for z in inputs.zones
        )
        lines.append(
            f"  total {plan.price_usd_per_hour:.2f} USD/h, {data['usd_per_million_tokens']:.3f} USD per "
            f"million tokens; power at planned load: {caps}"
        )
    else:
        lines.append(f"No fleet: {plan.status}: {plan.reason}")
    lines.append("")
    lines.append("Cheapest fleet of one instance type:")
    rows = [["instance type", "inst", "configuration", "USD/h", "USD/M tok", "kW", "status"]]
    for itype, r in solved.single:
        d = _plan_data(r, inputs)
        est = any(c.price_estimated for c in inputs.candidates.of_type(itype))
        estimated |= est and r.solved
        if r.solved:
            per_config: dict[str, int] = {}
            for e in r.mix:
                c = by_name[e.option]
                key = f"tp{c.tp_degree} {c.precision.value}"
                per_config[key] = per_config.get(key, 0) + e.instances
            configs = ", ".join(f"{n} x {k}" for k, n in per_config.items())
            rows.append(
                [
                    itype + ("*" if est else ""),
                    str(r.instances),
                    configs,
                    f"{r.price_usd_per_hour:.2f}",
                    f"{d['usd_per_million_tokens']:.3f}",
                    _kw(sum(r.power_w.values())),
                    r.status,
                ]
            )
        else:
            rows.append([itype, "-", "-", "-", "-", "-", _short(f"{r.status}: {r.reason}")])
    lines.extend(_table(rows, {1, 3, 4, 5}))
    if estimated:
        lines.append("  * price is a marked catalog estimate (`turnout catalog` gives its reasoning)")
    lines.append("")
    lines.append(
        f"Solve time: {solved.solve_seconds:.2f} s for the mix, {solved.single_seconds:.2f} s for "
        f"{len(solved.single)} single-type fleets; {prepare_s:.2f} s to read the inputs and compute "
        f"capacities; {total_s:.2f} s in all"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Runs the command; returns the exit code (0 ok, 1 runtime failure, 2 usage or input error)."""
    from router.config import ConfigError

    t0 = time.perf_counter()
    try:
        inputs = _inputs(args)
    except (UsageError, InputError, ConfigError) as exc:
        print(f"turnout plan: {exc}", file=sys.stderr)
        return 2
    prepare_s = time.perf_counter() - t0
    solved = _solve(inputs, args.time_limit_s)
    total_s = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_json(inputs, solved, prepare_s, total_s), indent=2))
    else:
        print(_text(inputs, solved, prepare_s, total_s))
    if not solved.plan.solved:
        print(f"turnout plan: no fleet: {solved.plan.status}: {solved.plan.reason}", file=sys.stderr)
        return 1
    if args.fleet_out is not None:
        out = Path(args.fleet_out)
        text = fleet_config_text(
            solved.plan,
            inputs.candidates.candidates,
            zones=inputs.zones,
            slo_defaults=inputs.slo_defaults,
            slo_for=inputs.slo_for,
            workload=inputs.workload,
            catalog_overrides=inputs.catalog_overrides,
            extra_models=inputs.extra_models,
            profile_paths=inputs.profile_paths,
            out_path=out,
            headroom_ratio=inputs.headroom_ratio,
            bounds=inputs.bounds,
        )
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(
                f"turnout plan: --fleet-out {out}: cannot be written: {exc.strerror or exc}", file=sys.stderr
            )
            return 1
    return 0
