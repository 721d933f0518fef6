"""Core domain types of the fleet model.

Every type here is a small frozen value with its unit in each field name. Protobuf types never appear
here: ``router/convert.py`` is the only module that converts between the two.

Readers (policies, the planner, the HTTP debug pages) only ever see these values through an immutable
:class:`FleetSnapshot` published by :class:`fleet.store.FleetStore`, the single writer of live state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol


class Priority(enum.Enum):
    """How a request is treated when capacity is short: sheddable first, critical last."""

    CRITICAL = "critical"
    STANDARD = "standard"
    SHEDDABLE = "sheddable"


class Precision(enum.Enum):
    """Numeric format of weights and matmuls on an endpoint."""

    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"
    INT8 = "int8"  # int8 weights, bf16 compute (Neuron "int8" rows)

    @property
    def weight_bytes_per_param(self) -> float:
        return {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5, "int8": 1.0}[self.value]


class EndpointStatus(enum.Enum):
    READY = "ready"
    STALE = "stale"
    UNHEALTHY = "unhealthy"
    DRAINED = "drained"


class DrainReason(enum.Enum):
    MAINTENANCE = "maintenance"
    SPOT_INTERRUPTION = "spot_interruption"


@dataclass(frozen=True, slots=True)
class LatencySlo:
    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    """An availability zone and the power budget of its accelerators."""

    name: str
    region: str
    power_cap_w: float


DEFAULT_MAX_BATCH_SEQUENCES = 256
"""Sequences a serving engine decodes at once unless its pool says otherwise: vLLM's default
``max_num_seqs`` (256)."""

DEFAULT_MAX_BATCHED_TOKENS = 2048
"""Tokens a serving engine processes in one step unless its pool says otherwise (vLLM's
``max_num_batched_tokens``): every decoding sequence takes one, and prompts are prefilled in chunks of
what is left (chunked prefill, decodes first). 2048 is the budget vLLM's tuning guide and its V1 engine
use for latency-sensitive online serving; a larger budget raises throughput and the time per output token
of the sequences that decode beside a long prompt."""


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One serving replica (a tensor-parallel group) as configured. Pools expand to these."""

    endpoint_id: str
    address: str
    pool: str
    zone: str
    region: str
    instance_type: str
    accelerator_kind: str
    model: str
    tp_degree: int
    precision: Precision
    chips: int  # accelerator chips this replica occupies
    price_usd_per_hour: float  # this replica's share of its instance's price
    max_context_tokens: int  # longest input + output accepted
    reserved: bool = False  # the planner may not turn it off
    # Sequences the serving engine decodes at once at most (vLLM's ``max_num_seqs``); requests beyond it
    # wait in the engine's queue for a sequence to finish.
    max_batch_sequences: int = DEFAULT_MAX_BATCH_SEQUENCES
    # Tokens the engine processes per step (vLLM's ``max_num_batched_tokens``): one per decoding sequence,
    # the rest for chunks of the prompts being prefilled. Must exceed ``max_batch_sequences``.
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS
    metrics_url: str | None = None  # Prometheus text to scrape, if any
    # False for endpoints with no live telemetry source at all (a static fleet): they are never marked
    # stale for lack of reports.
    expects_telemetry: bool = True


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A group of identical replicas as written in the config; ``fleet.inventory`` expands it.

    An instance of ``instance_type`` hosts ``chips // tp_degree`` replicas (``replicas_per_instance``
    may lower that); replica ``i`` gets ``address_template.format(pool=..., index=i)``.
    """

    name: str
    zone: str
    instance_type: str
    model: str
    tp_degree: int  # chips per replica (Neuron: chips, i.e. NeuronCores / 2 on trn1 and inf2)
    precision: Precision
    instances: int
    address_template: str  # e.g. "{pool}-{index}.serving.svc:8000"
    replicas_per_instance: int | None = None
    max_context_tokens: int | None = None  # default: the model's context length
    reserved: bool = False
    max_batch_sequences: int | None = None  # default: DEFAULT_MAX_BATCH_SEQUENCES
    max_batched_tokens: int | None = None  # default: DEFAULT_MAX_BATCHED_TOKENS
    metrics_url_template: str | None = None  # e.g. "http://{pool}-{index}.serving.svc:8000/metrics"
    expects_telemetry: bool = True
    price_usd_per_hour: float | None = None  # per instance; default: the catalog's


@dataclass(frozen=True, slots=True)
class EndpointLoad:
    """The last known live load of an endpoint. ``None`` means never reported."""

    running_requests: int = 0
    waiting_requests: int = 0
    kv_cache_usage_ratio: float = 0.0
    power_w: float | None = None
    utilization_ratio: float | None = None
    observed_ttft_ms: float | None = None
    observed_tpot_ms: float | None = None
    healthy: bool = True
    observed_at_s: float | None = None  # unix seconds, when the endpoint took the sample
    received_at_s: float | None = None  # unix seconds, when the store applied it


@dataclass(frozen=True, slots=True)
class DrainState:
    reason: DrainReason
    since_s: float
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class EndpointState:
    spec: EndpointSpec
    load: EndpointLoad
    status: EndpointStatus
    drain: DrainState | None = None

    @property
    def endpoint_id(self) -> str:
        return self.spec.endpoint_id

    @property
    def eligible(self) -> bool:
        """May receive new work: healthy, fresh and not drained."""
        return self.status is EndpointStatus.READY


@dataclass(frozen=True, slots=True)
class TelemetrySample:
    """One load sample for one endpoint, from a gRPC report or a scrape. ``None`` keeps the old value."""

    endpoint_id: str
    observed_at_s: float
    running_requests: int | None = None
    waiting_requests: int | None = None
    kv_cache_usage_ratio: float | None = None
    power_w: float | None = None
    utilization_ratio: float | None = None
    observed_ttft_ms: float | None = None
    observed_tpot_ms: float | None = None
    healthy: bool | None = None


def _frozen_map(d: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class FleetSnapshot:
    """An immutable view of the whole fleet at one version. Readers take one per decision.

    ``endpoints`` is sorted by endpoint id; ``by_id`` and ``by_model`` index the same states.
    ``zone_power_w`` is the power drawn per zone: reported where endpoints report it, modelled from
    utilisation otherwise. ``zone_ineligible_power_w`` is the part of it drawn by endpoints that may not
    take new work (stale, unhealthy, drained): they draw it until they are gone, so the planner takes it
    off the zone's cap (a zone missing from it: 0 W).
    """

    version: int
    taken_at_s: float
    endpoints: tuple[EndpointState, ...]
    by_id: Mapping[str, EndpointState]
    by_model: Mapping[str, tuple[EndpointState, ...]]
    zones: Mapping[str, ZoneSpec]
    zone_power_w: Mapping[str, float] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    zone_ineligible_power_w: Mapping[str, float] = field(default_factory=_frozen_map)  # type: ignore[arg-type]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self.by_model))


class ServingProfile(Protocol):
    """Predicted behaviour of one endpoint class (model x instance type x TP degree x precision).

    Implemented by the roofline model (``fleet.perf``) and by measured profiles; the policies and the
    planner depend only on this interface. All methods are pure and cheap enough for the per-request path.
    Contract: ``tpot_ms`` is non-decreasing in ``batch`` and ``context_tokens``; ``ttft_ms`` is
    non-decreasing in ``input_tokens`` and ``queued_prefill_tokens``.
    """

    @property
    def fits(self) -> bool:
        """Weights plus at least one full-context sequence of KV cache fit in the replica's memory."""
        ...

    @property
    def kv_capacity_tokens(self) -> int:
        """KV-cache tokens that fit next to the weights across the replica's chips."""
        ...

    @property
    def idle_power_w(self) -> float: ...

    @property
    def max_power_w(self) -> float: ...

    @property
    def source(self) -> str:
        """Where the figures come from, e.g. "roofline(fitted: neuron-v2)" or "measured:FILE"."""
        ...

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        """Time to first token for a prompt, behind ``queued_prefill_tokens`` of prefill work."""
        ...

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        """Time per output token with ``batch`` sequences decoding at mean context ``context_tokens``."""
        ...

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        """Largest batch whose TPOT meets ``tpot_ms`` (memory permitting); 0 if none does."""
        ...

    def power_w(self, utilization_ratio: float) -> float:
        """Accelerator power draw of the replica at a busy share in [0, 1], watts."""
        ...
