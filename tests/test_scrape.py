"""Scraper against a real local aiohttp exporter on port 0 (vLLM, DCGM and neuron-monitor text)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from fleet.store import FleetStore
from fleet.types import EndpointLoad, EndpointSpec, EndpointStatus, Precision, ZoneSpec
from router.scrape import OUTCOMES, Scraper

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_763_000_000.0
STALE_S = 15.0


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# One DCGM page per pod, as a per-pod exporter (or a node exporter behind a label filter) would serve.
DCGM_POD = "\n".join(
    line
    for line in fixture("dcgm_p5_node.txt").splitlines()
    if line.startswith("#") or 'pod="h100-llama70b-0"' in line
)


@dataclass
class Exporter:
    """A local HTTP server whose pages tests change between scrapes."""

    pages: dict[str, tuple[int, str]] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    base_url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if path.startswith("/slow"):  # answers only at teardown: always a client timeout
            await asyncio.wait_for(self.release.wait(), timeout=30)
        if path.startswith("/delay"):  # answers after 0.3 s: shows how many requests overlap
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.3)
            finally:
                self.in_flight -= 1
        status, text = self.pages.get(path, (404, "not found"))
        return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@pytest.fixture
async def exporter() -> AsyncIterator[Exporter]:
    state = Exporter()
    app = web.Application()
    app.router.add_get("/{tail:.*}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.base_url = f"http://{host}:{port}"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


class FakeClock:
    """Injected unix time, advanced by the test."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _spec(endpoint_id: str, kind: str, chips: int) -> EndpointSpec:
    return EndpointSpec(
        endpoint_id=endpoint_id,
        address=f"{endpoint_id}.serving.svc:8000",
        pool=endpoint_id.rsplit("-", 1)[0],
        zone="use1-az1",
        region="us-east-1",
        instance_type={"h100": "p5.48xlarge", "trn1": "trn1.32xlarge"}[kind],
        accelerator_kind=kind,
        model="llama-3.1-8b",
        tp_degree=chips,
        precision=Precision.BF16,
        chips=chips,
        price_usd_per_hour=10.0,
        max_context_tokens=131_072,
    )


ENDPOINTS = (
    _spec("h100-llama70b-0", "h100", 2),
    _spec("trn1-llama8b-0", "trn1", 2),
    _spec("broken-0", "h100", 1),
    _spec("garbage-0", "h100", 1),
    _spec("nan-0", "h100", 1),
)


def idle_power_w(spec: EndpointSpec, load: EndpointLoad) -> float:
    return 100.0 * spec.chips * (1.0 + 5.0 * (load.utilization_ratio or 0.0))


def make_store(clock: FakeClock, endpoints: tuple[EndpointSpec, ...] = ENDPOINTS) -> FleetStore:
    return FleetStore(
        endpoints,
        [ZoneSpec("use1-az1", "us-east-1", 50_000.0)],
        stale_after_s=STALE_S,
        max_future_skew_s=5.0,
        now_s=clock(),
        modelled_power_w=idle_power_w,
    )


def serve_round_one(exporter: Exporter) -> None:
    exporter.pages.update(
        {
            "/h100/metrics": (200, fixture("vllm_v1_scrape1.txt") + DCGM_POD),
            "/trn1/metrics": (200, fixture("vllm_v0.txt") + fixture("neuron_monitor_trn1.txt")),
            "/broken/metrics": (500, "internal error"),
            "/garbage/metrics": (200, "<html>this is not the metrics page</html>"),
            "/nan/metrics": (
                200,
                'vllm:num_requests_running{engine="0"} 1\nvllm:kv_cache_usage_perc{engine="0"} NaN\n',
            ),
        }
    )


def targets(exporter: Exporter) -> dict[str, str]:
    return {
        "h100-llama70b-0": exporter.url("/h100/metrics"),
        "trn1-llama8b-0": exporter.url("/trn1/metrics"),
        "broken-0": exporter.url("/broken/metrics"),
        "garbage-0": exporter.url("/garbage/metrics"),
        "nan-0": exporter.url("/nan/metrics"),
    }


