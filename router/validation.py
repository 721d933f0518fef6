"""Request validation: the rules every field of every RPC must satisfy.

Pure and synchronous. Inputs are the plain values :mod:`router.convert` reads off the wire (protobuf
types never reach this module); outputs are domain values. A request that breaks rules raises
:class:`router.errors.InvalidArgument` listing every field at fault with its rule; a request naming a
model the fleet does not serve raises :class:`router.errors.NotFound` listing the models it does serve
(only once the request is otherwise well formed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from fleet.types import DrainReason, LatencySlo, Priority
from policies.types import PlacementRequest
from router.config import SloConfig
from router.errors import FieldViolation, InvalidArgument, NotFound

MAX_ID_CHARS = 128  # request_id, lease_id, endpoint ids, model and pool names
MAX_TENANT_CHARS = 64
MAX_TOKENS = 10_000_000  # longer than any served context; larger values are a client bug
MAX_ALLOWED_KINDS = 16
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")


@dataclass(frozen=True, slots=True)
class PlaceRequestInput:
    """A ``PlaceRequest`` as received, before any rule is checked. Zero / empty means "not given"."""

    request_id: str
    model: str
    tenant: str
    priority: Priority
    input_tokens: int
    max_output_tokens: int
    expected_output_tokens: int
    slo_ttft_ms: float
    slo_tpot_ms: float
    allowed_accelerator_kinds: tuple[str, ...] = ()
    region: str = ""
    zone: str = ""
    data_region: str = ""


@dataclass(frozen=True, slots=True)
class PlaceContext:
    """What a ``PlaceRequest`` is checked against: the fleet's served models, kinds, zones and SLOs."""

    served_models: frozenset[str]
    accelerator_kinds: frozenset[str]
    zone_regions: Mapping[str, str]  # zone -> region
    slo: SloConfig


@dataclass(frozen=True, slots=True)
class CompletionInput:
    """A ``Completion`` as received."""

    lease_id: str
    input_tokens: int
    output_tokens: int
    ttft_ms: float
    tpot_ms: float
    success: bool


@dataclass(frozen=True, slots=True)
class CompletionReport:
    """A checked completion report. Latencies are ``None`` when the client did not know them."""

    lease_id: str
    input_tokens: int
    output_tokens: int
    ttft_ms: float | None
    tpot_ms: float | None
    success: bool


@dataclass(frozen=True, slots=True)
class DrainInput:
    endpoint_id: str
    pool: str
    reason: DrainReason | None  # None: DRAIN_REASON_UNSPECIFIED
    deadline_s: float | None  # None: not given


@dataclass(frozen=True, slots=True)
class DrainCommand:
    """A checked drain / undrain: exactly one target; reason set for a drain."""

    endpoint_id: str | None
    pool: str | None
    reason: DrainReason | None
    deadline_s: float | None


class _Violations:
    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, rule: str) -> None:
        self.items.append(FieldViolation(field=field, rule=rule))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _check_text(v: _Violations, field: str, value: str, *, max_chars: int, required: bool) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    if len(value) > max_chars:
        v.add(field, f"must be at most {max_chars} characters (got {len(value)})")
    elif not value.isprintable():
        v.add(field, "must contain only printable characters")


def _check_count(v: _Violations, field: str, value: int, *, minimum: int, maximum: int = MAX_TOKENS) -> None:
    if value < minimum:
        v.add(field, f"must be >= {minimum}")
    elif value > maximum:
        v.add(field, f"must be <= {maximum}")


def _check_latency(v: _Violations, field: str, value: float) -> None:
    if not math.isfinite(value):
        v.add(field, "must be a finite number")
    elif value < 0:
        v.add(field, "must be >= 0 (0 means the configured default)")


def _unknown_model(model: str, served: Collection[str]) -> NotFound:
    return NotFound(
        f"model {model!r} is not served by this fleet; served models: {', '.join(sorted(served))}"
    )


