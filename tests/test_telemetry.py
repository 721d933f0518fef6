"""Telemetry: sample validation and parsing of vLLM / DCGM / neuron-monitor Prometheus text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.telemetry import ExporterParser, validate_sample
from fleet.types import EndpointLoad, TelemetrySample

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_763_000_000.0


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- validate_sample -----------------------------------------------------------------------------

KNOWN = {"a": EndpointLoad(), "b": EndpointLoad(observed_at_s=T0, received_at_s=T0)}


def check(sample: TelemetrySample) -> tuple[str, str] | None:
    return validate_sample(sample, known=KNOWN, now_s=T0, max_future_skew_s=5.0)


def test_valid_samples_pass() -> None:
    assert check(TelemetrySample("a", T0)) is None
    assert check(TelemetrySample("a", T0 + 5.0)) is None  # exactly at the allowed skew
    assert check(TelemetrySample("b", T0)) is None  # same time as the last applied sample
    full = TelemetrySample(
        "a",
        T0 - 3,
        running_requests=0,
        waiting_requests=10_000,
        kv_cache_usage_ratio=1.0,
        power_w=0.0,
        utilization_ratio=0.0,
        observed_ttft_ms=0.0,
        observed_tpot_ms=12.5,
        healthy=False,
    )
    assert check(full) is None


@pytest.mark.parametrize(
    ("sample", "expected_field", "rule_part"),
    [
        (TelemetrySample("zzz", T0), "endpoint_id", "unknown endpoint"),
        (TelemetrySample(None, T0), "endpoint_id", "unknown endpoint"),  # type: ignore[arg-type]
        (TelemetrySample(["a"], T0), "endpoint_id", "unknown endpoint"),  # type: ignore[arg-type]
        (TelemetrySample("a", math.nan), "observed_at_s", "finite"),
        (TelemetrySample("a", -math.inf), "observed_at_s", "finite"),
        (TelemetrySample("a", "now"), "observed_at_s", "finite"),  # type: ignore[arg-type]
        (TelemetrySample("a", T0 + 5.001), "observed_at_s", "more than 5 s in the future"),
        (TelemetrySample("b", T0 - 1), "observed_at_s", "older than the last applied sample"),
        (TelemetrySample("a", T0, running_requests=-1), "running_requests", "integer >= 0"),
        (TelemetrySample("a", T0, running_requests=1.5), "running_requests", "integer >= 0"),  # type: ignore[arg-type]
        (TelemetrySample("a", T0, running_requests=True), "running_requests", "integer >= 0"),
        (TelemetrySample("a", T0, waiting_requests=-7), "waiting_requests", "integer >= 0"),
        (TelemetrySample("a", T0, kv_cache_usage_ratio=1.0000001), "kv_cache_usage_ratio", "[0, 1]"),
        (TelemetrySample("a", T0, kv_cache_usage_ratio=math.nan), "kv_cache_usage_ratio", "[0, 1]"),
        (TelemetrySample("a", T0, utilization_ratio=-0.01), "utilization_ratio", "[0, 1]"),
        (TelemetrySample("a", T0, power_w=-1.0), "power_w", ">= 0"),
        (TelemetrySample("a", T0, power_w=math.inf), "power_w", "finite"),
        (TelemetrySample("a", T0, observed_ttft_ms=math.nan), "observed_ttft_ms", "finite"),
        (TelemetrySample("a", T0, observed_tpot_ms=-0.1), "observed_tpot_ms", ">= 0"),
        (TelemetrySample("a", T0, healthy=1), "healthy", "bool"),  # type: ignore[arg-type]
    ],
)
def test_invalid_samples_name_the_field_and_rule(
    sample: TelemetrySample, expected_field: str, rule_part: str
) -> None:
    problem = check(sample)
    assert problem is not None
    field, rule = problem
    assert field == expected_field
    assert rule_part in rule


# --- parsing: the fixtures, with exact values ------------------------------------------------------


def test_vllm_v1_first_scrape_uses_cumulative_means() -> None:
    sample = ExporterParser().parse("h100-llama8b-0", fixture("vllm_v1_scrape1.txt"), T0)
    assert sample == TelemetrySample(
        endpoint_id="h100-llama8b-0",
        observed_at_s=T0,
        running_requests=12,
        waiting_requests=3,
        kv_cache_usage_ratio=0.4375,
        observed_ttft_ms=162.5,  # 6.5 s / 40
        observed_tpot_ms=18.0,  # 90 s / 5000
    )
    assert sample.power_w is None and sample.utilization_ratio is None and sample.healthy is None


def test_vllm_second_scrape_uses_the_delta_since_the_previous_one() -> None:
    parser = ExporterParser()
    parser.parse("e", fixture("vllm_v1_scrape1.txt"), T0)
    sample = parser.parse("e", fixture("vllm_v1_scrape2.txt"), T0 + 5)
    assert (sample.running_requests, sample.waiting_requests) == (20, 7)
    assert sample.kv_cache_usage_ratio == 0.6125
    # 10 new TTFT observations totalling 3.0 s; 1000 new inter-token latencies totalling 22 s
    assert sample.observed_ttft_ms == pytest.approx(300.0, rel=1e-12)
    assert sample.observed_tpot_ms == pytest.approx(22.0, rel=1e-12)
    # the cumulative means would have been different: the delta really is used
    assert pytest.approx(300.0) != 9.5 / 50 * 1000


def test_counter_reset_falls_back_to_cumulative_means() -> None:
    parser = ExporterParser()
    parser.parse("e", fixture("vllm_v1_scrape1.txt"), T0)
    parser.parse("e", fixture("vllm_v1_scrape2.txt"), T0 + 5)
    sample = parser.parse("e", fixture("vllm_v1_restarted.txt"), T0 + 10)
    assert sample.observed_ttft_ms == pytest.approx(250.0)  # 1.0 s / 4
    assert sample.observed_tpot_ms == pytest.approx(20.0)  # 4.0 s / 200
    assert (sample.running_requests, sample.waiting_requests) == (1, 0)
    # and the next scrape takes its delta against the restarted totals
    labels = '{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"}'
    ttft = "vllm:time_to_first_token_seconds"
    nxt = (
        fixture("vllm_v1_restarted.txt")
        .replace(f"{ttft}_count{labels} 4.0", f"{ttft}_count{labels} 6.0")
        .replace(f"{ttft}_sum{labels} 1.0", f"{ttft}_sum{labels} 2.0")
    )
    assert nxt != fixture("vllm_v1_restarted.txt")
    assert parser.parse("e", nxt, T0 + 15).observed_ttft_ms == pytest.approx(500.0)


def test_no_new_observations_leaves_latencies_out() -> None:
    parser = ExporterParser()
    parser.parse("e", fixture("vllm_v1_scrape1.txt"), T0)
    again = parser.parse("e", fixture("vllm_v1_scrape1.txt"), T0 + 5)
    assert again.observed_ttft_ms is None and again.observed_tpot_ms is None
    assert again.running_requests == 12  # gauges are still read


def test_history_is_per_endpoint_and_can_be_forgotten() -> None:
    parser = ExporterParser()
    parser.parse("a", fixture("vllm_v1_scrape1.txt"), T0)
    # another endpoint serving the later page has no history: cumulative
    assert parser.parse("b", fixture("vllm_v1_scrape2.txt"), T0).observed_ttft_ms == pytest.approx(190.0)
    parser.forget("a")
    assert parser.parse("a", fixture("vllm_v1_scrape2.txt"), T0).observed_ttft_ms == pytest.approx(190.0)


def test_vllm_v0_names_are_understood() -> None:
    sample = ExporterParser().parse("e", fixture("vllm_v0.txt"), T0)
    assert (sample.running_requests, sample.waiting_requests) == (5, 0)
    assert sample.kv_cache_usage_ratio == 0.25
    assert sample.observed_ttft_ms == pytest.approx(250.0)  # 2.5 s / 10
    assert sample.observed_tpot_ms == pytest.approx(30.0)  # 24 s / 800


def test_newer_vllm_names_win_over_older_ones_on_the_same_page() -> None:
    text = """# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.9
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.3
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 10.0
vllm:time_per_output_token_seconds_count{model_name="m"} 10.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 1.0
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{le="+Inf",model_name="m"} 10.0
vllm:inter_token_latency_seconds_count{model_name="m"} 10.0
vllm:inter_token_latency_seconds_sum{model_name="m"} 0.25
"""
    sample = ExporterParser().parse("e", text, T0)
    assert sample.kv_cache_usage_ratio == 0.3
    assert sample.observed_tpot_ms == pytest.approx(25.0)


def test_several_vllm_engines_on_one_page_are_summed_and_averaged() -> None:
    text = """vllm:num_requests_running{engine="0",model_name="m"} 3
