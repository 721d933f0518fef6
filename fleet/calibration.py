"""Fitting the performance model's per-family efficiencies to published benchmarks, and reporting the fit.

Data: ``fleet/data/throughput.csv`` (see ``SOURCES.md``): published LLM serving figures for Inferentia2,
Trainium, Trainium2 (AWS Neuron docs), H100, H200, B200 (TensorRT-LLM performance overview, NVIDIA NIM).

Each usable row becomes a :class:`PublishedRow`, predicted under one of three scenarios:

* ``static`` (Neuron tables, trn2 tutorials): ``B`` prompts of ``I`` tokens prefilled together, then
  ``O`` decode steps at batch ``B`` (mean context ``I + O/2``). ``TTFT = ttft_ms(I, queued=(B-1) x I)``,
  ``TPOT = tpot_ms(B, I + O/2)``, ``tokens/s = B x O / (TTFT + O x TPOT)``.
* ``concurrency`` (NIM sweep, vLLM on Neuron): ``c`` closed-loop clients. At most
  ``B = min(c, KV capacity // (I + O), MAX_BATCH_SEQUENCES)`` decode together; a step is
  :meth:`~fleet.perf.RooflineProfile.steady_state_step_ms` (chunked prefill included) and ``TPOT = step``.
  Clients beyond ``B`` wait for a slot: ``slot = (c - B) x O x step / B``. Prompts queue for prefill
  (service time ``S = ttft_ms(I)``) as in an M/D/1 queue: with arrival rate
  ``lambda = c / (slot + T + O x step)`` and ``rho = lambda x S``, the prefill wait is
  ``rho x S / (2 (1 - rho))`` and ``T = S + wait`` is solved in closed form (a quadratic).
  ``TTFT = slot + T``, ``tokens/s = c x O / (TTFT + O x step)``.
* ``offline`` (TensorRT-LLM): all requests queued, engine batch as large as memory allows:
  ``B = min(KV capacity // (I + O), MAX_BATCH_SEQUENCES)``, ``tokens/s = B / step``. Only throughput is
  published for these rows.

Fit: per accelerator family, the four :class:`~fleet.perf.FamilyEfficiency` values minimise the sum over
fit rows and published metrics of ``(ln predicted - ln published)^2`` plus a weak pull
``w x (ln value - ln prior)^2`` toward :data:`~fleet.perf.PRIOR_EFFICIENCY` (``w`` =
:data:`PRIOR_WEIGHT_RATIO` for ratios, :data:`PRIOR_WEIGHT_OVERHEAD` for overheads), so a family with few
rows stays physical. Deterministic Nelder-Mead from the prior; no randomness.

Report (:func:`run_calibration`): rows are split deterministically, stratified by family: rows measured
under identical conditions (the Neuron tables repeat some rows) form one group, groups are ordered by
``sha256(seed | group key)``, and the first ``HOLDOUT_FRACTION`` of each family's groups is held out.
Efficiencies are fitted on the rest only; the held-out rows are predicted once and compared. Nothing is
tuned on the held-out rows.

Rows not used: speculative-decoding rows (not modelled), rows whose model is not in the registry, and
rows whose class cannot hold one request.
"""

from __future__ import annotations

import csv
import hashlib
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fleet.catalog import Catalog, load_catalog
from fleet.models import ModelRegistry, load_models
from fleet.perf import PRIOR_EFFICIENCY, FamilyEfficiency, PerformanceModel, RooflineProfile
from fleet.types import Precision

MAX_BATCH_SEQUENCES = 2048
"""Assumed engine cap on concurrently decoding sequences (TensorRT-LLM's default maximum batch size)."""
HOLDOUT_FRACTION = 0.3
PRIOR_WEIGHT_RATIO = 0.1
"""Pull of each efficiency ratio toward its prior, per unit of squared log distance."""
PRIOR_WEIGHT_OVERHEAD = 0.01
"""Pull of each per-layer overhead toward its prior: weaker, because fixed per-layer costs differ by an
order of magnitude between serving stacks (single-chip CUDA graphs vs. tensor-parallel Neuron)."""
METRICS = ("output_tokens_per_s", "ttft_ms", "tpot_ms")

