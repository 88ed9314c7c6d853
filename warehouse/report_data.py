"""What the report shows about one run, gathered from the warehouse: SQL over the catalog's views (what
`distill sql` answers) and the run record. Rendering is warehouse/report.py's; charts are warehouse/charts.py's.

Samples only (`kind = 'sample'`): journey rows built from a run's samples are counted apart.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import datetime

from distill.errors import DistillError
from distill.warehouse.store import Warehouse

# The difficulty view's levels, as the page names them (level = how hard the problem was for the run's teacher)
LEVELS = {1: "1 · easy (pass rate ≥ 0.8)", 2: "2 (pass rate 0.6–0.8)", 3: "3 (pass rate 0.4–0.6)",
          4: "4 (pass rate 0.2–0.4)", 5: "5 · hard (pass rate < 0.2)"}


@dataclass
class RunData:
    """Everything the page shows about one run, queried once."""
    run_id: str
    record: dict
    summary: dict
    steps: list[tuple]  # (stage, in, dropped, kept, {reason: count})
    lengths: dict  # {"kept": [chars], "rejected": [chars]}
    by_source: list[tuple]  # (source, problems, samples, correct, pass_rate, kept)
    by_difficulty: list[tuple]  # (level, problems, samples, correct, pass_rate, kept), from the difficulty view
    problem_pass_rates: list[float]
    language: dict
    dedup: dict
    decontam: dict
    tokens: list[tuple]  # (outcome, samples, prompt_tokens, completion_tokens, mean completion, cost_usd)
    throughput: list[tuple]  # (seconds since the first stamp, completion tokens), in time order
    throughput_origin: str  # "the run's start" (its first call's) or "the first sample" when that is not known
    examples: list[dict]
    journey_rows: int = 0


# -- reading --------------------------------------------------------------------------------------
def load(root: str | os.PathLike, run_id: str) -> RunData:
    """Query everything the page shows about `run_id`; DistillError if the warehouse has no such run."""
    wh = Warehouse(root)
    con = wh.connect(read_only=True)  # FileNotFoundError with the how-to when there is no warehouse
    try:
        return _load(wh, con, run_id)
    finally:
        con.close()


def _load(wh: Warehouse, con, run_id: str) -> RunData:
    def q(sql: str, params: list | None = None) -> list[tuple]:
        return con.execute(sql, [run_id, *(params or [])]).fetchall()

    record = wh.read_run(run_id)
    if record is None:
        if not q("SELECT 1 FROM traces WHERE run_id = ? LIMIT 1"):
            known = set(wh.run_ids())
            known |= {r for (r,) in con.execute("SELECT DISTINCT run_id FROM traces").fetchall() if r}
            raise DistillError(f"no run {run_id!r} in {wh.root} (runs: {', '.join(sorted(known)) or 'none'})")
        record = {}

    s = "FROM traces WHERE run_id = ? AND kind = 'sample'"
    row = q(f"""SELECT count(DISTINCT problem_id), count(*), count(*) FILTER (WHERE correct),
                       count(*) FILTER (WHERE correct IS NULL), count(*) FILTER (WHERE finish_reason = 'length'),
                       count(*) FILTER (WHERE kept), sum(prompt_tokens), sum(completion_tokens),
                       sum(cost_usd), count(cost_usd) {s}""")[0]
    problems, samples, correct, unverifiable, truncated, kept, ptok, ctok, cost, costed = row
    timings = record.get("timings") or {}
    gen = timings.get("generate")
    complete = timings_complete(record)
    summary = {
        "problems": problems, "samples": samples, "correct": correct, "unverifiable": unverifiable,
        "truncated": truncated, "kept": kept, "keep_rate": kept / samples if samples else None,
        "prompt_tokens": ptok or 0, "completion_tokens": ctok or 0,
        "mean_completion_tokens": (ctok or 0) / samples if samples else None,
        "cost_usd": cost if costed else None,
        "cost_per_kept_usd": cost / kept if costed and kept else None,
        # the run's totals, withheld when the record's timings miss calls that made some of the samples
        "generate_s": gen if complete else None, "wall_s": timings.get("wall") if complete else None,
        "tokens_per_s": (ctok or 0) / gen if gen and complete else None,
    }
    journey_rows = q("SELECT count(*) FROM traces WHERE run_id = ? AND kind <> 'sample'")[0][0]

    steps = [(st, n_in, d, k, dict(r or {})) for st, n_in, d, k, r in q(
        'SELECT stage, "in", dropped, kept, dropped_by_reason FROM filter_funnel WHERE run_id = ? ORDER BY step')]

    lengths = {"kept": [], "rejected": []}
    for is_kept, chars in q(f"SELECT coalesce(kept, false), length(coalesce(reasoning, '')) {s}"):
        lengths["kept" if is_kept else "rejected"].append(chars)

    breakdown = """count(DISTINCT problem_id), count(*), count(*) FILTER (WHERE correct),
                   count(*) FILTER (WHERE correct) / count(*), count(*) FILTER (WHERE kept)"""
    by_source = q(f"SELECT source, {breakdown} {s} GROUP BY 1 ORDER BY 1")
    by_difficulty = [(LEVELS.get(level, str(level)), *rest) for level, *rest in q(
        """SELECT d.level, count(DISTINCT t.problem_id), count(*), count(*) FILTER (WHERE t.correct),
                  count(*) FILTER (WHERE t.correct) / count(*), count(*) FILTER (WHERE t.kept)
           FROM traces t JOIN difficulty d
                ON d.run_id = t.run_id AND d.problem_id = t.problem_id AND d.basis = 'pass_rate'
           WHERE t.run_id = ? AND t.kind = 'sample' GROUP BY 1 ORDER BY 1""")]
    pass_rates = [r for (r,) in q("SELECT pass_rate FROM pass_rates WHERE run_id = ? ORDER BY problem_id")]

    specs = filter_specs(record)
    language = {"in_recipe": "language" in specs, "target": None, "min_share": None, "scores": [],
                "rejected": 0, "below": 0}
    if language["in_recipe"] or q(f"SELECT 1 {s} AND scores['language'] IS NOT NULL LIMIT 1"):
        language["target"] = filter_param(specs, "language", "target")
        language["min_share"] = filter_param(specs, "language", "min_share")
        language["scores"] = [v for (v,) in q(f"SELECT scores['language'] {s} AND scores['language'] IS NOT NULL")]
        language["rejected"] = q(f"SELECT count(*) {s} AND rejected_by = 'language_mixed'")[0][0]
        if language["min_share"] is not None:
            language["below"] = sum(1 for v in language["scores"] if v < language["min_share"])

    reports = record.get("filters") or {}
    dedup = {"in_recipe": "dedup" in specs, "report": reports.get("dedup") or {},
             "scope": filter_param(specs, "dedup", "scope"), "threshold": filter_param(specs, "dedup", "threshold")}
    dedup["rejected"] = dict(q(f"SELECT rejected_by, count(*) {s} AND rejected_stage = 'dedup' GROUP BY 1 ORDER BY 1"))
    # decided over whole runs afterwards (distill dedup, or the recipe's global_dedup): the decisions overlay
    dedup["global"] = dict(q(f"SELECT rejected_by, count(*) {s} AND rejected_stage = 'global_dedup' GROUP BY 1 ORDER BY 1"))
    dedup["flagged"], dedup["problems"] = q(
        f"SELECT count(*), count(DISTINCT problem_id) {s} AND scores['dedup'] >= ?", [dedup["threshold"] or 1.0])[0]

    decontam = {"in_recipe": "decontam" in specs, "report": reports.get("decontam") or {},
                "max_share": filter_param(specs, "decontam", "max_share") or 0.0,
                "n": filter_param(specs, "decontam", "n")}
    decontam["hits"] = q(f"""SELECT problem_id, any_value(prompt[len(prompt)].content), max(scores['decontam']),
                                    count(*), count(*) FILTER (WHERE rejected_by = 'contaminated')
                             {s} AND scores['decontam'] > ? GROUP BY 1 ORDER BY 1""", [decontam["max_share"]])
    decontam["rejected"] = q(f"SELECT count(*) {s} AND rejected_by = 'contaminated'")[0][0]

    tokens = q(f"""SELECT coalesce(rejected_by, 'kept') AS outcome, count(*), sum(prompt_tokens),
                          sum(completion_tokens), avg(completion_tokens), sum(cost_usd)
                   {s} GROUP BY 1 ORDER BY (outcome = 'kept') DESC, 4 DESC NULLS LAST, 1""")

    stamps = q(f"SELECT epoch(created_at), coalesce(completion_tokens, 0) {s} AND created_at IS NOT NULL "
               "ORDER BY created_at")
    origin_label = "the first sample"
    t0 = stamps[0][0] if stamps else 0.0
    # The run's start is its first call's, unless that call was carried over from an older record of a resumed
    # run (its start is of the last call that record knew). A start after the first sample is not the run's.
    start = None if carried_call(record) else (record.get("calls") or [{}])[0].get("started_at")
    if start:
        started = datetime.fromisoformat(str(start)).timestamp()
        if stamps and started <= t0:
            t0, origin_label = started, "the run's start"
    throughput = [(t - t0, n) for t, n in stamps]

    cur = con.execute(
        f"""SELECT trace_id, problem_id, sample_index, source, reference, prompt[len(prompt)].content AS question,
                   completion, reasoning, answer, finish_reason, completion_tokens, correct, verdict_reason,
                   extracted_answer, scores, kept, rejected_by, rejected_stage
            FROM (SELECT *, row_number() OVER (PARTITION BY coalesce(rejected_by, '')
                                               ORDER BY problem_id, sample_index) AS rn {s})
            WHERE rn = 1 ORDER BY kept DESC, rejected_by""", [run_id])
    cols = [c[0] for c in cur.description]
    examples = [dict(zip(cols, r)) for r in cur.fetchall()]
    return RunData(run_id, record, summary, steps, lengths, by_source, by_difficulty, pass_rates,
                   language, dedup, decontam, tokens, throughput, origin_label, examples, journey_rows)


def carried_call(record: dict) -> bool:
    """Whether the record's first call was carried over from an older record of a resumed run
    (store.upgrade_run): its timings are that record's, which cover only the last call it made."""
    calls = record.get("calls") or []
    return bool(calls) and calls[0].get("shards_done") is None


def timings_complete(record: dict) -> bool:
    """Whether the record's timings cover every call that made the run's samples: they are summed over its
    calls, which miss some only when the first was carried over from an older record of a resumed run."""
    return not carried_call(record)


def filter_specs(record: dict) -> dict[str, dict]:
    """The recipe's filters as {name: params}, from the run record."""
    out = {}
    for spec in (record.get("recipe") or {}).get("filters") or []:
        if isinstance(spec, str):
            out[spec] = {}
        elif isinstance(spec, dict) and spec:
            name, params = next(iter(spec.items()))
            out[name] = params or {}
    return out


def filter_param(specs: dict, name: str, key: str):
    """A filter's parameter as the run used it: the recipe's value, else the filter's default."""
    if key in specs.get(name, {}):
        return specs[name][key]
    from distill import filters

    cls = filters.FILTERS.get(name)
    if cls is None:
        return None
    p = inspect.signature(cls.__init__).parameters.get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default
