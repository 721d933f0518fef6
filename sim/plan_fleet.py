"""``turnout plan``'s data: candidate configurations with their capacity per bucket, and the fleet file.

Capacity of one instance for one bucket
=======================================
A candidate configuration is (model, instance type, TP degree, precision); one instance hosts
``chips / tp_degree`` replicas of the model. For a workload bucket b with SLO (TTFT, TPOT):

* **performance model** (default): one replica's SLO-feasible rate is
  :func:`policies.capacity.class_capacity` of the configuration's serving profile
  (:meth:`fleet.perf.PerformanceModel.profile`, measured serving profiles of the fleet config included)
  for b's longest request (``WorkloadBucket.longest_*``) and mean shape, times the headroom ratio; the
  instance's capacity is that times its replicas. Zero, with the reason, when the model does not fit,
  the longest request exceeds the context, TTFT misses on an idle replica, or no batch meets TPOT.
* **measured profile** (``--profiles``, for the instance types it lists): the row's ``max_rps`` for exactly
  b's ranges, times the headroom ratio; zero when the file has no row for b. The TP degree and precision
  are the row's, else the smallest TP degree at which the model fits in memory at the first candidate
  precision the instance runs (what ``--fleet-out`` deploys).

Step budget
===========
An engine prefills prompts in chunks beside its decoding sequences, at most ``max_batched_tokens``
tokens a step (vLLM's ``max_num_batched_tokens``). A step carrying a chunk of ``C`` tokens of a prompt of
``N`` tokens lasts about the decode step plus ``C / N`` of that prompt's prefill, and every sequence
decoding meanwhile waits for it. On silicon whose prefill is slow a full default chunk outlasts the TPOT
target by itself (a 2048-token chunk of a 7,000-token prompt: 190-730 ms on trn1 at TP 16-4, against
about 45 ms on an H100), and a short answer that decodes beside one or two such steps misses its TPOT.
Each modelled configuration therefore gets the largest budget of :data:`STEP_BUDGETS` whose step,
carrying a full chunk of the workload's longest prompt beside one decoding sequence, still meets the
tightest TPOT target of the workload (:func:`step_budget`): ``tpot(1, N) + (C - 1) ttft(N) / N <= T``. Its
capacities are computed at that budget (more, smaller chunks cost a long prompt more decode steps before
its first token, which :func:`~policies.capacity.class_capacity` counts), and ``--fleet-out`` writes it
as the pool's ``max_batched_tokens``. Measured profiles keep the engine's default: the operator measured
them at their own setting.

Power of one instance: ``chips x chip_tdp_w`` whenever it is on with load (catalog rows, with their
sources; Neuron TDPs and idle power are marked estimates there): an engine with work is busy and draws its
full power, as in the router's planner (``policies.capacity``) and the simulator; ``chips x chip_idle_w``
is what it draws idle. Price: the catalog's on-demand price, or an override (``--price`` or the fleet
config's ``catalog.overrides``) with its source.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from fleet.catalog import Catalog, InstanceType
from fleet.perf import PerformanceModel
from fleet.types import DEFAULT_MAX_BATCHED_TOKENS, LatencySlo, Precision, Priority, ServingProfile, ZoneSpec
from policies.capacity import class_capacity
from policies.demand import BucketBounds, ClassDemand, classify
from policies.sizing import SizingClass, SizingOption, SizingProblem, SizingResult, SizingZone
from policies.types import TrafficClass
from sim.sizing_inputs import BucketProfiles, Workload, WorkloadBucket

__all__ = [
    "Candidate",
    "CandidateSet",
    "build_candidates",
    "fleet_config_text",
    "pool_name",
    "sizing_problem",
    "step_budget",
    "type_reason",
]

SloFor = Callable[[str, Priority], LatencySlo]

STEP_BUDGETS = (DEFAULT_MAX_BATCHED_TOKENS, 1024, 512)
"""The engine step budgets (``max_batched_tokens``) a configuration may get, largest first: the engine
default, then smaller ones for silicon whose prefill is slow (each above the engine's default limit of 256
sequences decoding at once, which a step must also carry)."""

_BINDING_TEXT = {
    "no_fit": "the model does not fit in memory",
    "context": "the longest request exceeds the context",
    "ttft_idle": "TTFT of the longest prompt misses the SLO even on an idle replica",
    "tpot_idle": "no decode batch meets the TPOT SLO",
    "no_row": "the measured profile has no row for this bucket",
}


@dataclass(frozen=True, slots=True)
class Capacity:
    """Requests/s of one bucket one instance serves within the SLO (headroom included), and why not more
    (``policies.capacity.ClassCapacity.binding``, or "measured" / "no_row"). ``ttft_ms``: idle TTFT of the
    bucket's longest prompt on one replica (performance model only)."""

    requests_per_s: float
    binding: str
    ttft_ms: float | None = None


