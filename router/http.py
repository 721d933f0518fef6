"""The HTTP side (aiohttp): metrics, health, readiness and JSON debug pages.

Routes::

    GET /metrics       Prometheus text format of the service's own registry
    GET /healthz       200 while the process serves HTTP at all
    GET /readyz        200 once the fleet is loaded and both servers are up; 503 before and while
                       shutting down
    GET /debug/fleet   the current fleet snapshot as JSON (status and why, load, drains, zone power)
    GET /debug/plan    the current plan as JSON

Background tasks (the scraper, the staleness ticker) belong to the application: they start with it
and are cancelled when it is cleaned up (``cleanup_ctx``), so nothing outlives the HTTP runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from fleet.types import EndpointState, EndpointStatus, FleetSnapshot
from policies.types import Plan
from router.metrics import TurnoutMetrics

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """Whether ``/readyz`` answers 200: set ready once serving, shutting_down on SIGTERM."""

    ready: bool = False
    shutting_down: bool = False

    @property
    def is_ready(self) -> bool:
        return self.ready and not self.shutting_down


@dataclass(frozen=True)
class FleetView:
    """What the debug pages read: the latest snapshot and plan, the clock and the staleness limit."""

    snapshot: Callable[[], FleetSnapshot]
    plan: Callable[[], Plan]
    clock: Callable[[], float]
    stale_after_s: float
    started_at_s: float


@dataclass(frozen=True)
class BackgroundTask:
    """A coroutine run for the application's life, and an optional clean-up after it is cancelled."""

    name: str
    run: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]] | None = None


METRICS_KEY = web.AppKey("metrics", TurnoutMetrics)
READINESS_KEY = web.AppKey("readiness", Readiness)
FLEET_KEY = web.AppKey("fleet", FleetView)
BACKGROUND_KEY = web.AppKey("background", tuple[BackgroundTask, ...])


def make_http_app(
    *,
    metrics: TurnoutMetrics,
    readiness: Readiness,
    fleet: FleetView,
    background: Sequence[BackgroundTask] = (),
) -> web.Application:
    app = web.Application()
    app[METRICS_KEY] = metrics
    app[READINESS_KEY] = readiness
    app[FLEET_KEY] = fleet
    app[BACKGROUND_KEY] = tuple(background)
    app.cleanup_ctx.append(_run_background)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/debug/fleet", _debug_fleet)
    app.router.add_get("/debug/plan", _debug_plan)
    return app


async def _run_background(app: web.Application) -> AsyncIterator[None]:
    tasks: list[tuple[BackgroundTask, asyncio.Task[None]]] = []
    for bg in app[BACKGROUND_KEY]:
        tasks.append((bg, asyncio.create_task(_guarded(bg), name=bg.name)))
    yield
    for _, task in tasks:
        task.cancel()
    for bg, task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if bg.close is not None:
            await bg.close()


async def _guarded(bg: BackgroundTask) -> None:
    """Runs a background task; if it ever fails, says so loudly (it must not die silently)."""
    try:
        await bg.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s failed", bg.name)
        raise


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    r = request.app[READINESS_KEY]
    if r.is_ready:
        return web.json_response({"status": "ready"})
    reason = "shutting down" if r.shutting_down else "starting"
    return web.json_response({"status": reason}, status=503)


async def _debug_fleet(request: web.Request) -> web.Response:
    view = request.app[FLEET_KEY]
    return web.json_response(fleet_json(view.snapshot(), view.clock(), view.stale_after_s, view.started_at_s))


async def _debug_plan(request: web.Request) -> web.Response:
    return web.json_response(plan_json(request.app[FLEET_KEY].plan()))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _reasons(state: EndpointState, now_s: float, stale_after_s: float, started_at_s: float) -> list[str]:
    """Why an endpoint is not eligible for new work (empty when it is)."""
    reasons: list[str] = []
    if state.drain is not None:
        until = "" if state.drain.deadline_s is None else f" until {state.drain.deadline_s:.3f}"
        reasons.append(f"drained ({state.drain.reason.value}){until}")
    if not state.load.healthy:
        reasons.append("reported unhealthy")
    if state.status is EndpointStatus.STALE:
        load = state.load
        if load.observed_at_s is None or load.received_at_s is None:
            reasons.append(f"no telemetry since start ({now_s - started_at_s:.1f} s > {stale_after_s:g} s)")
        else:
            age = now_s - min(load.observed_at_s, load.received_at_s)
            reasons.append(f"telemetry is {age:.1f} s old (> {stale_after_s:g} s)")
    return reasons


