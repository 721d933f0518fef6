"""Turnout what-if: replay a request trace through a placement policy onto a simulated fleet.

Modules (import what you use; this package imports nothing itself, so reading a trace does not load the
planner or matplotlib):

* :mod:`sim.traces`: ``load_trace("builtin:azure-conv" | "builtin:azure-code" | PATH)``, ``scale_rate``,
  ``cut_duration``; the shipped Azure traces are in ``sim/data/`` (CC-BY 4.0, ``ATTRIBUTION.md``).
* :mod:`sim.engine`: ``simulate(trace, fleet, policy, SimConfig(...)) -> SimResult``; fleets from a
  configuration file (``load_fleet``), a loaded configuration (``fleet_from_config``) or pools
  (``fleet_from_pools``).
* :mod:`sim.policy_adapter`: the ``SimPolicy`` interface; ``router_policy(name, serving)`` wraps the
  router's own policies ("turnout" and the baselines); ``FirstFit`` is a plain policy for tests.
* :mod:`sim.endpoint`: the simulated endpoint (continuous batching by the serving profile).
* :mod:`sim.accounting`: exact cost and energy integrals and the per-policy summary.
* :mod:`sim.report`: ``summary.json``, ``report.md``, PNG plots, the terminal table, a progress bar.
* :mod:`sim.clock`: the simulated clock and the event queue.
"""
