"""The model registry: architectures of the LLMs Turnout places, from their public configs.

Shipped architectures live in ``fleet/data/models.yaml`` (each with the config it comes from); a config
file may add more under ``models:`` with the same fields. Every value is validated: a missing field, an
unknown field or a bad value is a ``ValueError`` naming ``models[i].field`` and the rule.

Memory arithmetic (used by the performance model's fit check):

* weights: ``parameters x bytes per parameter`` of the serving precision (bf16 2, fp8 1, int8 1, fp4 0.5).
  Quantised checkpoints often keep embeddings in bf16; we count every parameter at the serving precision.
* KV cache per token: ``2 (K and V) x layers x kv_heads x head_dim x bytes per element``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from fleet.types import Precision

DTYPES = frozenset({"bfloat16", "float16", "float32"})

_INT_FIELDS = (
    "layers",
    "hidden_size",
    "attention_heads",
    "kv_heads",
    "intermediate_size",
    "vocab_size",
    "max_context_tokens",
)
_OPTIONAL_FIELDS = ("parameters", "head_dim", "aliases")
_REQUIRED_FIELDS = ("name", *_INT_FIELDS, "dtype", "source")
_ALL_FIELDS = frozenset(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)


@dataclass(frozen=True, slots=True)
class ModelArch:
    """A dense decoder-only transformer, as its public config describes it."""

    name: str
    parameters: int
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context_tokens: int
    dtype: str
    source: str
    aliases: tuple[str, ...] = ()

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> int:
        """KV-cache bytes one token occupies across all layers (K and V), rounded up."""
        return math.ceil(2 * self.layers * self.kv_heads * self.head_dim * bytes_per_element)

    def weight_bytes(self, precision: Precision) -> int:
        """Bytes of weights at ``precision``, rounded up."""
        return math.ceil(self.parameters * precision.weight_bytes_per_param)

    @property
    def attention_width(self) -> int:
        """``attention_heads x head_dim``: the width of the query projection."""
        return self.attention_heads * self.head_dim


def dense_parameter_count(
    layers: int,
    hidden_size: int,
    attention_heads: int,
    kv_heads: int,
    head_dim: int,
    intermediate_size: int,
    vocab_size: int,
) -> int:
    """Parameters of a Llama-style dense decoder with untied embeddings.

    Per layer: Q and O projections (``hidden x heads x head_dim`` each), K and V (``hidden x kv_heads x
    head_dim`` each), a gated MLP (3 x ``hidden x intermediate``) and two RMSNorm weights; plus input and
    output embeddings (``vocab x hidden`` each) and the final norm.
    """
    attention = 2 * hidden_size * attention_heads * head_dim + 2 * hidden_size * kv_heads * head_dim
    mlp = 3 * hidden_size * intermediate_size
    per_layer = attention + mlp + 2 * hidden_size
    return layers * per_layer + 2 * vocab_size * hidden_size + hidden_size


class ModelRegistry:
    """Model architectures by canonical name. Immutable after construction."""

    __slots__ = ("_aliases", "_models")

    def __init__(self, models: Sequence[ModelArch]) -> None:
        self._models: Mapping[str, ModelArch] = MappingProxyType({m.name: m for m in models})
        aliases: dict[str, ModelArch] = {}
        for m in models:
            for a in (m.name, *m.aliases):
                aliases[a.lower()] = m
        self._aliases: Mapping[str, ModelArch] = MappingProxyType(aliases)

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical names, sorted."""
        return tuple(sorted(self._models))

    @property
    def models(self) -> Mapping[str, ModelArch]:
        return self._models

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def get(self, name: str) -> ModelArch:
        """The architecture called ``name``; ``KeyError`` listing the known names otherwise."""
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.names)}") from None

    def by_alias(self, name: str) -> ModelArch | None:
        """The architecture whose canonical name or a published alias equals ``name`` (any case)."""
        return self._aliases.get(name.strip().lower())


def _int_field(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}.{key}: must be a positive integer, got {value!r}")
    return value


def _parse_entry(entry: object, where: str) -> ModelArch:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: must be a mapping of model fields")
    unknown = sorted(str(k) for k in entry if k not in _ALL_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown field; known fields: {', '.join(sorted(_ALL_FIELDS))}"
        )
    for key in _REQUIRED_FIELDS:
        if key not in entry:
            raise ValueError(f"{where}.{key}: required field is missing")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip() or name != name.strip().lower():
        raise ValueError(f"{where}.name: must be a non-empty lowercase name, got {name!r}")
    ints = {key: _int_field(entry, key, where) for key in _INT_FIELDS}
    if ints["kv_heads"] > ints["attention_heads"] or ints["attention_heads"] % ints["kv_heads"]:
        raise ValueError(
            f"{where}.kv_heads: must divide attention_heads ({ints['attention_heads']}), "
            f"got {ints['kv_heads']}"
        )
    if "head_dim" in entry:
        head_dim = _int_field(entry, "head_dim", where)
    else:
        if ints["hidden_size"] % ints["attention_heads"]:
            raise ValueError(f"{where}.head_dim: required when attention_heads does not divide hidden_size")
        head_dim = ints["hidden_size"] // ints["attention_heads"]
    if "parameters" in entry:
        parameters = _int_field(entry, "parameters", where)
    else:
        parameters = dense_parameter_count(
            ints["layers"],
            ints["hidden_size"],
            ints["attention_heads"],
            ints["kv_heads"],
            head_dim,
            ints["intermediate_size"],
            ints["vocab_size"],
        )
    dtype = entry["dtype"]
    if dtype not in DTYPES:
        raise ValueError(f"{where}.dtype: must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}")
    source = entry["source"]
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}.source: must be a non-empty string citing the config")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise ValueError(f"{where}.aliases: must be a list of non-empty strings")
    return ModelArch(
        name=name,
        parameters=parameters,
        layers=ints["layers"],
        hidden_size=ints["hidden_size"],
        attention_heads=ints["attention_heads"],
        kv_heads=ints["kv_heads"],
        head_dim=head_dim,
        intermediate_size=ints["intermediate_size"],
        vocab_size=ints["vocab_size"],
        max_context_tokens=ints["max_context_tokens"],
        dtype=dtype,
        source=source.strip(),
        aliases=tuple(a.strip() for a in aliases),
    )


def _shipped_entries() -> list[object]:
    text = resources.files("fleet").joinpath("data", "models.yaml").read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    entries = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError("fleet/data/models.yaml: expected a top-level 'models' list")
    return entries


def load_models(extra: Sequence[Mapping[str, Any]] = ()) -> ModelRegistry:
    """The shipped architectures plus ``extra`` ones (the config's ``models:`` list).

    Errors in ``extra`` name ``models[i].field`` (``i`` indexes ``extra``) and the rule; an extra model
    may not reuse a shipped or earlier name.
    """
    models: list[ModelArch] = []
    seen: set[str] = set()
    for i, entry in enumerate(_shipped_entries()):
        m = _parse_entry(entry, f"fleet/data/models.yaml: models[{i}]")
        models.append(m)
        seen.add(m.name)
    for i, entry in enumerate(extra):
        m = _parse_entry(entry, f"models[{i}]")
        if m.name in seen:
            raise ValueError(f"models[{i}].name: model {m.name!r} is already defined")
        models.append(m)
        seen.add(m.name)
    return ModelRegistry(models)