@dataclass(frozen=True)
class Candidate:
    """One configuration k of the sizing model, with everything the outputs show about it."""

    model: str
    instance_type: str
    accelerator_kind: str
    tp_degree: int
    precision: Precision
    replicas_per_instance: int
    price_usd_per_hour: float
    price_source: str
    price_estimated: bool
    idle_w: float
    max_w: float
    power_source: str
    capacity: Mapping[str, Capacity]  # bucket name -> capacity of one instance
    capacity_source: str  # "performance model: ..." or "measured: FILE"
    max_context_tokens: int
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS  # the engine's tokens per step (step budget)

    @property
    def name(self) -> str:
        return f"{self.model}@{self.instance_type}/tp{self.tp_degree}/{self.precision.value}"


@dataclass(frozen=True)
class CandidateSet:
    """The candidate configurations, and per instance type why it has none (if so)."""

    candidates: tuple[Candidate, ...]
    instance_types: tuple[str, ...]  # every type considered, in the order asked
    excluded: Mapping[str, str]  # instance type -> why it has no candidate configuration

    def of_type(self, instance_type: str) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.instance_type == instance_type)


def _tp_choices(instance: InstanceType, allowed: Sequence[int] | None) -> list[int]:
    chips = instance.chips
    return [t for t in range(1, chips + 1) if chips % t == 0 and (allowed is None or t in allowed)]


def _candidate(
    instance: InstanceType,
    model: str,
    tp: int,
    precision: Precision,
    capacity: Mapping[str, Capacity],
    capacity_source: str,
    context: int,
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
) -> Candidate:
    """A candidate with the instance's catalog price and power (module docstring)."""
    tdp_src = instance.sources.get("chip_tdp_w", "?")
    idle_src = instance.sources.get("chip_idle_w", "?")
    return Candidate(
        model=model,
        instance_type=instance.name,
        accelerator_kind=instance.accelerator_kind,
        tp_degree=tp,
        precision=precision,
        replicas_per_instance=instance.chips // tp,
        price_usd_per_hour=instance.price_usd_per_hour,
        price_source=instance.sources.get("price_usd_per_hour", ""),
        price_estimated="price_usd_per_hour" in instance.estimated_fields,
        idle_w=instance.chips * instance.chip_idle_w,
        max_w=instance.chips * instance.chip_tdp_w,
        power_source=(
            f"{instance.chips} x chip_tdp_w {instance.chip_tdp_w:g} W [{tdp_src}]; "
            f"{instance.chips} x chip_idle_w {instance.chip_idle_w:g} W [{idle_src}]"
        ),
        capacity=MappingProxyType(dict(capacity)),
        capacity_source=capacity_source,
        max_context_tokens=context,
        max_batched_tokens=max_batched_tokens,
    )


def _fits(
    performance: PerformanceModel, model: str, itype: str, tp: int, precision: Precision, ctx: int
) -> bool:
    try:
        return performance.roofline(model, itype, tp, precision, ctx).fits
    except ValueError:
        return False


def _measured_candidate(
    instance: InstanceType,
    model: str,
    buckets: Sequence[WorkloadBucket],
    measured: BucketProfiles,
    performance: PerformanceModel,
    runnable: Sequence[Precision],
    context: int,
    headroom_ratio: float,
) -> Candidate | str:
    """The candidate a measured profile gives for ``model`` on ``instance``, or why there is none."""
    rows = measured.rows_for(instance.name, model)
    if not rows:
        return f"{measured.origin} has no row for {model}"
    precision = rows[0].precision or runnable[0]
    tp = rows[0].tp_degree
    if tp is None:
        tp = next(
            (
                t
                for t in _tp_choices(instance, None)
                if _fits(performance, model, instance.name, t, precision, context)
            ),
            None,
        )
        if tp is None:
            return (
                f"{model} fits no TP degree of {instance.name} at {precision.value} with a {context}-token "
                "context; give tp_degree in the measured profile"
            )
    capacity: dict[str, Capacity] = {}
    for b in buckets:
        row = measured.lookup(instance.name, model, b.ranges)
        capacity[b.name] = (
            Capacity(headroom_ratio * row.max_rps, "measured") if row is not None else Capacity(0.0, "no_row")
        )
    return _candidate(instance, model, tp, precision, capacity, f"measured: {measured.origin}", context)


