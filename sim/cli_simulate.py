"""``turnout simulate``: replay a request trace through placement policies on a simulated fleet.

    turnout simulate --trace (PATH | builtin:azure-conv | builtin:azure-code) [--fleet CONFIG]
                     [--policy NAME ...] [--rate-scale X] [--duration S] [--seed N] [--out DIR]
                     [--scaling fixed|plan] [--provisioning-delay-s S] [--initial-active all|reserved]
                     [--models NAME=W,..] [--priorities NAME=W,..] [--expected-output-tokens N]
                     [--no-static-demand] [--no-demand-warmup] [--no-make-before-break]
                     [--no-plots] [--progress]

Each ``--policy`` (a name of the router's policy registry, ``policies/registry.py``; default ``turnout``)
replays the same trace, one after another, through the router's own policy code on the simulated fleet
of ``--fleet`` (default: the embedded default fleet), with that configuration's SLOs, planner settings
(interval, demand estimate, static demand, solver) and placement settings. :mod:`sim.engine` documents
the simulation; :mod:`sim.report` the files written to ``--out``: ``report.md``, ``summary.json`` and the
PNG plots. The comparison table goes to stdout; a progress bar to stderr when it is a terminal (or with
``--progress``).

``--rate-scale X`` replays the trace X times faster; ``--duration S`` then keeps the requests arriving in
the first S seconds of the (scaled) replay. ``--seed N`` seeds the draws of a model and a priority for
requests whose trace row names none (``--models``, ``--priorities``) and the ``random`` policy's picker;
the same command and seed give the same ``summary.json``, byte for byte (the planner's solves are bounded
in wall-clock time; on a heavily loaded machine a solve cut short can differ).

Exit codes: 0 success; 1 a failure at run time (a report that cannot be written); 2 a usage or input
error: one line on stderr naming the option, or the file and line of a malformed trace row, or the file
and path of a configuration error, and the rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

from fleet.types import Priority

DESCRIPTION = (
    "Replay a request trace (CSV or JSON lines, or a builtin Azure trace) through the router's placement "
    "policies, planner included, on a simulated fleet that follows the performance model; report cost, "
    "SLO attainment, latency, energy and power per policy, and write report.md, summary.json and plots."
)

DEFAULT_OUT = "out/simulate"
DEFAULT_POLICY = "turnout"


class UsageError(ValueError):
    """A bad option: exit code 2 with the message on stderr."""


def _finite(kind: str, minimum: float, *, strict: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {minimum:g}")
        return value

    parse.__name__ = kind
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds this command's arguments to its sub-parser."""
    parser.add_argument(
        "--trace",
        required=True,
        metavar="SPEC",
        help="builtin:azure-conv, builtin:azure-code, or a CSV / JSON-lines file with arrival time, "
        "input tokens and output tokens per request",
    )
    parser.add_argument(
        "--fleet", metavar="CONFIG", help="fleet configuration (default: the embedded default fleet)"
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help=f"placement policy of the router's registry (repeatable; default {DEFAULT_POLICY})",
    )
    parser.add_argument(
        "--rate-scale",
        type=_finite("rate scale", 0.0, strict=True),
        default=1.0,
        metavar="X",
        help="replay the trace X times faster (default 1)",
    )
    parser.add_argument(
        "--duration",
        type=_finite("duration", 0.0, strict=True),
        metavar="S",
        help="keep the requests arriving in the first S seconds of the (scaled) replay",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the model/priority draws and the random picker",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"where the report goes (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--scaling",
        choices=("fixed", "plan"),
        default="plan",
        help="plan: endpoints follow the planner's active set (default); fixed: every endpoint on throughout",
    )
    parser.add_argument(
        "--provisioning-delay-s",
        type=_finite("delay", 0.0, strict=False),
        metavar="S",
        help="seconds from the plan turning an endpoint on to it serving (default 180, an estimate)",
    )
    parser.add_argument(
        "--initial-active",
        choices=("all", "reserved"),
        default="all",
        help="with plan scaling: every endpoint on at the start (default), or only reserved ones",
    )
    parser.add_argument(
        "--models",
        metavar="NAME=W,..",
        help="model mix for requests whose row names none, weights optional (default llama-3.1-8b)",
    )
    parser.add_argument(
        "--priorities",
        metavar="NAME=W,..",
        help="priority mix (critical, standard, sheddable) for requests whose row names none "
        "(default standard)",
    )
    parser.add_argument(
        "--expected-output-tokens",
        type=_positive_int,
        metavar="N",
        help="output every request announces (its max_tokens); default: its true output length",
    )
    parser.add_argument(
        "--no-static-demand",
        action="store_true",
        help="ignore the configuration's static demand: the planner sees observed traffic only",
    )
    parser.add_argument(
        "--no-demand-warmup",
        action="store_true",
        help="plain EWMA demand estimate from t=0, biased low for the first half-lives (as the live router "
        "with planner.demand.warmup: false); default: the configuration's setting (on)",
    )
    parser.add_argument(
        "--no-make-before-break",
        action="store_true",
        help="drain endpoints the plan leaves out at once, even while their replacements still provision",
    )
    parser.add_argument("--no-plots", action="store_true", help="write report.md and summary.json only")
    parser.add_argument(
        "--progress", action="store_true", help="draw the progress bar on stderr even when it is no terminal"
    )


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------


def _policy_names(requested: Sequence[str] | None) -> list[str]:
    from policies.registry import builtin_plugins

    known = builtin_plugins().policies.names()
    names = list(requested) if requested else [DEFAULT_POLICY]
    for name in names:
        if name not in known:
            raise UsageError(f"--policy: unknown policy {name!r}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"--policy: {', '.join(twice)} given twice")
    return names


def _mix(text: str, option: str) -> list[tuple[str, float]]:
    """``NAME[=W],..`` -> [(name, weight)] (weight 1 when omitted)."""
    out: list[tuple[str, float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, weight_text = item.partition("=")
        name = name.strip()
        weight = 1.0
        if sep:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
        if not name or not (math.isfinite(weight) and weight > 0):
            raise UsageError(f"{option} {item!r}: must be NAME or NAME=WEIGHT with a finite weight > 0")
        if name in (n for n, _ in out):
            raise UsageError(f"{option}: {name} is given twice")
        out.append((name, weight))
    if not out:
        raise UsageError(f"{option}: must list at least one name")
    return out


def _assignment(args: argparse.Namespace) -> Any:
    from sim.traces import Assignment

    fields: dict[str, Any] = {"seed": args.seed}
    if args.models is not None:
        fields["models"] = tuple(_mix(args.models, "--models"))
    if args.priorities is not None:
        by_value = {p.value: p for p in Priority}
        pairs = []
        for name, weight in _mix(args.priorities, "--priorities"):
            p = by_value.get(name.lower())
            if p is None:
                raise UsageError(f"--priorities: {name!r} is not one of {', '.join(sorted(by_value))}")
            pairs.append((p, weight))
        fields["priorities"] = tuple(pairs)
    return Assignment(**fields)


def _command(args: argparse.Namespace, policies: Sequence[str]) -> str:
    """The command with every effective option, as the report quotes it."""
    parts = ["turnout", "simulate", "--trace", str(args.trace)]
    if args.fleet is not None:
        parts += ["--fleet", str(args.fleet)]
    for name in policies:
        parts += ["--policy", name]
    parts += ["--rate-scale", f"{args.rate_scale:g}"]
    if args.duration is not None:
        parts += ["--duration", f"{args.duration:g}"]
    parts += ["--seed", str(args.seed), "--scaling", args.scaling]
    if args.provisioning_delay_s is not None:
        parts += ["--provisioning-delay-s", f"{args.provisioning_delay_s:g}"]
    if args.scaling == "plan":
        parts += ["--initial-active", args.initial_active]
    for option in ("models", "priorities", "expected_output_tokens"):
        value = getattr(args, option)
        if value is not None:
            parts += [f"--{option.replace('_', '-')}", str(value)]
    for flag in ("no_static_demand", "no_demand_warmup", "no_make_before_break", "no_plots"):
        if getattr(args, flag):
            parts.append(f"--{flag.replace('_', '-')}")
    parts += ["--out", str(args.out)]
    return shlex.join(parts)


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def _error(message: str) -> int:
    print(f"turnout simulate: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Runs the command; returns the exit code (0 ok, 1 runtime failure, 2 usage or input error)."""
    from router.config import ConfigError
    from sim.engine import SimConfig, SimError, load_fleet, simulate
    from sim.policy_adapter import router_policy
    from sim.report import ProgressBar, format_table, write_report
    from sim.traces import TraceError, cut_duration, load_trace, scale_rate

    try:
        policies = _policy_names(args.policy)
        assignment = _assignment(args)
    except (UsageError, ValueError) as exc:
        return _error(str(exc))
    try:
        fleet = load_fleet(args.fleet)
    except ConfigError as exc:
        return _error(f"configuration error: {exc}")
    try:
        trace = load_trace(args.trace, assignment)
    except TraceError as exc:
        return _error(f"trace error: {exc}")
    trace = scale_rate(trace, args.rate_scale)
    if args.duration is not None:
        trace = cut_duration(trace, args.duration)
        if not trace.requests:
            return _error(f"--duration {args.duration:g}: no request of {args.trace} arrives that early")

    planning = fleet.planning
    overrides: dict[str, Any] = {
        "scaling": args.scaling,
        "initial_active": args.initial_active,
        "expected_output_tokens": args.expected_output_tokens,
        "make_before_break": not args.no_make_before_break,
    }
    if args.no_demand_warmup:
        overrides["demand_warmup"] = False
    if args.provisioning_delay_s is not None:
        overrides["provisioning_delay_s"] = args.provisioning_delay_s
    if args.no_static_demand:
        overrides["static_demand"] = ()
    try:
        config = (
            SimConfig.from_planning(planning, **overrides) if planning is not None else SimConfig(**overrides)
        )
    except SimError as exc:
        return _error(str(exc))
    placement = planning.placement if planning is not None else None

    command = _command(args, policies)
    results = []
    for name in policies:
        policy_config = None
        if placement is not None:
            policy_config = dataclasses.replace(placement, random_seed=args.seed)
        policy = router_policy(name, fleet.serving, policy_config)
        bar = ProgressBar(f"{name:<18}")
        if args.progress:
            bar.enabled = True
        try:
            result = simulate(trace, fleet, policy, config, progress=bar)
        except SimError as exc:
            return _error(str(exc))
        finally:
            bar.close()
        results.append(result)

    print(f"Trace: {trace.describe()}")
    print(
        f"Fleet: {fleet.source or 'embedded default fleet'}; {len(fleet.endpoints)} endpoints; "
        f"scaling {config.scaling}"
        + (
            f" (provisioning {config.provisioning_delay_s:g} s, initially {config.initial_active} on)"
            if config.scaling == "plan"
            else ""
        )
    )
    print()
    print(format_table(results), end="")
    print()
    for r in results:
        print(
            f"{r.policy}: {r.summary.requests:,} requests, {r.end_s:,.0f} s simulated in "
            f"{r.wall_seconds:.1f} s ({r.planner_solve_seconds:.1f} s in the planner), {r.events:,} events"
        )
    started = time.perf_counter()
    try:
        files = write_report(
            results,
            args.out,
            command=command,
            plots=not args.no_plots,
            run={"seed": args.seed, "assignment": _assignment_data(assignment)},
        )
    except OSError as exc:
        print(
            f"turnout simulate: --out {args.out}: cannot be written: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    written = [files.report_md, files.summary_json, *files.plots]
    print(f"Report: {', '.join(str(p) for p in written)} (written in {time.perf_counter() - started:.1f} s)")
    return 0


def _assignment_data(assignment: Any) -> dict[str, Any]:
    return {
        "models": [[m, w] for m, w in assignment.models],
        "priorities": [[p.value, w] for p, w in assignment.priorities],
        "tenant": assignment.tenant,
        "seed": assignment.seed,
    }
