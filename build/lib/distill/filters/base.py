"""The filter base class: a filter scores one trace; the base class owns the loop and the counts.

Scores are kept apart from decisions: every filter writes `scores[name]` on every trace, even on
one an earlier filter already rejected, so a threshold can be re-decided later in SQL without
re-scoring. The decision is the first filter (in recipe order) whose `keep` says no.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from distill.errors import ConfigError
from distill.warehouse.schema import Trace

FILTERS: dict[str, type["Filter"]] = {}


def register_filter(name: str):
    def wrap(cls):
        cls.name = name
        FILTERS[name] = cls
        return cls
    return wrap


def make_filter(name: str, **params) -> "Filter":
    if name not in FILTERS:
        raise ConfigError(f"unknown filter {name!r} (known: {', '.join(sorted(FILTERS))})")
    try:
        return FILTERS[name](**params)
    except TypeError as e:
        raise ConfigError(f"filter {name!r}: bad parameters {params}: {e}") from None


class Filter:
    name = "filter"
    # Keys of `report` that count something: merging reports adds them up. Lists are joined; any
    # other key is configuration (the same in every report) and kept as is.
    report_counts: tuple[str, ...] = ()

    def prepare(self, traces: list[Trace]) -> None:
        """Called once per batch before scoring; filters that compare traces (dedup) look here.

        One filter object lives for a whole run in a process, so state kept here spans the shards
        that process handles (not those of other processes: Dask or Ray workers have their own).
        """

    def report(self, traces: list[Trace]) -> dict:
        """What this batch (one shard) adds to the run's record, e.g. its decontaminated problems; {} for nothing.

        Only the batch's own contribution, however much state the filter keeps: a run's report is the
        merge (`merge_reports`) of its shards' reports, which may come from many processes, and a shard
        that is redone (resumed) replaces its earlier report rather than adding to it.
        """
        return {}

    @classmethod
    def merge_reports(cls, reports: list[dict]) -> dict:
        """One report from several batches' reports: `report_counts` summed, lists joined without
        repeats (in order), anything else (configuration) as the first report that has it says."""
        out: dict = {}
        for r in reports:
            for k, v in r.items():
                if k not in out:
                    out[k] = list(v) if isinstance(v, list) else v
                elif k in cls.report_counts:
                    out[k] += v
                elif isinstance(v, list) and isinstance(out[k], list):
                    seen = {_key(x) for x in out[k]}
                    for x in v:
                        if _key(x) not in seen:
                            seen.add(_key(x))
                            out[k].append(x)
        return out

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


def _key(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def merge_filter_reports(batches: list[dict[str, dict]]) -> dict[str, dict]:
    """{filter name: report} for a run, from one {filter name: report} per batch (shard), in order.

    Each filter's class merges its own reports; a name no longer registered merges as a plain Filter.
    """
    names = list(dict.fromkeys(name for b in batches for name in b))
    return {name: FILTERS.get(name, Filter).merge_reports([b[name] for b in batches if name in b])
            for name in names}


@dataclass
class FilterStats:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    reports: dict[str, dict] = field(default_factory=dict)  # filter name -> this batch's report, if any


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
    for f in filters:
        if report := f.report(traces):
            stats.reports[f.name] = report
    return stats
