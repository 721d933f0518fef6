"""Pool expansion: the config's pools become the endpoints (serving replicas) of the fleet.

A pool of ``instances`` instances of one type hosts ``replicas_per_instance`` replicas per instance
(default ``chips // tp_degree``), each on ``tp_degree`` chips. Replica ``i`` (0-based, instance-major) of
pool ``p`` in zone ``z`` is endpoint ``"{z}/{p}/{i}"`` at ``address_template.format(pool=p, index=i)``.

Price per replica: the instance price (the pool's ``price_usd_per_hour`` if set, else the catalog's)
divided by the replicas the instance hosts. With the default ``replicas_per_instance`` this is
``price x tp_degree / chips``; when a pool runs fewer replicas per instance than fit, the replicas it
runs carry the whole instance price, since the idle chips are paid for all the same.

Every rule is checked before anything is returned; the first violation raises :class:`InventoryError`
with the config path (``pools[3].tp_degree``) and the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fleet.catalog import Catalog
from fleet.models import ModelRegistry
from fleet.perf import PerformanceModel
from fleet.types import (
    DEFAULT_MAX_BATCH_SEQUENCES,
    DEFAULT_MAX_BATCHED_TOKENS,
    EndpointSpec,
    PoolSpec,
    ZoneSpec,
)

GB = 1e9


class InventoryError(ValueError):
    """A pool or zone that cannot be expanded: ``path`` inside the config and the ``rule`` it breaks."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}")
        self.path = path
        self.rule = rule


def _format(template: str, path: str, pool: str, index: int) -> str:
    try:
        return template.format(pool=pool, index=index)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise InventoryError(
            path, f"template {template!r} may only use the placeholders {{pool}} and {{index}} ({e!r})"
        ) from None


def _check_zones(zones: Sequence[ZoneSpec]) -> dict[str, ZoneSpec]:
    by_name: dict[str, ZoneSpec] = {}
    for j, z in enumerate(zones):
        if not z.name or "/" in z.name:
            raise InventoryError(f"zones[{j}].name", f"must be non-empty and contain no '/', got {z.name!r}")
        if z.name in by_name:
            raise InventoryError(f"zones[{j}].name", f"duplicate zone name {z.name!r}")
        if not (math.isfinite(z.power_cap_w) and z.power_cap_w > 0):
            raise InventoryError(
                f"zones[{j}].power_cap_w", f"must be a finite number > 0, got {z.power_cap_w!r}"
            )
        by_name[z.name] = z
    return by_name