def step_budget(profile: ServingProfile, longest_input_tokens: int, tpot_ms: float) -> int:
    """The engine's tokens per step for a configuration (module docstring, "Step budget"): the largest of
    :data:`STEP_BUDGETS` whose step, carrying a full chunk of the longest prompt beside one decoding
    sequence, meets the TPOT target; the smallest when none does."""
    n = max(1, longest_input_tokens)
    chunk_ms_per_token = float(profile.ttft_ms(n)) / n
    decode_ms = float(profile.tpot_ms(1, n))
    for budget in STEP_BUDGETS:
        if decode_ms + chunk_ms_per_token * (budget - 1) <= tpot_ms:
            return budget
    return STEP_BUDGETS[-1]


def _modelled_candidates(
    instance: InstanceType,
    model: str,
    buckets: Sequence[WorkloadBucket],
    workload: Workload,
    performance: PerformanceModel,
    slo_for: SloFor,
    runnable: Sequence[Precision],
    tp_choices: Sequence[int] | None,
    context: int,
    headroom_ratio: float,
) -> tuple[list[Candidate], list[str]]:
    """The candidates the performance model gives for ``model`` on ``instance``, and why others are not."""
    found: list[Candidate] = []
    why_not: list[str] = []
    longest_input = max((b.longest_input_tokens for b in buckets), default=1)
    tightest_tpot_ms = min((slo_for(model, b.priority).tpot_ms for b in buckets), default=math.inf)
    for tp in _tp_choices(instance, tp_choices):
        replicas = instance.chips // tp
        for precision in runnable:
            try:
                profile = performance.profile(model, instance.name, tp, precision, context)
            except ValueError as exc:
                why_not.append(str(exc).partition(": ")[2] or str(exc))
                continue
            if not profile.fits:
                continue
            budget = step_budget(profile, longest_input, tightest_tpot_ms)
            capacity: dict[str, Capacity] = {}
            for b in buckets:
                cls = TrafficClass(model, b.longest_input_tokens, b.longest_output_tokens, b.priority)
                demand = ClassDemand(
                    rate_per_s=workload.rate_of(b),
                    mean_input_tokens=b.mean_input_tokens,
                    mean_output_tokens=max(1.0, b.mean_output_tokens),
                    slo=slo_for(model, b.priority),
                )
                cc = class_capacity(
                    profile,
                    cls,
                    demand,
                    max_context_tokens=context,
                    max_batched_tokens=budget,
                    headroom_ratio=headroom_ratio,
                )
                capacity[b.name] = Capacity(
                    cc.requests_per_s * replicas, cc.binding, profile.ttft_ms(b.longest_input_tokens)
                )
            if any(c.requests_per_s > 0 for c in capacity.values()):
                source = f"performance model: {profile.source}"
                found.append(_candidate(instance, model, tp, precision, capacity, source, context, budget))
            else:
                why_not.append(_zero_reason(capacity))
    if not found and not why_not:
        why_not.append(
            f"{model} fits no TP degree of {instance.name} ({instance.chips} chips) at "
            f"{'/'.join(p.value for p in runnable)} with a {context}-token context"
        )
    return found, why_not


def build_candidates(
    workload: Workload,
    *,
    catalog: Catalog,
    performance: PerformanceModel,
    slo_for: SloFor,
    instance_types: Sequence[str],
    precisions: Sequence[Precision],
    tp_choices: Sequence[int] | None,
    max_context_tokens: int | None,
    headroom_ratio: float,
    measured: BucketProfiles | None = None,
) -> CandidateSet:
    """Every configuration of the given instance types that can serve some bucket (module docstring).

    Configurations whose model does not fit, or that serve no bucket of the workload, are left out; an
    instance type left with none gets the reason in ``excluded``.
    """
    candidates: list[Candidate] = []
    excluded: dict[str, str] = {}
    measured_types = set(measured.instance_types) if measured is not None else set()
    for itype in instance_types:
        instance = catalog.instance(itype)
        runnable = [p for p in precisions if p in instance.precisions]
        if not instance.can_serve:
            excluded[itype] = f"{instance.accelerator_kind} cannot serve (catalog)"
            continue
        if not runnable:
            supported = ", ".join(sorted(p.value for p in instance.precisions))
            excluded[itype] = f"runs none of the precisions asked for (supports {supported})"
            continue
        why_not: list[str] = []
        found = 0
        for model in workload.models:
            arch = performance.models.get(model)
            context = arch.max_context_tokens if max_context_tokens is None else max_context_tokens
            buckets = [b for b in workload.buckets if b.model == model and b.share > 0]
            if measured is not None and itype in measured_types:
                made = _measured_candidate(
                    instance, model, buckets, measured, performance, runnable, context, headroom_ratio
                )
                if isinstance(made, str):
                    why_not.append(made)
                else:
                    candidates.append(made)
                    found += 1
                continue
            modelled, reasons = _modelled_candidates(
                instance,
                model,
                buckets,
                workload,
                performance,
                slo_for,
                runnable,
                tp_choices,
                context,
                headroom_ratio,
            )
            candidates.extend(modelled)
            found += len(modelled)
            why_not.extend(reasons)
        if not found:
            excluded[itype] = "; ".join(dict.fromkeys(why_not)) or "no configuration"
    return CandidateSet(
        candidates=tuple(candidates),
        instance_types=tuple(instance_types),
        excluded=MappingProxyType(excluded),
    )


