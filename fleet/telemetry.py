"""Telemetry: validation of load samples, and parsing of endpoints' Prometheus text into samples.

Two sources feed :class:`fleet.store.FleetStore`: samples pushed by endpoint agents over gRPC
(``Fleet.ReportTelemetry``) and samples built here from the Prometheus text exposition an endpoint's
metrics URL serves. Both pass :func:`validate_sample` before the store applies them.

Exporters understood by :class:`ExporterParser` (one page may hold several of them):

==================================================  =========================  ==========================
metric (sample name)                                unit on the page           becomes
==================================================  =========================  ==========================
vLLM ``vllm:num_requests_running``                  requests (gauge)           ``running_requests``, sum
vLLM ``vllm:num_requests_waiting``                  requests (gauge)           ``waiting_requests``, sum
vLLM ``vllm:kv_cache_usage_perc`` (V1), else        ratio 0..1 despite "perc"  ``kv_cache_usage_ratio``,
``vllm:gpu_cache_usage_perc`` (older releases)                                 mean
vLLM ``vllm:time_to_first_token_seconds``           seconds (histogram)        ``observed_ttft_ms``
vLLM ``vllm:inter_token_latency_seconds``, else     seconds (histogram)        ``observed_tpot_ms``
``vllm:time_per_output_token_seconds`` (older)
DCGM exporter ``DCGM_FI_DEV_POWER_USAGE``           watts per GPU (gauge)      ``power_w``, sum
DCGM exporter ``DCGM_FI_DEV_GPU_UTIL``              percent per GPU (gauge)    ``utilization_ratio``,
                                                                               mean / 100
neuron-monitor ``neuroncore_utilization_ratio``     ratio 0..1 per NeuronCore  ``utilization_ratio``, mean
==================================================  =========================  ==========================

Sums and means run over all series of the metric on the page (several GPUs, NeuronCores, or vLLM
engines); where two names are listed, the newer one wins when both are present.

Histograms give *recent* means: ``(sum - previous sum) / (count - previous count)`` against the previous
successful parse for the same endpoint. On the first parse, or after a counter reset (a count or sum
that went down, i.e. the server restarted), the cumulative mean ``sum / count`` is used instead. When no
new observation arrived since the previous parse the field is left out (the store keeps its old value).
When both DCGM and neuron-monitor utilisation are present, the mean is over all their devices.

neuron-monitor's Prometheus companion (``neuron-monitor-prometheus.py`` from the Neuron SDK) exports
NeuronCore utilisation, memory, execution and ECC metrics but no power reading, so Neuron endpoints
get ``power_w`` only from a gRPC report; otherwise the store models it from utilisation.

Metrics of other exporters on the same page are ignored. A page with none of the metrics above is a
:class:`ValueError` (a misconfigured metrics URL must not look like a healthy, idle endpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from fleet.types import EndpointLoad, TelemetrySample

__all__ = [
    "ExporterParser",
    "TelemetryRejection",
    "validate_sample",
]


@dataclass(frozen=True, slots=True)
class TelemetryRejection:
    """A sample the store refused. ``index`` is its position in the batch given to ``apply``."""

    index: int
    endpoint_id: str
    field: str  # field of TelemetrySample at fault, e.g. "kv_cache_usage_ratio"
    rule: str  # the rule it broke, e.g. "must be a finite number in [0, 1]"

    @property
    def message(self) -> str:
        return f"samples[{self.index}] ({self.endpoint_id}): {self.field}: {self.rule}"


_COUNT_FIELDS = ("running_requests", "waiting_requests")
_RATIO_FIELDS = ("kv_cache_usage_ratio", "utilization_ratio")
_NON_NEGATIVE_FIELDS = ("power_w", "observed_ttft_ms", "observed_tpot_ms")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_sample(
    sample: TelemetrySample,
    *,
    known: Mapping[str, EndpointLoad],
    now_s: float,
    max_future_skew_s: float,
) -> tuple[str, str] | None:
    """Check one sample on its own; ``(field, rule)`` of the first problem found, or ``None`` if good.

    ``known`` maps every endpoint id to its current load (its ``observed_at_s`` orders samples).
    Rules: the endpoint is known; ``observed_at_s`` is finite, at most ``max_future_skew_s`` after
    ``now_s`` and not older than the last applied sample of that endpoint (equal is accepted); counts
    are integers >= 0; ratios are finite and in [0, 1]; power and latencies are finite and >= 0;
    ``healthy`` is a bool. ``None`` fields are not checked (they keep the stored value).
    """
    endpoint_id = sample.endpoint_id
    if not isinstance(endpoint_id, str) or endpoint_id not in known:
        return ("endpoint_id", "unknown endpoint")
    observed_at_s = sample.observed_at_s
    if not _is_finite_number(observed_at_s):
        return ("observed_at_s", "must be a finite number of unix seconds")
    if observed_at_s > now_s + max_future_skew_s:
        return (
            "observed_at_s",
            f"must not be more than {max_future_skew_s:g} s in the future "
            f"(is {observed_at_s - now_s:.3f} s ahead of the server clock)",
        )
    last_observed_at_s = known[endpoint_id].observed_at_s
    if last_observed_at_s is not None and observed_at_s < last_observed_at_s:
        return (
            "observed_at_s",
            f"must not be older than the last applied sample of this endpoint ({last_observed_at_s!r})",
        )
    for name in _COUNT_FIELDS:
        value = getattr(sample, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return (name, "must be an integer >= 0")
    for name in _RATIO_FIELDS:
        value = getattr(sample, name)
        if value is not None and (not _is_finite_number(value) or not 0.0 <= value <= 1.0):
            return (name, "must be a finite number in [0, 1]")
    for name in _NON_NEGATIVE_FIELDS:
        value = getattr(sample, name)
        if value is not None and (not _is_finite_number(value) or value < 0.0):
            return (name, "must be a finite number >= 0")
    if sample.healthy is not None and not isinstance(sample.healthy, bool):
        return ("healthy", "must be a bool")
    return None


# --- Prometheus text exposition -------------------------------------------------------------------

_VLLM_RUNNING = "vllm:num_requests_running"
_VLLM_WAITING = "vllm:num_requests_waiting"
_VLLM_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # newest first
_VLLM_TTFT = ("vllm:time_to_first_token_seconds",)
_VLLM_TPOT = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # newest first
_DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
_DCGM_UTIL = "DCGM_FI_DEV_GPU_UTIL"
_NEURON_UTIL = "neuroncore_utilization_ratio"

_GAUGES = frozenset({_VLLM_RUNNING, _VLLM_WAITING, *_VLLM_KV_USAGE, _DCGM_POWER, _DCGM_UTIL, _NEURON_UTIL})
_HISTOGRAMS = frozenset({*_VLLM_TTFT, *_VLLM_TPOT})
_WANTED = _GAUGES | {f"{name}{suffix}" for name in _HISTOGRAMS for suffix in ("_sum", "_count")}


@dataclass(frozen=True, slots=True)
class _HistogramTotals:
    sum_s: float
    count: float


class ExporterParser:
    """Turns one endpoint's Prometheus text page into a :class:`TelemetrySample`.

    Keeps, per endpoint, the histogram totals of the previous successful parse to compute recent
    means (see the module docstring). Not thread-safe: use it from one task, like the scraper does.
    ``label_filter``, if given, keeps only series carrying all of those label values (for example
    ``{"pod": "llama-8b-0"}`` on a node-wide DCGM exporter that reports every GPU of the node).
    """

    def __init__(self, *, label_filter: Mapping[str, str] | None = None) -> None:
        self._label_filter = dict(label_filter or {})
        self._previous: dict[str, dict[str, _HistogramTotals]] = {}

    def forget(self, endpoint_id: str) -> None:
        """Drop the histogram history of an endpoint (its next parse uses cumulative means)."""
        self._previous.pop(endpoint_id, None)

    def parse(self, endpoint_id: str, text: str, observed_at_s: float) -> TelemetrySample:
        """The sample a page describes, with only the fields found on it.

        Raises :class:`ValueError` with a readable message if the text is not valid Prometheus text
        exposition or holds none of the supported metrics. The histogram history of the endpoint is
        only updated when the parse succeeds.
        """
        series = self._collect(text)

        running = _sum_of(series.get(_VLLM_RUNNING))
        waiting = _sum_of(series.get(_VLLM_WAITING))
        kv_usage = _mean_of(_first_present(series, _VLLM_KV_USAGE))
        power_w = _sum_of(series.get(_DCGM_POWER))
        device_ratios = [value / 100.0 for value in series.get(_DCGM_UTIL, [])]
        device_ratios += series.get(_NEURON_UTIL, [])
        utilization = _mean_of(device_ratios or None)

        previous = self._previous.get(endpoint_id, {})
        totals: dict[str, _HistogramTotals] = {}
        ttft_s = _recent_mean(series, _VLLM_TTFT, previous, totals)
        tpot_s = _recent_mean(series, _VLLM_TPOT, previous, totals)

        if not any(name in series for name in _WANTED):
            raise ValueError(
                "no supported metrics on the page (expected vLLM, DCGM exporter or neuron-monitor metrics)"
            )
        self._previous[endpoint_id] = {**previous, **totals}
        return TelemetrySample(
            endpoint_id=endpoint_id,
            observed_at_s=observed_at_s,
            running_requests=_as_count(running, _VLLM_RUNNING),
            waiting_requests=_as_count(waiting, _VLLM_WAITING),
            kv_cache_usage_ratio=kv_usage,
            power_w=power_w,
            utilization_ratio=utilization,
            observed_ttft_ms=None if ttft_s is None else ttft_s * 1000.0,
            observed_tpot_ms=None if tpot_s is None else tpot_s * 1000.0,
        )

    def _collect(self, text: str) -> dict[str, list[float]]:
        """Values of the wanted sample names (``_sum``/``_count`` for histograms), by sample name.

        Sample names rather than family names are matched so that pages without ``# TYPE`` lines
        (every sample its own untyped family) read the same.
        """
        if not isinstance(text, str):
            raise ValueError(f"exporter text must be str, not {type(text).__name__}")
        found: dict[str, list[float]] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name not in _WANTED:
                        continue
                    if any(sample.labels.get(k) != v for k, v in self._label_filter.items()):
                        continue
                    found.setdefault(sample.name, []).append(float(sample.value))
        except ValueError as exc:
            raise ValueError(f"malformed Prometheus text: {exc or type(exc).__name__}") from exc
        except (IndexError, KeyError, TypeError, AttributeError) as exc:  # parser internals on odd input
            raise ValueError(f"malformed Prometheus text: {type(exc).__name__}: {exc}") from exc
        return found


def _first_present(series: Mapping[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    for name in names:
        if name in series:
            return series[name]
    return None


def _sum_of(values: list[float] | None) -> float | None:
    return None if values is None else math.fsum(values)


def _mean_of(values: list[float] | None) -> float | None:
    return None if not values else math.fsum(values) / len(values)


def _as_count(value: float | None, name: str) -> int | None:
    """A request count from a gauge. A count that is not a whole finite number cannot be one, so it is
    a ValueError naming the metric (range checks such as >= 0 are left to :func:`validate_sample`)."""
    if value is None:
        return None
    if not math.isfinite(value) or value != math.floor(value):
        raise ValueError(f"{name} must be a whole number of requests, got {value!r}")
    return int(value)


def _recent_mean(
    series: Mapping[str, list[float]],
    names: tuple[str, ...],
    previous: Mapping[str, _HistogramTotals],
    totals_out: dict[str, _HistogramTotals],
) -> float | None:
    """Mean observation (seconds) since the previous parse, of the first histogram in ``names`` present."""
    for name in names:
        sums = series.get(f"{name}_sum")
        counts = series.get(f"{name}_count")
        if sums is None or counts is None:
            continue
        now = _HistogramTotals(sum_s=math.fsum(sums), count=math.fsum(counts))
        if not (math.isfinite(now.sum_s) and math.isfinite(now.count)) or now.count < 0 or now.sum_s < 0:
            raise ValueError(f"{name}: _sum and _count must be finite and >= 0")
        totals_out[name] = now
        before = previous.get(name)
        if before is not None and now.count >= before.count and now.sum_s >= before.sum_s:
            new_observations = now.count - before.count
            if new_observations == 0:
                return None  # nothing new since the previous scrape: keep the stored value
            return (now.sum_s - before.sum_s) / new_observations
        # first parse of this endpoint, or a counter reset (the server restarted): cumulative mean
        return now.sum_s / now.count if now.count > 0 else None
    return None
