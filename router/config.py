"""The service configuration: one YAML file loaded into frozen dataclasses.

Schema (every section optional except ``zones`` and ``pools``; defaults shown)::

    server:    {grpc_addr: "0.0.0.0:50051", http_addr: "0.0.0.0:8080", shutdown_grace_s: 10,
                gc_gen0_threshold: 10000}   # see router.app.prepare_gc_for_serving
    telemetry: {stale_after_s: 15, scrape_interval_s: 5, scrape_timeout_s: 2, max_future_skew_s: 5}
    catalog:   {overrides: {INSTANCE_TYPE: {FIELD: {value: NUMBER, source: TEXT}}}}
    models:    []   # extra architectures, the fields of fleet/data/models.yaml entries
    profiles:  []   # measured-profile CSV paths, relative to the config file
    slo:
      defaults: {critical: {ttft_ms, tpot_ms}, standard: {...}, sheddable: {...}}
      models:   {MODEL: {PRIORITY: {ttft_ms, tpot_ms}}}
    zones: [{name, region, power_cap_w}]
    pools: [{name, zone, instance_type, model, tp_degree, precision, instances, address_template,
             replicas_per_instance: null, max_context_tokens: null, max_batch_sequences: 256,
             max_batched_tokens: 2048,
             reserved: false, metrics_url_template: null, telemetry: required, price_usd_per_hour: null}]
    jobs:    {store: memory, dsn: null}   # or {store: postgres, dsn: "postgresql://..."}
    planner:                              # the placement engine (every key optional)
      enabled: true                       # run the global planner loop (false: fast path only)
      interval_s: 30                      # periodic re-plan; must stay below placement.max_plan_age_s
      time_limit_s: 2                     # wall-time bound of one solve; below interval_s
      min_replan_interval_s: 5            # early re-plans (spills, fleet changes) at most this often
      fleet_change_ratio: 0.1             # re-plan early when this share of endpoints changed eligibility
      headroom_ratio: 0.8                 # share of SLO-feasible capacity the plan may fill
      unserved_usd_per_request: {critical: 1000, standard: 10, sheddable: 0.1}
      churn_penalty_usd_per_hour: 0.05
      energy_usd_per_kwh: 0               # 0: energy not priced; > 0 needs energy_price_source
      energy_price_source: null
      mip_gap_ratio: ...                  # solver tolerances; defaults: policies.planner.PlannerConfig
      accept_gap_ratio: ...
      demand:
        half_life_s: 60                   # memory of the observed request rate
        static_merge: max                 # or sum (see policies.demand)
        warmup: true                      # correct the estimate's start-up bias (policies.demand)
        static: [{model, priority, input_tokens, output_tokens, rate_per_s}]
      leases: {expiry_sweep_s: 1, remember_ended: 100000}
      placement: {}                       # the per-request policy: policies.config.PolicyConfig.from_mapping

Contract: :func:`load_config` and :func:`build_fleet` either return a complete, consistent value or raise
:class:`ConfigError` naming the file, the path inside it (``pools[2].tp_degree``) and the rule the value
breaks. Nothing is silently defaulted from a wrong value: unknown keys, wrong types (``true`` is not a
number), non-finite numbers, out-of-range values, duplicate keys or names, and names the catalog, the
model registry or the zones do not know are all refused.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from fleet.catalog import Catalog, load_catalog
from fleet.inventory import InventoryError, expand_pools
from fleet.measured import MeasuredProfile, load_measured_profiles
from fleet.models import ModelRegistry, load_models
from fleet.perf import PerformanceModel, default_performance_model
from fleet.types import EndpointSpec, LatencySlo, PoolSpec, Precision, Priority, ZoneSpec
from policies.config import PolicyConfig
from policies.demand import StaticDemand, classify
from policies.planner import PlannerConfig
from policies.registry import UnknownPluginError, build_policy

MAX_FALLBACKS = 3  # fallbacks a turnout.v1.Placement carries at most

DEFAULT_FLEET_RESOURCE = "default_fleet.yaml"
"""The embedded default fleet, shipped as ``fleet/data/default_fleet.yaml`` in the package."""


class ConfigError(Exception):
    """A configuration value breaks a rule. ``str()`` reads ``FILE: PATH: RULE``."""

    def __init__(self, file: str, path: str, rule: str) -> None:
        self.file = file
        self.path = path
        self.rule = rule
        super().__init__(f"{file}: {path}: {rule}" if path else f"{file}: {rule}")


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ServerConfig:
    grpc_addr: str = "0.0.0.0:50051"
    http_addr: str = "0.0.0.0:8080"
    shutdown_grace_s: float = 10.0  # in-flight calls may finish within this after SIGTERM
    # Young-generation threshold of the garbage collector while serving (router.app.prepare_gc_for_serving)
    gc_gen0_threshold: int = 10_000


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    stale_after_s: float = 15.0  # an endpoint expecting telemetry is stale after this long without any
    scrape_interval_s: float = 5.0
    scrape_timeout_s: float = 2.0
    max_future_skew_s: float = 5.0  # samples observed further in the future than this are refused


DEFAULT_SLOS: Mapping[Priority, LatencySlo] = MappingProxyType(
    {
        Priority.CRITICAL: LatencySlo(ttft_ms=1000.0, tpot_ms=60.0),
        Priority.STANDARD: LatencySlo(ttft_ms=2000.0, tpot_ms=100.0),
        Priority.SHEDDABLE: LatencySlo(ttft_ms=10000.0, tpot_ms=200.0),
    }
)


@dataclass(frozen=True)
class SloConfig:
    """Latency objectives a request gets when it names none (or a zero field)."""

    defaults: Mapping[Priority, LatencySlo] = field(default_factory=lambda: DEFAULT_SLOS)
    per_model: Mapping[str, Mapping[Priority, LatencySlo]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def slo_for(self, model: str, priority: Priority) -> LatencySlo:
        """The configured SLO of ``model`` at ``priority``: the model's own entry, else the default."""
        own = self.per_model.get(model, {}).get(priority)
        return own if own is not None else self.defaults[priority]


