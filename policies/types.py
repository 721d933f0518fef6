"""Types shared by the per-request policies and the global planner.

A request is decided on one :class:`fleet.types.FleetSnapshot`; the planner publishes a :class:`Plan` that
the per-request path follows. Both are immutable values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from fleet.types import LatencySlo, Priority


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """An inference request as the policies see it (already validated at the edge)."""

    request_id: str
    model: str
    tenant: str
    priority: Priority
    input_tokens: int
    max_output_tokens: int
    expected_output_tokens: int  # the router's estimate when the client gave none
    slo: LatencySlo  # defaults already applied
    allowed_accelerator_kinds: frozenset[str] = frozenset()  # empty: any
    region: str = ""  # empty: any
    zone: str = ""  # empty: any
    data_region: str = ""  # empty: no data-gravity term


@dataclass(frozen=True, slots=True, order=True)
class TrafficClass:
    """A demand class: model x input-length bucket x output-length bucket x priority.

    Buckets are named by their inclusive upper bound in tokens (e.g. ``input_bucket_tokens=2048`` holds
    prompts of 1025..2048 tokens when the bounds are 1024, 2048, ...).
    """

    model: str
    input_bucket_tokens: int
    output_bucket_tokens: int
    priority: Priority

    @property
    def name(self) -> str:
        return (
            f"{self.model}/in{self.input_bucket_tokens}/out{self.output_bucket_tokens}/{self.priority.value}"
        )


def model_and_priority_of(class_name: str) -> tuple[str, str] | None:
    """(model, priority value) of a :attr:`TrafficClass.name`; ``None`` if it is not one."""
    parts = class_name.rsplit("/", 3)
    return (parts[0], parts[3]) if len(parts) == 4 else None


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Plan:
    """A published global placement plan.

    ``share[endpoint_id][class_name]`` is the fraction of that class's demand the endpoint should take;
    for each served class the shares over endpoints sum to the served fraction of the class (<= 1).
    ``status`` is "none" (no plan yet), "optimal", "feasible", "timeout_kept_previous" or
    "failed_kept_previous". ``objective_usd_per_hour`` is the planner's objective for this plan (its
    predicted cost plus the penalties for unserved demand and for churn) and ``gap_to_lp_ratio`` how far
    it lies above the LP relaxation's bound, as a share of the part of the objective decisions can change
    (see :class:`policies.planner.PlanReport`); both None for a plan made some other way.
    """

    generation: int
    created_at_s: float
    status: str
    active_endpoint_ids: frozenset[str]
    share: Mapping[str, Mapping[str, float]]
    desired_replicas: Mapping[str, int]  # pool -> replicas that should be active
    predicted_cost_usd_per_hour: float
    predicted_zone_power_w: Mapping[str, float] = field(default_factory=_empty)
    unserved_rate_per_s: Mapping[str, float] = field(default_factory=_empty)  # class name -> req/s
    solve_seconds: float = 0.0
    lp_bound_usd_per_hour: float | None = None  # objective of the LP relaxation, for the gap
    objective_usd_per_hour: float | None = None
    gap_to_lp_ratio: float | None = None


EMPTY_PLAN = Plan(
    generation=0,
    created_at_s=0.0,
    status="none",
    active_endpoint_ids=frozenset(),
    share=MappingProxyType({}),
    desired_replicas=MappingProxyType({}),
    predicted_cost_usd_per_hour=0.0,
)
