"""A real Prometheus server scrapes the live /metrics of the real service and serves the values back
through its query API (bounded to 30 s, cleaned up afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from helpers import Running

from turnout.v1 import fleet_pb2

pytestmark = pytest.mark.tools

BUDGET_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _query(http: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    async with http.get(base + path, params=params) as response:
        response.raise_for_status()
        return await response.json()


async def _until(deadline: float, what: str, probe: Any) -> Any:
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            value = await probe()
            if value is not None:
                return value
            last = "not yet"
        await asyncio.sleep(0.25)
    raise AssertionError(f"Prometheus: {what} not seen within {BUDGET_S} s (last: {last})")


async def test_prometheus_scrapes_the_live_service(served: Running, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("the prometheus binary is not installed (Debian package prometheus): run make setup")
    deadline = time.monotonic() + BUDGET_S
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "turnout",
                        "static_configs": [{"targets": [f"127.0.0.1:{served.app.http_port}"]}],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def target_up() -> str | None:
                body = await _query(http, base, "/api/v1/targets")
                targets = body["data"]["activeTargets"]
                if proc.returncode is not None:
                    raise AssertionError(f"prometheus exited with {proc.returncode}")
                return "up" if targets and targets[0]["health"] == "up" else None

            await _until(deadline, "target up", target_up)

            async def version_seen(expected: int) -> float | None:
                body = await _query(http, base, "/api/v1/query", query="turnout_snapshot_version")
                results = body["data"]["result"]
                if results and float(results[0]["value"][1]) == expected:
                    return float(results[0]["value"][1])
                return None

            snap = await served.fleet.GetSnapshot(fleet_pb2.GetSnapshotRequest())
            assert (
                await _until(deadline, "turnout_snapshot_version", lambda: version_seen(snap.version)) == 1.0
            )

            # The fleet changes; the next scrapes carry the new version.
            await served.fleet.Drain(
                fleet_pb2.DrainRequest(pool="h200-llama70b", reason=fleet_pb2.DRAIN_REASON_MAINTENANCE)
            )
            assert await _until(deadline, "the new version", lambda: version_seen(snap.version + 1)) == 2.0

            async def drained() -> float | None:
                body = await _query(http, base, "/api/v1/query", query='turnout_endpoints{status="drained"}')
                results = body["data"]["result"]
                return 4.0 if results and float(results[0]["value"][1]) == 4.0 else None

            assert await _until(deadline, "4 drained endpoints", drained) == 4.0
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
