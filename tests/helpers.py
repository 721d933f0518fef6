"""Builders and helpers for tests that run the real service.

``small_fleet()`` is a compact configuration (as the dict a YAML file would load into) with two zones and
three pools; tests change a copy and either parse it (:func:`config_from`) or write it to a file
(:func:`write_config`). :func:`running_app` starts the real :class:`router.app.TurnoutApp` on port 0 with a
real gRPC channel and HTTP session, and stops it afterwards.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from router.app import TurnoutApp
from router.config import FleetModel, TurnoutConfig, build_fleet, parse_config
from turnout.v1 import fleet_pb2_grpc, jobs_pb2_grpc, router_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENV_BIN = REPO / ".venv" / "bin"

_SMALL_FLEET: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0", "shutdown_grace_s": 2},
    "telemetry": {"stale_after_s": 15, "scrape_interval_s": 5, "scrape_timeout_s": 2, "max_future_skew_s": 5},
    "zones": [
        {"name": "test-az1", "region": "us-east-1", "power_cap_w": 30000},
        {"name": "test-az2", "region": "us-east-1", "power_cap_w": 25000},
    ],
    "pools": [
        {
            "name": "h100-llama8b",
            "zone": "test-az1",
            "instance_type": "p5.48xlarge",
            "model": "llama-3.1-8b",
            "tp_degree": 1,
            "precision": "fp8",
            "instances": 1,
            "address_template": "{pool}-{index}.test:8000",
        },
        {
            "name": "inf2-llama8b",
            "zone": "test-az1",
            "instance_type": "inf2.48xlarge",
            "model": "llama-3.1-8b",
            "tp_degree": 2,
            "precision": "bf16",
            "instances": 1,
            "address_template": "{pool}-{index}.test:8000",
            "telemetry": "none",
        },
        {
            "name": "h200-llama70b",
            "zone": "test-az2",
            "instance_type": "p5en.48xlarge",
            "model": "llama-3.1-70b",
            "tp_degree": 2,
            "precision": "bf16",
            "instances": 1,
            "address_template": "{pool}-{index}.test:8000",
        },
    ],
}


def small_fleet() -> dict[str, Any]:
    """A fresh copy of the small test fleet: 8 H100 + 6 inf2 replicas of Llama-3.1-8B in test-az1
    (the inf2 pool without telemetry), 4 H200 replicas of Llama-3.1-70B in test-az2."""
    return copy.deepcopy(_SMALL_FLEET)


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def config_from(
    data: dict[str, Any], *, source: str = "test.yaml", base_dir: Path | None = None
) -> TurnoutConfig:
    return parse_config(dump(data), source=source, base_dir=base_dir or Path.cwd())


def write_config(directory: Path, data: dict[str, Any] | str, name: str = "fleet.yaml") -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else dump(data), encoding="utf-8")
    return path


@functools.lru_cache(maxsize=16)
def _fleet_for(text: str, source: str) -> FleetModel:
    return build_fleet(parse_config(text, source=source, base_dir=Path.cwd()))


def fleet_for(config: TurnoutConfig, data: dict[str, Any]) -> FleetModel:
    """``build_fleet`` for a parsed dict, cached by its YAML text (fitting the model takes a moment)."""
    return _fleet_for(dump(data), config.source)


class ManualClock:
    """A clock tests move by hand; starts at the real time so timestamps look ordinary."""

    def __init__(self, start_s: float | None = None) -> None:
        self.now_s = time.time() if start_s is None else start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass
class Running:
    """A started service with a client channel and an HTTP session to it."""

    app: TurnoutApp
    channel: aio.Channel
    http: aiohttp.ClientSession

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    @property
    def router(self) -> router_pb2_grpc.RouterAsyncStub:
        return router_pb2_grpc.RouterStub(self.channel)  # type: ignore[return-value]

    @property
    def fleet(self) -> fleet_pb2_grpc.FleetAsyncStub:
        return fleet_pb2_grpc.FleetStub(self.channel)  # type: ignore[return-value]

    @property
    def jobs(self) -> jobs_pb2_grpc.JobsAsyncStub:
        return jobs_pb2_grpc.JobsStub(self.channel)  # type: ignore[return-value]

    async def get_json(self, path: str) -> Any:
        async with self.http.get(self.base_url + path) as response:
            assert response.status == 200, (path, response.status, await response.text())
            return await response.json()

    async def get_text(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base_url + path) as response:
            return response.status, await response.text()


@asynccontextmanager
async def running_app(
    data: dict[str, Any] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    staleness_tick_s: float = 0.05,
    base_dir: Path | None = None,
) -> AsyncIterator[Running]:
    """The real service on 127.0.0.1 port 0 (gRPC and HTTP), with a channel and a session to it."""
    data = small_fleet() if data is None else data
    config = config_from(data, base_dir=base_dir)
    fleet = fleet_for(config, data) if not config.profiles else None
    app = TurnoutApp(
        config,
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        clock=clock,
        staleness_tick_s=staleness_tick_s,
        fleet=fleet,
    )
    await app.start()
    channel = aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    session = aiohttp.ClientSession()
    try:
        yield Running(app=app, channel=channel, http=session)
    finally:
        await session.close()
        await channel.close()
        await app.stop(grace_s=1.0)


async def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = 5.0, interval_s: float = 0.02
) -> Any:
    """Polls ``predicate`` (sync, or returning an awaitable) until it returns a truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


# --- gRPC errors and metrics, as a client sees them


async def rpc_error(call: Any) -> aio.AioRpcError:
    """Awaits a call that must fail; returns its error."""
    try:
        await call
    except aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded; an error was expected")


def status_details(err: aio.AioRpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` an error carries in its trailers, if any."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


def bad_request_fields(status: status_pb2.Status | None) -> dict[str, str]:
    """field -> rule of the ``google.rpc.BadRequest`` details of a status."""
    assert status is not None, "no google.rpc.Status details"
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in a Prometheus text page, keyed by its sorted labels."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def metric_value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0.0 if absent, as a counter that never moved is)."""
    return metric_samples(text, name).get(tuple(sorted(labels.items())), 0.0)
