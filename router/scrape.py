"""Scraping of endpoints' Prometheus metrics pages into the fleet store.

Each round fetches every target concurrently (one ``aiohttp.ClientSession``, at most
``max_concurrency`` requests in flight, each bounded by ``timeout_s``), parses the pages with
:class:`fleet.telemetry.ExporterParser`, applies all samples in ONE ``FleetStore.apply`` call and then
calls ``FleetStore.refresh`` so that targets that failed turn stale once their last good sample is
older than the store's ``stale_after_s``. A failed target keeps its last good state until then.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from fleet.store import FleetStore
from fleet.telemetry import ExporterParser
from fleet.types import TelemetrySample

__all__ = ["OUTCOMES", "ScrapeOutcome", "Scraper"]

log = logging.getLogger(__name__)

ScrapeOutcome = str
OUTCOMES: tuple[ScrapeOutcome, ...] = ("ok", "error", "timeout", "parse_error", "rejected")
"""What ``on_scrape`` reports per target per round:

- ``ok``: fetched, parsed and applied;
- ``error``: connection failure, non-200 status or a page over the size limit;
- ``timeout``: no complete answer within ``timeout_s``;
- ``parse_error``: not Prometheus text, or none of the supported metrics (see fleet.telemetry);
- ``rejected``: parsed, but the store refused the sample (for example a NaN or a ratio above 1).
"""

_DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Fetched:
    endpoint_id: str
    outcome: ScrapeOutcome
    sample: TelemetrySample | None = None


class Scraper:
    """Periodically pulls telemetry from endpoints' metrics URLs into a :class:`FleetStore`.

    ``targets`` maps endpoint ids (all known to the store) to metrics URLs. ``clock`` gives unix
    seconds: the time samples are stamped with and the ``now_s`` given to the store; the pacing of
    :meth:`run` uses the event loop's own monotonic time. ``on_scrape(endpoint_id, outcome)`` is called
    once per target per round with one of :data:`OUTCOMES` (for metrics); it must not raise.

    Runs on the store's writer thread (the event loop). ``run`` loops until cancelled; ``close``
    releases the HTTP session (a later round opens a new one).
    """

    def __init__(
        self,
        store: FleetStore,
        targets: Mapping[str, str],
        *,
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], float],
        on_scrape: Callable[[str, str], None] | None = None,
        max_concurrency: int = 64,
        max_body_bytes: int = _DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
        known = store.snapshot().by_id
        unknown = sorted(eid for eid in targets if eid not in known)
        if unknown:
            raise ValueError(f"scrape targets for unknown endpoints: {', '.join(unknown)}")
        self._store = store
        self._targets = dict(targets)
        self._interval_s = float(interval_s)
        self._timeout = aiohttp.ClientTimeout(total=float(timeout_s))
        self._clock = clock
        self._on_scrape = on_scrape
        self._max_concurrency = max_concurrency
        self._max_body_bytes = max_body_bytes
        self._parser = ExporterParser()
        self._session: aiohttp.ClientSession | None = None

    @property
    def targets(self) -> Mapping[str, str]:
        return dict(self._targets)

    async def scrape_once(self) -> None:
        """One round: fetch all targets concurrently, apply their samples at once, refresh staleness."""
        if self._targets:
            session = self._ensure_session()
            limit = asyncio.Semaphore(self._max_concurrency)
            fetched = await asyncio.gather(
                *(self._fetch(session, limit, eid, url) for eid, url in self._targets.items())
            )
            self._apply(fetched)
        self._store.refresh(self._clock())

    async def run(self) -> None:
        """Scrape every ``interval_s`` until cancelled. A failing round is logged, not fatal."""
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            try:
                await self.scrape_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scrape round failed")
            next_round += self._interval_s
            now = loop.time()
            if next_round < now:  # a round overran: skip missed ticks rather than bunch up
                next_round = now
            await asyncio.sleep(next_round - now)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- internals ------------------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Accept": "text/plain;version=0.0.4"},
                connector=aiohttp.TCPConnector(limit=self._max_concurrency),
            )
        return self._session

    async def _fetch(
        self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, endpoint_id: str, url: str
    ) -> _Fetched:
        async with limit:
            try:
                async with session.get(url, timeout=self._timeout) as response:
                    if response.status != 200:
                        log.debug("scrape %s: HTTP %d from %s", endpoint_id, response.status, url)
                        return _Fetched(endpoint_id, "error")
                    body = await self._read_limited(response)
                    observed_at_s = self._clock()
            except TimeoutError:
                log.debug("scrape %s: timeout after %.3f s", endpoint_id, self._timeout.total)
                return _Fetched(endpoint_id, "timeout")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                log.debug("scrape %s: %s", endpoint_id, exc)
                return _Fetched(endpoint_id, "error")
        if body is None:
            log.warning("scrape %s: page larger than %d bytes", endpoint_id, self._max_body_bytes)
            return _Fetched(endpoint_id, "error")
        try:
            text = body.decode(response.charset or "utf-8")
            sample = self._parser.parse(endpoint_id, text, observed_at_s)
        except (ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
            log.warning("scrape %s: cannot use the page from %s: %s", endpoint_id, url, exc)
            return _Fetched(endpoint_id, "parse_error")
        return _Fetched(endpoint_id, "ok", sample)

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The body, or None if it exceeds ``max_body_bytes``."""
        if response.content_length is not None and response.content_length > self._max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _apply(self, fetched: list[_Fetched]) -> None:
        samples = [f.sample for f in fetched if f.sample is not None]
        rejected: dict[int, str] = {}
        if samples:
            for rejection in self._store.apply(samples, self._clock()):
                rejected[rejection.index] = f"{rejection.field}: {rejection.rule}"
        index = 0
        for f in fetched:
            outcome = f.outcome
            if f.sample is not None:
                if index in rejected:
                    log.warning("scrape %s: sample rejected: %s", f.endpoint_id, rejected[index])
                    outcome = "rejected"
                index += 1
            if self._on_scrape is not None:
                self._on_scrape(f.endpoint_id, outcome)
