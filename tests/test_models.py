"""Model registry: shipped architectures from public configs, extension from config, validation."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.models import dense_parameter_count, load_models
from fleet.types import Precision

BASE = load_models().get("llama-3.1-8b")
EXTRA: dict[str, Any] = {
    "name": "tiny-test-1b",
    "layers": 16,
    "hidden_size": 2048,
    "attention_heads": 32,
    "kv_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "max_context_tokens": 8192,
    "dtype": "bfloat16",
    "source": "a test architecture",
}


def test_llama_31_architectures_match_public_configs() -> None:
    models = load_models()
    m8 = models.get("llama-3.1-8b")
    assert (m8.layers, m8.hidden_size, m8.attention_heads, m8.kv_heads, m8.head_dim) == (32, 4096, 32, 8, 128)
    assert (m8.intermediate_size, m8.vocab_size, m8.max_context_tokens) == (14336, 128256, 131072)
    assert m8.parameters == 8_030_261_248
    assert m8.dtype == "bfloat16"
    assert m8.source == "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json"
    m70 = models.get("llama-3.1-70b")
    assert (m70.layers, m70.hidden_size, m70.attention_heads, m70.kv_heads) == (80, 8192, 64, 8)
    assert m70.parameters == 70_553_706_496
    m405 = models.get("llama-3.1-405b")
    assert (m405.layers, m405.hidden_size, m405.attention_heads, m405.kv_heads) == (126, 16384, 128, 8)
    assert m405.intermediate_size == 53248
    assert m405.parameters == 405_853_388_800


def test_shipped_parameter_counts_follow_from_the_shapes() -> None:
    for m in load_models().models.values():
        computed = dense_parameter_count(
            m.layers,
            m.hidden_size,
            m.attention_heads,
            m.kv_heads,
            m.head_dim,
            m.intermediate_size,
            m.vocab_size,
        )
        assert computed == m.parameters, m.name


def test_kv_cache_and_weight_bytes() -> None:
    models = load_models()
    assert models.get("llama-3.1-8b").kv_bytes_per_token() == 131_072  # 2 x 32 x 8 x 128 x 2 bytes
    assert models.get("llama-3.1-70b").kv_bytes_per_token() == 327_680
    assert models.get("llama-3.1-405b").kv_bytes_per_token() == 516_096
    assert models.get("llama-3.1-8b").kv_bytes_per_token(1.0) == 65_536
    assert models.get("llama-2-7b").kv_bytes_per_token() == 524_288  # no GQA
    m8 = models.get("llama-3.1-8b")
    assert m8.weight_bytes(Precision.BF16) == 16_060_522_496
    assert m8.weight_bytes(Precision.FP8) == 8_030_261_248
    assert m8.weight_bytes(Precision.INT8) == 8_030_261_248
    assert m8.weight_bytes(Precision.FP4) == 4_015_130_624


def test_throughput_table_names_resolve_through_aliases() -> None:
    models = load_models()
    assert models.by_alias("nvidia/Llama-3.1-405B-Instruct-FP8").name == "llama-3.1-405b"  # type: ignore[union-attr]
    assert models.by_alias("LLAMA-3-8B").name == "llama-3-8b"  # type: ignore[union-attr]
    assert models.by_alias("Llama-3.3-70B-Instruct").name == "llama-3.3-70b"  # type: ignore[union-attr]
    assert models.by_alias("gpt-5") is None


def test_registry_names_and_unknown_model() -> None:
    models = load_models()
    assert {
        "llama-3.1-8b",
        "llama-3.1-70b",
        "llama-3.1-405b",
        "llama-3-8b",
        "llama-3-70b",
        "llama-3.3-70b",
    } <= set(models.names)
    assert list(models.names) == sorted(models.names)
    assert "llama-3.1-8b" in models and "nope" not in models
    with pytest.raises(KeyError) as e:
        models.get("llama-9")
    assert "llama-9" in str(e.value) and "llama-3.1-70b" in str(e.value)


def test_extra_model_from_config() -> None:
    models = load_models([EXTRA])
    tiny = models.get("tiny-test-1b")
    assert tiny.head_dim == 64  # default: hidden_size / attention_heads
    assert tiny.parameters == dense_parameter_count(16, 2048, 32, 8, 64, 8192, 128256)
    assert "llama-3.1-8b" in models  # shipped ones stay


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"layers": None}, "models[0].layers: required"),
        ({"layers": 0}, "models[0].layers"),
        ({"layers": -3}, "models[0].layers"),
        ({"layers": True}, "models[0].layers"),
        ({"layers": "32"}, "models[0].layers"),
        ({"hidden_size": 2.5}, "models[0].hidden_size"),
        ({"kv_heads": 5}, "models[0].kv_heads"),
        ({"kv_heads": 64}, "models[0].kv_heads"),
        ({"dtype": "int3"}, "models[0].dtype"),
        ({"name": "Tiny"}, "models[0].name"),
        ({"name": ""}, "models[0].name"),
        ({"source": ""}, "models[0].source"),
        ({"colour": "red"}, "models[0].colour"),
        ({"name": "llama-3.1-8b"}, "models[0].name: model 'llama-3.1-8b' is already defined"),
        ({"aliases": "x"}, "models[0].aliases"),
        ({"parameters": -1}, "models[0].parameters"),
        ({"hidden_size": 1000, "attention_heads": 3, "kv_heads": 1}, "models[0].head_dim"),
    ],
)
def test_bad_extra_model_names_the_field(change: dict[str, Any], path: str) -> None:
    entry = copy.deepcopy(EXTRA)
    for key, value in change.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    with pytest.raises(ValueError) as e:
        load_models([entry])
    assert path in str(e.value)


def test_extra_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"models\[1\]: must be a mapping"):
        load_models([EXTRA, ["not", "a", "mapping"]])  # type: ignore[list-item]


@settings(max_examples=100, deadline=None)
@given(
    layers=st.integers(1, 200),
    kv_heads=st.sampled_from([1, 2, 4, 8]),
    group=st.sampled_from([1, 2, 4, 8]),
    head_dim=st.sampled_from([64, 128]),
    bytes_per_element=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
)
def test_kv_bytes_scale_linearly(
    layers: int, kv_heads: int, group: int, head_dim: int, bytes_per_element: float
) -> None:
    m = dataclasses.replace(
        BASE, layers=layers, kv_heads=kv_heads, attention_heads=kv_heads * group, head_dim=head_dim
    )
    assert m.kv_bytes_per_token(bytes_per_element) == 2 * layers * kv_heads * head_dim * bytes_per_element
    assert m.kv_bytes_per_token(2 * bytes_per_element) == 2 * m.kv_bytes_per_token(bytes_per_element)
    assert m.weight_bytes(Precision.FP4) < m.weight_bytes(Precision.FP8) == m.weight_bytes(Precision.INT8)
    assert m.weight_bytes(Precision.FP8) < m.weight_bytes(Precision.BF16)
