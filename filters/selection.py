"""Rejection sampling per problem: difficulty by pass rate, and how many correct samples to keep.

This runs after the per-trace filters, on all samples of a problem together (a shard always holds
every sample of its problems). It scores like a filter: `scores['pass_rate']` on every sample and
`scores['rank']` on the ones that survived the filters, so SQL can re-decide either later.
"""
from __future__ import annotations

from collections import defaultdict

from distill.errors import ConfigError
from distill.filters.basic import verdict
from distill.warehouse.schema import Trace

PREFER = ("first", "shortest", "diverse")


def _words(t: Trace) -> set[str]:
    return set((t.reasoning or t.completion).lower().split())


def _order(kept: list[Trace], prefer: str) -> list[Trace]:
    if prefer == "shortest":
        return sorted(kept, key=lambda t: (t.completion_tokens or len(t.completion.split()), t.sample_index))
    if prefer == "diverse":
        # Greedy farthest-first on word-set Jaccard distance: each next pick is the sample least
        # like the ones already picked. Starts from the shortest, for determinism.
        rest = sorted(kept, key=lambda t: (t.completion_tokens or 0, t.sample_index))
        words = {id(t): _words(t) for t in rest}
        picked = [rest.pop(0)] if rest else []
        while rest:
            def closeness(t):
                w = words[id(t)]
                return max(len(w & words[id(p)]) / max(1, len(w | words[id(p)])) for p in picked)
            best = min(rest, key=lambda t: (closeness(t), t.sample_index))
            rest.remove(best)
            picked.append(best)
        return picked
    return sorted(kept, key=lambda t: t.sample_index)


def select_per_problem(traces: list[Trace], keep_per_problem: int | None = None, prefer: str = "first",
                       pass_rate_min: float | None = None, pass_rate_max: float | None = None,
                       uses: str = "rules") -> dict:
    """Decide per problem; returns counts of what it dropped. Traces already rejected stay so. `uses`: the
    verdict a sample passes by (the recipe's `judge_uses`, see filters.basic.verdict)."""
    if prefer not in PREFER:
        raise ConfigError(f"prefer must be one of {', '.join(PREFER)}, got {prefer!r}")
    by_problem: dict[str, list[Trace]] = defaultdict(list)
    for t in traces:
        by_problem[t.problem_id].append(t)
    dropped = {"pass_rate": 0, "over_quota": 0}
    for group in by_problem.values():
        # pass rate over all samples drawn: an unverifiable sample counts as not passed
        rate = sum(1 for t in group if verdict(t, uses)) / len(group)
        for t in group:
            t.scores["pass_rate"] = rate
        out_of_range = (pass_rate_min is not None and rate < pass_rate_min) or \
                       (pass_rate_max is not None and rate > pass_rate_max)
        kept = [t for t in group if t.kept]
        for rank, t in enumerate(_order(kept, prefer)):
            t.scores["rank"] = float(rank)
            reason = "pass_rate" if out_of_range else \
                "over_quota" if keep_per_problem is not None and rank >= keep_per_problem else None
            if reason:
                t.kept, t.rejected_by, t.rejected_stage = False, reason, "selection"
                dropped[reason] += 1
    return dropped