def fleet_json(
    snapshot: FleetSnapshot, now_s: float, stale_after_s: float, started_at_s: float
) -> dict[str, object]:
    """The snapshot as a JSON-ready dict: versions, zones with cap and power, endpoints with status,
    the reasons they are not eligible, their load and drain state, and counts per status."""
    counts = dict.fromkeys((s.value for s in EndpointStatus), 0)
    endpoints = []
    for e in snapshot.endpoints:
        counts[e.status.value] += 1
        spec, load = e.spec, e.load
        endpoints.append(
            {
                "endpoint_id": spec.endpoint_id,
                "address": spec.address,
                "pool": spec.pool,
                "zone": spec.zone,
                "region": spec.region,
                "model": spec.model,
                "accelerator_kind": spec.accelerator_kind,
                "instance_type": spec.instance_type,
                "tp_degree": spec.tp_degree,
                "precision": spec.precision.value,
                "chips": spec.chips,
                "price_usd_per_hour": spec.price_usd_per_hour,
                "max_context_tokens": spec.max_context_tokens,
                "max_batch_sequences": spec.max_batch_sequences,
                "max_batched_tokens": spec.max_batched_tokens,
                "reserved": spec.reserved,
                "expects_telemetry": spec.expects_telemetry,
                "metrics_url": spec.metrics_url,
                "status": e.status.value,
                "eligible": e.eligible,
                "reasons": _reasons(e, now_s, stale_after_s, started_at_s),
                "load": {
                    "running_requests": load.running_requests,
                    "waiting_requests": load.waiting_requests,
                    "kv_cache_usage_ratio": _finite(load.kv_cache_usage_ratio),
                    "power_w": _finite(load.power_w),
                    "utilization_ratio": _finite(load.utilization_ratio),
                    "observed_ttft_ms": _finite(load.observed_ttft_ms),
                    "observed_tpot_ms": _finite(load.observed_tpot_ms),
                    "healthy": load.healthy,
                    "observed_at_s": load.observed_at_s,
                    "received_at_s": load.received_at_s,
                },
                "drain": None
                if e.drain is None
                else {
                    "reason": e.drain.reason.value,
                    "since_s": e.drain.since_s,
                    "deadline_s": e.drain.deadline_s,
                },
            }
        )
    return {
        "version": snapshot.version,
        "taken_at_s": snapshot.taken_at_s,
        "now_s": now_s,
        "stale_after_s": stale_after_s,
        "models": list(snapshot.models),
        "counts": counts,
        "zones": [
            {
                "name": z.name,
                "region": z.region,
                "power_cap_w": z.power_cap_w,
                "power_w": snapshot.zone_power_w.get(z.name, 0.0),
                "ineligible_power_w": snapshot.zone_ineligible_power_w.get(z.name, 0.0),
            }
            for z in sorted(snapshot.zones.values(), key=lambda z: z.name)
        ],
        "endpoints": endpoints,
    }


def plan_json(plan: Plan) -> dict[str, object]:
    """The plan as a JSON-ready dict."""
    return {
        "generation": plan.generation,
        "status": plan.status,
        "created_at_s": plan.created_at_s if plan.generation > 0 else None,
        "active_endpoint_ids": sorted(plan.active_endpoint_ids),
        "share": {eid: dict(shares) for eid, shares in sorted(plan.share.items())},
        "desired_replicas": dict(sorted(plan.desired_replicas.items())),
        "predicted_cost_usd_per_hour": plan.predicted_cost_usd_per_hour,
        "predicted_zone_power_w": dict(plan.predicted_zone_power_w),
        "unserved_rate_per_s": dict(plan.unserved_rate_per_s),
        "solve_seconds": plan.solve_seconds,
        "lp_bound_usd_per_hour": plan.lp_bound_usd_per_hour,
        "objective_usd_per_hour": plan.objective_usd_per_hour,
        "gap_to_lp_ratio": plan.gap_to_lp_ratio,
    }
