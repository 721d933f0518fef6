"""Plugin registries and building policies from configuration."""

from __future__ import annotations

import pytest
from fakes import make_request, make_snapshot, make_spec, make_state, serving

from policies.config import PolicyConfig, ProfileConfig, WeightedScorer
from policies.decision import Placed, Refused
from policies.framework import CycleContext, Filter, Rejection, RejectReason
from policies.ledger import ReservationLedger
from policies.predict import Target
from policies.registry import (
    DuplicatePluginError,
    Registry,
    UnknownPluginError,
    build_policy,
    builtin_plugins,
)
from policies.types import EMPTY_PLAN


def test_registry_refuses_duplicates_and_names_known_plugins() -> None:
    r: Registry[int] = Registry("widget")
    r.register("a", 1)
    with pytest.raises(DuplicatePluginError, match="widget named 'a'"):
        r.register("a", 2)
    assert r.get("a") == 1
    with pytest.raises(UnknownPluginError, match="unknown widget 'b'; known: a"):
        r.get("b")
    with pytest.raises(ValueError):
        r.register("", 3)
    assert r.names() == ("a",) and "a" in r and list(r) == ["a"]


def test_builtin_plugins_are_all_there_and_fresh() -> None:
    p = builtin_plugins()
    assert p.policies.names() == ("cheapest_feasible", "least_loaded", "random", "round_robin", "turnout")
    assert p.filters.names() == ("capacity", "context", "latency", "power", "shed")
    assert p.scorers.names() == ("capacity_cost", "cost", "load", "plan_affinity")
    assert p.pickers.names() == ("max_score", "random", "round_robin")
    p.filters.register("extra", lambda c: _NoH100())
    assert "extra" not in builtin_plugins().filters  # no shared global state


def test_every_policy_builds_and_places() -> None:
    snapshot = make_snapshot([make_state(make_spec("e1"))])
    for name in builtin_plugins().policies.names():
        policy = build_policy(PolicyConfig(policy=name), serving)
        assert policy.name == name
        d = policy.place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
        assert isinstance(d, Placed) and d.policy == name


def test_unknown_names_fail_naming_the_profile() -> None:
    with pytest.raises(UnknownPluginError, match="unknown policy 'nope'"):
        build_policy(PolicyConfig(policy="nope"), serving)
    bad = ProfileConfig(filters=("context", "typo"), scorers=(), picker="max_score")
    with pytest.raises(UnknownPluginError, match="profile plan_profile: unknown filter 'typo'"):
        build_policy(PolicyConfig(plan_profile=bad), serving)
    bad_scorer = ProfileConfig(filters=(), scorers=(WeightedScorer("price", 1.0),), picker="max_score")
    with pytest.raises(UnknownPluginError, match="profile spill_profile: unknown scorer 'price'"):
        build_policy(PolicyConfig(spill_profile=bad_scorer), serving)


class _NoH100(Filter):
    name = "no_h100"

    def filter(self, ctx: CycleContext, target: Target) -> Rejection | None:
        if target.kind == "h100":
            return Rejection(RejectReason.NOT_ALLOWED, f"{target.endpoint_id}: no h100 here", self.name)
        return None


def test_a_custom_filter_plugs_in_by_name() -> None:
    plugins = builtin_plugins()
    plugins.filters.register("no_h100", lambda c: _NoH100())
    profile = ProfileConfig(
        filters=("context", "no_h100"), scorers=(WeightedScorer("cost", 1.0),), picker="max_score"
    )
    policy = build_policy(PolicyConfig(policy="turnout", spill_profile=profile), serving, plugins=plugins)
    snapshot = make_snapshot(
        [
            make_state(make_spec("h", kind="h100", price_usd_per_hour=1.0)),
            make_state(make_spec("t", kind="trn2")),
        ]
    )
    d = policy.place(make_request(), snapshot, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(d, Placed) and d.chosen.endpoint_id == "t"
    only_h100 = make_snapshot([make_state(make_spec("h", kind="h100"))])
    refused = policy.place(make_request(), only_h100, EMPTY_PLAN, ReservationLedger(), 0.0)
    assert isinstance(refused, Refused) and "no h100 here" in refused.message