async def test_scrape_rounds_feed_the_store_and_report_outcomes(exporter: Exporter) -> None:
    clock = FakeClock(T0)
    store = make_store(clock)
    outcomes: list[tuple[str, str]] = []
    scraper = Scraper(
        store,
        targets(exporter),
        interval_s=5.0,
        timeout_s=2.0,
        clock=clock,
        on_scrape=lambda eid, outcome: outcomes.append((eid, outcome)),
    )
    serve_round_one(exporter)
    try:
        await scraper.scrape_once()
        assert dict(outcomes) == {
            "h100-llama70b-0": "ok",
            "trn1-llama8b-0": "ok",
            "broken-0": "error",
            "garbage-0": "parse_error",
            "nan-0": "rejected",
        }
        assert len(outcomes) == 5 and set(dict(outcomes).values()) <= set(OUTCOMES)
        snap = store.snapshot()
        assert snap.version == 2  # the two good samples went in with one apply; no status changed
        h100 = snap.by_id["h100-llama70b-0"]
        assert h100.status is EndpointStatus.READY
        assert h100.load.running_requests == 12
        assert h100.load.waiting_requests == 3
        assert h100.load.kv_cache_usage_ratio == 0.4375
        assert h100.load.observed_ttft_ms == pytest.approx(162.5)
        assert h100.load.observed_tpot_ms == pytest.approx(18.0)
        assert h100.load.power_w == pytest.approx(1011.0)
        assert h100.load.utilization_ratio == pytest.approx(0.90)
        assert (h100.load.observed_at_s, h100.load.received_at_s) == (T0, T0)
        trn1 = snap.by_id["trn1-llama8b-0"].load
        assert (trn1.running_requests, trn1.kv_cache_usage_ratio, trn1.power_w) == (5, 0.25, None)
        assert trn1.utilization_ratio == pytest.approx(0.75)
        assert trn1.observed_tpot_ms == pytest.approx(30.0)
        # the rejected NaN page stored nothing
        assert snap.by_id["nan-0"].load == EndpointLoad()
        # zone power: h100's reading (1011 W); trn1 modelled 2 * 100 * (1 + 5 * 0.75) = 950 W;
        # three idle single-chip endpoints modelled at 100 W each
        assert snap.zone_power_w["use1-az1"] == pytest.approx(1011.0 + 950.0 + 300.0)

        # the pages change: the next round reads the new values and the latency deltas
        exporter.pages["/h100/metrics"] = (
            200,
            fixture("vllm_v1_scrape2.txt") + DCGM_POD.replace("512.345", "612.345"),
        )
        clock.now_s = T0 + 5
        outcomes.clear()
        await scraper.scrape_once()
        h100 = store.snapshot().by_id["h100-llama70b-0"]
        assert (h100.load.running_requests, h100.load.waiting_requests) == (20, 7)
        assert h100.load.observed_ttft_ms == pytest.approx(300.0)
        assert h100.load.observed_tpot_ms == pytest.approx(22.0)
        assert h100.load.power_w == pytest.approx(1111.0)
        assert h100.load.observed_at_s == T0 + 5
        assert store.snapshot().version == 3
        assert exporter.hits["/h100/metrics"] == 2
    finally:
        await scraper.close()


async def test_failing_exporters_turn_stale_after_stale_after_s(exporter: Exporter) -> None:
    clock = FakeClock(T0)
    endpoints = (
        _spec("good-0", "h100", 1),
        _spec("flaky-0", "h100", 1),
        _spec("down-0", "h100", 1),
        _spec("slow-0", "h100", 1),
    )
    store = make_store(clock, endpoints)
    outcomes: Counter[tuple[str, str]] = Counter()
    exporter.pages.update(
        {
            "/good": (200, fixture("vllm_v1_scrape1.txt")),
            "/flaky": (200, fixture("vllm_v0.txt")),
            "/down": (500, "boom"),
            "/slow/metrics": (200, fixture("vllm_v0.txt")),
        }
    )
    scraper = Scraper(
        store,
        {
            "good-0": exporter.url("/good"),
            "flaky-0": exporter.url("/flaky"),
            "down-0": exporter.url("/down"),
            "slow-0": exporter.url("/slow/metrics"),
        },
        interval_s=5.0,
        timeout_s=0.3,
        clock=clock,
        on_scrape=lambda eid, outcome: outcomes.update([(eid, outcome)]),
    )
    try:
        await scraper.scrape_once()
        assert outcomes[("slow-0", "timeout")] == 1 and outcomes[("down-0", "error")] == 1
        assert all(s.status is EndpointStatus.READY for s in store.snapshot().endpoints)  # within start grace

        exporter.pages["/flaky"] = (500, "now failing")  # flaky-0 last answered at T0
        clock.now_s = T0 + 10
        await scraper.scrape_once()
        snap = store.snapshot()
        assert all(s.status is EndpointStatus.READY for s in snap.endpoints)
        assert snap.by_id["flaky-0"].load.running_requests == 5  # last good state kept meanwhile

        clock.now_s = T0 + STALE_S + 1
        await scraper.scrape_once()
        status = {s.endpoint_id: s.status for s in store.snapshot().endpoints}
        assert status == {
            "good-0": EndpointStatus.READY,
            "flaky-0": EndpointStatus.STALE,
            "down-0": EndpointStatus.STALE,
            "slow-0": EndpointStatus.STALE,
        }
        # recovering exporter: ready again on its next good scrape
        exporter.pages["/down"] = (200, fixture("vllm_v0.txt"))
        clock.now_s = T0 + STALE_S + 6
        await scraper.scrape_once()
        assert store.snapshot().by_id["down-0"].status is EndpointStatus.READY
        assert outcomes[("slow-0", "timeout")] == 4
    finally:
        await scraper.close()