def _zero_reason(capacity: Mapping[str, Capacity]) -> str:
    bindings = sorted({c.binding for c in capacity.values()})
    return "; ".join(_BINDING_TEXT.get(b, b) for b in bindings)


def type_reason(
    candidates: Sequence[Candidate], unserved: Sequence[str], slo_for: SloFor, workload: Workload
) -> str:
    """Why no configuration of one instance type serves the buckets ``unserved``: for each, the best any
    configuration gets (the lowest idle TTFT of its longest prompt against the SLO, or the binding limit)."""
    by_name = {b.name: b for b in workload.buckets}
    parts: list[str] = []
    for name in unserved:
        b = by_name.get(name)
        caps = [(c, c.capacity.get(name)) for c in candidates]
        ttfts = [(cap.ttft_ms, c) for c, cap in caps if cap is not None and cap.ttft_ms is not None]
        bindings = sorted({cap.binding for _, cap in caps if cap is not None})
        if b is not None and bindings == ["ttft_idle"] and ttfts:
            best_ms, best = min(ttfts, key=lambda x: x[0] or math.inf)
            slo = slo_for(b.model, b.priority)
            parts.append(
                f"{name}: TTFT of its longest prompt ({b.longest_input_tokens} tokens) on an idle replica "
                f"is {best_ms:.0f} ms at best (tp {best.tp_degree} {best.precision.value}), SLO "
                f"{slo.ttft_ms:g} ms"
            )
        elif bindings:
            parts.append(f"{name}: {'; '.join(_BINDING_TEXT.get(x, x) for x in bindings)}")
        else:
            parts.append(f"{name}: no configuration")
    return "no configuration serves " + " | ".join(parts)


def sizing_problem(
    workload: Workload, candidates: Sequence[Candidate], zones: Sequence[ZoneSpec], power_share: float = 1.0
) -> SizingProblem:
    """The sizing model's data (``policies.sizing``) for these candidates and zones, each zone's cap
    taken at ``power_share`` of its value (the share the workload's priority may fill)."""
    classes = tuple(
        SizingClass(name=b.name, rate_per_s=workload.rate_of(b)) for b in workload.buckets if b.share > 0
    )
    options = tuple(
        SizingOption(
            name=c.name,
            price_usd_per_hour=c.price_usd_per_hour,
            # An instance serving load is busy and draws its full power (module docstring).
            idle_w=c.max_w,
            dynamic_w=0.0,
            capacity_per_s={n: cap.requests_per_s for n, cap in c.capacity.items()},
        )
        for c in candidates
    )
    return SizingProblem(
        classes=classes,
        options=options,
        zones=tuple(SizingZone(name=z.name, power_cap_w=z.power_cap_w * power_share) for z in zones),
    )


# ---------------------------------------------------------------------------------------------------------
# The fleet file
# ---------------------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def pool_name(zone: str, candidate: Candidate, multi_zone: bool) -> str:
    """A config pool name (lowercase letters, digits, '-'; at most 63 characters)."""
    base = _slug(
        f"{candidate.model}-{candidate.instance_type}-tp{candidate.tp_degree}-{candidate.precision.value}"
    )
    if multi_zone:
        base = f"{_slug(zone)}-{base}"
    return base[:63].rstrip("-")


