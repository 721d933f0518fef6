"""Wiring: configuration -> fleet model -> store -> servicers -> gRPC and HTTP servers.

:class:`TurnoutApp` is the whole service in one object, usable in-process (tests start it on port 0 and
read the bound ports) and by ``turnout serve``. Start-up order: catalog, model registry, performance
model, endpoints (``router.config.build_fleet``), the fleet store, the job store, the servicers, the gRPC
server (with health and reflection), the HTTP server with its background tasks (the scraper, only if an
endpoint has a metrics URL, the staleness ticker, the sweep of expired leases and the planner loop).
``/readyz`` turns 200 and every health status SERVING only when all of that is up.

The placement engine: the policy named by ``planner.placement.policy`` (``policies.registry``), one
reservation ledger owned by the event loop (:class:`router.services.router_service.PlacementEngine`),
and the planner loop (:class:`router.planning.PlannerLoop`, unless ``planner.enabled`` is false) that
re-solves the global plan in a worker thread and publishes it with :meth:`TurnoutApp.publish_plan`.

Shutdown (:meth:`TurnoutApp.stop`): ``/readyz`` answers 503 and every health status turns NOT_SERVING at
once; the gRPC server refuses new calls and gives in-flight ones ``grace_s`` to finish; then the HTTP
server and its background tasks stop, and the job store closes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from types import TracebackType

from aiohttp import web
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from fleet.store import FleetStore
from fleet.types import EndpointLoad, EndpointSpec, EndpointState, Priority, ServingProfile
from jobs.store import JobStore, open_job_store
from policies.planner import STATUS_FAILED, STATUS_TIMEOUT
from policies.registry import build_policy
from policies.types import EMPTY_PLAN, Plan
from router.config import FleetModel, SloConfig, TurnoutConfig, build_fleet, parse_host_port
from router.http import BackgroundTask, FleetView, Readiness, make_http_app
from router.metrics import TurnoutMetrics
from router.planning import PlannerLoop, serving_profiles
from router.scrape import Scraper
from router.services.common import InvalidArgumentCounter
from router.services.fleet_service import FleetService
from router.services.jobs_service import JobsService
from router.services.router_service import PlacementEngine, RouterService
from router.validation import PlaceContext
from turnout.v1 import fleet_pb2, fleet_pb2_grpc, jobs_pb2, jobs_pb2_grpc, router_pb2, router_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,
    jobs_pb2.DESCRIPTOR.services_by_name["Jobs"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name,
)
"""The turnout.v1 services, each with its own health status (plus the overall status "")."""

STALENESS_TICK_S = 1.0
KEPT_STATUSES = frozenset({STATUS_TIMEOUT, STATUS_FAILED})
SATURATION_CONTEXT_TOKENS = 2048  # mean context at which an endpoint's saturating batch is estimated


def turnout_version() -> str:
    try:
        return metadata.version("turnout")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class LoadModel:
    """Utilisation and power of endpoints where no reading exists, from the performance model.

    An endpoint that reports ``utilization_ratio`` is taken at its word. Otherwise its busy share is
    estimated as ``running_requests / saturating batch``, the saturating batch being the largest batch
    that still meets the standard-priority TPOT objective at a 2,048-token mean context (at least 1),
    capped at 1. Power is the profile's ``power_w`` at that share (idle power at 0).
    """

    def __init__(self, fleet: FleetModel, slo: SloConfig) -> None:
        self._profiles: dict[str, ServingProfile] = {}
        self._saturation: dict[str, int] = {}
        batches: dict[tuple[int, float, int], int] = {}  # per profile object, TPOT target and context
        for spec in fleet.endpoints:
            profile = fleet.performance.profile(
                spec.model, spec.instance_type, spec.tp_degree, spec.precision, spec.max_context_tokens
            )
            key = (
                id(profile),
                slo.slo_for(spec.model, Priority.STANDARD).tpot_ms,
                min(SATURATION_CONTEXT_TOKENS, spec.max_context_tokens),
            )
            if key not in batches:
                batches[key] = max(1, profile.max_batch_for_tpot(key[1], key[2]))
            self._profiles[spec.endpoint_id] = profile
            self._saturation[spec.endpoint_id] = batches[key]

    def utilization_ratio(self, spec: EndpointSpec, load: EndpointLoad) -> float:
        if load.utilization_ratio is not None:
            return load.utilization_ratio
        return min(1.0, load.running_requests / self._saturation[spec.endpoint_id])

    def power_w(self, spec: EndpointSpec, load: EndpointLoad) -> float:
        return self._profiles[spec.endpoint_id].power_w(self.utilization_ratio(spec, load))

    def state_utilization_ratio(self, state: EndpointState, outstanding: int = 0) -> float:
        """As :meth:`utilization_ratio`, counting at least ``outstanding`` running requests (the
        placements the router has booked there and not seen complete: all an endpoint without
        telemetry ever shows)."""
        load = state.load
        if load.utilization_ratio is None and outstanding > load.running_requests:
            return min(1.0, outstanding / self._saturation[state.spec.endpoint_id])
        return self.utilization_ratio(state.spec, load)


def prepare_gc_for_serving(gen0_threshold: int) -> tuple[int, int, int]:
    """What the process does with the garbage collector once its start-up is done.

    Everything built so far (fleet, catalog, serving profiles, indexes) is collected once and moved out of
    the collector's sight (``gc.freeze``): it lives as long as the process, and collections on the request
    path then walk only what was allocated since. The young generation's threshold is raised from
    CPython's 700 to ``gen0_threshold`` (``server.gc_gen0_threshold``): every lease keeps about ten
    container objects alive until its ``Complete``, so at the default a young collection would run every
    few dozen decisions, and the ones it lands in make the decision time's 99th percentile; at 10,000
    they land in about one decision in a thousand (``bench/decision_time.py``, README). The older
    generations' thresholds stay as they are. Returns the thresholds before (for a bench to restore).
    """
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(gen0_threshold, before[1], before[2])
    return before


class TurnoutApp:
    """The service. ``async with TurnoutApp(config) as app:`` starts it; leaving the block stops it.

    ``grpc_addr`` / ``http_addr`` override the config's (``HOST:0`` binds a free port; read
    :attr:`grpc_port` / :attr:`http_port` after :meth:`start`). ``clock`` gives unix seconds to
    everything that needs the time (the store, telemetry skew checks, drains, placements and leases, the
    planner's schedule, the metrics' plan age). ``staleness_tick_s`` is how often (real seconds) the
    store re-evaluates staleness and the planner loop compares its schedule with ``clock``; expired
    leases are swept every ``planner.leases.expiry_sweep_s`` (or ``lease_sweep_s`` if given).
    ``freeze_gc``: after start-up, move everything built so far (fleet, catalog, profiles, indexes)
    out of the garbage collector's sight (``gc.freeze``), so collections on the request path only walk
    young objects; meant for the process entry point, not for tests running many apps in one process.
    """

    def __init__(
        self,
        config: TurnoutConfig,
        *,
        grpc_addr: str | None = None,
        http_addr: str | None = None,
        clock: Callable[[], float] = time.time,
        staleness_tick_s: float = STALENESS_TICK_S,
        fleet: FleetModel | None = None,
        lease_sweep_s: float | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.config = config
        self._grpc_addr = grpc_addr or config.server.grpc_addr
        self._http_addr = http_addr or config.server.http_addr
        parse_host_port(self._grpc_addr)
        parse_host_port(self._http_addr)
        self._clock = clock
        self._staleness_tick_s = staleness_tick_s
        self._lease_sweep_s = (
            lease_sweep_s if lease_sweep_s is not None else config.planning.leases.expiry_sweep_s
        )
        if not (math.isfinite(self._lease_sweep_s) and self._lease_sweep_s > 0):
            raise ValueError(f"lease_sweep_s: must be a finite number > 0, got {self._lease_sweep_s!r}")
        self._freeze_gc = freeze_gc
        self._fleet = fleet
        self._plan: Plan = EMPTY_PLAN
        self.readiness = Readiness()
        self._grpc_server: aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None
        self._http_runner: web.AppRunner | None = None
        self._job_store: JobStore | None = None
        self._store: FleetStore | None = None
        self._metrics: TurnoutMetrics | None = None
        self._engine: PlacementEngine | None = None
        self._planner: PlannerLoop | None = None
        self._grpc_port = 0
        self._http_port = 0
        self._stopped = asyncio.Event()
        self._stopping = False

    # --- accessors (valid after start)

    @property
    def store(self) -> FleetStore:
        assert self._store is not None, "start() first"
        return self._store

    @property
    def metrics(self) -> TurnoutMetrics:
        assert self._metrics is not None, "start() first"
        return self._metrics

    @property
    def fleet(self) -> FleetModel:
        assert self._fleet is not None, "start() first"
        return self._fleet

    @property
    def engine(self) -> PlacementEngine:
        """The placement engine (policy, reservation ledger, leases). Event-loop thread only."""
        assert self._engine is not None, "start() first"
        return self._engine

    def place_context(self) -> PlaceContext:
        """What validating a ``Place`` reads: the served models, accelerator kinds, zones' regions and
        default SLOs (the Router servicer's; benches build one beside it)."""
        return PlaceContext(
            served_models=frozenset(self.store.snapshot().by_model),
            accelerator_kinds=self.fleet.catalog.kinds(),
            zone_regions={z.name: z.region for z in self.config.zones},
            slo=self.config.slo,
        )

    @property
    def planner(self) -> PlannerLoop | None:
        """The planner loop, or ``None`` when ``planner.enabled`` is false."""
        return self._planner

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def http_port(self) -> int:
        return self._http_port

    def plan(self) -> Plan:
        """The current plan (``EMPTY_PLAN`` until a planner publishes one). Any thread."""
        return self._plan

    def publish_plan(self, plan: Plan) -> None:
        """Makes ``plan`` the current one for Place, GetPlan, /debug/plan and the plan metrics.
        Publishing is one reference assignment of an immutable value, so readers on any thread see the
        old or the new plan whole.

        Generations must increase, with one exception: a solve that kept the previous plan (status
        ``timeout_kept_previous`` / ``failed_kept_previous``) republishes the current generation with
        that status, so routing keeps the plan while its status says what happened. ``ValueError``
        otherwise."""
        current = self._plan
        kept = plan.status in KEPT_STATUSES and plan.generation == current.generation
        if plan.generation <= current.generation and not kept:
            raise ValueError(
                f"plan generation {plan.generation} does not follow the current {current.generation}"
            )
        self._plan = plan

    # --- life cycle

    async def start(self) -> None:
        """Builds everything and starts both servers. Raises ``ConfigError`` for a bad fleet and
        ``RuntimeError`` if an address cannot be bound; anything started is stopped again first."""
        try:
            await self._start()
        except BaseException:
            await self._teardown(grace_s=0.0)
            raise

    async def _start(self) -> None:
        cfg = self.config
        if self._fleet is None:
            self._fleet = build_fleet(cfg)
        fleet = self._fleet
        load_model = LoadModel(fleet, cfg.slo)
        store = FleetStore(
            fleet.endpoints,
            cfg.zones,
            stale_after_s=cfg.telemetry.stale_after_s,
            max_future_skew_s=cfg.telemetry.max_future_skew_s,
            now_s=self._clock(),
            modelled_power_w=load_model.power_w,
        )
        self._store = store
        metrics = TurnoutMetrics(version=turnout_version())
        self._metrics = metrics
        planning = cfg.planning
        profiles = serving_profiles(fleet.performance)
        if planning.enabled:
            self._planner = PlannerLoop(
                planning,
                snapshot=store.snapshot,
                plan=self.plan,
                publish=self.publish_plan,
                profiles=profiles,
                slo_for=cfg.slo.slo_for,
                clock=self._clock,
                metrics=metrics,
                tick_s=self._staleness_tick_s,
            )
        engine = PlacementEngine(
            build_policy(planning.placement, profiles),
            snapshot=store.snapshot,
            plan=self.plan,
            clock=self._clock,
            metrics=metrics,
            planner=self._planner,
            remember_ended=planning.leases.remember_ended,
        )
        self._engine = engine
        metrics.attach_leases(lambda: len(engine.ledger))
        metrics.attach_fleet(
            store.snapshot,
            self.plan,
            self._clock,
            lambda state: load_model.state_utilization_ratio(
                state, engine.ledger.booking(state.endpoint_id).outstanding
            ),
        )
        self._job_store = await open_job_store(cfg.jobs.store, cfg.jobs.dsn)

        # Refuse a port another process already serves (gRPC would otherwise share it silently).
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        counter = InvalidArgumentCounter(lambda m: metrics.rpc_invalid_argument.labels(m).inc())
        counter.register(
            server,
            router_pb2_grpc.add_RouterServicer_to_server,
            RouterService(context=self.place_context(), engine=engine, metrics=metrics),
        )
        counter.register(
            server,
            fleet_pb2_grpc.add_FleetServicer_to_server,
            FleetService(store, plan=self.plan, metrics=metrics, clock=self._clock),
        )
        counter.register(
            server,
            jobs_pb2_grpc.add_JobsServicer_to_server,
            JobsService(
                self._job_store,
                known_models=frozenset(fleet.models.names),
                accelerator_kinds=fleet.catalog.kinds(),
                trainable_kinds=fleet.catalog.trainable_kinds(),
                clock=self._clock,
                zones=[z.name for z in cfg.zones],
            ),
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self._health = health
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in SERVICE_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc_server = server
        self._grpc_port = server.add_insecure_port(self._grpc_addr)
        await server.start()

        background = [
            BackgroundTask("staleness", lambda: _tick_staleness(store, self._clock, self._staleness_tick_s)),
            BackgroundTask("leases", lambda: _sweep_leases(engine, self._clock, self._lease_sweep_s)),
        ]
        if self._planner is not None:
            background.append(BackgroundTask("planner", self._planner.run, self._planner.close))
        targets = {e.endpoint_id: e.metrics_url for e in fleet.endpoints if e.metrics_url}
        if targets:
            scraper = Scraper(
                store,
                targets,
                interval_s=cfg.telemetry.scrape_interval_s,
                timeout_s=cfg.telemetry.scrape_timeout_s,
                clock=self._clock,
                on_scrape=lambda _eid, outcome: metrics.scrapes.labels(outcome).inc(),
            )
            background.append(BackgroundTask("scraper", scraper.run, scraper.close))
        http_app = make_http_app(
            metrics=metrics,
            readiness=self.readiness,
            fleet=FleetView(
                snapshot=store.snapshot,
                plan=self.plan,
                clock=self._clock,
                stale_after_s=cfg.telemetry.stale_after_s,
                started_at_s=store.started_at_s,
            ),
            background=background,
        )
        runner = web.AppRunner(http_app, handle_signals=False, access_log=None)
        await runner.setup()
        self._http_runner = runner
        host, port = parse_host_port(self._http_addr)
        site = web.TCPSite(runner, host.strip("[]"), port)
        await site.start()
        self._http_port = _bound_port(runner)

        if self._freeze_gc:
            prepare_gc_for_serving(self.config.server.gc_gen0_threshold)
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.readiness.ready = True
        log.info(
            "serving",
            extra={
                "fields": {
                    "grpc_port": self._grpc_port,
                    "http_port": self._http_port,
                    "endpoints": len(fleet.endpoints),
                    "zones": len(cfg.zones),
                    "scrape_targets": len(targets),
                    "job_store": cfg.jobs.store,
                    "policy": planning.placement.policy,
                    "planner": planning.enabled,
                    "gc_thresholds": list(gc.get_threshold()),
                }
            },
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown (see the module docstring); ``grace_s`` defaults to the config's. Idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        await self._teardown(self.config.server.shutdown_grace_s if grace_s is None else grace_s)

    async def _teardown(self, grace_s: float) -> None:
        """Stops whatever was started, in order; a failing step is logged and the next ones still run."""
        self._stopping = True
        self.readiness.shutting_down = True
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self._health is not None:
            steps.append(("health", self._health.enter_graceful_shutdown))
        if self._grpc_server is not None:
            server = self._grpc_server
            log.info("stopping", extra={"fields": {"grace_s": grace_s}})
            steps.append(("grpc", lambda: server.stop(grace_s)))
        if self._http_runner is not None:
            steps.append(("http", self._http_runner.cleanup))
        if self._job_store is not None:
            steps.append(("job store", self._job_store.close))
        try:
            for name, step in steps:
                try:
                    await step()
                except Exception:
                    log.exception("error while stopping %s", name)
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> TurnoutApp:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def _tick_staleness(store: FleetStore, clock: Callable[[], float], tick_s: float) -> None:
    """Re-evaluates staleness every ``tick_s`` (endpoints nobody reports for turn stale on time)."""
    while True:
        await asyncio.sleep(tick_s)
        store.refresh(clock())


async def _sweep_leases(engine: PlacementEngine, clock: Callable[[], float], sweep_s: float) -> None:
    """Releases expired leases every ``sweep_s`` even when no request comes (nothing stays booked)."""
    while True:
        await asyncio.sleep(sweep_s)
        engine.expire(clock())


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the HTTP server bound no TCP address")
