"""``turnout serve`` as a process: ports learned from --ports-file, graceful SIGTERM during an in-flight
stream (health NOT_SERVING, /readyz 503, the call completes, exit 0), SIGINT, and refusal of a bad config
with exit code 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import REPO, small_fleet, write_config

from turnout.v1 import common_pb2, fleet_pb2, fleet_pb2_grpc, router_pb2, router_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServeProcess:
    """``python -m router serve`` on port 0 with its ports read from the ports file."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc = proc
        self.grpc_target = f"127.0.0.1:{ports['grpc_port']}"
        self.base_url = f"http://127.0.0.1:{ports['http_port']}"

    async def stderr_lines(self) -> list[dict[str, Any]]:
        assert self.proc.stderr is not None
        raw = await self.proc.stderr.read()
        return [json.loads(line) for line in raw.decode().splitlines() if line.startswith("{")]


@asynccontextmanager
async def start_serve(tmp_path: Path, config: Path | None, *extra: str) -> AsyncIterator[ServeProcess]:
    """``python -m router serve`` on port 0 (``config`` None: the embedded default fleet)."""
    ports_file = tmp_path / "ports.json"
    args = ["--config", str(config)] if config is not None else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", *extra, "serve", *args,
        "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ports-file", str(ports_file),
        cwd=str(REPO), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ports_file.exists():
            if proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"turnout serve did not start (exit {proc.returncode})")
            await asyncio.sleep(0.05)
        yield ServeProcess(proc, json.loads(ports_file.read_text()))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def serve_process(tmp_path: Path) -> AsyncIterator[ServeProcess]:
    data = small_fleet()
    data["server"]["shutdown_grace_s"] = 8
    data["server"]["gc_gen0_threshold"] = 5000
    async with start_serve(tmp_path, write_config(tmp_path, data)) as process:
        yield process


async def test_serve_without_config_runs_the_embedded_default_fleet(tmp_path: Path) -> None:
    async with start_serve(tmp_path, None, "--log-level", "debug") as process:
        assert await _ready_status(process.base_url) == 200
        async with aio.insecure_channel(process.grpc_target) as channel:
            snap = await fleet_pb2_grpc.FleetStub(channel).GetSnapshot(fleet_pb2.GetSnapshotRequest())
        kinds = {e.endpoint.accelerator_kind for e in snap.endpoints}
        assert kinds == {"h100", "h200", "b200", "trn1", "trn2", "inf2"}
        assert {z.name for z in snap.zones} == {"use1-az1", "use1-az2"}
        assert all(z.power_cap_watts > 0 for z in snap.zones)
        assert list(snap.models) == ["llama-3.1-70b", "llama-3.1-8b"]
        assert all(e.status == fleet_pb2.ENDPOINT_STATUS_READY for e in snap.endpoints)  # telemetry: none
        process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.proc.wait(), 15) == 0
        lines = await process.stderr_lines()
        assert "debug" in {line["level"] for line in lines}  # --log-level debug lets debug records through
        # After start-up the collector's young generation waits for server.gc_gen0_threshold allocations.
        serving = [line for line in lines if line.get("msg") == "serving"]
        assert len(serving) == 1 and serving[0]["gc_thresholds"][0] == 10_000, serving


async def _ready_status(base_url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(base_url + "/readyz") as response:
        return response.status


def _place(request_id: str) -> router_pb2.PlaceRequest:
    return router_pb2.PlaceRequest(
        request_id=request_id, model="llama-3.1-8b", tenant="t", priority=common_pb2.PRIORITY_STANDARD,
        input_tokens=100, max_output_tokens=10,
    )  # fmt: skip


async def test_sigterm_drains_in_flight_stream_then_exits_zero(serve_process: ServeProcess) -> None:
    assert await _ready_status(serve_process.base_url) == 200
    async with aio.insecure_channel(serve_process.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=s)) for s in ("", "turnout.v1.Router")]
        for watch in watches:
            assert (await watch.read()).status == SERVING

        stream = router_pb2_grpc.RouterStub(channel).PlaceStream()
        await stream.write(_place("before"))
        first = await stream.read()
        assert first.request_id == "before" and first.WhichOneof("result") == "placement"

        serve_process.proc.send_signal(signal.SIGTERM)
        for watch in watches:
            assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
            watch.cancel()  # a watch is an in-flight call too; let the server finish early
        assert await _ready_status(serve_process.base_url) == 503

        # The stream opened before SIGTERM still works during the grace period and ends normally.
        await stream.write(_place("during"))
        second = await asyncio.wait_for(stream.read(), 5)
        assert second.request_id == "during" and second.WhichOneof("result") == "placement"
        await stream.done_writing()
        assert await stream.read() == aio.EOF
        assert await stream.code() == grpc.StatusCode.OK

    started = time.monotonic()
    rc = await asyncio.wait_for(serve_process.proc.wait(), 15)
    assert rc == 0
    assert time.monotonic() - started < 8  # nothing was left to wait the whole grace period for
    messages = [line["msg"] for line in await serve_process.stderr_lines()]
    assert messages[0] == "serving"
    assert "signal received: shutting down" in messages and messages[-1] == "stopped"


