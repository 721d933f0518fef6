"""Catalog: shipped instance data, estimates, overrides, the printed table."""

from __future__ import annotations

import dataclasses
import math
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.catalog import (
    GB,
    GIB,
    OVERRIDABLE_FIELDS,
    TERA,
    format_catalog_table,
    load_catalog,
    load_estimates,
)
from fleet.types import Precision

KIND_BY_PREFIX = {
    "p5.": "h100",
    "p5e.": "h200",
    "p5en.": "h200",
    "p6-b200.": "b200",
    "trn1.": "trn1",
    "trn2.": "trn2",
    "inf2.": "inf2",
    "g5.": "a10g",
    "g6.": "l4",
}
NUMERIC_FIELDS = (
    "chips",
    "memory_bytes_per_chip",
    "memory_bandwidth_bytes_per_s_per_chip",
    "bf16_dense_flops_per_chip",
    "fp8_dense_flops_per_chip",
    "chip_tdp_w",
    "chip_idle_w",
    "price_usd_per_hour",
)


def test_p5_48xlarge_figures_and_sources() -> None:
    p5 = load_catalog().instance("p5.48xlarge")
    assert p5.price_usd_per_hour == 55.04
    assert "skypilot-org/skypilot-catalog" in p5.sources["price_usd_per_hour"]
    assert p5.chips == 8
    assert p5.accelerator_kind == "h100"
    assert p5.family == "nvidia-hopper"
    assert p5.memory_bytes_per_chip == 80 * GB
    assert p5.memory_bandwidth_bytes_per_s_per_chip == pytest.approx(3.35 * TERA)
    assert p5.bf16_dense_flops_per_chip == pytest.approx(989.4 * TERA)
    assert p5.fp8_dense_flops_per_chip == pytest.approx(1978.9 * TERA)
    assert p5.chip_tdp_w == 700
    assert "glennklockwood.com" in p5.sources["chip_tdp_w"]
    assert p5.price_usd_per_chip_hour == pytest.approx(6.88)
    # Idle power is the one estimate on a p5: 20% of TDP, marked.
    assert p5.estimated_fields == frozenset({"chip_idle_w"})
    assert p5.chip_idle_w == pytest.approx(140.0)
    assert p5.sources["chip_idle_w"].startswith("ESTIMATE")
    assert p5.can_train and p5.can_serve
    assert Precision.FP8 in p5.precisions and Precision.FP4 not in p5.precisions


def test_neuron_memory_is_gib_and_nvidia_memory_is_gb() -> None:
    catalog = load_catalog()
    assert catalog.instance("trn1.32xlarge").memory_bytes_per_chip == 32 * GIB
    assert catalog.instance("inf2.48xlarge").memory_bytes_per_chip == 32 * GIB
    assert catalog.instance("trn2.48xlarge").memory_bytes_per_chip == 96 * GIB
    assert catalog.instance("p5en.48xlarge").memory_bytes_per_chip == 141 * GB
    assert catalog.instance("p6-b200.48xlarge").memory_bytes_per_chip == 180 * GB


def test_kinds_follow_instance_families() -> None:
    catalog = load_catalog()
    assert len(catalog.instance_types) == 14
    assert catalog.kinds() == frozenset({"h100", "h200", "b200", "trn1", "trn2", "inf2", "a10g", "l4"})
    for name, inst in catalog.instance_types.items():
        prefix = name.split(".")[0] + "."
        assert inst.accelerator_kind == KIND_BY_PREFIX[prefix], name
    families = {t.accelerator_kind: t.family for t in catalog.instance_types.values()}
    assert families["trn1"] == families["inf2"] == "neuron-v2"
    assert families["trn2"] == "neuron-v3"
    assert families["b200"] == "nvidia-blackwell"


def test_inferentia2_cannot_train_as_data() -> None:
    catalog = load_catalog()
    assert "inf2" not in catalog.trainable_kinds()
    assert {"trn1", "trn2", "h100", "h200", "b200"} <= catalog.trainable_kinds()
    inf2 = catalog.instance("inf2.48xlarge")
    assert inf2.can_serve and not inf2.can_train
    assert "inference" in inf2.sources["can_train"]
    # The capability is a column of the shipped data, not code.
    text = resources.files("fleet").joinpath("data", "accelerators.csv").read_text()
    inf2_row = next(line for line in text.splitlines() if line.startswith("AWS Inferentia2"))
    assert ",false,true," in inf2_row


def test_estimates_fill_figures_without_public_source() -> None:
    catalog = load_catalog()
    trn2 = catalog.instance("trn2.48xlarge")
    assert trn2.price_usd_per_hour == pytest.approx(44.31)
    assert {"price_usd_per_hour", "chip_tdp_w", "chip_idle_w"} <= trn2.estimated_fields
    assert trn2.chip_tdp_w == 500
    assert trn2.sources["price_usd_per_hour"].startswith("ESTIMATE")
    assert catalog.instance("trn1.32xlarge").chip_tdp_w == 250
    assert catalog.instance("inf2.xlarge").chip_tdp_w == 200
    p5e = catalog.instance("p5e.48xlarge")
    assert p5e.price_usd_per_hour == pytest.approx(63.296)
    assert "price_usd_per_hour" in p5e.estimated_fields
    # Cited figures are not marked.
    assert "price_usd_per_hour" not in catalog.instance("p5en.48xlarge").estimated_fields


def test_estimates_file_gives_reasoning_and_basis() -> None:
    estimates = load_estimates()
    fields = {(e.target, e.field) for e in estimates}
    assert {
        ("trn2.48xlarge", "price_usd_per_hour"),
        ("p5e.48xlarge", "price_usd_per_hour"),
        ("trn1", "chip_tdp_w"),
        ("trn2", "chip_tdp_w"),
        ("inf2", "chip_tdp_w"),
        ("*", "idle_fraction_of_tdp"),
    } == fields
    for e in estimates:
        assert e.reasoning.startswith("ESTIMATE"), e
        assert e.basis_sources.strip(), e
        assert math.isfinite(e.value) and e.value > 0


def test_every_figure_has_a_source() -> None:
    for name, inst in load_catalog().instance_types.items():
        for f in NUMERIC_FIELDS:
            assert inst.sources.get(f, "").strip(), (name, f)
        for f in inst.estimated_fields:
            assert "ESTIMATE" in inst.sources[f], (name, f)


def test_a10g_has_no_citable_bandwidth_or_flops() -> None:
    g5 = load_catalog().instance("g5.xlarge")
    assert g5.memory_bandwidth_bytes_per_s_per_chip is None
    assert g5.bf16_dense_flops_per_chip is None
    assert "no citable figure" in g5.sources["memory_bandwidth_bytes_per_s_per_chip"]


def test_unknown_instance_lists_known_names() -> None:
    with pytest.raises(KeyError) as e:
        load_catalog().instance("p9.huge")
    assert "p9.huge" in str(e.value) and "p5.48xlarge" in str(e.value) and "trn2.48xlarge" in str(e.value)


def test_override_replaces_value_and_source_and_clears_estimate_mark() -> None:
    catalog = load_catalog({"trn2.48xlarge": {"price_usd_per_hour": (40.0, "our negotiated rate, 2026-10")}})
    trn2 = catalog.instance("trn2.48xlarge")
    assert trn2.price_usd_per_hour == 40.0
    assert trn2.sources["price_usd_per_hour"] == "override: our negotiated rate, 2026-10"
    assert "price_usd_per_hour" not in trn2.estimated_fields
    assert "chip_tdp_w" in trn2.estimated_fields  # untouched estimates stay marked


def test_overriding_tdp_rescales_the_estimated_idle_power() -> None:
    trn2 = load_catalog({"trn2.48xlarge": {"chip_tdp_w": (600, "measured, 2026-10")}}).instance(
        "trn2.48xlarge"
    )
    assert trn2.chip_tdp_w == 600
    assert trn2.chip_idle_w == pytest.approx(120.0)
    assert "chip_idle_w" in trn2.estimated_fields
    measured = load_catalog({"trn2.48xlarge": {"chip_idle_w": (90, "neuron-monitor, 2026-10")}})
    assert measured.instance("trn2.48xlarge").chip_idle_w == 90
    assert "chip_idle_w" not in measured.instance("trn2.48xlarge").estimated_fields


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"p9.huge": {"price_usd_per_hour": (1.0, "x")}}, "p9.huge"),
        ({"p5.48xlarge": {"colour": (1.0, "x")}}, "colour"),
        ({"p5.48xlarge": {"price_usd_per_hour": (-1.0, "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": (0.0, "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": (math.nan, "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": (math.inf, "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": (True, "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": ("40", "x")}}, "price_usd_per_hour.value"),
        ({"p5.48xlarge": {"chips": (2.5, "x")}}, "chips.value"),
        ({"p5.48xlarge": {"price_usd_per_hour": (40.0, " ")}}, "price_usd_per_hour.source"),
        ({"p5.48xlarge": {"price_usd_per_hour": 40.0}}, "price_usd_per_hour"),
        ({"p5.48xlarge": {"chip_idle_w": (800.0, "x")}}, "chip_idle_w"),
    ],
)
def test_bad_overrides_are_refused_naming_the_field(overrides: dict, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        load_catalog(overrides)
    assert needle in str(e.value)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["p5.48xlarge", "trn2.48xlarge", "inf2.xlarge", "g6.xlarge"]),
    field=st.sampled_from([f for f in OVERRIDABLE_FIELDS if f not in ("chip_idle_w", "chip_tdp_w")]),
    value=st.integers(min_value=1, max_value=10**15),
)
def test_any_valid_override_is_applied_exactly(name: str, field: str, value: int) -> None:
    inst = load_catalog({name: {field: (value, "test source")}}).instance(name)
    assert getattr(inst, field) == value
    assert inst.sources[field] == "override: test source"
    assert field not in inst.estimated_fields


def test_catalog_values_are_immutable() -> None:
    catalog = load_catalog()
    p5 = catalog.instance("p5.48xlarge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p5.price_usd_per_hour = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalog.instance_types["x"] = p5  # type: ignore[index]
    with pytest.raises(TypeError):
        p5.sources["price_usd_per_hour"] = "x"  # type: ignore[index]


def test_format_catalog_table_shows_prices_marks_and_sources() -> None:
    table = format_catalog_table(load_catalog())
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["type", "kind", "chips"]
    for name in load_catalog().instance_types:
        assert any(line.startswith(name + " ") for line in lines), name
    p5_line = next(line for line in lines if line.startswith("p5.48xlarge "))
    assert "55.040" in p5_line and "6.880" in p5_line and "989.4" in p5_line
    trn2_line = next(line for line in lines if line.startswith("trn2.48xlarge "))
    assert "44.310*" in trn2_line and "500*" in trn2_line
    assert "* estimate" in table
    assert "skypilot-org/skypilot-catalog" in table
    assert "idle_fraction_of_tdp" in table


def test_format_catalog_table_marks_overrides() -> None:
    catalog = load_catalog({"trn2.48xlarge": {"price_usd_per_hour": (40.0, "our negotiated rate, 2026-10")}})
    table = format_catalog_table(catalog)
    trn2_line = next(line for line in table.splitlines() if line.startswith("trn2.48xlarge "))
    assert "40.000+" in trn2_line
    assert "trn2.48xlarge price_usd_per_hour: override: our negotiated rate, 2026-10" in table


def test_licence_and_attribution_are_shipped() -> None:
    data = resources.files("fleet").joinpath("data")
    licence = data.joinpath("LICENSE-DOCUMENTATION").read_text()
    assert "Creative Commons Attribution-ShareAlike 4.0" in licence
    sources = data.joinpath("SOURCES.md").read_text()
    assert "CC-BY-SA 4.0" in sources and "81ce03ae261e12925e53437a0f690478e6366155" in sources
    assert (
        data.joinpath("aws_neuron_sdk", "inf2_throughput_data_decoder.csv").read_text().startswith("Model,")
    )
