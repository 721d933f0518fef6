"""Plugin registries: filters, scorers, pickers and policies by name, and building a policy from config.

A :class:`Registry` refuses a second plugin under a name already taken, and an unknown name fails with
the list of known ones. :func:`builtin_plugins` returns fresh registries holding the builtin plugins, so
there is no global mutable registry: a caller that adds its own plugins builds on its own copy.

Policies: ``turnout`` (the plan-following fast path, :mod:`policies.fastpath`) and the baselines
``round_robin``, ``least_loaded``, ``random``, ``cheapest_feasible`` (:mod:`policies.baselines`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from policies.baselines import BASELINE_PROFILES, ProfilePolicy
from policies.config import PolicyConfig, ProfileConfig
from policies.decision import Policy, ServingLookup
from policies.fastpath import FastPath
from policies.filters.capacity import CapacityFilter
from policies.filters.context import ContextFilter
from policies.filters.latency import LatencyFilter
from policies.filters.power import PowerFilter
from policies.filters.shed import ShedFilter
from policies.framework import Filter, Picker, Profile, Scorer
from policies.pickers import MaxScorePicker, RandomPicker, RoundRobinPicker
from policies.scorers.capacity_cost import CapacityCostScorer
from policies.scorers.cost import CostScorer
from policies.scorers.load import LoadScorer
from policies.scorers.plan_affinity import PlanAffinityScorer

__all__ = [
    "DuplicatePluginError",
    "Plugins",
    "Registry",
    "UnknownPluginError",
    "build_policy",
    "builtin_plugins",
]

T = TypeVar("T")


class DuplicatePluginError(ValueError):
    pass


class UnknownPluginError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named plugins of one kind. Names are unique."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> None:
        if not name:
            raise ValueError(f"{self.kind} name must not be empty")
        if name in self._items:
            raise DuplicatePluginError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownPluginError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


FilterFactory = Callable[[PolicyConfig], Filter]
ScorerFactory = Callable[[PolicyConfig], Scorer]
PickerFactory = Callable[[PolicyConfig], Picker]
PolicyFactory = Callable[["Plugins", PolicyConfig, ServingLookup, Callable[[], float] | None], Policy]


@dataclass(frozen=True)
class Plugins:
    filters: Registry[FilterFactory]
    scorers: Registry[ScorerFactory]
    pickers: Registry[PickerFactory]
    policies: Registry[PolicyFactory]

    def profile(self, name: str, profile: ProfileConfig, config: PolicyConfig) -> Profile:
        """Instantiate a profile from its configuration; unknown plugin names fail naming the profile."""
        try:
            filters = [self.filters.get(f)(config) for f in profile.filters]
            scorers = [(self.scorers.get(s.name)(config), s.weight) for s in profile.scorers]
            picker = self.pickers.get(profile.picker)(config)
        except UnknownPluginError as e:
            raise UnknownPluginError(f"profile {name}: {e}") from None
        return Profile(name, filters, scorers, picker)


def _turnout(
    plugins: Plugins, config: PolicyConfig, serving: ServingLookup, clock: Callable[[], float] | None
) -> Policy:
    return FastPath(
        config,
        serving,
        plan_profile=plugins.profile("plan_profile", config.plan_profile, config),
        spill_profile=plugins.profile("spill_profile", config.spill_profile, config),
        clock=clock,
    )


def _baseline(name: str) -> PolicyFactory:
    def build(
        plugins: Plugins, config: PolicyConfig, serving: ServingLookup, clock: Callable[[], float] | None
    ) -> Policy:
        return ProfilePolicy(
            name, config, serving, plugins.profile(name, BASELINE_PROFILES[name], config), clock=clock
        )

    return build


def builtin_plugins() -> Plugins:
    """Fresh registries holding every builtin plugin."""
    plugins = Plugins(
        filters=Registry("filter"),
        scorers=Registry("scorer"),
        pickers=Registry("picker"),
        policies=Registry("policy"),
    )
    plugins.filters.register("context", lambda c: ContextFilter())
    plugins.filters.register("capacity", lambda c: CapacityFilter())
    plugins.filters.register("latency", lambda c: LatencyFilter())
    plugins.filters.register("power", lambda c: PowerFilter())
    plugins.filters.register("shed", lambda c: ShedFilter())
    plugins.scorers.register("cost", lambda c: CostScorer())
    plugins.scorers.register("capacity_cost", lambda c: CapacityCostScorer())
    plugins.scorers.register("load", lambda c: LoadScorer())
    plugins.scorers.register("plan_affinity", lambda c: PlanAffinityScorer())
    plugins.pickers.register("max_score", lambda c: MaxScorePicker())
    plugins.pickers.register("round_robin", lambda c: RoundRobinPicker())
    plugins.pickers.register("random", lambda c: RandomPicker())
    plugins.policies.register("turnout", _turnout)
    for name in BASELINE_PROFILES:
        plugins.policies.register(name, _baseline(name))
    return plugins


def build_policy(
    config: PolicyConfig,
    serving: ServingLookup,
    *,
    plugins: Plugins | None = None,
    clock: Callable[[], float] | None = None,
) -> Policy:
    """The policy named by ``config.policy``. ``clock`` (e.g. ``time.perf_counter``), if given, makes
    every decision record the seconds each plugin spent (``plugin_seconds`` of the decision)."""
    plugins = plugins if plugins is not None else builtin_plugins()
    return plugins.policies.get(config.policy)(plugins, config, serving, clock)
