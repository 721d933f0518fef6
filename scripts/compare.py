"""The published comparison: homogeneous fleets sized by ``turnout plan`` against routers on a mixed fleet.

For each Azure trace (``builtin:azure-conv``, ``builtin:azure-code``; every request served by
llama-3.1-8b) at its real rate and at ``--high-rate`` times it:

* **Homogeneous fleets.** For each kind (all H100 ``p5.48xlarge``, all H200 ``p5en.48xlarge``, all B200
  ``p6-b200.48xlarge``, all trn1 ``trn1.32xlarge``, all inf2 ``inf2.48xlarge``) ``turnout plan --trace T
  --rate-scale R --instance-types TYPE --fleet-out F`` sizes the cheapest fleet of that kind meeting the
  SLO, and ``turnout simulate --fleet F --policy turnout --scaling fixed`` replays the trace on it. A kind
  for which no fleet meets the SLO (``turnout plan`` exits 1) is shown with the planner's reason.
* **The mixed fleet.** The embedded default fleet's llama-3.1-8b pools (H100, trn1 and inf2 instances in
  two power-capped zones), every pool's instances and every zone's cap multiplied by ``--mixed-scale``
  (1 at the real rate; default rate / 20 at the high rate), on which ``round_robin``, ``least_loaded``
  and ``cheapest_feasible`` route with every endpoint on (they have no planner), and ``turnout`` both
  with every endpoint on (routing alone) and with plan-driven scaling (the plan switches endpoints off
  and on; provisioning delay 180 s).

Writes ``OUT/comparison.md`` (the table, with the command of every row) and each run's report under
``OUT/runs/``. Usage: ``.venv/bin/python scripts/compare.py [--out out/compare] [--high-rate 60]
[--traces conv,code]``. Takes about 15-25 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TURNOUT = [sys.executable, "-m", "router"]
MODEL = "llama-3.1-8b"
KINDS = (
    ("all H100", "p5.48xlarge"),
    ("all H200", "p5en.48xlarge"),
    ("all B200", "p6-b200.48xlarge"),
    ("all trn1", "trn1.32xlarge"),
    ("all inf2", "inf2.48xlarge"),
)
POLICIES = (
    ("round_robin", "round_robin", "fixed"),
    ("least_loaded", "least_loaded", "fixed"),
    ("cheapest_feasible", "cheapest_feasible", "fixed"),
    ("turnout (all on)", "turnout", "fixed"),
    ("turnout (plan scaling)", "turnout", "plan"),
)


def shown(cmd: list[str]) -> str:
    """The command as a reader types it (``turnout ...``; paths relative to the output directory)."""
    return shlex.join(["turnout", *cmd[len(TURNOUT) :]])


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def mixed_fleet(path: Path, scale: int) -> None:
    """The default fleet's llama-3.1-8b pools, instances and caps x ``scale``."""
    data = yaml.safe_load((ROOT / "fleet" / "data" / "default_fleet.yaml").read_text())
    data["pools"] = [p for p in data["pools"] if p["model"] == MODEL]
    for pool in data["pools"]:
        pool["instances"] = int(pool.get("instances", 1)) * scale
    for zone in data["zones"]:
        if zone.get("power_cap_w") is not None:
            zone["power_cap_w"] = zone["power_cap_w"] * scale
    planner = data.setdefault("planner", {})
    demand = planner.get("demand", {})
    demand.pop("static", None)  # illustrative static demand of the default fleet: not this trace's
    planner["demand"] = demand
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def summary_row(out_dir: Path) -> dict[str, object]:
    data = json.loads((out_dir / "summary.json").read_text())
    (s,) = data["policies"].values()
    peak = ", ".join(f"{z['peak_w'] / 1000:.1f}/{z['cap_w'] / 1000:.1f}" for z in s["zones"])
    return {
        "usd_per_mtok": s["usd_per_million_tokens"],
        "slo": s["slo_attainment"],
        "ttft_p99": s["ttft_ms"]["p99"],
        "tpot_p99": s["tpot_ms"]["p99"],
        "j_per_token": s["joules_per_token"],
        "peak": peak,
        "usd": s["total_usd"],
    }


def simulate(trace: str, rate: float, fleet: Path, policy: str, scaling: str, out_dir: Path) -> list[str]:
    return [
        *TURNOUT,
        "simulate",
        "--trace",
        trace,
        "--rate-scale",
        f"{rate:g}",
        "--models",
        MODEL,
        "--fleet",
        str(fleet),
        "--policy",
        policy,
        "--scaling",
        scaling,
        "--no-plots",
        "--out",
        str(out_dir),
    ]


