"""Simulator speed: the Azure conversation trace (19,366 requests) on a 100-endpoint fleet, at its real
rate and at 10x (time compressed), through a placement policy of ``policies/``.

Targets (issue 4): the whole run under 60 s at 1x and under 5 minutes at 10x on this machine. Prints the
wall time of each run (loading the trace and building the fleet excluded and printed apart), the
simulated span, events processed, and the headline figures of the run, then the targets.

Usage: ``.venv/bin/python bench/sim_speed.py [--policy NAME ...] [--scaling fixed|plan] [--rates 1,10]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.config import parse_config
from sim.engine import SimConfig, fleet_from_config, simulate
from sim.policy_adapter import router_policy
from sim.traces import load_trace, scale_rate

# 100 endpoints serving llama-3.1-8b on every serving accelerator kind of the catalog, in two zones whose
# caps are about 80 % of their all-busy draw (zone a: 35.2 kW peak, zone b: 27.2 kW peak).
FLEET_YAML = """
zones:
  - {name: bench-a, region: us-east-1, power_cap_w: 28000}
  - {name: bench-b, region: us-east-1, power_cap_w: 22000}
pools:
  - {name: h100, zone: bench-a, instance_type: p5.48xlarge, model: llama-3.1-8b, tp_degree: 1,
     precision: fp8, instances: 4, address_template: "{pool}-{index}:8000", telemetry: none}
  - {name: trn1, zone: bench-a, instance_type: trn1.32xlarge, model: llama-3.1-8b, tp_degree: 2,
     precision: bf16, instances: 2, address_template: "{pool}-{index}:8000", telemetry: none}
  - {name: inf2, zone: bench-a, instance_type: inf2.48xlarge, model: llama-3.1-8b, tp_degree: 2,
     precision: bf16, instances: 2, address_template: "{pool}-{index}:8000", telemetry: none}
  - {name: h200, zone: bench-b, instance_type: p5en.48xlarge, model: llama-3.1-8b, tp_degree: 1,
     precision: fp8, instances: 2, address_template: "{pool}-{index}:8000", telemetry: none}
  - {name: b200, zone: bench-b, instance_type: p6-b200.48xlarge, model: llama-3.1-8b, tp_degree: 1,
     precision: fp8, instances: 1, address_template: "{pool}-{index}:8000", telemetry: none}
  - {name: trn2, zone: bench-b, instance_type: trn2.48xlarge, model: llama-3.1-8b, tp_degree: 1,
     precision: bf16, instances: 1, address_template: "{pool}-{index}:8000", telemetry: none}
"""

TARGETS_S = {1.0: 60.0, 10.0: 300.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", action="append", help="policy name (repeatable; default: turnout)")
    parser.add_argument("--scaling", choices=("fixed", "plan"), default="fixed")
    parser.add_argument("--rates", default="1,10", help="comma-separated rate scales (default 1,10)")
    args = parser.parse_args()
    policies = args.policy or ["turnout"]
    rates = [float(x) for x in args.rates.split(",")]

    t0 = time.perf_counter()
    fleet = fleet_from_config(parse_config(FLEET_YAML, source="bench fleet", base_dir=Path.cwd()))
    t1 = time.perf_counter()
    trace = load_trace("builtin:azure-conv")
    t2 = time.perf_counter()
    print(
        f"fleet: {len(fleet.endpoints)} endpoints built in {t1 - t0:.2f} s (performance-model fit included)"
    )
    print(f"trace: {trace.describe()} loaded in {t2 - t1:.2f} s")
    print(f"scaling: {args.scaling}")
    print()
    header = (
        f"{'policy':<18} {'rate':>5} {'wall s':>8} {'target s':>9} {'sim span s':>11} {'events':>9} "
        f"{'planner s':>9} {'USD/Mtok':>9} {'SLO met':>8} {'rejected':>8}"
    )
    print(header)
    print("-" * len(header))
    for policy_name in policies:
        for rate in rates:
            policy = router_policy(policy_name, fleet.serving)
            scaled = scale_rate(trace, rate)
            start = time.perf_counter()
            result = simulate(scaled, fleet, policy, SimConfig(scaling=args.scaling))
            wall = time.perf_counter() - start
            s = result.summary
            target = TARGETS_S.get(rate)
            print(
                f"{policy_name:<18} {rate:>5g} {wall:>8.1f} {target if target else '-':>9} "
                f"{result.end_s:>11,.0f} {result.events:>9,} {result.planner_solve_seconds:>9.1f} "
                f"{s.usd_per_million_tokens or 0:>9.3f} {100 * s.slo_attainment:>7.1f}% {s.rejected:>8,}",
                flush=True,
            )
    print()
    print("targets: 1x rate < 60 s, 10x rate < 300 s of wall time per run (issue 4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