CAVEATS = (
    "TensorRT-LLM rows are offline maximum throughput (all requests queued, engine batch chosen by the "
    "tool, unpublished): the model assumes the largest batch memory allows (capped at "
    f"{MAX_BATCH_SEQUENCES}); they carry no TTFT/TPOT.",
    "TensorRT-LLM and NIM rows were measured on NVIDIA DGX/HGX systems, mapped to the AWS instance with "
    "the same GPU; not AWS measurements.",
    "NIM rows are a client-concurrency sweep (TTFT/ITL as published, mean or median not stated); "
    "their TTFT is mostly queueing, predicted with an M/D/1 prefill queue and the model's own KV capacity "
    "as the batch limit (the server's real limit is not published).",
    "Neuron inf2/trn1 rows are Neuron SDK 2.18 with Transformers NeuronX (static batching); newer SDKs "
    "are faster. Some Llama-2/3-70B rows appear in both the throughput and latency tables: they share a "
    "split group, so a duplicate never sits on both sides.",
    "trn2 has 3 usable rows (batch 1-2); its efficiencies lean on the prior. Speculative-decoding rows "
    "are excluded.",
    "Rows with a blank weight dtype (vLLM on trn2) are taken as bf16; trn2 tp_degree counts logical "
    "NeuronCores at LNC=2 (4 per chip), trn1/inf2 tp_degree counts NeuronCores (2 per chip).",
    "Some published Neuron throughputs disagree with their own latencies (row 88: 8192 output tokens x "
    "9.9 ms + 1.3 s TTFT implies about 99 tokens/s; 49.6 is published); such rows dominate the maximum "
    "errors. Rows repeated in two Neuron tables count twice in the held-out statistics.",
    "The model's form (six factors per family, the queueing of concurrency rows) was chosen while reading "
    "the whole table; the held-out errors come from a fit that never saw those rows, but the form is not "
    "independent of them.",
)


# ----------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class PublishedRow:
    """One usable row of ``throughput.csv``, normalised (chips, canonical model, precision, scenario)."""

    row_id: int
    source: str
    model: str
    instance_type: str
    family: str
    tp_degree: int  # chips
    precision: Precision
    mode: str  # "static" | "concurrency" | "offline"
    batch: int  # static batch size, client concurrency, or 0 for offline
    input_tokens: int
    output_tokens: int
    output_tokens_per_s: float
    ttft_ms: float | None
    tpot_ms: float | None

    @property
    def group_key(self) -> str:
        """Identical measurement conditions share a key (and so a side of the split)."""
        return (
            f"{self.instance_type}|{self.model}|{self.tp_degree}|{self.precision.value}|{self.mode}|"
            f"{self.batch}|{self.input_tokens}|{self.output_tokens}"
        )

    def published(self, metric: str) -> float | None:
        value: float | None = getattr(self, metric)
        return value


@dataclass(frozen=True, slots=True)
class SkippedRow:
    row_id: int
    reason: str


_PRECISIONS = {"bf16": Precision.BF16, "fp8": Precision.FP8, "fp4": Precision.FP4, "int8": Precision.INT8}
_CORES_PER_CHIP = {"trn1": 2, "inf2": 2, "trn2": 4}  # NeuronCores per chip as throughput.csv counts TP


