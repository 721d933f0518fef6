"""Domain types of the training-job queue.

A training job asks for a gang of ``chips`` accelerator chips at once, in one zone, for as long as it
takes to train on ``training_tokens``. Its life is a small state machine::

    PENDING ──▶ PLACED ──▶ RUNNING ──▶ SUCCEEDED
       │           │          └──────▶ FAILED
       └───────────┴──────────┴──────▶ CANCELLED

Every change of a job increases its ``revision`` by one and is published as a :class:`JobEvent` whose
``sequence`` increases across all jobs of one store (one database for the PostgreSQL store).
Protobuf types never appear here: ``router/convert/jobs.py`` converts between the two.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fleet.types import Priority


class JobState(enum.Enum):
    """Where a job is in its life; SUCCEEDED, FAILED and CANCELLED are final."""

    PENDING = "pending"  # accepted, waiting for a gang of accelerators
    PLACED = "placed"  # a gang has been assigned
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: The transitions a store accepts; every other (from, to) pair, including staying in a state, is refused.
LEGAL_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        JobState.PENDING: frozenset({JobState.PLACED, JobState.CANCELLED}),
        JobState.PLACED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
        JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
        JobState.SUCCEEDED: frozenset(),
        JobState.FAILED: frozenset(),
        JobState.CANCELLED: frozenset(),
    }
)

#: Reason of a newly submitted job while no gang placer runs.
PENDING_REASON_NO_PLACER = "waiting for gang placement (not enabled)"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asked for (validated at the edge before it gets here).

    ``allowed_accelerator_kinds`` empty means any kind that can train; ``max_usd_per_hour`` 0 means no
    limit; ``zone`` empty means any zone (a gang never spans zones).
    """

    model: str
    tenant: str
    priority: Priority
    chips: int  # accelerator chips needed at once, >= 1
    allowed_accelerator_kinds: tuple[str, ...]
    training_tokens: int  # tokens to train on, >= 0
    max_usd_per_hour: float  # most the tenant pays per hour for the whole gang, US dollars
    zone: str


@dataclass(frozen=True, slots=True)
class Job:
    """One job at one revision. ``job_id`` is assigned by the store; times are unix seconds."""

    job_id: str
    idempotency_key: str
    spec: JobSpec
    state: JobState
    reason: str  # why the job is in its state, for people
    assigned_instances: tuple[str, ...]  # the gang's instances once placed
    submitted_at_s: float
    updated_at_s: float
    revision: int  # 1 when submitted, +1 on every change


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job as it became at one change. ``sequence`` increases across all jobs of a store."""

    job: Job
    sequence: int
