"""Request validation rules (router/validation.py): every rule refuses with the field and the rule."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.types import DrainReason, LatencySlo, Priority
from router.config import SloConfig
from router.errors import InvalidArgument, NotFound
from router.validation import (
    MAX_TOKENS,
    CompletionInput,
    DrainInput,
    PlaceContext,
    PlaceRequestInput,
    validate_completion,
    validate_drain,
    validate_model_filter,
    validate_place_request,
)

CTX = PlaceContext(
    served_models=frozenset({"llama-3.1-8b", "llama-3.1-70b"}),
    accelerator_kinds=frozenset({"h100", "h200", "inf2", "trn1"}),
    zone_regions={"use1-az1": "us-east-1", "usw2-az1": "us-west-2"},
    slo=SloConfig(),
)

GOOD = PlaceRequestInput(
    request_id="req-1",
    model="llama-3.1-8b",
    tenant="acme",
    priority=Priority.STANDARD,
    input_tokens=512,
    max_output_tokens=256,
    expected_output_tokens=0,
    slo_ttft_ms=0.0,
    slo_tpot_ms=0.0,
)


def fields_of(err: InvalidArgument) -> dict[str, str]:
    return {v.field: v.rule for v in err.violations}


def test_good_request_gets_configured_defaults() -> None:
    req = validate_place_request(GOOD, CTX)
    assert req.slo == LatencySlo(ttft_ms=2000.0, tpot_ms=100.0)
    assert req.expected_output_tokens == 256  # the conservative estimate: the upper bound
    assert req.allowed_accelerator_kinds == frozenset()


def test_partial_slo_keeps_given_field_and_defaults_the_other() -> None:
    req = validate_place_request(dataclasses.replace(GOOD, priority=Priority.CRITICAL, slo_tpot_ms=30.0), CTX)
    assert req.slo == LatencySlo(ttft_ms=1000.0, tpot_ms=30.0)


@pytest.mark.parametrize(
    ("change", "field", "rule_part"),
    [
        ({"request_id": ""}, "request_id", "is required"),
        ({"request_id": "x" * 129}, "request_id", "at most 128"),
        ({"request_id": "a\x00b"}, "request_id", "printable"),
        ({"model": ""}, "model", "is required"),
        ({"model": "m" * 1000}, "model", "at most 128"),
        ({"tenant": ""}, "tenant", "is required"),
        ({"tenant": "t" * 65}, "tenant", "at most 64"),
        ({"input_tokens": 0}, "input_tokens", ">= 1"),
        ({"input_tokens": -5}, "input_tokens", ">= 1"),
        ({"input_tokens": MAX_TOKENS + 1}, "input_tokens", f"<= {MAX_TOKENS}"),
        ({"max_output_tokens": 0}, "max_output_tokens", ">= 1"),
        ({"expected_output_tokens": -1}, "expected_output_tokens", ">= 0"),
        ({"expected_output_tokens": 257}, "expected_output_tokens", "must not exceed max_output_tokens"),
        ({"slo_ttft_ms": math.nan}, "slo.ttft_ms", "finite"),
        ({"slo_ttft_ms": math.inf}, "slo.ttft_ms", "finite"),
        ({"slo_tpot_ms": -1.0}, "slo.tpot_ms", ">= 0"),
        ({"allowed_accelerator_kinds": ("h100", "tpu")}, "allowed_accelerator_kinds[1]", "must be one of"),
        ({"allowed_accelerator_kinds": ("h100",) * 17}, "allowed_accelerator_kinds", "at most 16"),
        ({"region": "mars-1"}, "region", "us-east-1"),
        ({"zone": "nowhere"}, "zone", "use1-az1"),
        ({"region": "us-west-2", "zone": "use1-az1"}, "zone", "not in the requested region"),
        ({"data_region": "not a region"}, "data_region", "like us-east-1"),
    ],
)
def test_each_rule_names_field_and_rule(change: dict[str, object], field: str, rule_part: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_place_request(dataclasses.replace(GOOD, **change), CTX)  # type: ignore[arg-type]
    found = fields_of(info.value)
    assert field in found, found
    assert rule_part in found[field]
    assert field in info.value.message


def test_all_violations_reported_together() -> None:
    bad = dataclasses.replace(GOOD, request_id="", input_tokens=-1, slo_ttft_ms=math.nan)
    with pytest.raises(InvalidArgument) as info:
        validate_place_request(bad, CTX)
    assert set(fields_of(info.value)) == {"request_id", "input_tokens", "slo.ttft_ms"}
    assert len(info.value.details()) == 1  # one google.rpc.BadRequest with every violation


def test_unknown_model_is_not_found_listing_served_models() -> None:
    with pytest.raises(NotFound) as info:
        validate_place_request(dataclasses.replace(GOOD, model="gpt-17"), CTX)
    assert "gpt-17" in info.value.message
    assert "llama-3.1-70b, llama-3.1-8b" in info.value.message


def test_malformed_request_with_unknown_model_is_invalid_argument_first() -> None:
    with pytest.raises(InvalidArgument):
        validate_place_request(dataclasses.replace(GOOD, model="gpt-17", tenant=""), CTX)


def test_per_model_slo_default_applies() -> None:
    slo = SloConfig(per_model={"llama-3.1-70b": {Priority.STANDARD: LatencySlo(3000.0, 120.0)}})
    ctx = dataclasses.replace(CTX, slo=slo)
    assert validate_place_request(dataclasses.replace(GOOD, model="llama-3.1-70b"), ctx).slo == LatencySlo(
        3000.0, 120.0
    )
    assert validate_place_request(GOOD, ctx).slo == LatencySlo(2000.0, 100.0)


@given(
    request_id=st.text(max_size=200),
    tenant=st.text(max_size=100),
    input_tokens=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    max_output_tokens=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    expected=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    ttft=st.floats(allow_nan=True, allow_infinity=True),
    tpot=st.floats(allow_nan=True, allow_infinity=True),
    kinds=st.lists(st.text(max_size=8), max_size=20),
)
def test_any_input_is_accepted_or_refused_never_crashes(
    request_id: str,
    tenant: str,
    input_tokens: int,
    max_output_tokens: int,
    expected: int,
    ttft: float,
    tpot: float,
    kinds: list[str],
) -> None:
    raw = dataclasses.replace(
        GOOD,
        request_id=request_id,
        tenant=tenant,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        expected_output_tokens=expected,
        slo_ttft_ms=ttft,
        slo_tpot_ms=tpot,
        allowed_accelerator_kinds=tuple(kinds),
    )
    try:
        req = validate_place_request(raw, CTX)
    except InvalidArgument as err:
        assert err.violations
        return
    # Accepted: every rule holds on the result.
    assert 1 <= req.input_tokens <= MAX_TOKENS and 1 <= req.max_output_tokens <= MAX_TOKENS
    assert 1 <= req.expected_output_tokens <= req.max_output_tokens
    assert math.isfinite(req.slo.ttft_ms) and req.slo.ttft_ms > 0
    assert math.isfinite(req.slo.tpot_ms) and req.slo.tpot_ms > 0
    assert req.allowed_accelerator_kinds <= CTX.accelerator_kinds
    assert 1 <= len(req.request_id) <= 128 and 1 <= len(req.tenant) <= 64


def test_completion_rules() -> None:
    good = CompletionInput(
        lease_id="l-1", input_tokens=10, output_tokens=0, ttft_ms=0.0, tpot_ms=12.5, success=False
    )
    report = validate_completion(good)
    assert report.ttft_ms is None and report.tpot_ms == 12.5
    with pytest.raises(InvalidArgument) as info:
        validate_completion(dataclasses.replace(good, lease_id="", output_tokens=-3, ttft_ms=math.nan))
    assert set(fields_of(info.value)) == {"lease_id", "output_tokens", "ttft_ms"}


def test_model_filter() -> None:
    assert validate_model_filter("", CTX.served_models) is None
    assert validate_model_filter("llama-3.1-8b", CTX.served_models) == "llama-3.1-8b"
    with pytest.raises(NotFound, match=r"served models: llama-3\.1-70b, llama-3\.1-8b"):
        validate_model_filter("nope", CTX.served_models)
    with pytest.raises(InvalidArgument, match="model: must be at most 128"):
        validate_model_filter("x" * 500, CTX.served_models)


@pytest.mark.parametrize(
    ("raw", "field", "rule_part"),
    [
        (DrainInput("", "", DrainReason.MAINTENANCE, None), "endpoint_id", "exactly one"),
        (DrainInput("e1", "p1", DrainReason.MAINTENANCE, None), "endpoint_id", "exactly one"),
        (DrainInput("e1", "", None, None), "reason", "DRAIN_REASON_MAINTENANCE"),
        (DrainInput("e1", "", DrainReason.SPOT_INTERRUPTION, 999.0), "deadline", "in the future"),
        (DrainInput("e" * 200, "", DrainReason.MAINTENANCE, None), "endpoint_id", "at most 128"),
    ],
)
def test_drain_rules(raw: DrainInput, field: str, rule_part: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_drain(raw, endpoint_ids={"e1"}, pools={"p1"}, now_s=1000.0, is_drain=True)
    assert rule_part in fields_of(info.value)[field]


def test_drain_unknown_targets_are_not_found_and_good_ones_pass() -> None:
    with pytest.raises(NotFound, match="endpoint 'e9'"):
        validate_drain(
            DrainInput("e9", "", DrainReason.MAINTENANCE, None),
            endpoint_ids={"e1"},
            pools={"p1"},
            now_s=0.0,
            is_drain=True,
        )
    with pytest.raises(NotFound, match="pools: p1"):
        validate_drain(
            DrainInput("", "p9", None, None), endpoint_ids={"e1"}, pools={"p1"}, now_s=0.0, is_drain=False
        )
    cmd = validate_drain(
        DrainInput("", "p1", DrainReason.SPOT_INTERRUPTION, 1120.0),
        endpoint_ids={"e1"},
        pools={"p1"},
        now_s=1000.0,
        is_drain=True,
    )
    assert (cmd.endpoint_id, cmd.pool, cmd.reason, cmd.deadline_s) == (
        None,
        "p1",
        DrainReason.SPOT_INTERRUPTION,
        1120.0,
    )
    # An undrain needs no reason.
    assert (
        validate_drain(
            DrainInput("e1", "", None, None), endpoint_ids={"e1"}, pools=set(), now_s=0.0, is_drain=False
        ).endpoint_id
        == "e1"
    )