def _opt(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def read_published_rows(
    models: ModelRegistry, catalog: Catalog
) -> tuple[tuple[PublishedRow, ...], tuple[SkippedRow, ...]]:
    """All rows of ``fleet/data/throughput.csv``: the usable ones, and the others with the reason."""
    text = resources.files("fleet").joinpath("data", "throughput.csv").read_text(encoding="utf-8")
    usable: list[PublishedRow] = []
    skipped: list[SkippedRow] = []
    for r in csv.DictReader(text.splitlines()):
        row_id = int(r["row_id"])
        detail = r["source_detail"].lower()
        if ("speculative" in detail and "no speculative" not in detail) or "eagle" in detail:
            skipped.append(SkippedRow(row_id, "speculative decoding (not modelled)"))
            continue
        arch = models.by_alias(r["model"])
        if arch is None:
            skipped.append(SkippedRow(row_id, f"model {r['model']!r} not in the registry"))
            continue
        instance = catalog.instance(r["instance_type"].split()[0])
        tp = int(r["tp_degree"])
        chips_text = r["accelerators_used"].strip()
        chips = int(chips_text) if chips_text else tp // _CORES_PER_CHIP.get(instance.accelerator_kind, 1)
        kind = r["batch_kind"].lower()
        if kind.startswith("offline"):
            mode, batch = "offline", 0
        elif "concurren" in kind and not kind.startswith("batch size"):
            mode, batch = "concurrency", int(r["batch_or_concurrency"])
        else:
            mode, batch = "static", int(r["batch_or_concurrency"])
        ttft = _opt(r["ttft_p50_ms"])
        tpot = _opt(r["tpot_p50_ms"])
        usable.append(
            PublishedRow(
                row_id=row_id,
                source=f"{r['source']} ({r['source_detail']})",
                model=arch.name,
                instance_type=instance.name,
                family=instance.family,
                tp_degree=chips,
                precision=_PRECISIONS.get(r["weight_dtype"].strip(), Precision.BF16),
                mode=mode,
                batch=batch,
                input_tokens=int(r["input_tokens"]),
                output_tokens=int(r["output_tokens"]),
                output_tokens_per_s=float(r["output_tokens_per_s"]),
                ttft_ms=ttft if ttft is not None else _opt(r["ttft_mean_ms"]),
                tpot_ms=tpot if tpot is not None else _opt(r["itl_mean_ms"]),
            )
        )
    return tuple(usable), tuple(skipped)


def load_published_rows(models: ModelRegistry, catalog: Catalog) -> tuple[PublishedRow, ...]:
    """The usable rows of ``fleet/data/throughput.csv`` (see :func:`read_published_rows`)."""
    return read_published_rows(models, catalog)[0]


# ----------------------------------------------------------------------------------------- prediction


@dataclass(frozen=True, slots=True)
class Prediction:
    output_tokens_per_s: float
    ttft_ms: float | None
    tpot_ms: float | None

    def get(self, metric: str) -> float | None:
        value: float | None = getattr(self, metric)
        return value


def _engine_batch(row: PublishedRow, kv_capacity_tokens: int) -> int:
    return min(kv_capacity_tokens // (row.input_tokens + row.output_tokens), MAX_BATCH_SEQUENCES)


def _closed_loop(c: int, b: int, o: int, step_ms: float, prefill_ms: float) -> Prediction:
    """``c`` closed-loop clients, ``b`` decode slots (see the module docstring).

    The prefill time with queueing ``T`` solves ``T = S + rho S / (2 (1 - rho))`` with
    ``rho = c S / (K + T)``, ``K = slot + O x step``; that is ``2 (T - S)(K + T - c S) = c S^2``, whose
    larger root exceeds ``S`` and keeps ``rho < 1``.
    """
    s = prefill_ms
    slot_ms = (c - b) * o * step_ms / b if c > b else 0.0
    k = slot_ms + o * step_ms
    lin = 2.0 * (k - c * s - s)
    const = -(2.0 * s * (k - c * s) + c * s * s)
    t = (-lin + math.sqrt(lin * lin - 8.0 * const)) / 4.0
    ttft = slot_ms + t
    return Prediction(c * o * 1000.0 / (ttft + o * step_ms), ttft, step_ms)


def predict_row(row: PublishedRow, profile: RooflineProfile) -> Prediction | None:
    """The model's prediction for ``row`` through the profile's public methods (``None``: cannot hold
    one request). See the module docstring for the three scenarios."""
    n, o = row.input_tokens, row.output_tokens
    cap = _engine_batch(row, profile.kv_capacity_tokens)
    if cap < 1:
        return None
    if row.mode == "static":
        b = row.batch
        tpot = profile.tpot_ms(b, n + o // 2)
        ttft = profile.ttft_ms(n, (b - 1) * n)
        return Prediction(b * o * 1000.0 / (ttft + o * tpot), ttft, tpot)
    if row.mode == "concurrency":
        b = min(row.batch, cap)
        return _closed_loop(row.batch, b, o, profile.steady_state_step_ms(b, n, o), profile.ttft_ms(n))
    step = profile.steady_state_step_ms(cap, n, o)
    return Prediction(cap * 1000.0 / step, None, None)


@dataclass(frozen=True, slots=True)
class _RowTerms:
    """A row's efficiency-independent parts: (weights, KV, matmul, attention) times at peak for the
    decode or steady-state step and for the prefill, the layer count and the engine batch."""

    row: PublishedRow
    layers: int
    batch: int
    step: tuple[float, float, float, float]
    prefill: tuple[float, float, float, float]


_UNIT = FamilyEfficiency(1.0, 1.0, 1.0, 1.0, 0.0, 0.0, "unit (peak figures, no overhead)")


def _row_terms(row: PublishedRow, perf: PerformanceModel) -> _RowTerms | None:
    arch = perf.models.get(row.model)
    unit_profile = RooflineProfile(
        model=arch,
        instance=perf.catalog.instance(row.instance_type),
        tp_degree=row.tp_degree,
        precision=row.precision,
        efficiency=_UNIT,
        max_context_tokens=arch.max_context_tokens,
        memory_reserve_fraction=perf.memory_reserve_fraction,
    )
    n, o = row.input_tokens, row.output_tokens
    cap = _engine_batch(row, unit_profile.kv_capacity_tokens)
    if cap < 1:
        return None
    if row.mode == "static":
        b = row.batch
        return _RowTerms(
            row, arch.layers, b, unit_profile.decode_components_ms(b, n + o // 2),
            unit_profile.prefill_components_ms(n, (b - 1) * n),
        )  # fmt: skip
    b = cap if row.mode == "offline" else min(row.batch, cap)
    return _RowTerms(
        row,
        arch.layers,
        b,
        unit_profile.steady_state_components_ms(b, n, o),
        unit_profile.prefill_components_ms(n),
    )


def _time_ms(parts: tuple[float, float, float, float], e: FamilyEfficiency, overhead_ms: float) -> float:
    w, kv, mm, att = parts
    memory = w / e.weight_bandwidth_ratio + kv / e.kv_bandwidth_ratio
    compute = mm / e.matmul_flops_ratio + att / e.attention_flops_ratio
    return max(memory, compute) + overhead_ms


def _fast_predict(t: _RowTerms, e: FamilyEfficiency) -> Prediction:
    """:func:`predict_row` from precomputed terms (same arithmetic; used inside the fit loop)."""
    row = t.row
    o = row.output_tokens
    step = _time_ms(t.step, e, e.decode_overhead_ms_per_layer * t.layers)
    ttft0 = _time_ms(t.prefill, e, e.prefill_overhead_ms_per_layer * t.layers)
    if row.mode == "static":
        return Prediction(t.batch * o * 1000.0 / (ttft0 + o * step), ttft0, step)
    if row.mode == "concurrency":
        return _closed_loop(row.batch, t.batch, o, step, ttft0)
    return Prediction(t.batch * 1000.0 / step, None, None)


# ----------------------------------------------------------------------------------------- fit

_PARAMS = FamilyEfficiency.RATIOS + FamilyEfficiency.OVERHEADS
_N_RATIOS = len(FamilyEfficiency.RATIOS)


def _efficiency(x: Sequence[float], source: str) -> FamilyEfficiency:
    return FamilyEfficiency(
        weight_bandwidth_ratio=min(1.0, math.exp(x[0])),
        kv_bandwidth_ratio=min(1.0, math.exp(x[1])),
        matmul_flops_ratio=min(1.0, math.exp(x[2])),
        attention_flops_ratio=min(1.0, math.exp(x[3])),
        decode_overhead_ms_per_layer=math.exp(x[4]),
        prefill_overhead_ms_per_layer=math.exp(x[5]),
        source=source,
    )


def _nelder_mead(
    f: Callable[[list[float]], float], x0: list[float], step: float, iterations: int
) -> list[float]:
    """Minimise ``f`` from ``x0`` (deterministic downhill simplex, standard coefficients)."""
    dim = len(x0)
    simplex = [list(x0)] + [[x0[j] + (step if j == i else 0.0) for j in range(dim)] for i in range(dim)]
    values = [f(p) for p in simplex]
    for _ in range(iterations):
        order = sorted(range(dim + 1), key=lambda k: values[k])
        simplex = [simplex[k] for k in order]
        values = [values[k] for k in order]
        if values[-1] - values[0] < 1e-9 * (1.0 + abs(values[0])):
            break
        centroid = [sum(p[j] for p in simplex[:-1]) / dim for j in range(dim)]
        worst = simplex[-1]
        reflected = [centroid[j] + (centroid[j] - worst[j]) for j in range(dim)]
        fr = f(reflected)
        if fr < values[0]:
            expanded = [centroid[j] + 2.0 * (centroid[j] - worst[j]) for j in range(dim)]
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = [centroid[j] + 0.5 * (worst[j] - centroid[j]) for j in range(dim)]
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:
                best = simplex[0]
                simplex = [best] + [
                    [best[j] + 0.5 * (p[j] - best[j]) for j in range(dim)] for p in simplex[1:]
                ]
                values = [values[0]] + [f(p) for p in simplex[1:]]
    return simplex[min(range(dim + 1), key=lambda k: values[k])]


def _fit_family(terms: Sequence[_RowTerms]) -> FamilyEfficiency:
    prior = [math.log(getattr(PRIOR_EFFICIENCY, p)) for p in _PARAMS]
    weights = [PRIOR_WEIGHT_RATIO] * _N_RATIOS + [PRIOR_WEIGHT_OVERHEAD] * (len(_PARAMS) - _N_RATIOS)
    observed = [
        (
            t,
            [
                (metric, math.log(value))
                for metric in METRICS
                if (value := t.row.published(metric)) is not None
            ],
        )
        for t in terms
    ]

    def cost(x: list[float]) -> float:
        e = _efficiency(x, "")
        total = sum(w * (a - b) ** 2 for w, a, b in zip(weights, x, prior, strict=True))
        total += 100.0 * sum(max(0.0, a) ** 2 for a in x[:_N_RATIOS])  # ratios above 1 are clamped: push back
        for t, published in observed:
            p = _fast_predict(t, e)
            for metric, log_published in published:
                predicted = p.get(metric)
                if predicted is not None and predicted > 0:
                    total += (math.log(predicted) - log_published) ** 2
        return total

    x = prior
    for _ in range(2):  # a restart from the best point refreshes a collapsed simplex
        x = _nelder_mead(cost, x, step=0.5, iterations=500)
    return _efficiency(x, f"fitted on {len(terms)} rows of throughput.csv")


def fit_efficiency(
    rows: Sequence[PublishedRow], catalog: Catalog, models: ModelRegistry
) -> dict[str, FamilyEfficiency]:
    """Per-family efficiencies fitted to ``rows`` (deterministic). Families without rows are absent
    (the performance model then uses :data:`~fleet.perf.PRIOR_EFFICIENCY`)."""
    perf = PerformanceModel(catalog, models)
    by_family: dict[str, list[_RowTerms]] = {}
    for row in rows:
        t = _row_terms(row, perf)
        if t is not None:
            by_family.setdefault(row.family, []).append(t)
    return {family: _fit_family(terms) for family, terms in sorted(by_family.items())}


# ----------------------------------------------------------------------------------------- split


def split_rows(
    rows: Sequence[PublishedRow], seed: int = 0
) -> tuple[tuple[PublishedRow, ...], tuple[PublishedRow, ...]]:
    """(fit rows, held-out rows): deterministic, stratified by family, identical conditions together."""
    fit: list[PublishedRow] = []
    held: list[PublishedRow] = []
    families: dict[str, dict[str, list[PublishedRow]]] = {}
    for row in rows:
        families.setdefault(row.family, {}).setdefault(row.group_key, []).append(row)
    for _family, groups in sorted(families.items()):
        keys = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}|{k}".encode()).hexdigest())
        n_held = round(HOLDOUT_FRACTION * len(keys)) if len(keys) > 1 else 0
        n_held = max(n_held, 1) if len(keys) > 1 else 0
        for i, key in enumerate(keys):
            (held if i < n_held else fit).extend(groups[key])
    return tuple(sorted(fit, key=lambda r: r.row_id)), tuple(sorted(held, key=lambda r: r.row_id))


# ----------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """Absolute percentage errors of one metric over a family's held-out rows."""

    count: int
    median_ape_pct: float
    max_ape_pct: float


@dataclass(frozen=True, slots=True)
class HeldOutResult:
    row: PublishedRow
    predicted: Prediction | None

    def ape_pct(self, metric: str) -> float | None:
        published = self.row.published(metric)
        predicted = None if self.predicted is None else self.predicted.get(metric)
        if published is None or predicted is None:
            return None
        return abs(predicted - published) / published * 100.0


@dataclass(frozen=True)
class CalibrationReport:
    """Held-out accuracy of the performance model, per accelerator family and metric."""

    seed: int
    efficiency: Mapping[str, FamilyEfficiency]
    fit_rows: tuple[PublishedRow, ...]
    results: tuple[HeldOutResult, ...]
    skipped: tuple[SkippedRow, ...]
    caveats: tuple[str, ...] = CAVEATS
    summary: Mapping[str, Mapping[str, ErrorSummary]] = field(default_factory=dict)

    def format(self) -> str:
        """The report as text for ``turnout catalog --calibration``."""
        lines = [
            f"Performance-model calibration (seed {self.seed}): efficiencies fitted on {len(self.fit_rows)} "
            f"published rows, evaluated on {len(self.results)} held-out rows (never used in the fit).",
            "",
            "Held-out error per accelerator family (APE = |predicted - published| / published):",
            f"{'family':<18}{'metric':<22}{'rows':>5}{'median APE %':>14}{'max APE %':>11}",
        ]
        for family, metrics in sorted(self.summary.items()):
            for metric, s in metrics.items():
                lines.append(
                    f"{family:<18}{metric:<22}{s.count:>5}{s.median_ape_pct:>14.1f}{s.max_ape_pct:>11.1f}"
                )
        lines += [
            "",
            "Fitted efficiencies (share of peak bandwidth for weights and KV reads, of peak FLOP/s for "
            "matmuls and attention; fixed time per layer for each decode step and prefill):",
        ]
        for family, e in sorted(self.efficiency.items()):
            lines.append(
                f"  {family:<17} weights {e.weight_bandwidth_ratio:.3f}  KV {e.kv_bandwidth_ratio:.3f}  "
                f"matmul {e.matmul_flops_ratio:.3f}  attention {e.attention_flops_ratio:.3f}  "
                f"decode {e.decode_overhead_ms_per_layer:.4f} ms/layer  "
                f"prefill {e.prefill_overhead_ms_per_layer:.4f} ms/layer  ({e.source})"
            )
        lines += ["", "Held-out rows: predicted / published (tokens/s; TTFT ms; TPOT ms)"]
        for r in self.results:
            row = r.row
            batch = "" if row.mode == "offline" else f" {row.batch}"
            shape = f"{row.mode}{batch} {row.input_tokens}/{row.output_tokens}"
            head = (
                f"  #{row.row_id:<4}{row.family:<17}{row.model:<26}{row.instance_type:<17}"
                f"tp{row.tp_degree:<3}{row.precision.value:<5}{shape:<24}"
            )
            if r.predicted is None:
                lines.append(head + "cannot hold one request in the model")
                continue
            cells = []
            for metric in METRICS:
                pub = row.published(metric)
                pred = r.predicted.get(metric)
                if pub is None or pred is None:
                    continue
                cells.append(f"{pred:,.1f} / {pub:,.1f}")
            lines.append(head + "; ".join(cells))
        lines += ["", "Caveats:"]
        lines.extend(f"  - {c}" for c in self.caveats)
        if self.skipped:
            lines.append(f"  - {len(self.skipped)} rows not used:")
            reasons: dict[str, list[int]] = {}
            for skipped in self.skipped:
                reasons.setdefault(skipped.reason, []).append(skipped.row_id)
            lines.extend(
                f"      {reason}: rows {', '.join(map(str, ids))}" for reason, ids in reasons.items()
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the report."""
        return {
            "seed": self.seed,
            "fit_row_ids": [r.row_id for r in self.fit_rows],
            "summary": {
                family: {
                    metric: {
                        "count": s.count,
                        "median_ape_pct": s.median_ape_pct,
                        "max_ape_pct": s.max_ape_pct,
                    }
                    for metric, s in metrics.items()
                }
                for family, metrics in sorted(self.summary.items())
            },
            "efficiency": {
                family: {**{p: getattr(e, p) for p in _PARAMS}, "source": e.source}
                for family, e in sorted(self.efficiency.items())
            },
            "held_out": [
                {
                    "row_id": r.row.row_id,
                    "family": r.row.family,
                    "model": r.row.model,
                    "instance_type": r.row.instance_type,
                    "tp_degree": r.row.tp_degree,
                    "precision": r.row.precision.value,
                    "mode": r.row.mode,
                    "batch": r.row.batch,
                    "input_tokens": r.row.input_tokens,
                    "output_tokens": r.row.output_tokens,
                    "published": {m: r.row.published(m) for m in METRICS},
                    "predicted": None if r.predicted is None else {m: r.predicted.get(m) for m in METRICS},
                    "source": r.row.source,
                }
                for r in self.results
            ],
            "skipped": [{"row_id": s.row_id, "reason": s.reason} for s in self.skipped],
            "caveats": list(self.caveats),
        }


def _summarise(results: Sequence[HeldOutResult]) -> dict[str, dict[str, ErrorSummary]]:
    out: dict[str, dict[str, ErrorSummary]] = {}
    for family in sorted({r.row.family for r in results}):
        metrics: dict[str, ErrorSummary] = {}
        for metric in METRICS:
            errors = [e for r in results if r.row.family == family and (e := r.ape_pct(metric)) is not None]
            if errors:
                metrics[metric] = ErrorSummary(len(errors), statistics.median(errors), max(errors))
        out[family] = metrics
    return out


def run_calibration(
    seed: int = 0, catalog: Catalog | None = None, models: ModelRegistry | None = None
) -> CalibrationReport:
    """Fit on one part of the published rows and report predicted vs published on the held-out part."""
    catalog = catalog or load_catalog()
    models = models or load_models()
    rows, skipped = read_published_rows(models, catalog)
    fit_rows, held_out = split_rows(rows, seed)
    efficiency = fit_efficiency(fit_rows, catalog, models)
    perf = PerformanceModel(catalog, models, efficiency)
    results = tuple(
        HeldOutResult(
            row, predict_row(row, perf.roofline(row.model, row.instance_type, row.tp_degree, row.precision))
        )
        for row in held_out
    )
    return CalibrationReport(
        seed=seed,
        efficiency=efficiency,
        fit_rows=fit_rows,
        results=results,
        skipped=skipped,
        summary=_summarise(results),
    )


__all__ = [
    "CAVEATS",
    "CalibrationReport",
    "ErrorSummary",
    "HeldOutResult",
    "Prediction",
    "PublishedRow",
    "SkippedRow",
    "fit_efficiency",
    "load_published_rows",
    "predict_row",
    "read_published_rows",
    "run_calibration",
    "split_rows",
]
