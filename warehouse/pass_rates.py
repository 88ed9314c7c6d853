"""Problems chosen by a stored run's pass rates (the `pass_rates` view): generation's `pass_rate_from`
(flows/preselect.py) and RL's (trainers/rl.py) both keep the problems whose pass rate is in a band.

A problem the run never sampled has no pass rate to judge by: it is left out and counted apart.
"""
from __future__ import annotations

from distill.errors import ConfigError, DistillError
from distill.generators.problems import Problem
from distill.warehouse.store import Warehouse


def select_by_pass_rate(wh: Warehouse, problems: list[Problem], run_id: str, lo: float | None,
                        hi: float | None) -> tuple[list[Problem], dict]:
    """The problems whose pass rate in `run_id` is within [lo, hi] (None: unbounded), and how many were
    skipped: {"pass_rate": out of the band, "not_in_run": never sampled by that run}."""
    try:
        _, rows = wh.query("SELECT problem_id, pass_rate FROM pass_rates WHERE run_id = ?", [run_id])
        known = {r for (r,) in wh.query("SELECT DISTINCT run_id FROM pass_rates")[1]}
    except DistillError:  # no warehouse yet, so no run to take pass rates from
        rows, known = [], set()
    if not rows:
        known |= set(wh.run_ids())
        raise ConfigError(f"pass_rate_from: no run {run_id!r} with samples in {wh.root} "
                          f"(runs: {', '.join(sorted(known)) or 'none'})")
    rates = dict(rows)
    keep, skipped = [], {"pass_rate": 0, "not_in_run": 0}
    for p in problems:
        rate = rates.get(p.problem_id)
        if rate is None:
            skipped["not_in_run"] += 1
        elif (lo is not None and rate < lo) or (hi is not None and rate > hi):
            skipped["pass_rate"] += 1
        else:
            keep.append(p)
    return keep, skipped