def expand_pools(
    pools: Sequence[PoolSpec],
    zones: Sequence[ZoneSpec],
    catalog: Catalog,
    models: ModelRegistry,
    performance: PerformanceModel | None = None,
) -> tuple[EndpointSpec, ...]:
    """Expand ``pools`` into endpoint specs, in pool order then replica index.

    Raises :class:`InventoryError` for: a duplicate or malformed zone or pool name, an unknown zone,
    instance type or model, an instance type that cannot serve, ``tp_degree`` not dividing the instance's
    chips, an unsupported precision, ``instances`` < 1, ``replicas_per_instance`` outside
    1..chips // tp_degree, ``max_context_tokens`` outside 1..the model's context, a model that does not
    fit in ``tp_degree`` chips at that context (the performance model's fit), a non-positive price, or
    a template with placeholders other than ``{pool}`` and ``{index}``. ``performance`` decides the fit
    (default: a :class:`~fleet.perf.PerformanceModel` over ``catalog`` and ``models``; the fit does not
    depend on efficiencies).
    """
    zone_by_name = _check_zones(zones)
    perf = performance or PerformanceModel(catalog, models)
    endpoints: list[EndpointSpec] = []
    seen_pools: set[str] = set()
    for i, pool in enumerate(pools):
        at = f"pools[{i}]"
        if not pool.name or "/" in pool.name:
            raise InventoryError(f"{at}.name", f"must be non-empty and contain no '/', got {pool.name!r}")
        if pool.name in seen_pools:
            raise InventoryError(f"{at}.name", f"duplicate pool name {pool.name!r}")
        seen_pools.add(pool.name)
        zone = zone_by_name.get(pool.zone)
        if zone is None:
            raise InventoryError(
                f"{at}.zone",
                f"unknown zone {pool.zone!r}; known: {', '.join(sorted(zone_by_name)) or 'none'}",
            )
        if pool.instance_type not in catalog.instance_types:
            raise InventoryError(
                f"{at}.instance_type",
                f"unknown instance type {pool.instance_type!r}; "
                f"known: {', '.join(sorted(catalog.instance_types))}",
            )
        instance = catalog.instance(pool.instance_type)
        if not instance.can_serve:
            raise InventoryError(
                f"{at}.instance_type", f"{instance.name} ({instance.accelerator_kind}) cannot serve"
            )
        if pool.model not in models:
            raise InventoryError(
                f"{at}.model", f"unknown model {pool.model!r}; known: {', '.join(models.names)}"
            )
        arch = models.get(pool.model)
        tp = pool.tp_degree
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1 or instance.chips % tp:
            raise InventoryError(
                f"{at}.tp_degree",
                f"must divide the {instance.chips} chips of {instance.name} (a whole number of replicas per "
                f"instance), got {tp!r}",
            )
        if isinstance(pool.instances, bool) or not isinstance(pool.instances, int) or pool.instances < 1:
            raise InventoryError(f"{at}.instances", f"must be an integer >= 1, got {pool.instances!r}")
        per_instance_max = instance.chips // tp
        per_instance = pool.replicas_per_instance
        if per_instance is None:
            per_instance = per_instance_max
        elif (
            isinstance(per_instance, bool)
            or not isinstance(per_instance, int)
            or not (1 <= per_instance <= per_instance_max)
        ):
            raise InventoryError(
                f"{at}.replicas_per_instance",
                f"must be 1..{per_instance_max} ({instance.chips} chips / tp_degree {tp}), "
                f"got {per_instance!r}",
            )
        context = arch.max_context_tokens if pool.max_context_tokens is None else pool.max_context_tokens
        if (
            isinstance(context, bool)
            or not isinstance(context, int)
            or not 1 <= context <= arch.max_context_tokens
        ):
            raise InventoryError(
                f"{at}.max_context_tokens",
                f"must be 1..{arch.max_context_tokens} (the context length of {arch.name}), got {context!r}",
            )
        try:
            profile = perf.roofline(pool.model, pool.instance_type, tp, pool.precision, context)
        except ValueError as e:
            field, _, rule = str(e).partition(": ")
            raise InventoryError(
                f"{at}.{field}" if field in ("precision", "tp_degree") else at, rule or str(e)
            ) from None
        if not profile.fits:
            need = profile.weight_bytes + profile.kv_bytes_per_token * context
            raise InventoryError(
                f"{at}.tp_degree",
                f"{arch.name} at {pool.precision.value} needs {need / GB:.1f} GB (weights "
                f"{profile.weight_bytes / GB:.1f} GB + KV cache for one {context}-token sequence) but "
                f"{tp} {instance.accelerator_kind} chip(s) leave {profile.usable_memory_bytes / GB:.1f} GB "
                "after the "
                f"{perf.memory_reserve_fraction:.0%} reserve; raise tp_degree, lower the precision or "
                "max_context_tokens",
            )
        max_batch = (
            DEFAULT_MAX_BATCH_SEQUENCES if pool.max_batch_sequences is None else pool.max_batch_sequences
        )
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= 65536:
            raise InventoryError(
                f"{at}.max_batch_sequences", f"must be an integer 1..65536, got {max_batch!r}"
            )
        budget = DEFAULT_MAX_BATCHED_TOKENS if pool.max_batched_tokens is None else pool.max_batched_tokens
        if isinstance(budget, bool) or not isinstance(budget, int) or not max_batch < budget <= 1_048_576:
            raise InventoryError(
                f"{at}.max_batched_tokens",
                f"must be an integer above max_batch_sequences ({max_batch}) and at most 1048576 "
                "(every decoding sequence takes one token of a step's budget, and prompts need the rest), "
                f"got {budget!r}",
            )
        price = instance.price_usd_per_hour if pool.price_usd_per_hour is None else pool.price_usd_per_hour
        if (
            isinstance(price, bool)
            or not isinstance(price, int | float)
            or not (math.isfinite(price) and price > 0)
        ):
            raise InventoryError(f"{at}.price_usd_per_hour", f"must be a finite number > 0, got {price!r}")
        replicas = pool.instances * per_instance
        # price x tp / chips when every chip hosts a replica; else the running replicas share the price.
        replica_price = (
            price * tp / instance.chips if per_instance == per_instance_max else price / per_instance
        )
        addresses = [
            _format(pool.address_template, f"{at}.address_template", pool.name, k) for k in range(replicas)
        ]
        metrics_urls: list[str | None] = [
            None
            if pool.metrics_url_template is None
            else _format(pool.metrics_url_template, f"{at}.metrics_url_template", pool.name, k)
            for k in range(replicas)
        ]
        for k in range(replicas):
            endpoints.append(
                EndpointSpec(
                    endpoint_id=f"{zone.name}/{pool.name}/{k}",
                    address=addresses[k],
                    pool=pool.name,
                    zone=zone.name,
                    region=zone.region,
                    instance_type=instance.name,
                    accelerator_kind=instance.accelerator_kind,
                    model=arch.name,
                    tp_degree=tp,
                    precision=pool.precision,
                    chips=tp,
                    price_usd_per_hour=replica_price,
                    max_context_tokens=context,
                    reserved=pool.reserved,
                    max_batch_sequences=max_batch,
                    max_batched_tokens=budget,
                    metrics_url=metrics_urls[k],
                    expects_telemetry=pool.expects_telemetry,
                )
            )
    return tuple(endpoints)
