"""The cost and energy of one request on one endpoint.

What a request costs
--------------------
An endpoint is paid for by the second whether it is busy or not, so the honest price of a request is the
endpoint's price per second times the share of the endpoint the request occupies, at the operating point
it will actually run at. The work of an LLM request has two parts that use the endpoint differently:

* **Input (prefill) work** is compute-bound: a prompt's prefill uses the whole endpoint, and prefills run
  one at a time (a queued prompt waits rather than sharing). The request occupies the whole endpoint for
  its own prefill time ``prefill_s`` (the TTFT of its prompt on an idle endpoint)::

      input_cost_usd = price_usd_per_s * prefill_s

* **Output (decode) work** is memory-bound and batched: every decode step advances each of the ``batch``
  sequences in the batch by one token in ``tpot_s``, so each sequence occupies ``1 / batch`` of the
  endpoint for ``output_tokens`` steps::

      output_cost_usd = price_usd_per_s * output_tokens * tpot_s / batch

  ``batch`` is the endpoint's live batch with this request added and ``tpot_s`` the time per output token
  at that batch: a busy endpoint serves a token more cheaply than an idle one because the weights read at
  each step are shared by more sequences.

* **Egress**, when the request runs outside the region its data lives in (data gravity)::

      egress_cost_usd = egress_usd_per_gb * (input_tokens + output_tokens) * bytes_per_token / 10**9

``cost_usd = input_cost_usd + output_cost_usd + egress_cost_usd`` and the cost per million tokens is
``cost_usd / (input_tokens + output_tokens) * 10**6``. ``output_tokens`` is the request's expected output
(the client's figure or the router's estimate). ``price_usd_per_s`` is the endpoint's share of its
instance's hourly price (catalog row or configured override) divided by 3600.

Energy
------
The same shares with watts in place of dollars: the prefill runs the endpoint flat out, so it is charged
``power_w(1.0)``; the decode share is charged at ``power_w(u)``, the endpoint's draw at its utilisation
``u`` with this request added::

    energy_joules = power_w(1.0) * prefill_s + power_w(u) * output_tokens * tpot_s / batch

Attribution after completion
----------------------------
When the request completes, the tenant is charged the predicted per-token prices of the lease's endpoint
applied to the tokens actually processed (:func:`attributed_cost_usd`): input tokens at the predicted input
price per input token, output tokens at the predicted output price per output token, egress per token
moved. The operating point (batch, TPOT) stays the one the decision priced, so a tenant is not billed
more because other tenants' requests happened to finish early.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from policies.ledger import Lease

__all__ = [
    "USD_PER_GB_BYTES",
    "attributed_cost_usd",
    "completion_cost_usd",
    "egress_cost_usd",
    "request_cost_usd",
    "request_energy_joules",
]

USD_PER_GB_BYTES = 1e9  # bytes in the GB of a per-GB price


def request_cost_usd(
    price_usd_per_s: float, prefill_s: float, output_tokens: int, tpot_s: float, batch: int
) -> tuple[float, float]:
    """``(input_cost_usd, output_cost_usd)`` of a request (module docstring). ``batch >= 1``."""
    return price_usd_per_s * prefill_s, price_usd_per_s * output_tokens * tpot_s / batch


def egress_cost_usd(egress_usd_per_gb: float, tokens: int, bytes_per_token: float) -> float:
    """Price of moving ``tokens`` of payload between regions."""
    return egress_usd_per_gb * tokens * bytes_per_token / USD_PER_GB_BYTES


def request_energy_joules(
    prefill_power_w: float,
    decode_power_w: float,
    prefill_s: float,
    output_tokens: int,
    tpot_s: float,
    batch: int,
) -> float:
    """Accelerator energy of a request (module docstring). ``batch >= 1``."""
    return prefill_power_w * prefill_s + decode_power_w * output_tokens * tpot_s / batch


def attributed_cost_usd(
    *,
    predicted_input_cost_usd: float,
    predicted_output_cost_usd: float,
    predicted_egress_cost_usd: float,
    predicted_input_tokens: int,
    predicted_output_tokens: int,
    input_tokens: int,
    output_tokens: int,
) -> float:
    """Cost charged for a completed request: the predicted per-token prices times the actual tokens.

    A prediction made for zero tokens of a kind charges nothing for that kind.
    """
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got input={input_tokens} output={output_tokens}")
    cost = 0.0
    if predicted_input_tokens > 0:
        cost += predicted_input_cost_usd * input_tokens / predicted_input_tokens
    if predicted_output_tokens > 0:
        cost += predicted_output_cost_usd * output_tokens / predicted_output_tokens
    moved = predicted_input_tokens + predicted_output_tokens
    if moved > 0:
        cost += predicted_egress_cost_usd * (input_tokens + output_tokens) / moved
    return cost


def completion_cost_usd(lease: Lease, input_tokens: int, output_tokens: int) -> float:
    """What ``Complete`` attributes to the lease's tenant for the tokens actually processed."""
    p = lease.prediction
    return attributed_cost_usd(
        predicted_input_cost_usd=p.input_cost_usd,
        predicted_output_cost_usd=p.output_cost_usd,
        predicted_egress_cost_usd=p.egress_cost_usd,
        predicted_input_tokens=lease.request.input_tokens,
        predicted_output_tokens=lease.request.expected_output_tokens,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )
