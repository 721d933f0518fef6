"""Pool expansion into endpoints, and every refusal with its config path."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.catalog import load_catalog
from fleet.inventory import InventoryError, expand_pools
from fleet.models import load_models
from fleet.types import PoolSpec, Precision, ZoneSpec

CATALOG = load_catalog()
MODELS = load_models()
ZONES = (
    ZoneSpec(name="use1-az1", region="us-east-1", power_cap_w=60000),
    ZoneSpec(name="use1-az2", region="us-east-1", power_cap_w=40000),
)


def pool(**kw: Any) -> PoolSpec:
    base: dict[str, Any] = dict(
        name="h100-llama8b",
        zone="use1-az1",
        instance_type="p5.48xlarge",
        model="llama-3.1-8b",
        tp_degree=1,
        precision=Precision.FP8,
        instances=1,
        address_template="{pool}-{index}.serving.svc:8000",
    )
    base.update(kw)
    return PoolSpec(**base)


def test_one_h100_instance_becomes_eight_replicas() -> None:
    eps = expand_pools(
        [pool(metrics_url_template="http://{pool}-{index}.serving.svc:8000/metrics", reserved=True)],
        ZONES,
        CATALOG,
        MODELS,
    )
    assert [e.endpoint_id for e in eps] == [f"use1-az1/h100-llama8b/{i}" for i in range(8)]
    first = eps[0]
    assert first.address == "h100-llama8b-0.serving.svc:8000"
    assert first.metrics_url == "http://h100-llama8b-0.serving.svc:8000/metrics"
    assert (first.zone, first.region, first.pool) == ("use1-az1", "us-east-1", "h100-llama8b")
    assert (first.instance_type, first.accelerator_kind, first.model) == (
        "p5.48xlarge",
        "h100",
        "llama-3.1-8b",
    )
    assert (first.tp_degree, first.chips, first.precision) == (1, 1, Precision.FP8)
    assert first.price_usd_per_hour == pytest.approx(6.88)  # 55.04 x 1 / 8
    assert first.max_context_tokens == 131072
    assert first.max_batch_sequences == 256  # the engine default unless the pool says otherwise
    assert first.reserved and first.expects_telemetry


def test_tensor_parallel_replicas_and_several_instances() -> None:
    eps = expand_pools(
        [
            pool(
                name="h100-llama70b", model="llama-3.1-70b", tp_degree=2, instances=2, expects_telemetry=False
            )
        ],
        ZONES,
        CATALOG,
        MODELS,
    )
    assert len(eps) == 8  # 2 instances x 8 chips / 2
    assert [e.endpoint_id.rsplit("/", 1)[1] for e in eps] == [str(i) for i in range(8)]
    assert all(e.price_usd_per_hour == pytest.approx(13.76) and e.chips == 2 for e in eps)
    assert not any(e.expects_telemetry for e in eps) and all(e.metrics_url is None for e in eps)


def test_pool_price_override_and_neuron_chips() -> None:
    eps = expand_pools(
        [
            pool(
                name="trn2-llama70b",
                zone="use1-az2",
                instance_type="trn2.48xlarge",
                model="llama-3.1-70b",
                tp_degree=4,
                precision=Precision.BF16,
                price_usd_per_hour=40.0,
            )
        ],
        ZONES,
        CATALOG,
        MODELS,
    )
    assert len(eps) == 4
    assert all(e.price_usd_per_hour == pytest.approx(10.0) for e in eps)
    assert eps[0].endpoint_id == "use1-az2/trn2-llama70b/0" and eps[0].accelerator_kind == "trn2"


def test_fewer_replicas_per_instance_carry_the_whole_instance_price() -> None:
    eps = expand_pools([pool(replicas_per_instance=2, instances=3)], ZONES, CATALOG, MODELS)
    assert len(eps) == 6
    assert all(e.price_usd_per_hour == pytest.approx(27.52) for e in eps)
    assert sum(e.price_usd_per_hour for e in eps) == pytest.approx(3 * 55.04)


def test_shorter_context_lets_a_model_fit() -> None:
    small = pool(name="inf2-8b", instance_type="inf2.xlarge", precision=Precision.BF16)
    with pytest.raises(InventoryError) as e:
        expand_pools([small], ZONES, CATALOG, MODELS)
    assert e.value.path == "pools[0].tp_degree" and "needs" in e.value.rule
    eps = expand_pools([dataclasses.replace(small, max_context_tokens=32768)], ZONES, CATALOG, MODELS)
    assert len(eps) == 1 and eps[0].max_context_tokens == 32768


def test_a_pool_sets_its_engines_sequence_limit() -> None:
    eps = expand_pools([pool(max_batch_sequences=64)], ZONES, CATALOG, MODELS)
    assert eps and all(e.max_batch_sequences == 64 for e in eps)


def test_a_pool_sets_its_engines_token_budget_per_step() -> None:
    assert all(e.max_batched_tokens == 2048 for e in expand_pools([pool()], ZONES, CATALOG, MODELS))
    eps = expand_pools([pool(max_batched_tokens=8192)], ZONES, CATALOG, MODELS)
    assert eps and all(e.max_batched_tokens == 8192 for e in eps)


def test_pools_expand_in_order_across_zones() -> None:
    eps = expand_pools(
        [
            pool(),
            pool(
                name="inf2-llama70b",
                zone="use1-az2",
                instance_type="inf2.48xlarge",
                model="llama-3.1-70b",
                tp_degree=12,
                precision=Precision.BF16,
            ),
        ],
        ZONES,
        CATALOG,
        MODELS,
    )
    assert [e.endpoint_id for e in eps][-2:] == ["use1-az1/h100-llama8b/7", "use1-az2/inf2-llama70b/0"]
    assert eps[-1].price_usd_per_hour == pytest.approx(12.98127)


@pytest.mark.parametrize(
    ("pools", "path", "needle"),
    [
        ([pool(zone="eu-nowhere")], "pools[0].zone", "use1-az1"),
        ([pool(instance_type="p9.huge")], "pools[0].instance_type", "p5.48xlarge"),
        ([pool(model="llama-9")], "pools[0].model", "llama-3.1-8b"),
        ([pool(tp_degree=3)], "pools[0].tp_degree", "divide"),
        ([pool(tp_degree=0)], "pools[0].tp_degree", "divide"),
        ([pool(tp_degree=16)], "pools[0].tp_degree", "divide"),
        (
            [pool(model="llama-3.1-405b", tp_degree=8, precision=Precision.BF16)],
            "pools[0].tp_degree",
            "needs 879.4 GB (weights 811.7 GB",
        ),
        ([pool(precision=Precision.FP4)], "pools[0].precision", "fp4"),
        ([pool(), pool()], "pools[1].name", "duplicate"),
        ([pool(name="a/b")], "pools[0].name", "'/'"),
        ([pool(instances=0)], "pools[0].instances", ">= 1"),
        ([pool(replicas_per_instance=9)], "pools[0].replicas_per_instance", "1..8"),
        ([pool(replicas_per_instance=0)], "pools[0].replicas_per_instance", "1..8"),
        ([pool(max_context_tokens=0)], "pools[0].max_context_tokens", "1..131072"),
        ([pool(max_context_tokens=131073)], "pools[0].max_context_tokens", "1..131072"),
        ([pool(max_batch_sequences=0)], "pools[0].max_batch_sequences", "1..65536"),
        ([pool(max_batched_tokens=256)], "pools[0].max_batched_tokens", "above max_batch_sequences (256)"),
        (
            [pool(max_batch_sequences=64, max_batched_tokens=64)],
            "pools[0].max_batched_tokens",
            "above max_batch_sequences (64)",
        ),
        ([pool(address_template="{zone}-{index}")], "pools[0].address_template", "{pool} and {index}"),
        ([pool(metrics_url_template="http://{host}/metrics")], "pools[0].metrics_url_template", "{pool}"),
        ([pool(price_usd_per_hour=-1.0)], "pools[0].price_usd_per_hour", "> 0"),
        ([pool(price_usd_per_hour=float("nan"))], "pools[0].price_usd_per_hour", "> 0"),
        ([pool(instance_type="g5.xlarge", precision=Precision.BF16)], "pools[0]", "catalog.overrides"),
    ],
)
def test_refusals_name_the_config_path(pools: list[PoolSpec], path: str, needle: str) -> None:
    with pytest.raises(InventoryError) as e:
        expand_pools(pools, ZONES, CATALOG, MODELS)
    assert e.value.path == path
    assert needle in e.value.rule
    assert str(e.value) == f"{path}: {e.value.rule}"
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    ("zones", "path"),
    [
        ((ZONES[0], ZONES[0]), "zones[1].name"),
        ((ZoneSpec(name="", region="us-east-1", power_cap_w=1.0),), "zones[0].name"),
        ((ZoneSpec(name="z", region="us-east-1", power_cap_w=0.0),), "zones[0].power_cap_w"),
    ],
)
def test_bad_zones_are_refused(zones: tuple[ZoneSpec, ...], path: str) -> None:
    with pytest.raises(InventoryError) as e:
        expand_pools([], zones, CATALOG, MODELS)
    assert e.value.path == path


SERVABLE = [
    ("p5.48xlarge", "llama-3.1-8b", Precision.FP8, (1, 2, 4, 8)),
    ("p5en.48xlarge", "llama-3.1-70b", Precision.BF16, (2, 4, 8)),
    ("p6-b200.48xlarge", "llama-3.1-70b", Precision.FP4, (1, 2, 4, 8)),
    ("trn1.32xlarge", "llama-3.1-8b", Precision.BF16, (2, 4, 8, 16)),
    ("trn2.48xlarge", "llama-3.1-70b", Precision.BF16, (4, 8, 16)),
    ("inf2.48xlarge", "llama-3.1-8b", Precision.BF16, (2, 4, 6, 12)),
]


@settings(max_examples=100, deadline=None)
@given(
    choice=st.sampled_from(SERVABLE),
    tp_index=st.integers(0, 3),
    instances=st.integers(1, 4),
    price=st.one_of(st.none(), st.floats(0.01, 500.0)),
)
def test_expansion_conserves_chips_and_price(
    choice: tuple[str, str, Precision, tuple[int, ...]], tp_index: int, instances: int, price: float | None
) -> None:
    instance_type, model, precision, tps = choice
    tp = tps[tp_index % len(tps)]
    eps = expand_pools(
        [
            pool(
                instance_type=instance_type,
                model=model,
                precision=precision,
                tp_degree=tp,
                instances=instances,
                price_usd_per_hour=price,
            ),
        ],
        ZONES,
        CATALOG,
        MODELS,
    )
    chips = CATALOG.instance(instance_type).chips
    instance_price = CATALOG.instance(instance_type).price_usd_per_hour if price is None else price
    assert len(eps) == instances * chips // tp
    assert len({e.endpoint_id for e in eps}) == len(eps)
    assert sum(e.chips for e in eps) == instances * chips
    assert sum(e.price_usd_per_hour for e in eps) == pytest.approx(instances * instance_price)
