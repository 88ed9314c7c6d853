"""Problems chosen by another run's pass rates, before the teacher sees any (the recipe key pass_rate_from).

The practice of OpenThoughts and open-r1: sample a cheap model first, then pay the expensive teacher only for
the problems whose pass rate with the cheap one is in range (not all solved, not hopeless). Problems outside
the range are never planned, so never sent to the teacher. A problem the other run never sampled has no pass
rate to judge by: it is skipped too, and counted apart, so that the expensive teacher is paid only for
problems a cheap run vouched for (run the cheap recipe over them first to include them).
"""
from __future__ import annotations

from distill.errors import ConfigError, DistillError
from distill.flows.recipe import Recipe
from distill.generators.problems import Problem
from distill.warehouse.store import Warehouse


def preselect(recipe: Recipe, wh: Warehouse, problems: list[Problem]) -> tuple[list[Problem], dict]:
    """The problems to generate for, and what the run record says about the rest: {} without pass_rate_from,
    else {"pass_rate_from": RUN, "problems_skipped": {"pass_rate": k, "not_in_run": m}}."""
    sel = recipe.selection
    if not sel.pass_rate_from:
        return problems, {}
    try:
        _, rows = wh.query("SELECT problem_id, pass_rate FROM pass_rates WHERE run_id = ?", [sel.pass_rate_from])
        known = {r for (r,) in wh.query("SELECT DISTINCT run_id FROM pass_rates")[1]}
    except DistillError:  # no warehouse yet, so no run to take pass rates from
        rows, known = [], set()
    if not rows:
        known |= set(wh.run_ids())
        raise ConfigError(f"pass_rate_from: no run {sel.pass_rate_from!r} with samples in {wh.root} "
                          f"(runs: {', '.join(sorted(known)) or 'none'})")
    rates = dict(rows)
    lo, hi = sel.pass_rate_min, sel.pass_rate_max
    keep, skipped = [], {"pass_rate": 0, "not_in_run": 0}
    for p in problems:
        rate = rates.get(p.problem_id)
        if rate is None:
            skipped["not_in_run"] += 1
        elif (lo is not None and rate < lo) or (hi is not None and rate > hi):
            skipped["pass_rate"] += 1
        else:
            keep.append(p)
    return keep, {"pass_rate_from": sel.pass_rate_from, "problems_skipped": skipped}