def fmt(row: dict[str, object]) -> list[str]:
    def num(key: str, digits: int) -> str:
        v = row.get(key)
        return "-" if v is None else f"{float(v):.{digits}f}"  # type: ignore[arg-type]

    slo = row.get("slo")
    return [
        num("usd_per_mtok", 3),
        "-" if slo is None else f"{100 * float(slo):.1f} %",  # type: ignore[arg-type]
        num("ttft_p99", 0),
        num("tpot_p99", 1),
        num("j_per_token", 2),
        str(row.get("peak", "-")),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("out/compare"))
    ap.add_argument("--high-rate", type=float, default=60.0)
    ap.add_argument(
        "--mixed-scale", type=int, default=0, help="mixed fleet multiple at the high rate (0: rate/20)"
    )
    ap.add_argument("--traces", default="conv,code")
    args = ap.parse_args()
    out = args.out.resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    lines = [
        "| trace | rate | fleet | router | USD/Mtok | SLO met | p99 TTFT ms | p99 TPOT ms | J/token "
        "| peak / cap kW per zone |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    commands: list[str] = []
    for short in args.traces.split(","):
        trace = f"builtin:azure-{short}"
        for rate in (1.0, args.high_rate):
            tag = f"{short}-{rate:g}x"
            for label, itype in KINDS:
                fleet = out / "runs" / f"{tag}-{itype}.yaml"
                plan_cmd = [
                    *TURNOUT,
                    "plan",
                    "--trace",
                    trace,
                    "--rate-scale",
                    f"{rate:g}",
                    "--model",
                    MODEL,
                    "--instance-types",
                    itype,
                    "--json",
                    "--fleet-out",
                    str(fleet),
                ]
                t0 = time.monotonic()
                planned = run(plan_cmd)
                commands.append(shown(plan_cmd))
                if planned.returncode != 0:
                    reason = planned.stderr.strip().splitlines()[-1] if planned.stderr.strip() else ""
                    with contextlib.suppress(ValueError, KeyError):
                        reason = json.loads(planned.stdout)["plan"]["reason"]
                    lines.append(
                        f"| {short} | {rate:g}x | {label} | - | no fleet meets the SLO: {reason} |||||| "
                    )
                    print(f"{tag} {label}: no fleet ({reason[:120]})", flush=True)
                    continue
                plan = json.loads(planned.stdout)["plan"]
                size = f"{label}: {plan['instances']} x {itype}"
                run_dir = out / "runs" / f"{tag}-{itype}"
                sim_cmd = simulate(trace, rate, fleet, "turnout", "fixed", run_dir)
                done = run(sim_cmd)
                commands.append(shown(sim_cmd))
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                row = summary_row(run_dir)
                lines.append(
                    f"| {short} | {rate:g}x | {size} | turnout (all on) | " + " | ".join(fmt(row)) + " |"
                )
                print(f"{tag} {size}: {fmt(row)} ({time.monotonic() - t0:.0f} s)", flush=True)
            scale = 1 if rate == 1.0 else (args.mixed_scale or max(1, round(rate / 20)))
            fleet = out / "runs" / f"{tag}-mixed.yaml"
            mixed_fleet(fleet, scale)
            for label, policy, scaling in POLICIES:
                t0 = time.monotonic()
                run_dir = out / "runs" / f"{tag}-mixed-{policy}-{scaling}"
                sim_cmd = simulate(trace, rate, fleet, policy, scaling, run_dir)
                done = run(sim_cmd)
                commands.append(shown(sim_cmd))
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                row = summary_row(run_dir)
                size = f"mixed (default 8B pools x{scale})"
                lines.append(f"| {short} | {rate:g}x | {size} | {label} | " + " | ".join(fmt(row)) + " |")
                print(f"{tag} mixed x{scale} {label}: {fmt(row)} ({time.monotonic() - t0:.0f} s)", flush=True)
    text = "\n".join(lines) + "\n\nCommands (paths relative to the output directory):\n\n```\n"
    text += "\n".join(c.replace(str(out) + "/", "") for c in commands) + "\n```\n"
    (out / "comparison.md").write_text(text)
    print(f"\nwritten {out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
