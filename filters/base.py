"""The filter base class: a filter scores one trace; the base class owns the loop and the counts.

Scores are kept apart from decisions: every filter writes `scores[name]` on every trace, even on
one an earlier filter already rejected, so a threshold can be re-decided later in SQL without
re-scoring. The decision is the first filter (in recipe order) whose `keep` says no.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from warehouse.schema import Trace

FILTERS: dict[str, type["Filter"]] = {}


def register_filter(name: str):
    def wrap(cls):
        cls.name = name
        FILTERS[name] = cls
        return cls
    return wrap


def make_filter(name: str, **params) -> "Filter":
    if name not in FILTERS:
        raise KeyError(f"unknown filter {name!r} (known: {', '.join(sorted(FILTERS))})")
    try:
        return FILTERS[name](**params)
    except TypeError as e:
        raise ValueError(f"filter {name!r}: bad parameters {params}: {e}") from None


class Filter:
    name = "filter"

    def prepare(self, traces: list[Trace]) -> None:
        """Called once per batch before scoring; filters that compare traces (dedup) look here.

        One filter object lives for a whole run, so state kept here spans shards.
        """

    def report(self) -> dict:
        """What the filter wants recorded in the run's record (e.g. decontaminated problems)."""
        return {}

    def score(self, trace: Trace) -> float | None:
        raise NotImplementedError

    def keep(self, score: float | None) -> bool | tuple[bool, str]:
        """True to keep; False, or (False, reason), to drop. The reason defaults to the name."""
        raise NotImplementedError

    def decide(self, score: float | None) -> tuple[bool, str | None]:
        verdict = self.keep(score)
        if isinstance(verdict, tuple):
            ok, reason = verdict
        else:
            ok, reason = verdict, self.name
        return bool(ok), (None if ok else reason)


@dataclass
class FilterStats:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)


def apply_filters(traces: list[Trace], filters: list[Filter]) -> FilterStats:
    stats = FilterStats()
    for f in filters:
        f.prepare(traces)
    for t in traces:
        t.kept, t.rejected_by, t.rejected_stage = True, None, None
        for f in filters:
            s = f.score(t)
            t.scores[f.name] = s
            ok, reason = f.decide(s)
            if not ok and t.kept:
                t.kept, t.rejected_by, t.rejected_stage = False, reason, f.name
        stats.total += 1
        if t.kept:
            stats.kept += 1
        else:
            stats.dropped[t.rejected_by] += 1
    return stats
