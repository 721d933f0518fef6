"""The cost and energy of a request, worked by hand from the formulas in policies/cost.py."""

from __future__ import annotations

import dataclasses

import pytest
from fakes import FAST, make_request, make_snapshot, make_spec, make_state
from test_policies_filters import ctx_for, target

from policies.cost import (
    attributed_cost_usd,
    completion_cost_usd,
    egress_cost_usd,
    request_cost_usd,
    request_energy_joules,
)
from policies.ledger import ReservationLedger


def test_formulas() -> None:
    assert request_cost_usd(3.6, 0.5, 100, 0.02, 4) == pytest.approx((1.8, 3.6 * 100 * 0.02 / 4))
    assert egress_cost_usd(0.02, 1000, 4.0) == pytest.approx(0.02 * 4000 / 1e9)
    assert request_energy_joules(700.0, 400.0, 0.1, 50, 0.01, 5) == pytest.approx(
        70.0 + 400.0 * 50 * 0.01 / 5
    )


def test_prediction_on_an_idle_endpoint_by_hand() -> None:
    # FAST at $36/h = $0.01/s; 1000 tokens in, 200 expected out.
    state = make_state(make_spec("e1", price_usd_per_hour=36.0))
    snap = make_snapshot([state])
    ctx = ctx_for(make_request(input_tokens=1000, expected_output_tokens=200), snap)
    p = ctx.prediction(target(state, snap))
    prefill_s = (10 + 1000 / 20) / 1000  # 60 ms, compute-bound, alone
    tpot_ms = 10 + 1 * (0.5 + 0.1 * (1000 + 100) / 1000)  # batch 1 at mean context 1100
    assert p.ttft_ms == pytest.approx(60.0) and p.tpot_ms == pytest.approx(tpot_ms)
    assert p.input_cost_usd == pytest.approx(0.01 * prefill_s)
    assert p.output_cost_usd == pytest.approx(0.01 * 200 * tpot_ms / 1000 / 1)
    assert p.cost_usd == pytest.approx(p.input_cost_usd + p.output_cost_usd)
    assert p.cost_usd_per_million_tokens == pytest.approx(p.cost_usd / 1200 * 1e6)
    # Utilisation: the class (in 1024, out 512) holds at most n_max sequences within TPOT 100 ms.
    n_max = FAST.max_batch_for_tpot(100.0, 1024 + 256)
    assert p.utilization_ratio == pytest.approx(1 / n_max)
    decode_w = FAST.power_w(1 / n_max)
    assert p.energy_joules == pytest.approx(FAST.power_w(1.0) * prefill_s + decode_w * 200 * tpot_ms / 1000)
    assert p.power_increment_mw == -(-round((decode_w - FAST.power_w(0.0)) * 1e6) // 1000)


def test_a_busy_endpoint_serves_tokens_more_cheaply() -> None:
    idle = make_state(make_spec("e1"))
    busy = make_state(make_spec("e1"), running=15)
    costs = []
    for s in (idle, busy):
        snap = make_snapshot([s])
        costs.append(ctx_for(make_request(), snap, ReservationLedger()).prediction(target(s, snap)))
    assert costs[1].decode_batch == 16
    assert costs[1].output_cost_usd < costs[0].output_cost_usd / 5
    assert costs[1].input_cost_usd == pytest.approx(costs[0].input_cost_usd)


def test_attribution_scales_with_actual_tokens() -> None:
    def charged(input_tokens: int, output_tokens: int) -> float:
        return attributed_cost_usd(
            predicted_input_cost_usd=0.001,
            predicted_output_cost_usd=0.004,
            predicted_egress_cost_usd=0.0002,
            predicted_input_tokens=1000,
            predicted_output_tokens=200,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )

    assert charged(1000, 200) == pytest.approx(0.0052)
    assert charged(1000, 100) == pytest.approx(0.001 + 0.002 + 0.0002 * 1100 / 1200)
    assert charged(0, 0) == 0.0
    with pytest.raises(ValueError):
        charged(-1, 0)


def test_completion_cost_of_a_lease() -> None:
    from test_policies_ledger import TEMPLATE

    p = TEMPLATE.prediction
    req = TEMPLATE.request
    assert completion_cost_usd(TEMPLATE, req.input_tokens, req.expected_output_tokens) == pytest.approx(
        p.cost_usd
    )
    assert completion_cost_usd(TEMPLATE, req.input_tokens, 0) == pytest.approx(
        p.input_cost_usd
        + p.egress_cost_usd * req.input_tokens / (req.input_tokens + req.expected_output_tokens)
    )


def test_a_full_engine_batch_caps_the_decode_batch_and_makes_the_request_wait() -> None:
    """Beyond ``max_batch_sequences`` in flight the engine decodes no more sequences at once: the request
    waits for ``in_flight + 1 - max_batch`` of them to finish (``max_batch / O`` per step, ``O`` the mean
    expected output of the ledger's leases, here the request's own as the ledger is empty)."""
    spec = dataclasses.replace(make_spec("e1"), max_batch_sequences=8)
    below = make_state(spec, running=6)
    full = make_state(spec, running=12)
    request = make_request(input_tokens=1000, expected_output_tokens=200)
    predictions = []
    for s in (below, full):
        snap = make_snapshot([s])
        predictions.append(ctx_for(request, snap, ReservationLedger()).prediction(target(s, snap)))
    below_p, full_p = predictions
    assert below_p.decode_batch == 7 and full_p.decode_batch == 8
    step_ms = 10 + 8 * (0.5 + 0.1 * (1000 + 100) / 1000)  # FAST's decode step at batch 8, context 1100
    prefill_ms = 10 + 1000 / 20
    waits_for = 12 + 1 - 8
    # Half the step in progress, one step beside the prompt's single chunk (1000 tokens < 2048 - 8), and the
    # steps until enough sequences finish.
    expected_ttft_ms = prefill_ms + 1.5 * step_ms + waits_for * (200 / 8) * step_ms
    assert full_p.ttft_ms == pytest.approx(expected_ttft_ms)
    assert below_p.ttft_ms < prefill_ms + 2 * step_ms  # no wait for a sequence to finish
    # Utilisation is counted against the engine's limit when that is below the TPOT batch limit.
    assert full_p.utilization_ratio == pytest.approx(1.0)
