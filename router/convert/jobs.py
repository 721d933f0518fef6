"""turnout.v1.Jobs messages <-> job domain types; the one place they meet.

The ``*_from_proto`` functions validate every field of a request and raise ``router.errors`` refusals
naming the field by its path in the request (``spec.allowed_accelerator_kinds[2]``) and the rule it
breaks; everything wrong with a request is reported at once. An unknown model is ``NotFound`` listing
the known ones, once the request is otherwise well formed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from fleet.types import Priority
from jobs.types import Job, JobEvent, JobSpec, JobState
from router.convert.timestamps import timestamp_from_seconds
from router.errors import FieldViolation, InvalidArgument, NotFound
from turnout.v1 import common_pb2, jobs_pb2

MAX_IDEMPOTENCY_KEY_CHARS: Final = 128
MAX_TENANT_CHARS: Final = 64
MAX_MODEL_CHARS: Final = 128
MAX_ZONE_CHARS: Final = 64
MAX_JOB_ID_CHARS: Final = 128
MAX_CANCEL_REASON_CHARS: Final = 1024
MAX_CHIPS: Final = 100_000
MAX_PAGE_SIZE: Final = 1000
DEFAULT_PAGE_SIZE: Final = 100
DEFAULT_CANCEL_REASON: Final = "cancelled by the client"

_PRIORITY_FROM_PROTO: Final = {
    common_pb2.PRIORITY_UNSPECIFIED: Priority.STANDARD,  # the contract: unspecified is standard
    common_pb2.PRIORITY_CRITICAL: Priority.CRITICAL,
    common_pb2.PRIORITY_STANDARD: Priority.STANDARD,
    common_pb2.PRIORITY_SHEDDABLE: Priority.SHEDDABLE,
}
_PRIORITY_TO_PROTO: Final = {
    Priority.CRITICAL: common_pb2.PRIORITY_CRITICAL,
    Priority.STANDARD: common_pb2.PRIORITY_STANDARD,
    Priority.SHEDDABLE: common_pb2.PRIORITY_SHEDDABLE,
}
_STATE_TO_PROTO: Final = {
    JobState.PENDING: jobs_pb2.JOB_STATE_PENDING,
    JobState.PLACED: jobs_pb2.JOB_STATE_PLACED,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
_STATE_FROM_PROTO: Final = {v: k for k, v in _STATE_TO_PROTO.items()}


@dataclass(frozen=True, slots=True)
class JobRules:
    """What a submitted spec is checked against (from the fleet's catalog and model registry).

    ``trainable_kinds`` is the subset of ``accelerator_kinds`` that can train; ``zones`` None means zone
    names are not checked (only their form).
    """

    known_models: frozenset[str]
    accelerator_kinds: frozenset[str]
    trainable_kinds: frozenset[str]
    zones: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """A validated List request; ``tenant`` None and empty ``states`` mean no filter."""

    page_size: int
    page_token: str
    tenant: str | None
    states: tuple[JobState, ...]


# --- checks shared by the requests ----------------------------------------------------------------------


def _text_rule(value: str, *, min_chars: int, max_chars: int) -> str | None:
    """The rule an identifier-like string breaks, or None: length bounds, printable characters only."""
    if not min_chars <= len(value) <= max_chars:
        if min_chars == 0:
            return f"must be at most {max_chars} characters (got {len(value)})"
        return f"must be {min_chars} to {max_chars} characters (got {len(value)})"
    if not value.isprintable():
        return "must contain only printable characters (no control or format characters)"
    return None


def _check_text(
    violations: list[FieldViolation], field: str, value: str, *, min_chars: int, max_chars: int
) -> None:
    rule = _text_rule(value, min_chars=min_chars, max_chars=max_chars)
    if rule is not None:
        violations.append(FieldViolation(field, rule))


def _raise_if_any(violations: Sequence[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "(none)"


# --- requests -------------------------------------------------------------------------------------------


def submit_from_proto(request: jobs_pb2.SubmitJobRequest, rules: JobRules) -> tuple[str, JobSpec]:
    """The idempotency key and spec of a Submit request.

    Raises ``InvalidArgument`` listing every malformed field, then ``NotFound`` for an unknown model.
    """
    violations: list[FieldViolation] = []
    _check_text(
        violations,
        "idempotency_key",
        request.idempotency_key,
        min_chars=1,
        max_chars=MAX_IDEMPOTENCY_KEY_CHARS,
    )
    if not request.HasField("spec"):
        violations.append(FieldViolation("spec", "is required"))
        raise InvalidArgument(violations)
    spec = request.spec

    _check_text(violations, "spec.model", spec.model, min_chars=1, max_chars=MAX_MODEL_CHARS)
    _check_text(violations, "spec.tenant", spec.tenant, min_chars=1, max_chars=MAX_TENANT_CHARS)
    priority = _PRIORITY_FROM_PROTO.get(spec.priority)
    if priority is None:
        violations.append(
            FieldViolation(
                "spec.priority",
                f"must be PRIORITY_CRITICAL, PRIORITY_STANDARD, PRIORITY_SHEDDABLE or unspecified "
                f"(got {spec.priority})",
            )
        )
    if not 1 <= spec.chips <= MAX_CHIPS:
        violations.append(FieldViolation("spec.chips", f"must be 1 to {MAX_CHIPS} (got {spec.chips})"))
    if spec.training_tokens < 0:
        violations.append(
            FieldViolation("spec.training_tokens", f"must be >= 0 (got {spec.training_tokens})")
        )
    if not math.isfinite(spec.max_usd_per_hour) or spec.max_usd_per_hour < 0:
        violations.append(
            FieldViolation(
                "spec.max_usd_per_hour",
                f"must be a finite number >= 0, 0 meaning no limit (got {spec.max_usd_per_hour})",
            )
        )
    first_index: dict[str, int] = {}
    for i, kind in enumerate(spec.allowed_accelerator_kinds):
        field = f"spec.allowed_accelerator_kinds[{i}]"
        if kind not in rules.accelerator_kinds:
            shown = kind if len(kind) <= 32 else kind[:32] + "..."
            violations.append(
                FieldViolation(
                    field,
                    f"must be a known accelerator kind: {_names(rules.accelerator_kinds)} (got {shown!r})",
                )
            )
        elif kind not in rules.trainable_kinds:
            violations.append(
                FieldViolation(
                    field,
                    f"must be an accelerator kind that can train: {kind!r} cannot train (catalog); "
                    f"trainable kinds: {_names(rules.trainable_kinds)}",
                )
            )
        elif kind in first_index:
            violations.append(
                FieldViolation(
                    field, f"must not repeat a kind: {kind!r} is already at index {first_index[kind]}"
                )
            )
        else:
            first_index[kind] = i
    if spec.zone:
        rule = _text_rule(spec.zone, min_chars=0, max_chars=MAX_ZONE_CHARS)
        if rule is not None:
            violations.append(FieldViolation("spec.zone", rule))
        elif rules.zones is not None and spec.zone not in rules.zones:
            violations.append(
                FieldViolation(
                    "spec.zone", f"must be empty (any zone) or a known zone: {_names(rules.zones)}"
                )
            )
    _raise_if_any(violations)
    if spec.model not in rules.known_models:
        raise NotFound(
            f"spec.model: unknown model {spec.model!r}; known models: {_names(rules.known_models)}"
        )
    assert priority is not None
    return request.idempotency_key, JobSpec(
        model=spec.model,
        tenant=spec.tenant,
        priority=priority,
        chips=spec.chips,
        allowed_accelerator_kinds=tuple(spec.allowed_accelerator_kinds),
        training_tokens=spec.training_tokens,
        max_usd_per_hour=spec.max_usd_per_hour,
        zone=spec.zone,
    )


def job_id_from_proto(job_id: str, field: str = "job_id") -> str:
    """A well-formed job id (it may still be unknown to the store)."""
    rule = _text_rule(job_id, min_chars=1, max_chars=MAX_JOB_ID_CHARS)
    if rule is not None:
        raise InvalidArgument([FieldViolation(field, rule)])
    return job_id


def get_from_proto(request: jobs_pb2.GetJobRequest) -> str:
    return job_id_from_proto(request.job_id)


def cancel_from_proto(request: jobs_pb2.CancelJobRequest) -> tuple[str, str]:
    """The job id and the reason to record (a default when the client gave none)."""
    violations: list[FieldViolation] = []
    _check_text(violations, "job_id", request.job_id, min_chars=1, max_chars=MAX_JOB_ID_CHARS)
    reason = request.reason
    if len(reason) > MAX_CANCEL_REASON_CHARS:
        violations.append(
            FieldViolation(
                "reason", f"must be at most {MAX_CANCEL_REASON_CHARS} characters (got {len(reason)})"
            )
        )
    elif any(not c.isprintable() and c not in "\t\n" for c in reason):
        violations.append(
            FieldViolation("reason", "must contain only printable characters, tabs and newlines")
        )
    _raise_if_any(violations)
    return request.job_id, reason or DEFAULT_CANCEL_REASON


def list_from_proto(request: jobs_pb2.ListJobsRequest) -> ListQuery:
    """A List request's page size (0 means the default), token and filters.

    The token's content is checked by the store (``jobs.store.BadPageToken``).
    """
    violations: list[FieldViolation] = []
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        violations.append(
            FieldViolation(
                "page_size",
                f"must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE} (got {request.page_size})",
            )
        )
    if request.tenant:
        _check_text(violations, "tenant", request.tenant, min_chars=1, max_chars=MAX_TENANT_CHARS)
    states: list[JobState] = []
    for i, value in enumerate(request.states):
        state = _STATE_FROM_PROTO.get(value)
        if state is None:
            violations.append(
                FieldViolation(
                    f"states[{i}]", f"must be a job state other than JOB_STATE_UNSPECIFIED (got {value})"
                )
            )
        elif state not in states:
            states.append(state)
    if not request.page_token.isascii() or not request.page_token.isprintable():
        violations.append(FieldViolation("page_token", "is not a page token from a previous List response"))
    _raise_if_any(violations)
    return ListQuery(
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        page_token=request.page_token,
        tenant=request.tenant or None,
        states=tuple(states),
    )


def watch_from_proto(request: jobs_pb2.WatchJobsRequest) -> str | None:
    """The job to watch, or None for every job."""
    return job_id_from_proto(request.job_id) if request.job_id else None


# --- responses ------------------------------------------------------------------------------------------


def state_to_proto(state: JobState) -> jobs_pb2.JobState.ValueType:
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> JobState | None:
    """The domain state of a wire value; None for JOB_STATE_UNSPECIFIED or an unknown number."""
    return _STATE_FROM_PROTO.get(value)  # type: ignore[call-overload]


def spec_to_proto(spec: JobSpec) -> jobs_pb2.TrainingJobSpec:
    return jobs_pb2.TrainingJobSpec(
        model=spec.model,
        tenant=spec.tenant,
        priority=_PRIORITY_TO_PROTO[spec.priority],
        chips=spec.chips,
        allowed_accelerator_kinds=spec.allowed_accelerator_kinds,
        training_tokens=spec.training_tokens,
        max_usd_per_hour=spec.max_usd_per_hour,
        zone=spec.zone,
    )


def job_to_proto(job: Job) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        job_id=job.job_id,
        idempotency_key=job.idempotency_key,
        spec=spec_to_proto(job.spec),
        state=_STATE_TO_PROTO[job.state],
        reason=job.reason,
        assigned_instances=job.assigned_instances,
        submitted_at=timestamp_from_seconds(job.submitted_at_s),
        updated_at=timestamp_from_seconds(job.updated_at_s),
        revision=job.revision,
    )


def event_to_proto(event: JobEvent) -> jobs_pb2.JobEvent:
    return jobs_pb2.JobEvent(job=job_to_proto(event.job), sequence=event.sequence)


def list_to_proto(jobs: Collection[Job], next_page_token: str) -> jobs_pb2.ListJobsResponse:
    return jobs_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs], next_page_token=next_page_token)
