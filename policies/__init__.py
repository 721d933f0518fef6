"""Pure, synchronous placement decisions: filters, scorers, pickers, the planner and the baselines."""
