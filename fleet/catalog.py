"""The instance catalog: AWS accelerator instance types, their chips, prices and power, with sources.

Data (package ``fleet/data/``, see ``SOURCES.md`` there for provenance and licences):

* ``instances.csv``    one row per instance type: chip count and specs, on-demand price, citations.
* ``accelerators.csv`` one row per accelerator: kind and family names, the unit its vendor states memory
                       in, FP4 compute where published, supported precisions and capabilities (whether it
                       trains, whether it serves). What an accelerator cannot do is data here, not code.
* ``estimates.csv``    clearly marked estimates for figures with no public source (Neuron chip power, the
                       p5e and trn2 on-demand prices, idle power as a fraction of max power), each with its
                       reasoning and the sources it is based on.

Units: memory is converted to bytes using the unit its vendor states (NVIDIA "GB" = 1e9 bytes; AWS Neuron
documentation states GiB = 2**30 bytes), bandwidth to bytes/s, TFLOPS to FLOP/s.

Contract: :func:`load_catalog` returns an immutable :class:`Catalog`. Every numeric field of every
:class:`InstanceType` has an entry in ``sources``; fields whose value is an estimate are listed in
``estimated_fields`` (and their source names the estimate). Config overrides (value, source) replace a
value, its source, and clear its estimate mark.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from types import MappingProxyType

from fleet.types import Precision

GB = 10**9
GIB = 2**30
TERA = 1e12

_MEMORY_UNITS = {"GB": GB, "GiB": GIB}

# Numeric fields that a config override may set, with whether they must be whole numbers.
OVERRIDABLE_FIELDS: Mapping[str, bool] = MappingProxyType(
    {
        "chips": True,
        "memory_bytes_per_chip": True,
        "memory_bandwidth_bytes_per_s_per_chip": False,
        "bf16_dense_flops_per_chip": False,
        "fp8_dense_flops_per_chip": False,
        "fp4_dense_flops_per_chip": False,
        "chip_tdp_w": False,
        "chip_idle_w": False,
        "price_usd_per_hour": False,
    }
)


@dataclass(frozen=True, slots=True)
class Estimate:
    """One row of ``estimates.csv``: a figure with no public source, and why we chose its value.

    ``target_kind`` is ``instance_type``, ``accelerator_kind`` or ``all`` (then ``target`` is ``*``).
    """

    target_kind: str
    target: str
    field: str
    value: float
    unit: str
    reasoning: str
    basis_sources: str

    @property
    def citation(self) -> str:
        where = f"{self.target_kind}={self.target}, {self.field}={self.value:g} {self.unit}"
        return f"ESTIMATE ({where}): {self.reasoning}"


def _empty_sources() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class InstanceType:
    """An EC2 instance type with its accelerator chips. Per-chip figures; ``chips`` per instance.

    ``memory_bandwidth_bytes_per_s_per_chip`` and the FLOP/s fields are ``None`` where no citable figure
    exists (A10G) or the chip has no such mode (FP4 before Blackwell).
    """

    name: str
    accelerator_kind: str
    accelerator_name: str
    family: str
    chips: int
    memory_bytes_per_chip: int
    memory_bandwidth_bytes_per_s_per_chip: float | None
    bf16_dense_flops_per_chip: float | None
    fp8_dense_flops_per_chip: float | None
    chip_tdp_w: float
    chip_idle_w: float
    price_usd_per_hour: float
    can_train: bool
    can_serve: bool
    sources: Mapping[str, str] = field(default_factory=_empty_sources)
    estimated_fields: frozenset[str] = frozenset()
    fp4_dense_flops_per_chip: float | None = None
    precisions: frozenset[Precision] = frozenset()

    @property
    def price_usd_per_chip_hour(self) -> float:
        return self.price_usd_per_hour / self.chips

    def dense_flops_per_chip(self, precision: Precision) -> float | None:
        """Peak dense matmul FLOP/s of one chip at ``precision`` (int8 weights compute in bf16)."""
        if precision is Precision.FP8:
            return self.fp8_dense_flops_per_chip
        if precision is Precision.FP4:
            return self.fp4_dense_flops_per_chip
        return self.bf16_dense_flops_per_chip


@dataclass(frozen=True)
class Catalog:
    """All instance types, by name. Immutable."""

    instance_types: Mapping[str, InstanceType]
    estimates: tuple[Estimate, ...] = ()

    def instance(self, name: str) -> InstanceType:
        """The instance type called ``name``; ``KeyError`` listing the known names otherwise."""
        try:
            return self.instance_types[name]
        except KeyError:
            known = ", ".join(sorted(self.instance_types))
            raise KeyError(f"unknown instance type {name!r}; known: {known}") from None

    def kinds(self) -> frozenset[str]:
        """Accelerator kinds present in the catalog (h100, h200, b200, trn1, trn2, inf2, a10g, l4)."""
        return frozenset(t.accelerator_kind for t in self.instance_types.values())

    def trainable_kinds(self) -> frozenset[str]:
        """Accelerator kinds whose chips can run training jobs (from the ``can_train`` data column)."""
        return frozenset(t.accelerator_kind for t in self.instance_types.values() if t.can_train)

    def of_kind(self, kind: str) -> tuple[InstanceType, ...]:
        """Instance types with accelerator ``kind``, sorted by name."""
        return tuple(t for _, t in sorted(self.instance_types.items()) if t.accelerator_kind == kind)


# ----------------------------------------------------------------------------------------- loading


def _data_text(name: str) -> str:
    return resources.files("fleet").joinpath("data", name).read_text(encoding="utf-8")


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(_data_text(name).splitlines()))


def _opt_float(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def _bool(text: str, where: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"{where}: expected true or false, got {text!r}")
    return value == "true"


def load_estimates() -> tuple[Estimate, ...]:
    """The rows of ``fleet/data/estimates.csv``."""
    return tuple(
        Estimate(
            target_kind=r["target_kind"],
            target=r["target"],
            field=r["field"],
            value=float(r["value"]),
            unit=r["unit"],
            reasoning=r["reasoning"],
            basis_sources=r["basis_sources"],
        )
        for r in _rows("estimates.csv")
    )


@dataclass(frozen=True, slots=True)
class _Accelerator:
    kind: str
    family: str
    memory_unit_bytes: int
    fp4_dense_flops_per_chip: float | None
    precisions: frozenset[Precision]
    can_train: bool
    can_serve: bool
    source: str


def _load_accelerators() -> dict[str, _Accelerator]:
    out: dict[str, _Accelerator] = {}
    for i, r in enumerate(_rows("accelerators.csv"), start=2):
        where = f"fleet/data/accelerators.csv:{i}"
        fp4 = _opt_float(r["fp4_dense_tflops_per_chip"])
        out[r["accelerator"]] = _Accelerator(
            kind=r["kind"],
            family=r["family"],
            memory_unit_bytes=_MEMORY_UNITS[r["memory_unit"]],
            fp4_dense_flops_per_chip=None if fp4 is None else fp4 * TERA,
            precisions=frozenset(Precision(p) for p in r["precisions"].split()),
            can_train=_bool(r["can_train"], where),
            can_serve=_bool(r["can_serve"], where),
            source=r["source"],
        )
    return out


def _estimate_for(
    estimates: tuple[Estimate, ...], instance_type: str, kind: str, field_name: str
) -> Estimate | None:
    for e in estimates:
        if e.field != field_name:
            continue
        if (e.target_kind == "instance_type" and e.target == instance_type) or (
            e.target_kind == "accelerator_kind" and e.target == kind
        ):
            return e
    return None


def _idle_fraction(estimates: tuple[Estimate, ...]) -> Estimate:
    for e in estimates:
        if e.target_kind == "all" and e.field == "idle_fraction_of_tdp":
            return e
    raise ValueError("fleet/data/estimates.csv has no idle_fraction_of_tdp row")


def _base_instance(
    row: dict[str, str], accel: _Accelerator, estimates: tuple[Estimate, ...]
) -> tuple[InstanceType, Estimate]:
    """One ``instances.csv`` row as an InstanceType, with estimates filling blanks. Idle power is filled
    by the caller (it depends on the final TDP, which an override may change)."""
    name = row["instance_type"]
    specs = row["source_specs"]
    sources: dict[str, str] = {}
    estimated: set[str] = set()

    def filled(field_name: str, csv_value: float | None, csv_source: str) -> float | None:
        if csv_value is not None:
            sources[field_name] = csv_source
            return csv_value
        est = _estimate_for(estimates, name, accel.kind, field_name)
        if est is None:
            sources[field_name] = (
                f"no citable figure ({row['notes']})" if row["notes"] else "no citable figure"
            )
            return None
        sources[field_name] = est.citation
        estimated.add(field_name)
        return est.value

    mem = _opt_float(row["accel_memory_per_chip_gb"])
    if mem is None:
        raise ValueError(f"fleet/data/instances.csv: {name} has no accel_memory_per_chip_gb")
    sources["chips"] = specs
    sources["memory_bytes_per_chip"] = (
        f"{mem:g} {'GiB' if accel.memory_unit_bytes == GIB else 'GB'} per chip: {specs}"
    )
    bw = _opt_float(row["hbm_bw_per_chip_tb_s"])
    bf16 = _opt_float(row["bf16_dense_tflops_per_chip"])
    fp8 = _opt_float(row["fp8_dense_tflops_per_chip"])
    bandwidth = filled("memory_bandwidth_bytes_per_s_per_chip", None if bw is None else bw * TERA, specs)
    bf16_flops = filled("bf16_dense_flops_per_chip", None if bf16 is None else bf16 * TERA, specs)
    fp8_flops = filled("fp8_dense_flops_per_chip", None if fp8 is None else fp8 * TERA, specs)
    if accel.fp4_dense_flops_per_chip is not None:
        sources["fp4_dense_flops_per_chip"] = accel.source
    tdp = filled("chip_tdp_w", _opt_float(row["chip_tdp_w"]), row["source_power"])
    price = filled(
        "price_usd_per_hour", _opt_float(row["on_demand_usd_per_hour_us_east_1"]), row["source_price"]
    )
    if tdp is None or price is None:
        raise ValueError(f"fleet/data: {name} has neither a chip_tdp_w/price nor an estimate for it")
    sources["can_train"] = accel.source
    sources["can_serve"] = accel.source
    inst = InstanceType(
        name=name,
        accelerator_kind=accel.kind,
        accelerator_name=row["accelerator"],
        family=accel.family,
        chips=int(row["accelerator_count"]),
        memory_bytes_per_chip=round(mem * accel.memory_unit_bytes),
        memory_bandwidth_bytes_per_s_per_chip=bandwidth,
        bf16_dense_flops_per_chip=bf16_flops,
        fp8_dense_flops_per_chip=fp8_flops,
        chip_tdp_w=tdp,
        chip_idle_w=0.0,
        price_usd_per_hour=price,
        can_train=accel.can_train,
        can_serve=accel.can_serve,
        sources=sources,
        estimated_fields=frozenset(estimated),
        fp4_dense_flops_per_chip=accel.fp4_dense_flops_per_chip,
        precisions=accel.precisions,
    )
    return inst, _idle_fraction(estimates)


def _validated_override(instance_type: str, field_name: str, spec: object) -> tuple[float, str]:
    where = f"catalog.overrides.{instance_type}.{field_name}"
    if field_name not in OVERRIDABLE_FIELDS:
        known = ", ".join(OVERRIDABLE_FIELDS)
        raise ValueError(f"{where}: unknown catalog field {field_name!r}; overridable fields: {known}")
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise ValueError(f"{where}: expected (value, source)")
    value, source = spec
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.value: must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and field_name != "chip_idle_w"):
        raise ValueError(f"{where}.value: must be a finite number > 0 (chip_idle_w: >= 0), got {value!r}")
    if OVERRIDABLE_FIELDS[field_name] and float(value) != int(value):
        raise ValueError(f"{where}.value: must be a whole number, got {value!r}")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}.source: must be a non-empty string saying where the value comes from")
    return float(value), source.strip()


def load_catalog(overrides: Mapping[str, Mapping[str, tuple[float, str]]] | None = None) -> Catalog:
    """Load the shipped catalog, fill blanks with the marked estimates, then apply config overrides.

    ``overrides[instance_type][field] = (value, source)``; fields are those in
    :data:`OVERRIDABLE_FIELDS`. Raises ``ValueError`` naming the instance type and field for an unknown
    instance type, an unknown field, a non-finite or non-positive value, a fractional value for a whole
    field, an empty source, or an idle power above the max power.
    """
    estimates = load_estimates()
    accelerators = _load_accelerators()
    base: dict[str, tuple[InstanceType, Estimate]] = {}
    for row in _rows("instances.csv"):
        accel = accelerators.get(row["accelerator"])
        if accel is None:
            raise ValueError(
                f"fleet/data/instances.csv: accelerator {row['accelerator']!r} missing from accelerators.csv"
            )
        base[row["instance_type"]] = _base_instance(row, accel, estimates)

    overrides = overrides or {}
    for name in overrides:
        if name not in base:
            known = ", ".join(sorted(base))
            raise ValueError(f"catalog.overrides.{name}: unknown instance type {name!r}; known: {known}")

    result: dict[str, InstanceType] = {}
    for name, (inst, idle_fraction) in sorted(base.items()):
        sources = dict(inst.sources)
        estimated = set(inst.estimated_fields)
        changes: dict[str, float | int] = {}
        for field_name, spec in (overrides.get(name) or {}).items():
            value, source = _validated_override(name, field_name, spec)
            changes[field_name] = int(value) if OVERRIDABLE_FIELDS[field_name] else value
            sources[field_name] = f"override: {source}"
            estimated.discard(field_name)
        if "chip_idle_w" not in changes:
            tdp = float(changes.get("chip_tdp_w", inst.chip_tdp_w))
            changes["chip_idle_w"] = idle_fraction.value * tdp
            sources["chip_idle_w"] = f"{idle_fraction.citation} (of chip_tdp_w {tdp:g} W)"
            estimated.add("chip_idle_w")
        updated = replace(
            inst,
            sources=MappingProxyType(sources),
            estimated_fields=frozenset(estimated),
            **changes,  # type: ignore[arg-type]
        )
        if updated.chip_idle_w > updated.chip_tdp_w:
            raise ValueError(
                f"catalog.overrides.{name}.chip_idle_w: idle power {updated.chip_idle_w:g} W exceeds "
                f"chip_tdp_w {updated.chip_tdp_w:g} W"
            )
        result[name] = updated
    return Catalog(instance_types=MappingProxyType(result), estimates=estimates)


# ----------------------------------------------------------------------------------------- table


def _fmt(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def format_catalog_table(catalog: Catalog) -> str:
    """A human table of the catalog for ``turnout catalog``.

    Columns: instance type, accelerator kind, chips, memory per chip (GB = 1e9 bytes), memory bandwidth
    per chip (TB/s), dense BF16 and FP8 TFLOPS per chip, chip TDP and idle power (W), on-demand price
    (USD/h) and price per chip-hour. ``*`` marks an estimate and ``+`` a config override (see the notes
    below the table); the ``src`` column lists the footnotes citing each row's sources.
    """
    headers = (
        "type", "kind", "chips", "mem GB/chip", "TB/s/chip", "BF16 TFLOPS", "FP8 TFLOPS",
        "TDP W", "idle W", "$/h", "$/chip-h", "src",
    )  # fmt: skip
    footnotes: dict[str, int] = {}

    def ref(source: str) -> int:
        if source not in footnotes:
            footnotes[source] = len(footnotes) + 1
        return footnotes[source]

    def mark(inst: InstanceType, field_name: str, text: str) -> str:
        if field_name in inst.estimated_fields:
            return text + "*"
        if inst.sources.get(field_name, "").startswith("override:"):
            return text + "+"
        return text

    rows: list[tuple[str, ...]] = []
    for name, inst in sorted(catalog.instance_types.items(), key=lambda kv: (kv[1].accelerator_kind, kv[0])):
        refs = sorted(
            {
                ref(inst.sources[f])
                for f in ("chips", "price_usd_per_hour", "chip_tdp_w")
                if f in inst.sources and f not in inst.estimated_fields
            }
        )
        rows.append(
            (
                name,
                inst.accelerator_kind,
                mark(inst, "chips", str(inst.chips)),
                mark(inst, "memory_bytes_per_chip", _fmt(inst.memory_bytes_per_chip, GB, 1)),
                mark(
                    inst,
                    "memory_bandwidth_bytes_per_s_per_chip",
                    _fmt(inst.memory_bandwidth_bytes_per_s_per_chip, TERA, 2),
                ),
                mark(inst, "bf16_dense_flops_per_chip", _fmt(inst.bf16_dense_flops_per_chip, TERA, 1)),
                mark(inst, "fp8_dense_flops_per_chip", _fmt(inst.fp8_dense_flops_per_chip, TERA, 1)),
                mark(inst, "chip_tdp_w", f"{inst.chip_tdp_w:,.0f}"),
                mark(inst, "chip_idle_w", f"{inst.chip_idle_w:,.0f}"),
                mark(inst, "price_usd_per_hour", f"{inst.price_usd_per_hour:,.3f}"),
                mark(inst, "price_usd_per_hour", f"{inst.price_usd_per_chip_hour:,.3f}"),
                ",".join(str(r) for r in refs),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(
            h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    lines.append("")
    lines.append(
        "Memory: NVIDIA states GB (1e9 bytes), AWS Neuron states GiB (2^30 bytes); shown here in GB. "
        "Prices: on-demand, Linux, us-east-1."
    )
    lines.append("* estimate (no public source; fleet/data/estimates.csv):")
    for e in catalog.estimates:
        target = "all accelerators" if e.target_kind == "all" else e.target
        lines.append(f"  - {target} {e.field} = {e.value:g} {e.unit}: {e.reasoning}")
        lines.append(f"    based on: {e.basis_sources}")
    overridden = [
        (name, f, src)
        for name, inst in sorted(catalog.instance_types.items())
        for f, src in sorted(inst.sources.items())
        if src.startswith("override:")
    ]
    if overridden:
        lines.append("+ config override:")
        lines.extend(f"  - {name} {f}: {src}" for name, f, src in overridden)
    lines.append("Sources (src column):")
    lines.extend(f"  [{n}] {source}" for source, n in footnotes.items())
    return "\n".join(lines)
