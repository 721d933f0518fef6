"""A scenario whose answer is known in closed form: one endpoint, constant-size requests at a fixed rate
below saturation. The simulator must match the closed form from the serving profile within 2 %.

Closed form (steady state; ``n`` prompt tokens, ``o`` output tokens, one request every ``T = 1 / rate``):

* ``p = ttft_ms(n, 0)``: each prompt's prefill costs the engine ``p``, spread over the ``k = ceil(n / (C -
  B))`` steps that carry its chunks (``C`` the endpoint's ``max_batched_tokens``, ``B`` the sequences
  decoding beside it, one token of the budget each); prefill takes the share ``rate x p`` of the engine's
  time (below 1: below saturation).
* Decode: every request needs ``o - 1`` steps. Over a period ``T`` the engine decodes for ``T - p``, so
  with step time ``t`` the mean batch is ``B = (o - 1) x t / (T - p)`` and a request's decode lasts
  ``B x T``: ``TPOT = t / (1 - rate x p)`` where ``t = tpot_ms(B, n + o / 2)`` (fixed point in ``B``;
  exact for the roofline, linear in batch x context in the memory-bound regime).
* TTFT: a request arrives during a decode step, waits for it to end (half a step on average), then is
  prefilled in ``k`` steps, each also decoding the batch: ``TTFT = p + t / 2 + k x t``.
* Throughput: ``rate`` requests/s; cost per million tokens: ``price_per_s / (rate x (n + o)) x 1e6``.
"""

from __future__ import annotations

import math

import pytest

from fleet.catalog import load_catalog
from fleet.models import load_models
from fleet.perf import PerformanceModel
from fleet.types import LatencySlo, PoolSpec, Precision, Priority, ZoneSpec
from sim.engine import SimConfig, fleet_from_pools, simulate
from sim.policy_adapter import FirstFit
from sim.traces import Trace, TraceRequest

TOLERANCE = 0.02


@pytest.mark.parametrize(
    ("n", "o", "rate", "requests"),
    [
        (4000, 300, 3.7, 2500),  # long prompts: prefill takes a quarter of the engine
        (1000, 200, 7.3, 2500),  # conversation-like requests, a batch of about 7
    ],
)
def test_one_endpoint_at_a_fixed_rate_matches_the_closed_form(
    n: int, o: int, rate: float, requests: int
) -> None:
    performance = PerformanceModel(load_catalog(), load_models())  # the roofline with prior efficiencies
    pool = PoolSpec(
        name="h100",
        zone="z1",
        instance_type="p5.48xlarge",
        model="llama-3.1-8b",
        tp_degree=1,
        precision=Precision.FP8,
        instances=1,
        address_template="{pool}-{index}:8000",
        replicas_per_instance=1,
    )
    fleet = fleet_from_pools(
        [pool],
        [ZoneSpec("z1", "us-east-1", 1e6)],
        performance=performance,
        slo_for=lambda m, p: LatencySlo(1000.0, 100.0),
    )
    (spec,) = fleet.endpoints
    profile = fleet.serving(spec)
    period = 1.0 / rate
    trace = Trace(
        name="fixed-rate",
        source="test",
        requests=tuple(
            TraceRequest(i * period, n, o, "llama-3.1-8b", Priority.STANDARD, "t") for i in range(requests)
        ),
    )
    result = simulate(trace, fleet, FirstFit(fleet.serving), SimConfig())

    # --- closed form
    p = profile.ttft_ms(n, 0) / 1000.0
    assert rate * p < 1.0
    batch = 1.0
    t = profile.tpot_ms(1, n + o // 2) / 1000.0
    for _ in range(100):
        t = profile.tpot_ms(batch, n + o // 2) / 1000.0  # type: ignore[arg-type]  # a mean batch
        batch = (o - 1) * t * rate / (1.0 - rate * p)
    assert batch > 2  # the requests really overlap: continuous batching is exercised
    chunk_steps = math.ceil(n / (spec.max_batched_tokens - math.ceil(batch)))
    ttft_ms = (p + t / 2.0 + chunk_steps * t) * 1000.0
    tpot_ms = t / (1.0 - rate * p) * 1000.0
    usd_per_mtok = spec.price_usd_per_hour / 3600.0 / (rate * (n + o)) * 1e6
    end_s = (requests - 1) * period + (ttft_ms + (o - 1) * tpot_ms) / 1000.0

    # --- simulated, steady state (the first and last 10 % of requests are warm-up and drain)
    outcomes = result.outcomes
    steady = [x for x in outcomes if requests * 0.1 <= x.index < requests * 0.9]
    assert all(x.outcome == "completed" for x in outcomes)
    sim_ttft = sum(x.ttft_ms or 0.0 for x in steady) / len(steady)
    sim_tpot = sum(x.tpot_ms or 0.0 for x in steady) / len(steady)
    done = sorted(x.completed_s or 0.0 for x in steady)
    sim_rate = (len(done) - 1) / (done[-1] - done[0])

    assert sim_ttft == pytest.approx(ttft_ms, rel=TOLERANCE)
    assert sim_tpot == pytest.approx(tpot_ms, rel=TOLERANCE)
    assert sim_rate == pytest.approx(rate, rel=TOLERANCE)
    assert result.summary.usd_per_million_tokens == pytest.approx(usd_per_mtok, rel=TOLERANCE)
    assert result.summary.total_usd == pytest.approx(spec.price_usd_per_hour * end_s / 3600.0, rel=TOLERANCE)
    assert result.summary.slo_attainment == 1.0
