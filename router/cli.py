"""The ``turnout`` command.

    turnout [--log-level LEVEL] serve [--config PATH] [--grpc-addr HOST:PORT] [--http-addr HOST:PORT]
                                      [--ports-file PATH]
    turnout catalog [--config PATH] [--calibration]
    turnout simulate --trace SPEC [--fleet PATH] [--policy NAME ...] ...   (``sim.cli_simulate``)
    turnout plan ...                                                       (``sim.cli_plan``)
    turnout --version

Exit codes: 0 success (also after SIGTERM / SIGINT and a graceful shutdown), 1 a failure at run time (an
address in use, an unreachable job database), 2 a usage or configuration error (the message names the
file, the path inside it and the rule).

Logs go to stderr, one JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the event's
fields (``turnout serve`` logs ``"msg": "serving"`` with ``grpc_port`` and ``http_port`` once ready).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from router.config import ConfigError, FleetModel, TurnoutConfig, build_fleet, load_config, parse_host_port

log = logging.getLogger("turnout")

LOG_LEVELS = ("debug", "info", "warning", "error")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record; ``extra={"fields": {...}}`` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _parser() -> argparse.ArgumentParser:
    from router.app import turnout_version

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log level (default: info)"
    )
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="Cost-aware router for LLM inference on a mixed GPU / Trainium / Inferentia fleet.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"turnout {turnout_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the gRPC and HTTP service")
    serve.add_argument(
        "--config", type=Path, help="fleet configuration (default: the embedded default fleet)"
    )
    serve.add_argument("--grpc-addr", metavar="HOST:PORT", help="gRPC address (default: server.grpc_addr)")
    serve.add_argument("--http-addr", metavar="HOST:PORT", help="HTTP address (default: server.http_addr)")
    serve.add_argument(
        "--ports-file",
        type=Path,
        help="once serving, write the bound ports there as JSON {grpc_port, http_port, pid} (for port 0)",
    )

    catalog = sub.add_parser("catalog", parents=[common], help="print the instance catalog with sources")
    catalog.add_argument("--config", type=Path, help="apply this configuration's catalog overrides")
    catalog.add_argument(
        "--calibration",
        action="store_true",
        help="fit the performance model on part of the published benchmarks and print held-out errors",
    )
    from sim import cli_plan, cli_simulate

    cli_simulate.add_arguments(
        sub.add_parser(
            "simulate",
            parents=[common],
            help="replay a trace through placement policies on a simulated fleet",
            description=cli_simulate.DESCRIPTION,
        )
    )
    cli_plan.add_arguments(
        sub.add_parser(
            "plan",
            parents=[common],
            help="find the cheapest fleet that meets the SLO for a workload",
            description=cli_plan.DESCRIPTION,
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"))
    if args.command == "serve":
        return _serve(args)
    if args.command == "catalog":
        try:
            return _catalog(args)
        except BrokenPipeError:  # the reader went away (e.g. `turnout catalog | head`): not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
    if args.command == "simulate":
        from sim import cli_simulate

        return cli_simulate.run(args)
    if args.command == "plan":
        from sim import cli_plan

        return cli_plan.run(args)
    raise AssertionError(args.command)  # argparse refuses other commands


def _catalog(args: argparse.Namespace) -> int:
    if args.calibration:
        from fleet.calibration import run_calibration

        print(run_calibration(seed=0).format())
        return 0
    from fleet.catalog import format_catalog_table, load_catalog

    overrides = None
    if args.config is not None:
        try:
            overrides = load_config(args.config).catalog_overrides
            catalog = load_catalog(overrides)
        except ConfigError as exc:
            print(f"turnout: configuration error: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:
            print(f"turnout: configuration error: {args.config}: {exc}", file=sys.stderr)
            return 2
    else:
        catalog = load_catalog()
    print(format_catalog_table(catalog))
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        for flag, value in (("--grpc-addr", args.grpc_addr), ("--http-addr", args.http_addr)):
            if value is not None:
                try:
                    parse_host_port(value)
                except ValueError as exc:
                    print(f"turnout: {flag}: {exc}", file=sys.stderr)
                    return 2
        fleet = build_fleet(config)
    except ConfigError as exc:
        print(f"turnout: configuration error: {exc}", file=sys.stderr)
        log.error(
            "configuration error", extra={"fields": {"file": exc.file, "path": exc.path, "rule": exc.rule}}
        )
        return 2
    return asyncio.run(_serve_async(config, fleet, args))


async def _serve_async(config: TurnoutConfig, fleet: FleetModel, args: argparse.Namespace) -> int:
    from jobs.store import StoreUnavailable
    from router.app import TurnoutApp

    app = TurnoutApp(config, grpc_addr=args.grpc_addr, http_addr=args.http_addr, fleet=fleet, freeze_gc=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except (OSError, RuntimeError, StoreUnavailable) as exc:
        log.error("cannot start", extra={"fields": {"error": str(exc)}})
        print(f"turnout: cannot start: {exc}", file=sys.stderr)
        return 1
    if args.ports_file is not None:
        _write_ports(args.ports_file, app.grpc_port, app.http_port)
    await stop.wait()
    log.info("signal received: shutting down")
    await app.stop()
    log.info("stopped")
    return 0


def _write_ports(path: Path, grpc_port: int, http_port: int) -> None:
    """Writes the ports atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"grpc_port": grpc_port, "http_port": http_port, "pid": os.getpid()}))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    tmp.rename(path)
