"""Calibration: published rows, the held-out split, the fit, and the report."""

from __future__ import annotations

import json
import math

import pytest

from fleet.calibration import (
    METRICS,
    CalibrationReport,
    fit_efficiency,
    predict_row,
    read_published_rows,
    run_calibration,
    split_rows,
)
from fleet.catalog import load_catalog
from fleet.models import load_models
from fleet.perf import PerformanceModel, default_performance_model
from fleet.types import Precision

CATALOG = load_catalog()
MODELS = load_models()
ROWS, SKIPPED = read_published_rows(MODELS, CATALOG)
FAMILIES = {"neuron-v2", "neuron-v3", "nvidia-hopper", "nvidia-blackwell"}


@pytest.fixture(scope="module")
def report() -> CalibrationReport:
    return run_calibration(seed=0)


def test_published_rows_are_normalised() -> None:
    by_id = {r.row_id: r for r in ROWS}
    assert len(ROWS) + len(SKIPPED) == 185
    assert {s.row_id for s in SKIPPED} == {92, 94, 96}
    assert all("speculative" in s.reason for s in SKIPPED)
    r1 = by_id[1]  # Llama-3-8B int8 on inf2.48xlarge, TP24 NeuronCores = 12 chips, static batch 8
    assert (r1.model, r1.instance_type, r1.tp_degree, r1.precision) == (
        "llama-3-8b",
        "inf2.48xlarge",
        12,
        Precision.INT8,
    )
    assert (r1.mode, r1.batch, r1.input_tokens, r1.output_tokens) == ("static", 8, 128, 8064)
    assert (r1.output_tokens_per_s, r1.ttft_ms, r1.tpot_ms) == (649.17, 68.95, 15.22)
    r95 = by_id[95]  # vLLM on trn2: TP8 logical NeuronCores at LNC=2 = 2 chips; blank dtype taken as bf16
    assert (r95.tp_degree, r95.precision, r95.mode, r95.batch) == (2, Precision.BF16, "concurrency", 2)
    r97 = by_id[97]  # TensorRT-LLM offline max throughput on one B200 at FP4
    assert (r97.instance_type, r97.model, r97.precision, r97.mode) == (
        "p6-b200.48xlarge",
        "llama-3.3-70b",
        Precision.FP4,
        "offline",
    )
    assert r97.ttft_ms is None and r97.tpot_ms is None
    r177 = by_id[177]  # NIM sweep: mean TTFT and ITL columns
    assert (r177.mode, r177.batch, r177.ttft_ms, r177.tpot_ms) == ("concurrency", 1, 406.77, 18.58)
    assert {r.family for r in ROWS} == FAMILIES


def test_split_is_deterministic_stratified_and_keeps_duplicates_together() -> None:
    fit, held = split_rows(ROWS, seed=0)
    assert split_rows(ROWS, seed=0) == (fit, held)
    assert {r.row_id for r in fit}.isdisjoint({r.row_id for r in held})
    assert len(fit) + len(held) == len(ROWS)
    assert {r.family for r in held} == FAMILIES and {r.family for r in fit} == FAMILIES
    assert {r.group_key for r in fit}.isdisjoint({r.group_key for r in held})
    assert 0.2 < len(held) / len(ROWS) < 0.4
    other_fit, _ = split_rows(ROWS, seed=1)
    assert {r.row_id for r in other_fit} != {r.row_id for r in fit}


def test_report_gives_finite_held_out_errors_per_family(report: CalibrationReport) -> None:
    assert set(report.summary) == FAMILIES
    for family, metrics in report.summary.items():
        assert "output_tokens_per_s" in metrics, family
        for metric, s in metrics.items():
            assert metric in METRICS
            assert s.count >= 1
            assert math.isfinite(s.median_ape_pct) and math.isfinite(s.max_ape_pct)
            assert 0 <= s.median_ape_pct <= s.max_ape_pct
    # Neuron and Hopper rows publish latency too, so those errors are reported.
    assert {"ttft_ms", "tpot_ms"} <= set(report.summary["neuron-v2"])
    assert {"ttft_ms", "tpot_ms"} <= set(report.summary["nvidia-hopper"])
    counts = report.summary["neuron-v2"]["output_tokens_per_s"].count
    assert counts == sum(1 for r in report.results if r.row.family == "neuron-v2")
    # The headline: the roofline with fitted factors is in the right range for the big families.
    assert report.summary["nvidia-hopper"]["output_tokens_per_s"].median_ape_pct < 50
    assert report.summary["neuron-v2"]["tpot_ms"].median_ape_pct < 50


def test_efficiencies_come_from_the_fit_rows_only(report: CalibrationReport) -> None:
    held_ids = {r.row.row_id for r in report.results}
    assert held_ids.isdisjoint(r.row_id for r in report.fit_rows)
    assert fit_efficiency(report.fit_rows, CATALOG, MODELS) == dict(report.efficiency)
    assert dict(report.efficiency) != dict(default_performance_model(CATALOG, MODELS).efficiency)


def test_held_out_predictions_match_the_fitted_model(report: CalibrationReport) -> None:
    perf = PerformanceModel(CATALOG, MODELS, report.efficiency)
    for result in report.results:
        row = result.row
        again = predict_row(row, perf.roofline(row.model, row.instance_type, row.tp_degree, row.precision))
        assert again == result.predicted
        assert again is not None and again.output_tokens_per_s > 0
        ape = result.ape_pct("output_tokens_per_s")
        assert ape == pytest.approx(
            abs(again.output_tokens_per_s - row.output_tokens_per_s) / row.output_tokens_per_s * 100
        )


def test_fit_loop_arithmetic_equals_the_public_profile_path() -> None:
    from fleet.calibration import _fast_predict, _row_terms

    perf = default_performance_model(CATALOG, MODELS)
    for row in ROWS:
        terms = _row_terms(row, perf)
        assert terms is not None
        fast = _fast_predict(terms, perf.efficiency_for(row.family))
        slow = predict_row(row, perf.roofline(row.model, row.instance_type, row.tp_degree, row.precision))
        assert slow is not None
        for metric in METRICS:
            a, b = fast.get(metric), slow.get(metric)
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a == pytest.approx(b, rel=1e-9), (row.row_id, metric)


def test_format_and_dict(report: CalibrationReport) -> None:
    text = report.format()
    assert "Held-out error per accelerator family" in text
    for family in FAMILIES:
        assert family in text
    assert "median APE %" in text and "offline maximum throughput" in text and "NIM" in text
    assert "speculative decoding (not modelled): rows 92, 94, 96" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["summary"]) == FAMILIES
    assert len(data["held_out"]) == len(report.results)
    assert data["held_out"][0]["published"]["output_tokens_per_s"] > 0
    assert data["caveats"] and data["skipped"]


def test_calibration_is_deterministic(report: CalibrationReport) -> None:
    assert run_calibration(seed=0).to_dict() == report.to_dict()