async def test_targets_are_fetched_concurrently_within_the_bound(exporter: Exporter) -> None:
    clock = FakeClock(T0)
    endpoints = tuple(_spec(f"delay-{i}", "h100", 1) for i in range(5))
    store = make_store(clock, endpoints)
    outcomes: list[str] = []
    urls = {f"delay-{i}": exporter.url(f"/delay/{i}") for i in range(5)}
    for i in range(5):
        exporter.pages[f"/delay/{i}"] = (200, fixture("vllm_v0.txt"))

    unbounded = Scraper(
        store, urls, interval_s=1.0, timeout_s=5.0, clock=clock, on_scrape=lambda _e, o: outcomes.append(o)
    )
    try:
        await unbounded.scrape_once()
    finally:
        await unbounded.close()
    assert outcomes == ["ok"] * 5
    assert exporter.max_in_flight == 5  # all five at once, not one after another

    exporter.max_in_flight = 0
    bounded = Scraper(store, urls, interval_s=1.0, timeout_s=5.0, clock=clock, max_concurrency=2)
    try:
        await bounded.scrape_once()
    finally:
        await bounded.close()
    assert exporter.max_in_flight == 2
    assert sum(exporter.hits[f"/delay/{i}"] for i in range(5)) == 10


async def test_run_loops_until_cancelled(exporter: Exporter) -> None:
    clock = FakeClock(T0)
    store = make_store(clock, (_spec("good-0", "h100", 1),))
    exporter.pages["/good"] = (200, fixture("vllm_v1_scrape1.txt"))
    rounds: list[str] = []
    scraper = Scraper(
        store,
        {"good-0": exporter.url("/good")},
        interval_s=0.05,
        timeout_s=1.0,
        clock=clock,
        on_scrape=lambda _e, outcome: rounds.append(outcome),
    )
    task = asyncio.create_task(scraper.run())
    try:
        await _wait_for(lambda: len(rounds) >= 3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await scraper.close()
    assert set(rounds) == {"ok"}
    assert exporter.hits["/good"] >= 3
    assert store.snapshot().by_id["good-0"].load.running_requests == 12


def test_constructor_validates_its_arguments() -> None:
    clock = FakeClock(T0)
    store = make_store(clock)
    with pytest.raises(ValueError, match="unknown endpoints: ghost-0"):
        Scraper(store, {"ghost-0": "http://127.0.0.1:1/metrics"}, interval_s=5, timeout_s=1, clock=clock)
    with pytest.raises(ValueError, match="interval_s"):
        Scraper(store, {}, interval_s=0, timeout_s=1, clock=clock)
    with pytest.raises(ValueError, match="timeout_s"):
        Scraper(store, {}, interval_s=1, timeout_s=float("nan"), clock=clock)


async def test_oversized_page_is_an_error_not_a_memory_hog(exporter: Exporter) -> None:
    clock = FakeClock(T0)
    store = make_store(clock, (_spec("big-0", "h100", 1),))
    exporter.pages["/big"] = (200, fixture("vllm_v1_scrape1.txt") * 4)
    outcomes: list[str] = []
    scraper = Scraper(
        store,
        {"big-0": exporter.url("/big")},
        interval_s=1,
        timeout_s=1,
        clock=clock,
        on_scrape=lambda _e, o: outcomes.append(o),
        max_body_bytes=16 * 1024,
    )
    try:
        await scraper.scrape_once()
    finally:
        await scraper.close()
    assert outcomes == ["error"]
    assert store.snapshot().by_id["big-0"].load == EndpointLoad()


async def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)
