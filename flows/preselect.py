"""Problems chosen by another run's pass rates, before the teacher sees any (the recipe key pass_rate_from).

The practice of OpenThoughts and open-r1: sample a cheap model first, then pay the expensive teacher only for
the problems whose pass rate with the cheap one is in range (not all solved, not hopeless). Problems outside
the range are never planned, so never sent to the teacher. A problem the other run never sampled has no pass
rate to judge by: it is skipped too, and counted apart, so that the expensive teacher is paid only for
problems a cheap run vouched for (run the cheap recipe over them first to include them).
"""
from __future__ import annotations

from distill.flows.recipe import Recipe
from distill.generators.problems import Problem
from distill.warehouse.pass_rates import select_by_pass_rate
from distill.warehouse.store import Warehouse


def preselect(recipe: Recipe, wh: Warehouse, problems: list[Problem]) -> tuple[list[Problem], dict]:
    """The problems to generate for, and what the run record says about the rest: {} without pass_rate_from,
    else {"pass_rate_from": RUN, "problems_skipped": {"pass_rate": k, "not_in_run": m}}."""
    sel = recipe.selection
    if not sel.pass_rate_from:
        return problems, {}
    keep, skipped = select_by_pass_rate(wh, problems, sel.pass_rate_from, sel.pass_rate_min, sel.pass_rate_max)
    return keep, {"pass_rate_from": sel.pass_rate_from, "problems_skipped": skipped}