JOB_STORES = ("memory", "postgres")


@dataclass(frozen=True, slots=True)
class JobsConfig:
    store: str = "memory"  # one of JOB_STORES
    dsn: str | None = None  # required for "postgres"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """How leases that never see a ``Complete`` are swept, and how long ended ones are remembered.

    ``expiry_sweep_s``: seconds between sweeps of expired leases (they are also swept before every
    decision). ``remember_ended``: how many ended (completed or expired) lease ids are kept so that a
    repeated ``Complete`` answers ``already_completed`` rather than NOT_FOUND (the oldest are forgotten
    first; about 150 bytes each).
    """

    expiry_sweep_s: float = 1.0
    remember_ended: int = 100_000


@dataclass(frozen=True)
class PlannerSettings:
    """The ``planner:`` section: the placement policy, the global planner and its loop (``router.planning``).

    ``placement`` configures the per-request policy; ``solver`` the planner's optimisation
    (:class:`policies.planner.PlannerConfig`). The loop re-plans every ``interval_s`` and early, at most
    every ``min_replan_interval_s``, when a decision asks for it or when more than ``fleet_change_ratio``
    of the endpoints changed eligibility since the last solve. ``static_demand`` is merged with the rate
    observed from ``Place`` traffic (half-life ``demand_half_life_s``) by ``static_merge``;
    ``demand_warmup`` corrects the observed rate's start-up bias (``policies.demand``, "Start-up"): without
    it the first plans after start size the fleet for a fraction of the traffic.
    """

    enabled: bool = True
    interval_s: float = 30.0
    time_limit_s: float = 2.0
    min_replan_interval_s: float = 5.0
    fleet_change_ratio: float = 0.1
    demand_half_life_s: float = 60.0
    static_merge: str = "max"
    demand_warmup: bool = True
    static_demand: tuple[StaticDemand, ...] = ()
    energy_price_source: str | None = None
    leases: LeaseSettings = LeaseSettings()
    solver: PlannerConfig = field(default_factory=PlannerConfig)
    placement: PolicyConfig = field(default_factory=PolicyConfig)


@dataclass(frozen=True)
class TurnoutConfig:
    """A whole configuration file, checked for shape and ranges (see :func:`build_fleet` for the rest)."""

    source: str  # the file name used in error messages
    zones: tuple[ZoneSpec, ...]
    pools: tuple[PoolSpec, ...]
    server: ServerConfig = ServerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    # instance type -> catalog field -> (value, source)
    catalog_overrides: Mapping[str, Mapping[str, tuple[float, str]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    models: tuple[Mapping[str, Any], ...] = ()
    profiles: tuple[Path, ...] = ()  # resolved against the config file's folder
    slo: SloConfig = field(default_factory=SloConfig)
    jobs: JobsConfig = JobsConfig()
    planner: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # the section as written
    planning: PlannerSettings = field(default_factory=PlannerSettings)  # the same section, checked

    def pool_path(self, pool_name: str) -> str:
        """The path of a pool inside the file, e.g. ``pools[2]``."""
        for i, pool in enumerate(self.pools):
            if pool.name == pool_name:
                return f"pools[{i}]"
        return "pools"


# --------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None) -> TurnoutConfig:
    """Loads and checks a configuration file; ``None`` loads the embedded default fleet.

    Raises :class:`ConfigError` (also for a missing or unreadable file).
    """
    if path is None:
        text = resources.files("fleet").joinpath("data", DEFAULT_FLEET_RESOURCE).read_text(encoding="utf-8")
        return parse_config(text, source=f"{DEFAULT_FLEET_RESOURCE} (embedded)", base_dir=Path.cwd())
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot be read: {exc}") from None
    return parse_config(text, source=str(path), base_dir=p.resolve().parent)


def parse_config(text: str, *, source: str, base_dir: Path) -> TurnoutConfig:
    """Parses configuration text. ``source`` names the file in errors; relative paths resolve in
    ``base_dir``."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(source, _yaml_position(exc), f"is not valid YAML: {_yaml_problem(exc)}") from None
    if node is None:
        raise ConfigError(source, "", "is empty; it must be a mapping with at least 'zones' and 'pools'")
    _refuse_duplicate_keys(source, node, "")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # e.g. a tag the safe loader refuses
        raise ConfigError(source, _yaml_position(exc), f"is not valid YAML: {_yaml_problem(exc)}") from None
    return _Parser(source, base_dir).config(data)


