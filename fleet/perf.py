"""Performance and power model: predicted behaviour of one endpoint class.

An endpoint class is (model, instance type, tensor-parallel degree ``tp`` in chips, precision). For each
class :class:`PerformanceModel` builds a :class:`RooflineProfile` (or returns a measured profile that
overrides it, see :mod:`fleet.measured`); both implement :class:`fleet.types.ServingProfile`.

The roofline, per replica of ``tp`` chips. ``BW`` and ``F`` are the peak memory bandwidth and dense
FLOP/s of one chip at the serving precision (catalog); the family's efficiency factors say what share of
them a serving stack achieves: ``e_w`` streaming weights, ``e_kv`` reading the KV cache, ``e_mm`` in
matmuls, ``e_att`` in attention; ``o_dec``, ``o_pre`` are fixed times per layer; ``L`` layers, ``A`` =
heads x head_dim.

* Memory fit. ``usable = tp x memory_per_chip - ceil(tp x memory_per_chip x reserve)`` with
  ``reserve`` = :data:`MEMORY_RESERVE_FRACTION` (activations, runtime, fragmentation). The class fits when
  ``weights + kv_bytes_per_token x max_context_tokens <= usable`` (integers: exact at the boundary).
  ``kv_capacity_tokens = (usable - weights) // kv_bytes_per_token``.
* Decode step: one output token for each of ``b`` sequences at mean context ``c``::

      memory  = weights / (e_w x BW x tp) + b x c x kv_bytes_per_token / (e_kv x BW x tp)
      compute = b x 2 x matmul_params / (e_mm x F x tp) + b x c x 4 x L x A / (e_att x F x tp)
      tpot    = max(memory, compute) + o_dec x L

* Prefill of ``n`` own tokens behind ``q`` queued prefill tokens. Queued prompts are costed like the
  request's own (same length, causal attention: ``n`` tokens attend to ``n / 2`` keys on average)::

      compute = (n + q) x (2 x matmul_params / (e_mm x F x tp) + n x 2 x L x A / (e_att x F x tp))
      ttft    = max(weights / (e_w x BW x tp), compute) + o_pre x L

* Power: ``power(u) = idle + (max - idle) x u`` with ``max = tp x chip_tdp_w``, ``idle = tp x chip_idle_w``
  (catalog figures; Neuron TDPs and the idle fraction are marked estimates there).

``matmul_params`` is the parameter count less the input embedding (a lookup, not a matmul). KV cache is
stored in bf16 (2 bytes per element) for bf16 and int8 serving and in fp8 (1 byte) for fp8 and fp4
serving, as the FP8/FP4 checkpoints in the published benchmarks do. Attention and KV reads get their own
factors because the published Neuron tables show them running far below the matmul and weight-streaming
rates (TTFT grows almost quadratically with prompt length; TPOT grows steeply with batch x context).

The factors (:class:`FamilyEfficiency`) are fitted per family to the published benchmark rows in
``fleet/data/throughput.csv`` by :mod:`fleet.calibration`; :func:`default_performance_model` fits them on
every usable row. Families with no published rows use :data:`PRIOR_EFFICIENCY`.

Speed: profiles precompute every constant and are cached per class; ``tpot_ms`` and ``ttft_ms`` are a
handful of float operations (well under a microsecond each on a current CPU).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from fleet.catalog import Catalog, InstanceType
from fleet.models import ModelArch, ModelRegistry
from fleet.types import Precision, ServingProfile

if TYPE_CHECKING:
    from fleet.measured import MeasuredProfile

MEMORY_RESERVE_FRACTION = 0.10
"""Share of device memory kept free of weights and KV cache (activations, runtime, fragmentation)."""

_KV_BYTES_PER_ELEMENT: Mapping[Precision, float] = MappingProxyType(
    {Precision.BF16: 2.0, Precision.INT8: 2.0, Precision.FP8: 1.0, Precision.FP4: 1.0}
)


def kv_bytes_per_element(precision: Precision) -> float:
    """Bytes per KV-cache element when serving at ``precision`` (see the module docstring)."""
    return _KV_BYTES_PER_ELEMENT[precision]


@dataclass(frozen=True, slots=True)
class FamilyEfficiency:
    """What an accelerator family achieves with its usual serving stack, relative to its peak figures.

    Ratios in (0, 1] of peak: ``weight_bandwidth_ratio`` (streaming weights), ``kv_bandwidth_ratio``
    (reading the KV cache in decode), ``matmul_flops_ratio`` (dense matmuls), ``attention_flops_ratio``
    (attention score and value products). Fixed times per layer: ``decode_overhead_ms_per_layer`` per
    decode step, ``prefill_overhead_ms_per_layer`` per prefill (kernel launches, tensor-parallel
    collectives, host work). ``source`` says how the values were obtained.
    """

    weight_bandwidth_ratio: float
    kv_bandwidth_ratio: float
    matmul_flops_ratio: float
    attention_flops_ratio: float
    decode_overhead_ms_per_layer: float
    prefill_overhead_ms_per_layer: float
    source: str

    RATIOS = ("weight_bandwidth_ratio", "kv_bandwidth_ratio", "matmul_flops_ratio", "attention_flops_ratio")
    OVERHEADS = ("decode_overhead_ms_per_layer", "prefill_overhead_ms_per_layer")

    def __post_init__(self) -> None:
        for name in self.RATIOS:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and 0 < v <= 1):
                raise ValueError(f"{name}: must be in (0, 1], got {v!r}")
        for name in self.OVERHEADS:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: must be finite and >= 0, got {v!r}")


PRIOR_EFFICIENCY = FamilyEfficiency(
    weight_bandwidth_ratio=0.7,
    kv_bandwidth_ratio=0.5,
    matmul_flops_ratio=0.5,
    attention_flops_ratio=0.3,
    decode_overhead_ms_per_layer=0.02,
    prefill_overhead_ms_per_layer=0.1,
    source="prior (not fitted: no published rows for this family)",
)
"""Starting point of every fit and the value for families without published rows. An assumption, not a
measurement: serving stacks commonly stream weights at well over half of peak bandwidth, reach about half
of peak dense FLOP/s in matmuls and less in attention and KV reads; per-layer overheads of tens of
microseconds per decode step."""


class RooflineProfile:
    """The roofline prediction for one endpoint class; implements :class:`fleet.types.ServingProfile`.

    Inputs outside the domain are clamped, not rejected (the per-request path validates at the edge):
    ``batch`` below 1 counts as 1, negative token counts as 0, utilisation is clamped to [0, 1].
    """

    __slots__ = (
        "_attn_decode_ms",
        "_attn_prefill_ms",
        "_decode_overhead_ms",
        "_fits",
        "_idle_power_w",
        "_kv_bytes_per_token",
        "_kv_capacity_tokens",
        "_kv_ms",
        "_matmul_ms",
        "_max_power_w",
        "_prefill_overhead_ms",
        "_source",
        "_weight_bytes",
        "_weight_ms",
        "efficiency",
        "instance_type",
        "max_context_tokens",
        "model",
        "precision",
        "tp_degree",
        "usable_memory_bytes",
    )

    def __init__(
        self,
        *,
        model: ModelArch,
        instance: InstanceType,
        tp_degree: int,
        precision: Precision,
        efficiency: FamilyEfficiency,
        max_context_tokens: int,
        memory_reserve_fraction: float = MEMORY_RESERVE_FRACTION,
    ) -> None:
        if (
            isinstance(tp_degree, bool)
            or not isinstance(tp_degree, int)
            or not 1 <= tp_degree <= instance.chips
        ):
            raise ValueError(
                f"tp_degree: {instance.name} has {instance.chips} chips; tp_degree must be an integer "
                f"1..{instance.chips}, got {tp_degree!r}"
            )
        if precision not in instance.precisions:
            supported = ", ".join(sorted(p.value for p in instance.precisions))
            raise ValueError(
                f"precision: {instance.accelerator_kind} ({instance.name}) does not run {precision.value}; "
                f"supported: {supported}"
            )
        bandwidth = instance.memory_bandwidth_bytes_per_s_per_chip
        flops = instance.dense_flops_per_chip(precision)
        if bandwidth is None or flops is None:
            missing = [
                f
                for f, v in (
                    ("memory_bandwidth_bytes_per_s_per_chip", bandwidth),
                    (f"{precision.value}_dense_flops_per_chip", flops),
                )
                if v is None
            ]
            raise ValueError(
                f"instance_type: the catalog has no citable {' or '.join(missing)} for {instance.name}; "
                "supply it under catalog.overrides to model this instance type"
            )
        if max_context_tokens < 1:
            raise ValueError(f"max_context_tokens: must be >= 1, got {max_context_tokens}")
        self.model = model.name
        self.instance_type = instance.name
        self.tp_degree = tp_degree
        self.precision = precision
        self.efficiency = efficiency
        self.max_context_tokens = max_context_tokens

        total_memory = tp_degree * instance.memory_bytes_per_chip
        self.usable_memory_bytes = total_memory - math.ceil(total_memory * memory_reserve_fraction)
        self._weight_bytes = model.weight_bytes(precision)
        self._kv_bytes_per_token = model.kv_bytes_per_token(kv_bytes_per_element(precision))
        self._fits = (
            self._weight_bytes + self._kv_bytes_per_token * max_context_tokens <= self.usable_memory_bytes
        )
        self._kv_capacity_tokens = max(
            0, (self.usable_memory_bytes - self._weight_bytes) // self._kv_bytes_per_token
        )

        bytes_per_ms = bandwidth * tp_degree / 1000.0
        flops_per_ms = flops * tp_degree / 1000.0
        matmul_flops_per_token = 2.0 * (model.parameters - model.vocab_size * model.hidden_size)
        e = efficiency
        self._weight_ms = self._weight_bytes / (e.weight_bandwidth_ratio * bytes_per_ms)
        self._kv_ms = self._kv_bytes_per_token / (e.kv_bandwidth_ratio * bytes_per_ms)  # per token of context
        self._matmul_ms = matmul_flops_per_token / (e.matmul_flops_ratio * flops_per_ms)  # per token
        attention_flops_per_ms = e.attention_flops_ratio * flops_per_ms
        # Attention per token of context in decode, and per (token x prompt length) in prefill.
        self._attn_decode_ms = 4.0 * model.layers * model.attention_width / attention_flops_per_ms
        self._attn_prefill_ms = 2.0 * model.layers * model.attention_width / attention_flops_per_ms
        self._decode_overhead_ms = e.decode_overhead_ms_per_layer * model.layers
        self._prefill_overhead_ms = e.prefill_overhead_ms_per_layer * model.layers

        self._idle_power_w = tp_degree * instance.chip_idle_w
        self._max_power_w = tp_degree * instance.chip_tdp_w
        self._source = f"roofline({instance.family}: {efficiency.source})"

    # --- ServingProfile ------------------------------------------------------------------------

    @property
    def fits(self) -> bool:
        return self._fits

    @property
    def kv_capacity_tokens(self) -> int:
        return self._kv_capacity_tokens

    @property
    def idle_power_w(self) -> float:
        return self._idle_power_w

    @property
    def max_power_w(self) -> float:
        return self._max_power_w

    @property
    def source(self) -> str:
        return self._source

    def ttft_ms(self, input_tokens: int, queued_prefill_tokens: int = 0) -> float:
        n = input_tokens if input_tokens > 1 else 1
        q = queued_prefill_tokens if queued_prefill_tokens > 0 else 0
        compute_ms = (n + q) * (self._matmul_ms + n * self._attn_prefill_ms)
        return (compute_ms if compute_ms > self._weight_ms else self._weight_ms) + self._prefill_overhead_ms

    def tpot_ms(self, batch: int, context_tokens: int) -> float:
        b = batch if batch > 1 else 1
        c = context_tokens if context_tokens > 0 else 0
        memory_ms = self._weight_ms + b * c * self._kv_ms
        compute_ms = b * (self._matmul_ms + c * self._attn_decode_ms)
        return (memory_ms if memory_ms > compute_ms else compute_ms) + self._decode_overhead_ms

    def max_batch_for_tpot(self, tpot_ms: float, context_tokens: int) -> int:
        c = max(int(context_tokens), 1)
        by_memory = self._kv_capacity_tokens // c
        budget_ms = tpot_ms - self._decode_overhead_ms
        if by_memory < 1 or not budget_ms > 0:  # also catches a NaN target
            return 0
        if math.isinf(budget_ms):
            return by_memory
        by_bandwidth = (budget_ms - self._weight_ms) / (c * self._kv_ms)
        by_compute = budget_ms / (self._matmul_ms + c * self._attn_decode_ms)
        b = int(max(0.0, min(float(by_memory), by_bandwidth, by_compute)))
        # Float rounding at the boundary: settle on the exact largest b with tpot(b) <= target.
        while b > 0 and self.tpot_ms(b, c) > tpot_ms:
            b -= 1
        while b < by_memory and self.tpot_ms(b + 1, c) <= tpot_ms:
            b += 1
        return b

    def power_w(self, utilization_ratio: float) -> float:
        u = utilization_ratio if utilization_ratio > 0.0 else 0.0
        if u > 1.0:
            u = 1.0
        return self._idle_power_w + (self._max_power_w - self._idle_power_w) * u

    # --- beyond the protocol ---------------------------------------------------------------------

    @property
    def weight_bytes(self) -> int:
        return self._weight_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        return self._kv_bytes_per_token

    @property
    def decode_overhead_ms(self) -> float:
        return self._decode_overhead_ms

    @property
    def prefill_overhead_ms(self) -> float:
        return self._prefill_overhead_ms

    def decode_components_ms(self, batch: int, context_tokens: int) -> tuple[float, float, float, float]:
        """(weights, KV reads, matmuls, attention) times of one decode step, overhead excluded:
        ``tpot_ms == max(w + kv, mm + att) + decode_overhead_ms``."""
        b = batch if batch > 1 else 1
        c = context_tokens if context_tokens > 0 else 0
        return self._weight_ms, b * c * self._kv_ms, b * self._matmul_ms, b * c * self._attn_decode_ms

    def prefill_components_ms(
        self, input_tokens: int, queued_prefill_tokens: int = 0
    ) -> tuple[float, float, float, float]:
        """(weights, KV reads = 0, matmuls, attention) times of a prefill, overhead excluded:
        ``ttft_ms == max(w + kv, mm + att) + prefill_overhead_ms``."""
        n = input_tokens if input_tokens > 1 else 1
        q = queued_prefill_tokens if queued_prefill_tokens > 0 else 0
        return self._weight_ms, 0.0, (n + q) * self._matmul_ms, (n + q) * n * self._attn_prefill_ms

    def steady_state_components_ms(
        self, batch: int, input_tokens: int, output_tokens: int
    ) -> tuple[float, float, float, float]:
        """(weights, KV reads, matmuls, attention) times of a steady-state step (see
        :meth:`steady_state_step_ms`), overhead excluded."""
        b = batch if batch > 1 else 1
        n = input_tokens if input_tokens > 0 else 0
        o = output_tokens if output_tokens > 1 else 1
        c = n + o / 2.0
        arrivals = b / o
        return (
            self._weight_ms,
            b * c * self._kv_ms,
            (b + arrivals * n) * self._matmul_ms,
            b * c * self._attn_decode_ms + arrivals * n * n * self._attn_prefill_ms,
        )

    def steady_state_step_ms(self, batch: int, input_tokens: int, output_tokens: int) -> float:
        """Decode step time of a continuously batched replica in steady state.

        ``batch`` sequences decode at mean context ``input + output / 2``; to keep the batch full, the
        prompts of the ``batch / output`` sequences that finish each step are prefilled in the same step
        (chunked prefill), adding their FLOPs. Output throughput is ``batch / step``.
        """
        w, kv, mm, att = self.steady_state_components_ms(batch, input_tokens, output_tokens)
        return max(w + kv, mm + att) + self._decode_overhead_ms

    def __repr__(self) -> str:
        return (
            f"RooflineProfile({self.model}, {self.instance_type}, tp={self.tp_degree}, "
            f"{self.precision.value}, fits={self._fits})"
        )


ProfileKey = tuple[str, str, int, Precision]


class PerformanceModel:
    """Builds and caches serving profiles for endpoint classes.

    ``efficiency`` maps accelerator family (``nvidia-hopper``, ``nvidia-blackwell``, ``neuron-v2``,
    ``neuron-v3``, ...) to its :class:`FamilyEfficiency`; missing families use :data:`PRIOR_EFFICIENCY`.
    Profiles are immutable and cached per (model, instance type, tp, precision, max context).
    """

    def __init__(
        self,
        catalog: Catalog,
        models: ModelRegistry,
        efficiency: Mapping[str, FamilyEfficiency] | None = None,
        *,
        memory_reserve_fraction: float = MEMORY_RESERVE_FRACTION,
    ) -> None:
        if not 0 <= memory_reserve_fraction < 1:
            raise ValueError(f"memory_reserve_fraction: must be in [0, 1), got {memory_reserve_fraction!r}")
        self.catalog = catalog
        self.models = models
        self.efficiency: Mapping[str, FamilyEfficiency] = MappingProxyType(dict(efficiency or {}))
        self.memory_reserve_fraction = memory_reserve_fraction
        self._measured: Mapping[ProfileKey, MeasuredProfile] = MappingProxyType({})
        self._cache: dict[tuple[str, str, int, Precision, int | None], ServingProfile] = {}
        self._lock = threading.Lock()

    def efficiency_for(self, family: str) -> FamilyEfficiency:
        return self.efficiency.get(family, PRIOR_EFFICIENCY)

    def roofline(
        self,
        model: str,
        instance_type: str,
        tp_degree: int,
        precision: Precision,
        max_context_tokens: int | None = None,
    ) -> RooflineProfile:
        """The roofline profile of a class, ignoring measured profiles (not cached).

        Raises ``KeyError`` for an unknown model or instance type (listing the known names) and
        ``ValueError`` for an impossible ``tp_degree``, an unsupported precision, a catalog lacking the
        figures the roofline needs, or ``max_context_tokens`` outside 1..the model's context length.
        """
        arch = self.models.get(model)
        instance = self.catalog.instance(instance_type)
        context = arch.max_context_tokens if max_context_tokens is None else max_context_tokens
        if not 1 <= context <= arch.max_context_tokens:
            raise ValueError(
                f"max_context_tokens: must be 1..{arch.max_context_tokens} for {arch.name}, got {context}"
            )
        return RooflineProfile(
            model=arch,
            instance=instance,
            tp_degree=tp_degree,
            precision=precision,
            efficiency=self.efficiency_for(instance.family),
            max_context_tokens=context,
            memory_reserve_fraction=self.memory_reserve_fraction,
        )

    def profile(
        self,
        model: str,
        instance_type: str,
        tp_degree: int,
        precision: Precision,
        max_context_tokens: int | None = None,
    ) -> ServingProfile:
        """The profile of a class: the measured one if supplied, else the roofline. Cached.

        ``max_context_tokens`` (default: the model's) is the longest sequence the class must hold; it
        decides ``fits``. Errors as for :meth:`roofline`.
        """
        key = (model, instance_type, tp_degree, precision, max_context_tokens)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        roofline = self.roofline(model, instance_type, tp_degree, precision, max_context_tokens)
        measured = self._measured.get((model, instance_type, tp_degree, precision))
        result: ServingProfile = roofline if measured is None else measured.with_fallback(roofline)
        with self._lock:
            return self._cache.setdefault(key, result)

    def with_measured(self, measured_profiles: Iterable[MeasuredProfile]) -> PerformanceModel:
        """A model in which each measured class overrides the roofline (capacity, fit and power still
        come from the roofline). Raises ``ValueError`` naming the profile's source for an unknown
        model or instance type, an impossible class, or two profiles for the same class."""
        out = PerformanceModel(
            self.catalog, self.models, self.efficiency, memory_reserve_fraction=self.memory_reserve_fraction
        )
        table: dict[ProfileKey, MeasuredProfile] = dict(self._measured)
        for mp in measured_profiles:
            key = (mp.model, mp.instance_type, mp.tp_degree, mp.precision)
            try:
                self.roofline(*key)
            except KeyError as e:
                raise ValueError(f"{mp.origin}: {e.args[0]}") from None
            except ValueError as e:
                raise ValueError(f"{mp.origin}: {e}") from None
            if key in table and table[key] is not mp:
                raise ValueError(
                    f"{mp.origin}: a measured profile for {mp.model} on {mp.instance_type} tp={mp.tp_degree} "
                    f"{mp.precision.value} is already loaded from {table[key].origin}"
                )
            table[key] = mp
        out._measured = MappingProxyType(table)
        return out


_FIT_CACHE: dict[str, Mapping[str, FamilyEfficiency]] = {}
_FIT_LOCK = threading.Lock()


def _fit_inputs(catalog: Catalog, models: ModelRegistry) -> str:
    """Everything the fit reads from the catalog and the registry, as a cache key."""
    specs = [
        (t.name, t.family, t.chips, t.memory_bytes_per_chip, t.memory_bandwidth_bytes_per_s_per_chip,
         t.bf16_dense_flops_per_chip, t.fp8_dense_flops_per_chip, t.fp4_dense_flops_per_chip,
         tuple(sorted(p.value for p in t.precisions)))
        for _, t in sorted(catalog.instance_types.items())
    ]  # fmt: skip
    return repr((specs, sorted(models.models.items())))


def default_performance_model(catalog: Catalog, models: ModelRegistry) -> PerformanceModel:
    """A :class:`PerformanceModel` with efficiencies fitted on every usable published row.

    Deterministic; the fit (about a second) is cached per process for identical catalog figures and
    model registry."""
    # Imported here: fleet.calibration builds on this module.
    from fleet.calibration import fit_efficiency, load_published_rows

    key = _fit_inputs(catalog, models)
    with _FIT_LOCK:
        efficiency = _FIT_CACHE.get(key)
        if efficiency is None:
            rows = load_published_rows(models, catalog)
            efficiency = _FIT_CACHE[key] = MappingProxyType(fit_efficiency(rows, catalog, models))
    return PerformanceModel(catalog, models, efficiency)