def validate_place_request(raw: PlaceRequestInput, ctx: PlaceContext) -> PlacementRequest:
    """Checks every field of a ``PlaceRequest`` and fills defaults.

    Rules: ``request_id`` 1-128 printable characters; ``model`` required, at most 128 characters, then
    served by the fleet (else NOT_FOUND); ``tenant`` 1-64 printable characters; ``input_tokens`` and
    ``max_output_tokens`` in [1, MAX_TOKENS]; ``expected_output_tokens`` in [0, max_output_tokens];
    ``slo.ttft_ms`` / ``slo.tpot_ms`` finite and >= 0 (0: the configured default for model and priority);
    ``allowed_accelerator_kinds`` at most 16 known kinds; ``region`` / ``zone`` empty or one of the
    fleet's, and consistent with each other; ``data_region`` empty or shaped like an AWS region.
    ``expected_output_tokens`` of 0 becomes ``max_output_tokens`` (the conservative estimate).
    """
    v = _Violations()
    _check_text(v, "request_id", raw.request_id, max_chars=MAX_ID_CHARS, required=True)
    _check_text(v, "model", raw.model, max_chars=MAX_ID_CHARS, required=True)
    _check_text(v, "tenant", raw.tenant, max_chars=MAX_TENANT_CHARS, required=True)
    _check_count(v, "input_tokens", raw.input_tokens, minimum=1)
    _check_count(v, "max_output_tokens", raw.max_output_tokens, minimum=1)
    if raw.expected_output_tokens < 0:
        v.add("expected_output_tokens", "must be >= 0 (0 means unknown)")
    elif raw.expected_output_tokens > max(raw.max_output_tokens, 0):
        v.add("expected_output_tokens", "must not exceed max_output_tokens")
    _check_latency(v, "slo.ttft_ms", raw.slo_ttft_ms)
    _check_latency(v, "slo.tpot_ms", raw.slo_tpot_ms)
    if len(raw.allowed_accelerator_kinds) > MAX_ALLOWED_KINDS:
        v.add("allowed_accelerator_kinds", f"must list at most {MAX_ALLOWED_KINDS} kinds")
    else:
        for i, kind in enumerate(raw.allowed_accelerator_kinds):
            if kind not in ctx.accelerator_kinds:
                v.add(
                    f"allowed_accelerator_kinds[{i}]",
                    f"must be one of {', '.join(sorted(ctx.accelerator_kinds))}",
                )
    regions = frozenset(ctx.zone_regions.values())
    if raw.region and raw.region not in regions:
        v.add("region", f"must be empty or one of the fleet's regions: {', '.join(sorted(regions))}")
    if raw.zone:
        zone_region = ctx.zone_regions.get(raw.zone)
        if zone_region is None:
            v.add("zone", f"must be empty or one of the fleet's zones: {', '.join(sorted(ctx.zone_regions))}")
        elif raw.region and raw.region in regions and zone_region != raw.region:
            v.add("zone", f"is in region {zone_region}, not in the requested region {raw.region}")
    if raw.data_region and (len(raw.data_region) > 32 or not _REGION.match(raw.data_region)):
        v.add("data_region", "must be empty or a region name like us-east-1")
    v.raise_if_any()

    if raw.model not in ctx.served_models:
        raise _unknown_model(raw.model, ctx.served_models)
    default = ctx.slo.slo_for(raw.model, raw.priority)
    slo = LatencySlo(
        ttft_ms=raw.slo_ttft_ms or default.ttft_ms,
        tpot_ms=raw.slo_tpot_ms or default.tpot_ms,
    )
    return PlacementRequest(
        request_id=raw.request_id,
        model=raw.model,
        tenant=raw.tenant,
        priority=raw.priority,
        input_tokens=raw.input_tokens,
        max_output_tokens=raw.max_output_tokens,
        expected_output_tokens=raw.expected_output_tokens or raw.max_output_tokens,
        slo=slo,
        allowed_accelerator_kinds=frozenset(raw.allowed_accelerator_kinds),
        region=raw.region,
        zone=raw.zone,
        data_region=raw.data_region,
    )


def validate_completion(raw: CompletionInput) -> CompletionReport:
    """Checks a ``Completion``: ``lease_id`` 1-128 printable characters; token counts in
    [0, MAX_TOKENS]; latencies finite and >= 0 (0: unknown, e.g. the request failed before its first
    token)."""
    v = _Violations()
    _check_text(v, "lease_id", raw.lease_id, max_chars=MAX_ID_CHARS, required=True)
    _check_count(v, "input_tokens", raw.input_tokens, minimum=0)
    _check_count(v, "output_tokens", raw.output_tokens, minimum=0)
    _check_latency(v, "ttft_ms", raw.ttft_ms)
    _check_latency(v, "tpot_ms", raw.tpot_ms)
    v.raise_if_any()
    return CompletionReport(
        lease_id=raw.lease_id,
        input_tokens=raw.input_tokens,
        output_tokens=raw.output_tokens,
        ttft_ms=raw.ttft_ms or None,
        tpot_ms=raw.tpot_ms or None,
        success=raw.success,
    )


def validate_model_filter(model: str, served: Collection[str]) -> str | None:
    """``GetSnapshotRequest.model``: empty (all models, ``None``) or a served model (else NOT_FOUND)."""
    if not model:
        return None
    v = _Violations()
    _check_text(v, "model", model, max_chars=MAX_ID_CHARS, required=False)
    v.raise_if_any()
    if model not in served:
        raise _unknown_model(model, served)
    return model


def validate_drain(
    raw: DrainInput,
    *,
    endpoint_ids: Collection[str],
    pools: Collection[str],
    now_s: float,
    is_drain: bool,
) -> DrainCommand:
    """Checks a ``DrainRequest`` (``is_drain``) or ``UndrainRequest``.

    Exactly one of ``endpoint_id`` and ``pool``, at most 128 characters; a drain needs a reason, and its
    ``deadline``, if given, must be after ``now_s``. An endpoint or pool the fleet does not have is
    NOT_FOUND.
    """
    v = _Violations()
    _check_text(v, "endpoint_id", raw.endpoint_id, max_chars=MAX_ID_CHARS, required=False)
    _check_text(v, "pool", raw.pool, max_chars=MAX_ID_CHARS, required=False)
    if bool(raw.endpoint_id) == bool(raw.pool):
        v.add("endpoint_id", "exactly one of endpoint_id and pool must be set")
    if is_drain:
        if raw.reason is None:
            v.add("reason", "must be DRAIN_REASON_MAINTENANCE or DRAIN_REASON_SPOT_INTERRUPTION")
        if raw.deadline_s is not None and raw.deadline_s <= now_s:
            v.add("deadline", "must be in the future")
    v.raise_if_any()
    if raw.endpoint_id and raw.endpoint_id not in endpoint_ids:
        raise NotFound(f"endpoint {raw.endpoint_id!r} is not in the fleet")
    if raw.pool and raw.pool not in pools:
        raise NotFound(f"pool {raw.pool!r} is not in the fleet; pools: {', '.join(sorted(pools))}")
    return DrainCommand(
        endpoint_id=raw.endpoint_id or None,
        pool=raw.pool or None,
        reason=raw.reason if is_drain else None,
        deadline_s=raw.deadline_s if is_drain else None,
    )


def violation(field: str, rule: str) -> InvalidArgument:
    """A one-field INVALID_ARGUMENT (for wire-level problems found while converting)."""
    return InvalidArgument([FieldViolation(field=field, rule=rule)])