def _yaml_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return ""
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return str(problem) if problem else str(exc).splitlines()[0]


def _refuse_duplicate_keys(source: str, node: yaml.Node, path: str) -> None:
    """YAML loaders keep the last of two equal keys silently; a config must not."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = _join(path, key)
            if key in seen:
                raise ConfigError(source, child, f"duplicate key (line {key_node.start_mark.line + 1})")
            seen.add(key)
            _refuse_duplicate_keys(source, value_node, child)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(source, item, f"{path}[{i}]")


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _join(path: str, key: str) -> str:
    """``a.b`` for plain keys; ``a["llama-3.1-8b"]`` for keys that a dot would make ambiguous."""
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f'{path}["{key}"]'


_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME_RULE = "must be 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>[0-9]{1,5})$")

T = TypeVar("T")


def parse_host_port(value: str) -> tuple[str, int]:
    """Splits ``HOST:PORT`` (``[::]:PORT`` for IPv6); raises ``ValueError`` naming the rule."""
    m = _HOST_PORT.match(value)
    if not m or int(m.group("port")) > 65535:
        raise ValueError("must be HOST:PORT with a port from 0 to 65535")
    return m.group("host"), int(m.group("port"))


class _Parser:
    """Walks the loaded YAML with the current path, refusing the first value that breaks a rule."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, path: str, rule: str) -> ConfigError:
        return ConfigError(self.source, path, rule)

    # ---- primitive readers

    def mapping(
        self, value: object, path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path or "(top level)", f"must be a mapping, got {_kind(value)}")
        allowed_set = set(allowed)
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path or "(top level)", f"keys must be strings, got {_kind(key)} {key!r}")
            if key not in allowed_set:
                raise self.fail(_join(path, key), f"unknown key; allowed: {', '.join(sorted(allowed_set))}")
        for key in required:
            if key not in value:
                raise self.fail(_join(path, key), "is required")
        return value

    def free_mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {_kind(key)} {key!r}")
        return value

    def sequence(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {_kind(value)}")
        return value

    def number(
        self,
        value: object,
        path: str,
        *,
        minimum: float | None = None,
        exclusive_minimum: float | None = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number, got {_kind(value)}")
        x = float(value)
        if not math.isfinite(x):
            raise self.fail(path, "must be a finite number")
        if minimum is not None and x < minimum:
            raise self.fail(path, f"must be a number >= {_fmt(minimum)}")
        if exclusive_minimum is not None and x <= exclusive_minimum:
            raise self.fail(path, f"must be a number > {_fmt(exclusive_minimum)}")
        return x

    def integer(self, value: object, path: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"must be an integer >= {minimum}")
        return value

    def text(
        self, value: object, path: str, *, pattern: re.Pattern[str] | None = None, rule: str = ""
    ) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_kind(value)}")
        if not value.strip():
            raise self.fail(path, "must not be empty")
        if pattern is not None and not pattern.match(value):
            raise self.fail(path, rule)
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {_kind(value)}")
        return value

    def choice(self, value: object, path: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(path, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def optional(self, value: object, read: Callable[[object], T]) -> T | None:
        return None if value is None else read(value)

    # ---- sections

    def config(self, data: object) -> TurnoutConfig:
        top = self.mapping(
            data,
            "",
            (
                "server",
                "telemetry",
                "catalog",
                "models",
                "profiles",
                "slo",
                "zones",
                "pools",
                "jobs",
                "planner",
            ),
            required=("zones", "pools"),
        )
        zones = self.zones(top["zones"])
        zone_names = {z.name for z in zones}
        pools = self.pools(top["pools"], zone_names)
        planner = self.free_mapping(top.get("planner", {}), "planner")
        return TurnoutConfig(
            source=self.source,
            zones=zones,
            pools=pools,
            server=self.server(top.get("server", {})),
            telemetry=self.telemetry(top.get("telemetry", {})),
            catalog_overrides=self.catalog(top.get("catalog", {})),
            models=self.models(top.get("models", [])),
            profiles=self.profiles(top.get("profiles", [])),
            slo=self.slo(top.get("slo", {})),
            jobs=self.jobs(top.get("jobs", {})),
            planner=MappingProxyType(dict(planner)),
            planning=self.planning(planner, frozenset(p.model for p in pools)),
        )

    def server(self, value: object) -> ServerConfig:
        m = self.mapping(value, "server", ("grpc_addr", "http_addr", "shutdown_grace_s", "gc_gen0_threshold"))
        d = ServerConfig()
        return ServerConfig(
            grpc_addr=self.address(m.get("grpc_addr", d.grpc_addr), "server.grpc_addr"),
            http_addr=self.address(m.get("http_addr", d.http_addr), "server.http_addr"),
            shutdown_grace_s=self.number(
                m.get("shutdown_grace_s", d.shutdown_grace_s), "server.shutdown_grace_s", minimum=0
            ),
            gc_gen0_threshold=self.integer(
                m.get("gc_gen0_threshold", d.gc_gen0_threshold), "server.gc_gen0_threshold", minimum=100
            ),
        )

    def address(self, value: object, path: str) -> str:
        text = self.text(value, path)
        try:
            parse_host_port(text)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        return text

    def telemetry(self, value: object) -> TelemetryConfig:
        keys = ("stale_after_s", "scrape_interval_s", "scrape_timeout_s", "max_future_skew_s")
        m = self.mapping(value, "telemetry", keys)
        d = TelemetryConfig()
        cfg = TelemetryConfig(
            stale_after_s=self.number(
                m.get("stale_after_s", d.stale_after_s), "telemetry.stale_after_s", exclusive_minimum=0
            ),
            scrape_interval_s=self.number(
                m.get("scrape_interval_s", d.scrape_interval_s),
                "telemetry.scrape_interval_s",
                exclusive_minimum=0,
            ),
            scrape_timeout_s=self.number(
                m.get("scrape_timeout_s", d.scrape_timeout_s),
                "telemetry.scrape_timeout_s",
                exclusive_minimum=0,
            ),
            max_future_skew_s=self.number(
                m.get("max_future_skew_s", d.max_future_skew_s), "telemetry.max_future_skew_s", minimum=0
            ),
        )
        if cfg.scrape_timeout_s > cfg.scrape_interval_s:
            raise self.fail("telemetry.scrape_timeout_s", "must not exceed telemetry.scrape_interval_s")
        return cfg

    def catalog(self, value: object) -> Mapping[str, Mapping[str, tuple[float, str]]]:
        m = self.mapping(value, "catalog", ("overrides",))
        overrides = self.free_mapping(m.get("overrides", {}), "catalog.overrides")
        out: dict[str, Mapping[str, tuple[float, str]]] = {}
        for instance_type, fields in overrides.items():
            ipath = _join("catalog.overrides", instance_type)
            per_field: dict[str, tuple[float, str]] = {}
            for name, entry in self.free_mapping(fields, ipath).items():
                fpath = _join(ipath, name)
                e = self.mapping(entry, fpath, ("value", "source"), required=("value", "source"))
                per_field[name] = (
                    self.number(e["value"], _join(fpath, "value"), minimum=0),
                    self.text(e["source"], _join(fpath, "source")),
                )
            out[instance_type] = MappingProxyType(per_field)
        return MappingProxyType(out)

    def models(self, value: object) -> tuple[Mapping[str, Any], ...]:
        items = self.sequence(value, "models")
        return tuple(
            MappingProxyType(dict(self.free_mapping(v, f"models[{i}]"))) for i, v in enumerate(items)
        )

    def profiles(self, value: object) -> tuple[Path, ...]:
        out: list[Path] = []
        for i, item in enumerate(self.sequence(value, "profiles")):
            path = f"profiles[{i}]"
            p = Path(self.text(item, path))
            resolved = p if p.is_absolute() else self.base_dir / p
            if not resolved.is_file():
                raise self.fail(path, f"file not found: {item}")
            out.append(resolved)
        return tuple(out)

    def latency(self, value: object, path: str, base: LatencySlo) -> LatencySlo:
        m = self.mapping(value, path, ("ttft_ms", "tpot_ms"))
        return LatencySlo(
            ttft_ms=self.number(m.get("ttft_ms", base.ttft_ms), _join(path, "ttft_ms"), exclusive_minimum=0),
            tpot_ms=self.number(m.get("tpot_ms", base.tpot_ms), _join(path, "tpot_ms"), exclusive_minimum=0),
        )

    def slo(self, value: object) -> SloConfig:
        m = self.mapping(value, "slo", ("defaults", "models"))
        priorities = [p.value for p in Priority]
        defaults = dict(DEFAULT_SLOS)
        given = self.mapping(m.get("defaults", {}), "slo.defaults", priorities)
        for name, entry in given.items():
            p = Priority(name)
            defaults[p] = self.latency(entry, _join("slo.defaults", name), DEFAULT_SLOS[p])
        per_model: dict[str, Mapping[Priority, LatencySlo]] = {}
        for model, entries in self.free_mapping(m.get("models", {}), "slo.models").items():
            mpath = _join("slo.models", model)
            own: dict[Priority, LatencySlo] = {}
            for name, entry in self.mapping(entries, mpath, priorities).items():
                p = Priority(name)
                own[p] = self.latency(entry, _join(mpath, name), defaults[p])
            per_model[model] = MappingProxyType(own)
        return SloConfig(defaults=MappingProxyType(defaults), per_model=MappingProxyType(per_model))

    def zones(self, value: object) -> tuple[ZoneSpec, ...]:
        items = self.sequence(value, "zones")
        if not items:
            raise self.fail("zones", "must list at least one zone")
        out: list[ZoneSpec] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            path = f"zones[{i}]"
            m = self.mapping(
                item, path, ("name", "region", "power_cap_w"), required=("name", "region", "power_cap_w")
            )
            name = self.text(m["name"], f"{path}.name", pattern=_NAME, rule=_NAME_RULE)
            if name in seen:
                raise self.fail(f"{path}.name", f"duplicate zone name {name!r} (also zones[{seen[name]}])")
            seen[name] = i
            out.append(
                ZoneSpec(
                    name=name,
                    region=self.text(m["region"], f"{path}.region", pattern=_NAME, rule=_NAME_RULE),
                    power_cap_w=self.number(m["power_cap_w"], f"{path}.power_cap_w", exclusive_minimum=0),
                )
            )
        return tuple(out)

    def pools(self, value: object, zone_names: set[str]) -> tuple[PoolSpec, ...]:
        items = self.sequence(value, "pools")
        if not items:
            raise self.fail("pools", "must list at least one pool")
        out: list[PoolSpec] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            pool = self.pool(item, f"pools[{i}]", zone_names)
            if pool.name in seen:
                raise self.fail(
                    f"pools[{i}].name", f"duplicate pool name {pool.name!r} (also pools[{seen[pool.name]}])"
                )
            seen[pool.name] = i
            out.append(pool)
        return tuple(out)

    def pool(self, value: object, path: str, zone_names: set[str]) -> PoolSpec:
        required = (
            "name",
            "zone",
            "instance_type",
            "model",
            "tp_degree",
            "precision",
            "instances",
            "address_template",
        )
        optional = (
            "replicas_per_instance",
            "max_context_tokens",
            "max_batch_sequences",
            "max_batched_tokens",
            "reserved",
            "metrics_url_template",
            "telemetry",
            "price_usd_per_hour",
        )
        m = self.mapping(value, path, required + optional, required=required)
        zone = self.text(m["zone"], f"{path}.zone")
        if zone not in zone_names:
            raise self.fail(f"{path}.zone", f"unknown zone {zone!r}; zones: {', '.join(sorted(zone_names))}")
        telemetry = self.choice(m.get("telemetry", "required"), f"{path}.telemetry", ("required", "none"))
        metrics_url = self.optional(
            m.get("metrics_url_template"),
            lambda v: self.template(v, f"{path}.metrics_url_template", url=True),
        )
        if telemetry == "none" and metrics_url is not None:
            raise self.fail(f"{path}.metrics_url_template", "must be null when telemetry is none")
        precision = self.choice(m["precision"], f"{path}.precision", [p.value for p in Precision])
        return PoolSpec(
            name=self.text(m["name"], f"{path}.name", pattern=_NAME, rule=_NAME_RULE),
            zone=zone,
            instance_type=self.text(m["instance_type"], f"{path}.instance_type"),
            model=self.text(m["model"], f"{path}.model"),
            tp_degree=self.integer(m["tp_degree"], f"{path}.tp_degree", minimum=1),
            precision=Precision(precision),
            instances=self.integer(m["instances"], f"{path}.instances", minimum=1),
            address_template=self.template(m["address_template"], f"{path}.address_template", url=False),
            replicas_per_instance=self.optional(
                m.get("replicas_per_instance"),
                lambda v: self.integer(v, f"{path}.replicas_per_instance", minimum=1),
            ),
            max_context_tokens=self.optional(
                m.get("max_context_tokens"),
                lambda v: self.integer(v, f"{path}.max_context_tokens", minimum=1),
            ),
            max_batch_sequences=self.optional(
                m.get("max_batch_sequences"),
                lambda v: self.integer(v, f"{path}.max_batch_sequences", minimum=1),
            ),
            max_batched_tokens=self.optional(
                m.get("max_batched_tokens"),
                lambda v: self.integer(v, f"{path}.max_batched_tokens", minimum=2),
            ),
            reserved=self.boolean(m.get("reserved", False), f"{path}.reserved"),
            metrics_url_template=metrics_url,
            expects_telemetry=telemetry == "required",
            price_usd_per_hour=self.optional(
                m.get("price_usd_per_hour"),
                lambda v: self.number(v, f"{path}.price_usd_per_hour", exclusive_minimum=0),
            ),
        )

    def template(self, value: object, path: str, *, url: bool) -> str:
        text = self.text(value, path)
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as exc:
            raise self.fail(path, f"is not a valid template: {exc}") from None
        unknown = names - {"pool", "index"}
        if unknown:
            raise self.fail(
                path, f"may only use the placeholders {{pool}} and {{index}}, not {sorted(unknown)}"
            )
        if url and not text.startswith(("http://", "https://")):
            raise self.fail(path, "must be an http:// or https:// URL")
        return text

    def jobs(self, value: object) -> JobsConfig:
        m = self.mapping(value, "jobs", ("store", "dsn"))
        store = self.choice(m.get("store", "memory"), "jobs.store", JOB_STORES)
        dsn = self.optional(m.get("dsn"), lambda v: self.text(v, "jobs.dsn"))
        if store == "postgres" and dsn is None:
            raise self.fail("jobs.dsn", "is required when jobs.store is postgres")
        if store == "memory" and dsn is not None:
            raise self.fail("jobs.dsn", "must be null when jobs.store is memory")
        return JobsConfig(store=store, dsn=dsn)

    # ---- the planner section

    def planning(self, m: Mapping[str, Any], served_models: frozenset[str]) -> PlannerSettings:
        """The ``planner:`` section (:class:`PlannerSettings`); ``served_models``: the pools' models."""
        solver_keys = (
            "headroom_ratio",
            "unserved_usd_per_request",
            "churn_penalty_usd_per_hour",
            "energy_usd_per_kwh",
            "mip_gap_ratio",
            "accept_gap_ratio",
        )
        loop_keys = (
            "enabled",
            "interval_s",
            "time_limit_s",
            "min_replan_interval_s",
            "fleet_change_ratio",
            "energy_price_source",
            "demand",
            "leases",
            "placement",
        )
        self.mapping(m, "planner", loop_keys + solver_keys)
        placement = self.placement(m.get("placement", {}))
        d = PlannerSettings()
        enabled = self.boolean(m.get("enabled", d.enabled), "planner.enabled")
        interval_s = self.number(m.get("interval_s", d.interval_s), "planner.interval_s", exclusive_minimum=0)
        if interval_s >= placement.max_plan_age_s:
            raise self.fail(
                "planner.interval_s",
                f"must be below planner.placement.max_plan_age_s ({_fmt(placement.max_plan_age_s)}), "
                "or the plan turns stale between two solves",
            )
        time_limit_s = self.number(
            m.get("time_limit_s", d.time_limit_s), "planner.time_limit_s", exclusive_minimum=0
        )
        if time_limit_s >= interval_s:
            raise self.fail("planner.time_limit_s", f"must be below planner.interval_s ({_fmt(interval_s)})")
        min_replan_s = self.number(
            m.get("min_replan_interval_s", d.min_replan_interval_s),
            "planner.min_replan_interval_s",
            minimum=0,
        )
        change = self.number(
            m.get("fleet_change_ratio", d.fleet_change_ratio),
            "planner.fleet_change_ratio",
            exclusive_minimum=0,
        )
        if change > 1:
            raise self.fail("planner.fleet_change_ratio", "must be a number <= 1")
        solver = self.solver(m)
        source = self.optional(
            m.get("energy_price_source"), lambda v: self.text(v, "planner.energy_price_source")
        )
        if solver.energy_usd_per_kwh > 0 and source is None:
            raise self.fail(
                "planner.energy_price_source",
                "is required when planner.energy_usd_per_kwh > 0 (where the price comes from)",
            )
        demand = self.mapping(
            m.get("demand", {}), "planner.demand", ("half_life_s", "static_merge", "warmup", "static")
        )
        half_life_s = self.number(
            demand.get("half_life_s", d.demand_half_life_s), "planner.demand.half_life_s", exclusive_minimum=0
        )
        merge = self.choice(
            demand.get("static_merge", d.static_merge), "planner.demand.static_merge", ("max", "sum")
        )
        warmup = self.boolean(demand.get("warmup", d.demand_warmup), "planner.demand.warmup")
        static = self.static_demand(demand.get("static", []), placement, served_models)
        leases = self.mapping(m.get("leases", {}), "planner.leases", ("expiry_sweep_s", "remember_ended"))
        dl = LeaseSettings()
        return PlannerSettings(
            enabled=enabled,
            interval_s=interval_s,
            time_limit_s=time_limit_s,
            min_replan_interval_s=min_replan_s,
            fleet_change_ratio=change,
            demand_half_life_s=half_life_s,
            static_merge=merge,
            demand_warmup=warmup,
            static_demand=static,
            energy_price_source=source,
            leases=LeaseSettings(
                expiry_sweep_s=self.number(
                    leases.get("expiry_sweep_s", dl.expiry_sweep_s),
                    "planner.leases.expiry_sweep_s",
                    exclusive_minimum=0,
                ),
                remember_ended=self.integer(
                    leases.get("remember_ended", dl.remember_ended),
                    "planner.leases.remember_ended",
                    minimum=0,
                ),
            ),
            solver=solver,
            placement=placement,
        )

    def placement(self, value: object) -> PolicyConfig:
        """``planner.placement``: :meth:`PolicyConfig.from_mapping`, then the plugin names it uses."""
        path = "planner.placement"
        try:
            config = PolicyConfig.from_mapping(value, path)
        except ValueError as exc:
            where, rule = _split_dotted(str(exc), path)
            raise self.fail(where, rule) from None
        if config.max_fallbacks > MAX_FALLBACKS:
            raise self.fail(
                f"{path}.max_fallbacks",
                f"must be at most {MAX_FALLBACKS} (a Placement carries up to three fallbacks)",
            )
        try:
            build_policy(config, _no_profiles)  # instantiates every named plugin, reads no profile
        except UnknownPluginError as exc:
            text = str(exc)
            profile, sep, rule = text.partition(": ")
            if sep and profile.startswith("profile "):
                raise self.fail(f"{path}.{profile.removeprefix('profile ')}", rule) from None
            raise self.fail(f"{path}.policy", text) from None
        return config

    def solver(self, m: Mapping[str, Any]) -> PlannerConfig:
        d = PlannerConfig()
        numbers: dict[str, float] = {}
        for key in ("churn_penalty_usd_per_hour", "energy_usd_per_kwh", "mip_gap_ratio", "accept_gap_ratio"):
            numbers[key] = self.number(m.get(key, getattr(d, key)), f"planner.{key}", minimum=0)
        headroom = self.number(
            m.get("headroom_ratio", d.headroom_ratio), "planner.headroom_ratio", exclusive_minimum=0
        )
        if headroom > 1:
            raise self.fail("planner.headroom_ratio", "must be a number <= 1")
        priorities = [p.value for p in Priority]
        penalties = self.mapping(
            m.get("unserved_usd_per_request", {}), "planner.unserved_usd_per_request", priorities
        )
        for p in Priority:
            field_name = f"{p.value}_unserved_usd_per_request"
            numbers[field_name] = self.number(
                penalties.get(p.value, getattr(d, field_name)),
                f"planner.unserved_usd_per_request.{p.value}",
                minimum=0,
            )
        try:
            return PlannerConfig(headroom_ratio=headroom, **numbers)
        except ValueError:
            raise self.fail(
                "planner.unserved_usd_per_request",
                "must satisfy critical >= standard >= sheddable (lower priorities are left unserved first)",
            ) from None

    def static_demand(
        self, value: object, placement: PolicyConfig, served_models: frozenset[str]
    ) -> tuple[StaticDemand, ...]:
        out: list[StaticDemand] = []
        seen: dict[str, int] = {}
        keys = ("model", "priority", "input_tokens", "output_tokens", "rate_per_s")
        for i, item in enumerate(self.sequence(value, "planner.demand.static")):
            path = f"planner.demand.static[{i}]"
            e = self.mapping(item, path, keys, required=keys)
            model = self.text(e["model"], f"{path}.model")
            if model not in served_models:
                raise self.fail(
                    f"{path}.model", f"no pool serves {model!r}; served: {', '.join(sorted(served_models))}"
                )
            priority = Priority(self.choice(e["priority"], f"{path}.priority", [p.value for p in Priority]))
            input_tokens = self.integer(e["input_tokens"], f"{path}.input_tokens", minimum=1)
            output_tokens = self.integer(e["output_tokens"], f"{path}.output_tokens", minimum=1)
            rate = self.number(e["rate_per_s"], f"{path}.rate_per_s", exclusive_minimum=0)
            cls = classify(model, input_tokens, output_tokens, priority, placement.buckets)
            if cls.name in seen:
                raise self.fail(
                    path,
                    f"falls in the same traffic class {cls.name} as planner.demand.static[{seen[cls.name]}]; "
                    "give one entry per class",
                )
            seen[cls.name] = i
            out.append(
                StaticDemand(
                    traffic_class=cls,
                    rate_per_s=rate,
                    mean_input_tokens=float(input_tokens),
                    mean_output_tokens=float(output_tokens),
                )
            )
        return tuple(out)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _split_dotted(text: str, prefix: str) -> tuple[str, str]:
    """A ``"a.b.c: rule"`` message as (path, rule); a segment with spaces belongs to the rule
    (``"a.b.x <= y: rule"`` -> ``("a.b", "x <= y: rule")``)."""
    path, sep, rule = text.partition(": ")
    if not sep or not path.startswith(prefix):
        return prefix, text
    if " " in path:
        head = path[: path.index(" ")]
        cut = head.rfind(".")
        return path[:cut], f"{path[cut + 1 :]}: {rule}"
    return path, rule


def _no_profiles(spec: EndpointSpec) -> Any:
    raise AssertionError("building a policy to check its plugin names reads no serving profile")


# --------------------------------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class FleetModel:
    """The fleet a configuration describes: catalog, model registry, performance model and endpoints."""

    catalog: Catalog
    models: ModelRegistry
    performance: PerformanceModel
    endpoints: tuple[EndpointSpec, ...]


def _split_message(exc: Exception) -> tuple[str, str]:
    """``"path: rule"`` messages of the fleet loaders as (path, rule)."""
    text = str(exc.args[0]) if exc.args else str(exc)
    path, sep, rule = text.partition(": ")
    return (path, rule) if sep and " " not in path else ("", text)


def build_fleet(config: TurnoutConfig) -> FleetModel:
    """Resolves the configuration against the catalog, the model registry and the inventory rules.

    Raises :class:`ConfigError` for an override of an unknown instance type or field, a bad extra model,
    an unreadable measured profile, a pool naming an unknown instance type or model (the message lists
    the known ones), an SLO for an unknown model, and every rule of ``fleet.inventory`` (a TP degree the
    instance cannot host, a model that does not fit, ...).
    """
    src = config.source
    try:
        catalog = load_catalog(config.catalog_overrides)
    except (ValueError, KeyError) as exc:
        path, rule = _split_message(exc)
        raise ConfigError(src, path or "catalog.overrides", rule) from None
    try:
        models = load_models(config.models)
    except (ValueError, KeyError) as exc:
        path, rule = _split_message(exc)
        raise ConfigError(src, path or "models", rule) from None

    for i, pool in enumerate(config.pools):
        if pool.instance_type not in catalog.instance_types:
            known = ", ".join(sorted(catalog.instance_types))
            raise ConfigError(
                src,
                f"pools[{i}].instance_type",
                f"unknown instance type {pool.instance_type!r}; known: {known}",
            )
        if pool.model not in models:
            raise ConfigError(
                src, f"pools[{i}].model", f"unknown model {pool.model!r}; known: {', '.join(models.names)}"
            )
    for model in config.slo.per_model:
        if model not in models:
            raise ConfigError(
                src, _join("slo.models", model), f"unknown model {model!r}; known: {', '.join(models.names)}"
            )

    performance = default_performance_model(catalog, models)
    measured: list[MeasuredProfile] = []
    for i, profile_path in enumerate(config.profiles):
        try:
            measured.extend(load_measured_profiles(profile_path))
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(src, f"profiles[{i}]", str(exc.args[0]) if exc.args else str(exc)) from None
    if measured:
        try:
            performance = performance.with_measured(measured)
        except (ValueError, KeyError) as exc:
            raise ConfigError(src, "profiles", str(exc.args[0]) if exc.args else str(exc)) from None

    try:
        endpoints = expand_pools(config.pools, config.zones, catalog, models, performance)
    except InventoryError as exc:
        raise ConfigError(src, exc.path, exc.rule) from None
    return FleetModel(catalog=catalog, models=models, performance=performance, endpoints=endpoints)