vllm:num_requests_running{engine="1",model_name="m"} 4
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 2
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 1.0
vllm:time_to_first_token_seconds_count{engine="1",model_name="m"} 3
vllm:time_to_first_token_seconds_sum{engine="1",model_name="m"} 0.5
"""  # no HELP/TYPE lines at all: read the same
    sample = ExporterParser().parse("e", text, T0)
    assert sample.running_requests == 7
    assert sample.kv_cache_usage_ratio == 0.5
    assert sample.observed_ttft_ms == pytest.approx(300.0)  # 1.5 s over 5 observations


def test_dcgm_power_is_summed_and_utilisation_averaged() -> None:
    node = ExporterParser().parse("node", fixture("dcgm_p5_node.txt"), T0)
    assert node.power_w == pytest.approx(1666.25)
    assert node.utilization_ratio == pytest.approx((87 + 93 + 41) / 8 / 100)
    assert node.running_requests is None and node.kv_cache_usage_ratio is None


def test_label_filter_keeps_one_pods_gpus_of_a_node_wide_exporter() -> None:
    parser = ExporterParser(label_filter={"pod": "h100-llama70b-0"})
    sample = parser.parse("h100-llama70b-0", fixture("dcgm_p5_node.txt"), T0)
    assert sample.power_w == pytest.approx(512.345 + 498.655)
    assert sample.utilization_ratio == pytest.approx(0.90)


def test_neuron_monitor_utilisation_is_the_mean_over_neuroncores() -> None:
    sample = ExporterParser().parse("trn1-llama8b-0", fixture("neuron_monitor_trn1.txt"), T0)
    assert sample.utilization_ratio == pytest.approx(0.75)
    assert sample.power_w is None  # neuron-monitor's exporter publishes no power reading


def test_one_page_with_several_exporters() -> None:
    page = fixture("vllm_v1_scrape1.txt") + fixture("neuron_monitor_trn1.txt")
    sample = ExporterParser().parse("trn1-llama8b-0", page, T0)
    assert (sample.running_requests, sample.kv_cache_usage_ratio) == (12, 0.4375)
    assert sample.utilization_ratio == pytest.approx(0.75)
    gpu_page = fixture("vllm_v0.txt") + fixture("dcgm_p5_node.txt")
    gpu = ExporterParser(label_filter={}).parse("h100", gpu_page, T0)
    assert gpu.running_requests == 5 and gpu.power_w == pytest.approx(1666.25)


# --- parsing: bad pages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "vllm:num_requests_running{engine=0} 1",
        'vllm:num_requests_running{engine="0" 1',
        "vllm:num_requests_running twelve",
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{",
        '{engine="0"} 3',
        "<html><body>502 Bad Gateway</body></html>",
    ],
)
def test_malformed_text_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="malformed Prometheus text"):
        ExporterParser().parse("e", text, T0)


def test_page_without_supported_metrics_is_refused() -> None:
    page = "# TYPE node_load1 gauge\nnode_load1 0.42\n"
    with pytest.raises(ValueError, match="no supported metrics"):
        ExporterParser().parse("e", page, T0)
    with pytest.raises(ValueError, match="no supported metrics"):
        ExporterParser().parse("e", "", T0)


def test_fractional_or_nan_request_count_is_refused() -> None:
    with pytest.raises(ValueError, match="vllm:num_requests_running must be a whole number"):
        ExporterParser().parse("e", 'vllm:num_requests_running{engine="0"} 2.5\n', T0)
    with pytest.raises(ValueError, match="whole number"):
        ExporterParser().parse("e", 'vllm:num_requests_waiting{engine="0"} NaN\n', T0)


def test_nan_gauges_pass_through_for_the_store_to_reject() -> None:
    sample = ExporterParser().parse("e", 'vllm:kv_cache_usage_perc{engine="0"} NaN\n', T0)
    assert sample.kv_cache_usage_ratio is not None and math.isnan(sample.kv_cache_usage_ratio)
    known = {"e": EndpointLoad()}
    assert validate_sample(sample, known=known, now_s=T0, max_future_skew_s=5.0) == (
        "kv_cache_usage_ratio",
        "must be a finite number in [0, 1]",
    )


def test_failed_parse_does_not_move_the_histogram_history() -> None:
    parser = ExporterParser()
    parser.parse("e", fixture("vllm_v1_scrape1.txt"), T0)
    broken = fixture("vllm_v1_scrape2.txt") + "vllm:num_requests_running{engine= 1\n"
    with pytest.raises(ValueError):
        parser.parse("e", broken, T0 + 5)
    assert parser.parse("e", fixture("vllm_v1_scrape2.txt"), T0 + 10).observed_ttft_ms == pytest.approx(300.0)


def test_non_str_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be str"):
        ExporterParser().parse("e", b"vllm:num_requests_running 1", T0)  # type: ignore[arg-type]


_lines = st.sampled_from(
    fixture("vllm_v1_scrape1.txt").splitlines() + fixture("dcgm_p5_node.txt").splitlines()
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(_lines, max_size=30).map("\n".join),
        st.tuples(st.lists(_lines, min_size=1, max_size=30), st.text(max_size=20), st.integers(0, 5000)).map(
            lambda t: (lambda s: s[: t[2] % (len(s) + 1)] + t[1] + s[t[2] % (len(s) + 1) :])("\n".join(t[0]))
        ),
    )
)
def test_any_text_gives_a_sample_or_a_value_error_never_a_crash(text: str) -> None:
    try:
        sample = ExporterParser().parse("e", text, T0)
    except ValueError:
        return
    assert isinstance(sample, TelemetrySample)
    assert sample.endpoint_id == "e" and sample.observed_at_s == T0
