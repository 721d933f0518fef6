"""Performance and power model: memory fit, roofline timings, monotonicity, power, measured overrides."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.catalog import load_catalog
from fleet.measured import load_measured_profiles
from fleet.models import load_models
from fleet.perf import (
    PRIOR_EFFICIENCY,
    FamilyEfficiency,
    PerformanceModel,
    RooflineProfile,
    default_performance_model,
    kv_bytes_per_element,
)
from fleet.types import Precision

CATALOG = load_catalog()
MODELS = load_models()
PERF = default_performance_model(CATALOG, MODELS)

# Classes that fit at full context, across every family.
CLASSES = [
    ("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8),
    ("llama-3.1-70b", "p5.48xlarge", 2, Precision.FP8),
    ("llama-3.1-70b", "p5en.48xlarge", 2, Precision.BF16),
    ("llama-3.1-70b", "p6-b200.48xlarge", 1, Precision.FP4),
    ("llama-3.1-405b", "p5.48xlarge", 8, Precision.FP8),
    ("llama-3.1-8b", "trn1.32xlarge", 2, Precision.BF16),
    ("llama-3.1-70b", "trn2.48xlarge", 4, Precision.BF16),
    ("llama-3.1-8b", "inf2.48xlarge", 2, Precision.BF16),
    ("llama-3.1-70b", "inf2.48xlarge", 12, Precision.BF16),
    ("llama-3.1-8b", "g6.xlarge", 1, Precision.FP8),
]


def test_memory_fit_examples() -> None:
    assert PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8).fits
    assert PERF.profile("llama-3.1-8b", "p5.4xlarge", 1, Precision.FP8).fits
    assert not PERF.profile("llama-3.1-405b", "p5.48xlarge", 8, Precision.BF16).fits  # 812 GB > 576 GB
    assert PERF.profile("llama-3.1-405b", "p5.48xlarge", 8, Precision.FP8).fits
    assert not PERF.profile("llama-3.1-70b", "p5.48xlarge", 1, Precision.BF16).fits
    assert PERF.profile("llama-3.1-70b", "trn2.48xlarge", 4, Precision.BF16).fits
    # An 8B bf16 replica on one Inferentia2 chip holds a 32k context but not the full 128k one.
    assert not PERF.profile("llama-3.1-8b", "inf2.xlarge", 1, Precision.BF16).fits
    assert PERF.profile("llama-3.1-8b", "inf2.xlarge", 1, Precision.BF16, max_context_tokens=32768).fits


def test_fit_arithmetic_for_8b_on_one_h100() -> None:
    p = PERF.roofline("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    usable = 80 * 10**9 - math.ceil(80 * 10**9 * 0.10)
    assert p.usable_memory_bytes == usable
    assert p.weight_bytes == 8_030_261_248
    assert p.kv_bytes_per_token == 65_536  # fp8 KV cache
    assert p.kv_capacity_tokens == (usable - 8_030_261_248) // 65_536
    assert kv_bytes_per_element(Precision.BF16) == 2.0 and kv_bytes_per_element(Precision.FP8) == 1.0


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(["llama-3.1-8b", "llama-3.1-70b", "llama-3-8b", "llama-2-7b"]),
    precision=st.sampled_from([Precision.BF16, Precision.FP8, Precision.INT8]),
    context=st.integers(1, 4096),
)
def test_fit_is_exact_at_the_boundary(model: str, precision: Precision, context: int) -> None:
    arch = MODELS.get(model)
    need = arch.weight_bytes(precision) + arch.kv_bytes_per_token(kv_bytes_per_element(precision)) * context
    for memory, fits in ((need, True), (need - 1, False)):
        catalog = load_catalog({"p5.4xlarge": {"memory_bytes_per_chip": (memory, "boundary test")}})
        perf = PerformanceModel(catalog, MODELS, memory_reserve_fraction=0.0)
        p = perf.roofline(model, "p5.4xlarge", 1, precision, max_context_tokens=context)
        assert p.fits is fits
        assert p.kv_capacity_tokens == (context if fits else context - 1)


@settings(max_examples=200, deadline=None)
@given(
    cls=st.sampled_from([*CLASSES, ("llama-3.1-405b", "p5.48xlarge", 8, Precision.BF16)]),
    context=st.integers(1, 131072),
    reserve=st.sampled_from([0.0, 0.05, 0.1, 0.2]),
)
def test_fits_agrees_with_kv_capacity(
    cls: tuple[str, str, int, Precision], context: int, reserve: float
) -> None:
    perf = PerformanceModel(CATALOG, MODELS, memory_reserve_fraction=reserve)
    model, instance_type, tp, precision = cls
    p = perf.roofline(model, instance_type, tp, precision, max_context_tokens=context)
    assert p.fits == (p.kv_capacity_tokens >= context)
    assert p.fits == (p.weight_bytes + p.kv_bytes_per_token * context <= p.usable_memory_bytes)


@settings(max_examples=300, deadline=None)
@given(
    cls=st.sampled_from(CLASSES),
    b1=st.integers(1, 4096),
    b2=st.integers(1, 4096),
    c1=st.integers(0, 131072),
    c2=st.integers(0, 131072),
)
def test_tpot_is_monotonic_in_batch_and_context(cls: tuple, b1: int, b2: int, c1: int, c2: int) -> None:
    p = PERF.profile(*cls)
    lo_b, hi_b = sorted((b1, b2))
    lo_c, hi_c = sorted((c1, c2))
    assert p.tpot_ms(lo_b, lo_c) <= p.tpot_ms(hi_b, lo_c) <= p.tpot_ms(hi_b, hi_c)
    assert p.tpot_ms(lo_b, lo_c) <= p.tpot_ms(lo_b, hi_c)
    assert p.tpot_ms(lo_b, lo_c) > 0


@settings(max_examples=300, deadline=None)
@given(
    cls=st.sampled_from(CLASSES),
    n1=st.integers(0, 131072),
    n2=st.integers(0, 131072),
    q1=st.integers(0, 10**6),
    q2=st.integers(0, 10**6),
)
def test_ttft_is_monotonic_in_length_and_queue(cls: tuple, n1: int, n2: int, q1: int, q2: int) -> None:
    p = PERF.profile(*cls)
    lo_n, hi_n = sorted((n1, n2))
    lo_q, hi_q = sorted((q1, q2))
    assert p.ttft_ms(lo_n, lo_q) <= p.ttft_ms(hi_n, lo_q) <= p.ttft_ms(hi_n, hi_q)
    assert p.ttft_ms(lo_n, lo_q) <= p.ttft_ms(lo_n, hi_q)
    assert p.ttft_ms(lo_n, lo_q) > 0


@settings(max_examples=300, deadline=None)
@given(cls=st.sampled_from(CLASSES), target=st.floats(0.0, 500.0), context=st.integers(0, 131072))
def test_max_batch_for_tpot_is_the_largest_feasible_batch(cls: tuple, target: float, context: int) -> None:
    p = PERF.profile(*cls)
    b = p.max_batch_for_tpot(target, context)
    c = max(context, 1)
    assert b >= 0
    assert b * c <= p.kv_capacity_tokens
    if b > 0:
        assert p.tpot_ms(b, c) <= target
    # One more sequence breaks the target or the memory.
    assert p.tpot_ms(b + 1, c) > target or (b + 1) * c > p.kv_capacity_tokens


def test_max_batch_for_tpot_edge_targets() -> None:
    p = PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    assert p.max_batch_for_tpot(0.0, 1000) == 0
    assert p.max_batch_for_tpot(math.nan, 1000) == 0
    assert p.max_batch_for_tpot(math.inf, 1000) == p.kv_capacity_tokens // 1000
    assert p.max_batch_for_tpot(60.0, 1000) > p.max_batch_for_tpot(20.0, 1000) > 0


@settings(max_examples=200, deadline=None)
@given(
    cls=st.sampled_from(CLASSES), b=st.integers(1, 2048), c=st.integers(0, 131072), n=st.integers(0, 50000)
)
def test_public_times_equal_their_components(cls: tuple, b: int, c: int, n: int) -> None:
    p = PERF.roofline(*cls)
    w, kv, mm, att = p.decode_components_ms(b, c)
    assert p.tpot_ms(b, c) == pytest.approx(max(w + kv, mm + att) + p.decode_overhead_ms, rel=1e-12)
    w, kv, mm, att = p.prefill_components_ms(n, 3 * n)
    assert p.ttft_ms(n, 3 * n) == pytest.approx(max(w + kv, mm + att) + p.prefill_overhead_ms, rel=1e-12)


def test_roofline_magnitudes_are_physical() -> None:
    h100 = PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    # Reading 8 GB of weights at 3.35 TB/s takes 2.4 ms; one decode step cannot be faster.
    assert 2.4 < h100.tpot_ms(1, 1000) < 30
    assert h100.tpot_ms(256, 2000) > h100.tpot_ms(1, 2000)
    # Published: Llama-3-70B bf16 on 12 Inferentia2 chips, batch 1, TPOT 32.2-34.7 ms (in the fit data).
    inf2 = PERF.profile("llama-3-70b", "inf2.48xlarge", 12, Precision.BF16)
    assert inf2.tpot_ms(1, 1100) == pytest.approx(33.0, rel=0.25)
    # A 5000-token prompt on H100 x2 (NIM, concurrency 1): 407 ms published TTFT.
    nim = PERF.profile("llama-3.3-70b", "p5.48xlarge", 2, Precision.FP8)
    assert nim.ttft_ms(5000) == pytest.approx(407, rel=0.35)


def test_power_is_linear_between_idle_and_tdp() -> None:
    p = PERF.profile("llama-3.1-70b", "p5.48xlarge", 2, Precision.FP8)
    assert p.max_power_w == 1400.0
    assert p.idle_power_w == pytest.approx(280.0)
    assert p.power_w(0.0) == pytest.approx(280.0)
    assert p.power_w(1.0) == pytest.approx(1400.0)
    assert p.power_w(0.5) == pytest.approx(840.0)
    assert p.power_w(-3.0) == pytest.approx(280.0) and p.power_w(7.0) == pytest.approx(1400.0)
    trn2 = PERF.profile("llama-3.1-70b", "trn2.48xlarge", 4, Precision.BF16)
    assert trn2.max_power_w == 2000.0  # 4 x the 500 W Trainium2 estimate


@settings(max_examples=100, deadline=None)
@given(cls=st.sampled_from(CLASSES), u1=st.floats(0, 1), u2=st.floats(0, 1))
def test_power_is_monotonic(cls: tuple, u1: float, u2: float) -> None:
    p = PERF.profile(*cls)
    lo, hi = sorted((u1, u2))
    assert p.idle_power_w <= p.power_w(lo) <= p.power_w(hi) <= p.max_power_w


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("llama-3.1-8b", "p5.48xlarge", 0, Precision.FP8), "tp_degree"),
        (("llama-3.1-8b", "p5.48xlarge", 9, Precision.FP8), "tp_degree"),
        (("llama-3.1-8b", "trn2.48xlarge", 17, Precision.BF16), "tp_degree"),
        (("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP4), "precision"),
        (("llama-3.1-8b", "g5.xlarge", 1, Precision.BF16), "catalog.overrides"),
    ],
)
def test_impossible_classes_raise_value_error(args: tuple, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        PERF.profile(*args)
    assert needle in str(e.value)


def test_unknown_names_raise_key_error_and_bad_context_value_error() -> None:
    with pytest.raises(KeyError, match=r"llama-3\.1-8b"):
        PERF.profile("llama-9", "p5.48xlarge", 1, Precision.FP8)
    with pytest.raises(KeyError, match=r"p5\.48xlarge"):
        PERF.profile("llama-3.1-8b", "p9.huge", 1, Precision.FP8)
    with pytest.raises(ValueError, match="max_context_tokens"):
        PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8, max_context_tokens=131073)


def test_a10g_can_be_modelled_once_its_figures_are_supplied() -> None:
    catalog = load_catalog(
        {
            "g5.xlarge": {
                "memory_bandwidth_bytes_per_s_per_chip": (600e9, "vendor datasheet, our copy"),
                "bf16_dense_flops_per_chip": (70e12, "vendor datasheet, our copy"),
            }
        }
    )
    p = PerformanceModel(catalog, MODELS).profile("llama-3.1-8b", "g5.xlarge", 1, Precision.BF16, 8192)
    assert p.fits and p.tpot_ms(1, 100) > 16e9 / 600e9 * 1000


def test_profiles_are_cached_and_sourced() -> None:
    a = PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    assert PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8) is a
    assert a.source.startswith("roofline(nvidia-hopper: fitted on ")
    prior = PerformanceModel(CATALOG, MODELS).profile("llama-3.1-8b", "g6.xlarge", 1, Precision.FP8)
    assert prior.source.startswith("roofline(nvidia-ada: prior")


def test_default_model_is_fitted_per_family_and_deterministic() -> None:
    assert set(PERF.efficiency) == {"neuron-v2", "neuron-v3", "nvidia-hopper", "nvidia-blackwell"}
    for e in PERF.efficiency.values():
        assert e.source.startswith("fitted on ")
    assert PERF.efficiency_for("nvidia-ada") is PRIOR_EFFICIENCY
    from fleet.calibration import fit_efficiency, load_published_rows

    refit = fit_efficiency(load_published_rows(MODELS, CATALOG), CATALOG, MODELS)
    assert refit == dict(PERF.efficiency)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weight_bandwidth_ratio": 0.0},
        {"kv_bandwidth_ratio": 1.5},
        {"matmul_flops_ratio": math.nan},
        {"decode_overhead_ms_per_layer": -0.1},
        {"prefill_overhead_ms_per_layer": math.inf},
    ],
)
def test_family_efficiency_is_validated(kwargs: dict) -> None:
    values = dict(
        weight_bandwidth_ratio=0.7,
        kv_bandwidth_ratio=0.5,
        matmul_flops_ratio=0.5,
        attention_flops_ratio=0.3,
        decode_overhead_ms_per_layer=0.02,
        prefill_overhead_ms_per_layer=0.1,
        source="test",
    )
    values.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FamilyEfficiency(**values)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_reserve_fraction"):
        PerformanceModel(CATALOG, MODELS, memory_reserve_fraction=1.0)


def test_measured_profiles_override_the_roofline(tmp_path: Path) -> None:
    path = tmp_path / "h100.csv"
    path.write_text(
        "model,instance_type,tp_degree,precision,batch,input_tokens,context_tokens,ttft_ms,tpot_ms,source\n"
        "llama-3.1-8b,p5.48xlarge,1,fp8,1,512,600,20.0,7.0,bench run 1\n"
        "llama-3.1-8b,p5.48xlarge,1,fp8,64,512,600,400.0,11.0,bench run 2\n"
    )
    perf = PERF.with_measured(load_measured_profiles(path))
    p = perf.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    roofline = PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8)
    assert p.source == f"measured:{path}"
    assert p.tpot_ms(1, 600) == 7.0 and p.tpot_ms(64, 600) == 11.0
    assert p.fits == roofline.fits and p.kv_capacity_tokens == roofline.kv_capacity_tokens
    assert p.max_power_w == roofline.max_power_w and p.power_w(0.5) == roofline.power_w(0.5)
    # Other classes keep the roofline; the original model is unchanged.
    assert isinstance(perf.profile("llama-3.1-70b", "p5.48xlarge", 2, Precision.FP8), RooflineProfile)
    assert PERF.profile("llama-3.1-8b", "p5.48xlarge", 1, Precision.FP8) is roofline


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("llama-9,p5.48xlarge,1,fp8,1,512,600,20.0,7.0,x", "llama-9"),
        ("llama-3.1-8b,p9.huge,1,fp8,1,512,600,20.0,7.0,x", "p9.huge"),
        ("llama-3.1-8b,p5.48xlarge,16,fp8,1,512,600,20.0,7.0,x", "tp_degree"),
        ("llama-3.1-8b,p5.48xlarge,1,fp4,1,512,600,20.0,7.0,x", "precision"),
    ],
)
def test_measured_profiles_for_impossible_classes_are_refused(tmp_path: Path, row: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "model,instance_type,tp_degree,precision,batch,input_tokens,context_tokens,ttft_ms,tpot_ms,source\n"
        + row
        + "\n"
    )
    with pytest.raises(ValueError) as e:
        PERF.with_measured(load_measured_profiles(path))
    assert str(path) in str(e.value) and needle in str(e.value)


def test_two_measured_profiles_for_one_class_are_refused(tmp_path: Path) -> None:
    header = (
        "model,instance_type,tp_degree,precision,batch,input_tokens,context_tokens,ttft_ms,tpot_ms,source\n"
    )
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for p in (a, b):
        p.write_text(header + "llama-3.1-8b,p5.48xlarge,1,fp8,1,512,600,20.0,7.0,x\n")
    with pytest.raises(ValueError, match="already loaded"):
        PERF.with_measured(load_measured_profiles(a) + load_measured_profiles(b))


def test_steady_state_step_includes_prefill_work() -> None:
    p = PERF.roofline("llama-3.3-70b", "p5.48xlarge", 2, Precision.FP8)
    assert p.steady_state_step_ms(50, 5000, 500) > p.tpot_ms(50, 5250)
    assert p.steady_state_step_ms(50, 0, 500) == pytest.approx(p.tpot_ms(50, 250))