def static_demand(workload: Workload, bounds: BucketBounds) -> list[dict[str, Any]]:
    """The planned workload as ``planner.demand.static`` entries: one per traffic class of the router's
    length buckets ``bounds`` (buckets of the workload falling in one class are merged: rates added, mean
    lengths rate-weighted), so that the router plans for the demand the fleet was sized for from its
    first second (static demand is a floor that observed traffic may exceed)."""
    merged: dict[str, tuple[TrafficClass, float, float, float]] = {}
    for b in workload.buckets:
        rate = workload.rate_of(b)
        if rate <= 0.0:
            continue
        cls = classify(b.model, round(b.mean_input_tokens), round(b.mean_output_tokens), b.priority, bounds)
        old = merged.get(cls.name)
        if old is None:
            merged[cls.name] = (cls, rate, rate * b.mean_input_tokens, rate * b.mean_output_tokens)
        else:
            merged[cls.name] = (
                cls,
                old[1] + rate,
                old[2] + rate * b.mean_input_tokens,
                old[3] + rate * b.mean_output_tokens,
            )
    out: list[dict[str, Any]] = []
    for name in sorted(merged):
        cls, rate, weighted_in, weighted_out = merged[name]
        out.append(
            {
                "model": cls.model,
                "priority": cls.priority.value,
                "input_tokens": max(1, round(weighted_in / rate)),
                "output_tokens": max(1, round(weighted_out / rate)),
                "rate_per_s": rate,
            }
        )
    return out


def fleet_config_text(
    result: SizingResult,
    candidates: Sequence[Candidate],
    *,
    zones: Sequence[ZoneSpec],
    slo_defaults: Mapping[Priority, LatencySlo],
    slo_for: SloFor,
    workload: Workload,
    catalog_overrides: Mapping[str, Mapping[str, tuple[float, str]]],
    extra_models: Sequence[Mapping[str, Any]],
    profile_paths: Sequence[Path],
    out_path: Path,
    headroom_ratio: float,
    bounds: BucketBounds,
) -> str:
    """A Turnout fleet config (``router.config``) holding the planned mix: the zones, one pool per
    (zone, configuration) with its instance count, the SLO planned for, the price overrides used, and the
    planned workload as the planner's static demand (:func:`static_demand`)."""
    by_name = {c.name: c for c in candidates}
    multi_zone = len(zones) > 1
    pools: list[dict[str, Any]] = []
    for entry in result.mix:
        c = by_name[entry.option]
        pool: dict[str, Any] = {
            "name": pool_name(entry.zone, c, multi_zone),
            "zone": entry.zone,
            "instance_type": c.instance_type,
            "model": c.model,
            "tp_degree": c.tp_degree,
            "precision": c.precision.value,
            "instances": entry.instances,
            "address_template": "{pool}-{index}.serving.svc:8000",
            "telemetry": "none",
        }
        pool["max_context_tokens"] = c.max_context_tokens
        pool["max_batched_tokens"] = c.max_batched_tokens
        pools.append(pool)
    slo_models: dict[str, dict[str, dict[str, float]]] = {}
    for model in workload.models:
        slo_models[model] = {
            p.value: {"ttft_ms": slo_for(model, p).ttft_ms, "tpot_ms": slo_for(model, p).tpot_ms}
            for p in Priority
        }
    data: dict[str, Any] = {}
    if catalog_overrides:
        data["catalog"] = {
            "overrides": {
                itype: {f: {"value": v, "source": s} for f, (v, s) in sorted(fields.items())}
                for itype, fields in sorted(catalog_overrides.items())
            }
        }
    if extra_models:
        data["models"] = [dict(m) for m in extra_models]
    if profile_paths:
        data["profiles"] = [os.path.relpath(p, out_path.resolve().parent) for p in profile_paths]
    data["slo"] = {
        "defaults": {p.value: {"ttft_ms": s.ttft_ms, "tpot_ms": s.tpot_ms} for p, s in slo_defaults.items()},
        "models": slo_models,
    }
    data["zones"] = [{"name": z.name, "region": z.region, "power_cap_w": z.power_cap_w} for z in zones]
    data["pools"] = pools
    data["jobs"] = {"store": "memory", "dsn": None}
    data["planner"] = {
        "headroom_ratio": headroom_ratio,
        "demand": {"static": static_demand(workload, bounds)},
    }
    header = (
        "# A fleet planned by `turnout plan` for the workload below; load it with\n"
        "# `turnout serve --config` or `turnout simulate --fleet`.\n"
        f"#   workload: {workload.source}; {workload.rate_per_s:.3f} req/s ({workload.rate_basis})\n"
        f"#   plan:     {result.price_usd_per_hour:.2f} USD/h, {result.instances} instance(s), "
        f"status {result.status}\n"
        "# Pools say `telemetry: none` and placeholder addresses: point address_template (and\n"
        "# metrics_url_template, with telemetry: required) at the real model servers before serving\n"
        "# traffic.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=110)