async def test_sigint_stops_an_idle_server_quickly(serve_process: ServeProcess) -> None:
    started = time.monotonic()
    serve_process.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(serve_process.proc.wait(), 15) == 0
    assert time.monotonic() - started < 5
    lines = await serve_process.stderr_lines()
    serving = next(line for line in lines if line["msg"] == "serving")
    assert serving["level"] == "info" and serving["endpoints"] == 18
    assert serving["gc_thresholds"][0] == 5000  # server.gc_gen0_threshold of the config
    assert f"127.0.0.1:{serving['grpc_port']}" == serve_process.grpc_target


async def _run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", *args, cwd=str(cwd),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["pools"][2].update(tp_degree=0),
            "fleet.yaml: pools[2].tp_degree: must be an integer >= 1",
        ),
        (
            lambda d: d["pools"][0].update(instance_type="p9.huge"),
            "fleet.yaml: pools[0].instance_type: unknown instance type 'p9.huge'; known: ",
        ),
        (lambda d: d.update(zones=[]), "fleet.yaml: zones: must list at least one zone"),
    ],
)
async def test_bad_config_exits_2_naming_file_path_and_rule(
    tmp_path: Path, mutate: Any, expected: str
) -> None:
    data = small_fleet()
    mutate(data)
    write_config(tmp_path, data)
    rc, _, err = await _run_cli("serve", "--config", "fleet.yaml", cwd=tmp_path)
    assert rc == 2, err
    assert f"turnout: configuration error: {expected}" in err


async def test_bad_address_flag_exits_2(tmp_path: Path) -> None:
    write_config(tmp_path, small_fleet())
    rc, _, err = await _run_cli("serve", "--config", "fleet.yaml", "--grpc-addr", "nowhere", cwd=tmp_path)
    assert rc == 2 and "--grpc-addr: must be HOST:PORT" in err


@pytest.mark.parametrize("taken", ["--grpc-addr", "--http-addr"])
async def test_address_in_use_exits_1(tmp_path: Path, taken: str) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        write_config(tmp_path, small_fleet())
        addrs = {"--grpc-addr": "127.0.0.1:0", "--http-addr": "127.0.0.1:0", taken: f"127.0.0.1:{port}"}
        args = ["serve", "--config", "fleet.yaml", *(x for kv in addrs.items() for x in kv)]
        rc, _, err = await _run_cli(*args, cwd=tmp_path)
        assert rc == 1 and "cannot start" in err, err
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_version_and_catalog_commands(tmp_path: Path) -> None:
    rc, out, _ = await _run_cli("--version", cwd=tmp_path)
    assert rc == 0 and out.startswith("turnout ")
    rc, out, _ = await _run_cli("catalog", cwd=tmp_path)
    assert rc == 0
    for instance_type in (
        "p5.48xlarge",
        "p5en.48xlarge",
        "p6-b200.48xlarge",
        "trn1.32xlarge",
        "trn2.48xlarge",
    ):
        assert instance_type in out
    data = small_fleet()
    data["catalog"] = {
        "overrides": {"trn2.48xlarge": {"price_usd_per_hour": {"value": 12.5, "source": "ours"}}}
    }
    write_config(tmp_path, data)
    rc, out, _ = await _run_cli("catalog", "--config", "fleet.yaml", cwd=tmp_path)
    assert rc == 0 and "12.5" in out and "override: ours" in out
    rc, out, _ = await _run_cli("catalog", "--calibration", cwd=tmp_path)
    assert rc == 0 and out.strip()
