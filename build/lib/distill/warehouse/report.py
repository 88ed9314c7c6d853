"""An HTML report of one run, or of two side by side, read from the warehouse alone.

One self-contained page: charts are PNGs drawn with matplotlib's Agg renderer and inlined as base64
data URIs; there is no script and no external URL, so the file can be mailed, kept as a CI artifact
or opened offline. Every number comes from SQL over the catalog's views (what `distill sql` answers)
or from the run record; what the warehouse does not record is said on the page, never estimated.

Samples only (`kind = 'sample'`): journey rows built from a run's samples are counted apart.
"""
from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from distill.warehouse.store import Warehouse
from distill.errors import DistillError
from distill.files import write_text



KEPT, REJECTED, GREY = "#2b7bba", "#d1495b", "#9a9a9a"
TEXT_LIMIT = 1500  # characters of reasoning (or answer) shown per sample trace; the rest is counted
DIFFICULTY_COLUMNS = ("difficulty", "level")  # used when a warehouse's traces carry one


@dataclass
class RunData:
    """Everything the page shows about one run, queried once."""
    run_id: str
    record: dict
    summary: dict
    steps: list[tuple]  # (stage, in, dropped, kept, {reason: count})
    lengths: dict  # {"kept": [chars], "rejected": [chars]}
    by_source: list[tuple]  # (source, problems, samples, correct, pass_rate, kept)
    difficulty_column: str | None
    by_difficulty: list[tuple]
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
            known = {p.stem for p in (wh.root / "runs").glob("*.json")}
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
    columns = {c for (c, *_) in con.execute("DESCRIBE traces").fetchall()}
    difficulty = next((c for c in DIFFICULTY_COLUMNS if c in columns), None)
    by_difficulty = []
    if difficulty:
        by_difficulty = q(f"SELECT {difficulty}, {breakdown} {s} GROUP BY 1 ORDER BY 1")
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
    # The run's start is its first call's; a record from before calls were kept knows only its last call's start,
    # which is the run's start only if the run was never resumed. A start after the first sample is not the run's.
    if "calls" in record:
        start = (record["calls"] or [{}])[0].get("started_at")
    else:
        start = None if record.get("shards_resumed") else record.get("started_at")
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
    return RunData(run_id, record, summary, steps, lengths, by_source, difficulty, by_difficulty, pass_rates,
                   language, dedup, decontam, tokens, throughput, origin_label, examples, journey_rows)


def carried_call(record: dict) -> bool:
    """Whether the record's first call was carried over from a record written before calls were kept
    (flows/generate.py): its timings are that record's, which cover only the last call it made."""
    calls = record.get("calls") or []
    return bool(calls) and calls[0].get("shards_done") is None


def timings_complete(record: dict) -> bool:
    """Whether the record's timings cover every call that made the run's samples.

    A record with `calls` sums its timings over them all. An older record's timings are its last call's,
    which covers the run only if it was not resumed; so does a first call carried over from such a record.
    """
    if "calls" not in record:
        return not record.get("shards_resumed")
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
    import inspect

    from distill import filters

    cls = filters.FILTERS.get(name)
    if cls is None:
        return None
    p = inspect.signature(cls.__init__).parameters.get(key)
    return None if p is None or p.default is inspect.Parameter.empty else p.default


# -- charts ---------------------------------------------------------------------------------------
def _figure(width: float = 6.4, height: float = 3.0):
    # Figure objects, not pyplot: no global state, safe in the flow's threads; savefig to png is Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _img(fig, alt: str) -> str:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:  # counts are whole numbers
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if label in ("samples", "problems"):
                axis.set_major_locator(MaxNLocator(integer=True))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _empty(what: str) -> str:
    return f'<p class="empty">{html.escape(what)}</p>'


def funnel_chart(d: RunData, xmax: int) -> str:
    if not d.summary["samples"]:
        return _empty("no samples in this run")
    labels = ["samples"] + [st for st, *_ in d.steps]
    kept = [d.summary["samples"]] + [k for _, _, _, k, _ in d.steps]
    dropped = [0] + [dr for _, _, dr, _, _ in d.steps]
    fig, ax = _figure(6.4, 0.9 + 0.38 * len(labels))
    y = range(len(labels))
    ax.barh(y, kept, color=KEPT, label="kept after the step")
    ax.barh(y, dropped, left=kept, color=REJECTED, label="dropped by the step")
    for i, (k, dr) in enumerate(zip(kept, dropped)):
        ax.text(k + dr + xmax * 0.01, i, f"{k:,}" + (f"  (−{dr:,})" if dr else ""), va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.22)
    ax.set_xlabel("samples")
    ax.legend(fontsize=7, loc="lower right")
    return _img(fig, f"funnel of {d.run_id}")


def length_chart(d: RunData, bins) -> str:
    if not d.lengths["kept"] and not d.lengths["rejected"]:
        return _empty("no samples in this run")
    fig, ax = _figure()
    ax.hist([d.lengths["kept"], d.lengths["rejected"]], bins=bins, color=[KEPT, REJECTED],
            label=[f"kept ({len(d.lengths['kept'])})", f"rejected ({len(d.lengths['rejected'])})"])
    ax.set_xlabel("reasoning length (characters inside <think>)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _img(fig, f"reasoning length of {d.run_id}")


def pass_rate_chart(d: RunData) -> str:
    if not d.problem_pass_rates:
        return _empty("no problems in this run")
    fig, ax = _figure(6.4, 2.6)
    ax.hist(d.problem_pass_rates, bins=[i / 10 for i in range(11)], color=GREY, edgecolor="white")
    ax.set_xlabel("pass rate of a problem (correct / samples)")
    ax.set_ylabel("problems")
    ax.set_xlim(0, 1)
    return _img(fig, f"pass rate per problem of {d.run_id}")


def language_chart(d: RunData) -> str:
    scores = d.language["scores"]
    if not scores:
        return _empty("no language scores in this run")
    fig, ax = _figure(6.4, 2.6)
    lo = min(0.0, min(scores))
    ax.hist(scores, bins=[lo + (1 - lo) * i / 20 for i in range(21)], color=GREY, edgecolor="white")
    if d.language["min_share"] is not None:
        ax.axvline(d.language["min_share"], color=REJECTED, linestyle="--",
                   label=f"min_share {d.language['min_share']}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel(f"share of the reasoning in the target language ({d.language['target']})")
    ax.set_ylabel("samples")
    return _img(fig, f"language consistency of {d.run_id}")


def token_chart(d: RunData, xmax: int) -> str:
    rows = [r for r in d.tokens if r[3]]
    if not rows:
        return _empty("no completion tokens recorded")
    fig, ax = _figure(6.4, 0.9 + 0.32 * len(rows))
    y = range(len(rows))
    ax.barh(y, [r[3] for r in rows], color=[KEPT if r[0] == "kept" else REJECTED for r in rows])
    for i, r in enumerate(rows):
        ax.text(r[3], i, f" {r[3]:,}", va="center", fontsize=8)
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.2)
    ax.set_xlabel("completion tokens")
    return _img(fig, f"completion tokens by outcome of {d.run_id}")


def throughput_chart(d: RunData, xmax: float, ymax: int) -> str:
    if not d.throughput:
        return _empty("no timestamps recorded")
    xs, total, ys = [], 0, []
    for t, n in d.throughput:
        total += n
        xs.append(t)
        ys.append(total)
    fig, ax = _figure(6.4, 2.8)
    ax.step(xs, ys, where="post", color=KEPT)
    ax.plot(xs, ys, "o", color=KEPT, markersize=2)
    ax.set_xlabel(f"seconds since {d.throughput_origin}")
    ax.set_ylabel("completion tokens (cumulative)")
    ax.set_xlim(0, xmax * 1.05 or 1)
    ax.set_ylim(0, ymax * 1.1 or 1)
    return _img(fig, f"throughput of {d.run_id}")


# -- text -----------------------------------------------------------------------------------------
def esc(v) -> str:
    return html.escape("" if v is None else str(v))


def fmt(v, kind: str = "int") -> str:
    if v is None:
        return "—"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "rate":
        return f"{v:.1%}"
    if kind == "usd":  # API prices make a sample cost fractions of a cent
        return f"${v:,.4f}" if v >= 0.01 or v == 0 else f"${v:.6f}"
    if kind == "s":
        return f"{v:,.1f} s"
    return f"{v:,.1f}"


# (key, label, format) of the summary table; the keys are RunData.summary's
SUMMARY_ROWS = [
    ("problems", "problems", "int"), ("samples", "samples", "int"), ("correct", "verified correct", "int"),
    ("unverifiable", "unverifiable (correct is null)", "int"),
    ("truncated", "truncated (finish_reason = length)", "int"),
    ("kept", "kept", "int"), ("keep_rate", "kept / samples", "rate"),
    ("prompt_tokens", "prompt tokens", "int"), ("completion_tokens", "completion tokens", "int"),
    ("mean_completion_tokens", "completion tokens per sample", "float"),
    ("cost_usd", "cost (USD)", "usd"),
    ("cost_per_kept_usd", "cost per kept sample (USD, rejected ones paid for)", "usd"),
    ("generate_s", "generation time (all calls)", "s"),
    ("tokens_per_s", "completion tokens per second of generation", "int"),
    ("wall_s", "wall time (all calls)", "s"),
]


NUMERIC = re.compile(r"[−+$]*[\d,.]+( s| pp|%)?|—")


def _td(c: str) -> str:
    return f'<td class="n">{c}</td>' if NUMERIC.fullmatch(c) else f"<td>{c}</td>"


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table of already-escaped cells; numbers right-aligned, text left."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def kv(rows: list[list[str]]) -> str:
    """A two-column table: an escaped label, then a value."""
    return '<table class="kv">' + "".join(f"<tr><th>{k}</th>{_td(v)}</tr>" for k, v in rows) + "</table>"


def pair(figure: str, *tables: str) -> str:
    """A chart with its numbers beside it (below it when the column is narrow)."""
    return f'<div class="pair">{figure}<div>{"".join(tables)}</div></div>'


def summary_table(d: RunData) -> str:
    rows = []
    for key, label, kind in SUMMARY_ROWS:
        rows.append(f'<tr data-key="{key}"><th>{esc(label)}</th>{_td(fmt(d.summary[key], kind))}</tr>')
    if d.journey_rows:
        rows.append(f'<tr data-key="journey_rows"><th>journey rows (not counted above)</th>'
                    f'<td class="n">{d.journey_rows:,}</td></tr>')
    return f'<table class="summary">{"".join(rows)}</table>'


def diff(a, b, kind: str) -> str:
    if a is None or b is None:
        return "—"
    d = b - a
    if kind == "rate":
        return f"{d * 100:+.1f} pp"
    if kind == "int":
        return f"{int(d):+,}"
    if kind == "usd":
        return ("+" if d >= 0 else "-") + fmt(abs(d), "usd")
    return f"{d:+,.1f}"


def compare_summary_table(a: RunData, b: RunData) -> str:
    rows = ['<tr><th></th><th>A</th><th>B</th><th>B − A</th></tr>']
    for key, label, kind in SUMMARY_ROWS:
        va, vb = a.summary[key], b.summary[key]
        rows.append(f'<tr data-key="{key}"><th>{esc(label)}</th>{_td(fmt(va, kind))}{_td(fmt(vb, kind))}'
                    f'<td class="n diff">{diff(va, vb, kind)}</td></tr>')
    return f'<table class="summary compare">{"".join(rows)}</table>'


SETUP_KEYS = ("teacher", "backend", "dataset", "n", "temperature", "top_p", "max_tokens", "verifier", "filters")


def setup_values(d: RunData) -> dict:
    rec, rcp = d.record, d.record.get("recipe") or {}
    out = {"teacher": rec.get("teacher") or rcp.get("model"), "backend": rec.get("backend")}
    for k in SETUP_KEYS[2:]:
        v = rcp.get(k)
        if k == "filters" and v is not None:
            v = ", ".join(next(iter(f)) if isinstance(f, dict) else str(f) for f in v)
        out[k] = v
    return out


def when(iso) -> str | None:
    """An ISO timestamp of the run record as '2026-11-23 20:57:31 UTC'."""
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return iso


def header(d: RunData, h: str = "h1") -> str:
    rec = d.record
    if not rec:
        return (f"<{h}>{esc(d.run_id)}</{h}><p class='meta'>No run record (runs/{esc(d.run_id)}.json) in this "
                "warehouse: recipe, teacher, dates and timings are unknown; the rest is from the traces.</p>")
    setup = setup_values(d)
    calls = rec.get("calls") or []
    first = calls[0].get("started_at") if len(calls) > 1 else None  # started_at is the last call's
    meta = [("recipe", rec.get("recipe_name") or (rec.get("recipe") or {}).get("name")),
            ("teacher", f"{setup['teacher']} ({setup['backend']})"), ("status", rec.get("status")),
            ("started", when(first or rec.get("started_at"))),
            ("last call", when(rec.get("started_at")) if first else None), ("finished", when(rec.get("finished_at"))),
            ("sampling", ", ".join(f"{k} {setup[k]}" for k in ("n", "temperature", "top_p", "max_tokens")
                                   if setup.get(k) is not None)),
            ("dataset", setup.get("dataset")), ("filters", setup.get("filters")),
            ("command", rec.get("command")), ("git", rec.get("git_sha")),
            ("distill", (rec.get("versions") or {}).get("distill"))]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta if v not in (None, ""))
    return f"<{h}>Run {esc(d.run_id)}</{h}><dl class='meta'>{items}</dl>{resume_note(rec)}"


def resume_note(rec: dict) -> str:
    """What a run of several calls means for its timings; empty for a run of one call."""
    calls = rec.get("calls")
    if calls is None:  # a record from before calls were kept: its timings are its last call's
        return (f"<p class='note'>Resumed: {rec['shards_resumed']} of {rec.get('shards')} shards were written by "
                "an earlier call; timings cover only the last call.</p>") if rec.get("shards_resumed") else ""
    if len(calls) < 2 and not rec.get("shards_resumed"):
        return ""
    done = (f"; {rec['shards_resumed']} of {rec.get('shards')} shards were already written when the last one "
            "started") if rec.get("shards_resumed") else ""
    note = (f"Resumed: the run took {len(calls)} calls ({', '.join(str(c.get('status')) for c in calls)}){done}. "
            "Timings are summed over all of them.")
    if carried_call(rec):
        note += (" The first call was recorded by an earlier version of distill, whose timings cover only its own "
                 "last call, so the totals may miss generation done before it: the summary withholds them.")
    return f"<p class='note'>{esc(note)}</p>"


def breakdown_table(rows: list[tuple], what: str) -> str:
    return table([esc(what), "problems", "samples", "correct", "pass rate", "kept"],
                 [[esc(r[0]), fmt(r[1]), fmt(r[2]), fmt(r[3]), fmt(r[4], "rate"), fmt(r[5])] for r in rows])


def clip(text: str | None, limit: int = TEXT_LIMIT, note: bool = True) -> str:
    text = text or ""
    if len(text) <= limit:
        return esc(text)
    if not note:
        return esc(text[:limit]) + "…"
    return (esc(text[:limit]) + f'<span class="cut">… truncated here: {len(text) - limit:,} more characters '
            f'of {len(text):,} not shown</span>')


def example_card(e: dict) -> str:
    title = "kept" if e["kept"] else f"rejected: {e['rejected_by']} <small>(by {esc(e['rejected_stage'])})</small>"
    verdict = {True: "correct", False: "wrong", None: "unverifiable"}[e["correct"]]
    scores = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in (e["scores"] or {}).items())
    meta = (f"problem <code>{esc(e['problem_id'])}</code> · sample {e['sample_index']} · {esc(e['source'])} · "
            f"finish_reason {esc(e['finish_reason'])} · {fmt(e['completion_tokens'])} completion tokens<br>"
            f"verdict: {verdict} ({esc(e['verdict_reason'])}) · extracted {esc(e['extracted_answer'])} · "
            f"reference {esc(e['reference'])}<br>scores: {esc(scores)}")
    if e["reasoning"] or "<think>" in (e["completion"] or ""):
        think = ('<div class="think"><div class="label">reasoning (inside &lt;think&gt;)</div>'
                 f'<pre>{clip(e["reasoning"])}</pre></div>')
    else:
        think = '<div class="think none"><div class="label">no &lt;think&gt; block in this completion</div></div>'
    answer = e["answer"] or ""
    ans = (f'<div class="answer"><div class="label">answer (after &lt;/think&gt;)</div><pre>{clip(answer)}</pre></div>'
           if answer else '<div class="answer none"><div class="label">no answer after the reasoning</div></div>')
    cls = "kept" if e["kept"] else "rejected"
    return (f'<article class="trace {cls}" data-outcome="{esc(e["rejected_by"] or "kept")}"><h3>{title}</h3>'
            f'<p class="meta">{meta}</p><div class="question"><div class="label">question</div>'
            f'<pre>{clip(e["question"], 600)}</pre></div>{think}{ans}'
            f'<p class="meta">full text: <code>distill sql "select completion from traces where trace_id = '
            f"'{esc(e['trace_id'])}'\"</code></p></article>")


# -- sections -------------------------------------------------------------------------------------
# Each takes the runs on the page (one, or two to compare) and returns (title, caption, body).
def _cols(runs: list[RunData], parts: list[str]) -> str:
    if len(runs) == 1:
        return parts[0]
    cells = "".join(f'<div><h4>{"AB"[i]}: {esc(d.run_id)}</h4>{p}</div>' for i, (d, p) in enumerate(zip(runs, parts)))
    return f'<div class="cols">{cells}</div>'


def _bins(values: list[int], n: int = 30) -> list[float]:
    hi = max(values, default=0)
    hi = max(hi, 1)
    return [hi * i / n for i in range(n + 1)]


def sec_summary(runs):
    if len(runs) == 1:
        body = summary_table(runs[0])
    else:
        a, b = runs
        sa, sb = setup_values(a), setup_values(b)
        setup = "".join(
            f'<tr{" class=differs" if sa[k] != sb[k] else ""}><th>{k}</th>'
            f'<td>{esc(sa[k])}</td><td>{esc(sb[k])}</td></tr>'
            for k in SETUP_KEYS)
        body = (compare_summary_table(a, b) + "<h3>Setup</h3>"
                f'<table class="summary setup"><tr><th></th><th>A</th><th>B</th></tr>{setup}</table>')
    partial = any(d.record and not timings_complete(d.record) for d in runs)
    return ("Summary", "Counts over the run's samples (every sample drawn, rejected ones included); tokens as the "
            "backend reported them; cost from the recipe's prices; times from the run record, summed over the "
            "run's calls (a resumed run has several). A dash means the warehouse does not record it (e.g. no "
            "prices in the recipe" + (", or a resumed run whose record, written by an earlier version of "
                                      "distill, has timings of its last call only" if partial else "") + ").", body)


def sec_funnel(runs):
    xmax = max(d.summary["samples"] or 0 for d in runs) or 1
    parts = []
    for d in runs:
        rows = [[esc(st), fmt(n_in), fmt(dr), fmt(k), esc(", ".join(f"{r} {c}" for r, c in sorted(reasons.items())))]
                for st, n_in, dr, k, reasons in d.steps]
        parts.append(pair(funnel_chart(d, xmax), table(["step", "in", "dropped", "kept", "dropped by reason"], rows,
                                                        "funnel") if rows else _empty("no filter steps recorded")))
    return ("Funnel", "Samples through the filters in recipe order (the filter_funnel view): each bar is what a step "
            "let through (blue) and what it dropped (red); a sample is counted at the first step that rejects it, "
            "so later steps see only what earlier ones kept. `selection` is the per-problem step (keep_per_problem, "
            "pass-rate bounds).", _cols(runs, parts))


def sec_lengths(runs):
    bins = _bins([v for d in runs for vals in d.lengths.values() for v in vals])
    parts = []
    for d in runs:
        stats = []
        for k in ("kept", "rejected"):
            v = sorted(d.lengths[k])
            if v:
                stats.append([k, fmt(len(v)), fmt(v[len(v) // 2]), fmt(sum(v) / len(v), "float"), fmt(v[-1])])
        head = ["", "samples", "median chars", "mean chars", "max chars"]
        parts.append(pair(length_chart(d, bins), table(head, stats) if stats else ""))
    return ("Reasoning length", "Histogram of the length of the `reasoning` field (the text inside "
            "<think>…</think>) in characters, kept samples against rejected ones. Characters, not tokens: the "
            "warehouse records token counts for the whole completion only. A sample with no <think> block has "
            "length 0.", _cols(runs, parts))


def sec_pass_rates(runs):
    parts = []
    for d in runs:
        body = "<h4>by source</h4>" + (breakdown_table(d.by_source, "source") if d.by_source else _empty("no samples"))
        if d.difficulty_column:
            body += f"<h4>by {esc(d.difficulty_column)}</h4>" + breakdown_table(d.by_difficulty, d.difficulty_column)
        else:
            body += ("<h4>by difficulty</h4><p class='note'>Not recorded: the traces have no difficulty or level "
                     "column (a problem carries only source, domain, question and reference), so there is no pass "
                     "rate by difficulty. The histogram of pass rates per problem below shows how hard the problems "
                     "were for this teacher instead.</p>")
        parts.append(body + pass_rate_chart(d))
    return ("Pass rate by source and difficulty", "Pass rate = verified-correct samples / samples drawn (an "
            "unverifiable sample counts as not passed), as in the pass_rates view; per source, then the "
            "distribution over problems.", _cols(runs, parts))


def sec_language(runs):
    parts = []
    for d in runs:
        lg = d.language
        if not lg["scores"]:
            parts.append(_empty("The language filter is not in this run's recipe: no language scores were recorded."))
            continue
        v = lg["scores"]
        rows = [["samples scored", fmt(len(v))], ["target language", esc(lg["target"])],
                ["threshold (min_share)", esc(lg["min_share"])], ["below the threshold", fmt(lg["below"])],
                ["rejected as language_mixed (first reason)", fmt(lg["rejected"])],
                ["mean share", f"{sum(v) / len(v):.3f}"], ["lowest share", f"{min(v):.3f}"]]
        parts.append(pair(language_chart(d), kv(rows)))
    return ("Language consistency", "The language filter's score on every sample: the share of the reasoning written "
            "in the target language (DeepSeek-R1's language-consistency reward; math and code are left out). "
            "Samples below the dashed threshold are rejected as language_mixed unless an earlier filter rejected "
            "them first, which is why 'below the threshold' can exceed 'rejected'.", _cols(runs, parts))


def sec_dedup(runs):
    parts = []
    for d in runs:
        dd = d.dedup
        if not dd["in_recipe"] and not dd["rejected"] and not dd["flagged"]:
            parts.append(_empty("The dedup filter is not in this run's recipe: duplicates were not looked for."))
            continue
        rows = [["scope", esc(dd["scope"])], ["threshold (similarity)", esc(dd["threshold"])],
                ["rejected as duplicate (exact)", fmt(dd["rejected"].get("duplicate", 0))],
                ["rejected as near_duplicate", fmt(dd["rejected"].get("near_duplicate", 0))],
                ["samples at or above the threshold (any outcome)", fmt(dd["flagged"])],
                ["problems with a duplicate", fmt(dd["problems"])]]
        parts.append(kv(rows))
    return ("Duplicates", "Reasoning that repeats an earlier kept sample (exact, or MinHash similarity at or above the "
            "threshold) within the scope. 'Rejected' counts samples dedup was the first filter to reject; 'at or "
            "above the threshold' counts every sample whose dedup score says duplicate, whatever rejected it.",
            _cols(runs, parts))


def sec_decontam(runs):
    parts = []
    for d in runs:
        dc = d.decontam
        if not dc["in_recipe"] and not dc["hits"]:
            parts.append(_empty("The decontam filter is not in this run's recipe: problems were not checked "
                                "against evaluation sets."))
            continue
        rep = dc["report"]
        where = {h["problem_id"]: h for h in rep.get("contaminated", [])}
        rows = [[f"<code>{esc(pid)}</code>", clip(question, 160, note=False), f"{share:.2f}", fmt(n), fmt(rej),
                 esc(f"{where[pid]['eval_set']} line {where[pid]['eval_line']}") if pid in where else "—"]
                for pid, question, share, n, rej in dc["hits"]]
        sets = ", ".join(Path(p).name for p in rep.get("eval_sets", [])) or "(not in the run record)"
        body = (f"<p>Checked against {esc(sets)} with {esc(rep.get('n', dc['n']))}-gram overlaps; "
                f"{fmt(len(dc['hits']))} problem(s) hit, {fmt(dc['rejected'])} sample(s) rejected as contaminated.</p>")
        unlisted = [pid for pid, *_ in dc["hits"] if pid not in where]
        if unlisted:
            body += (f"<p class='note'>The run record's decontam report does not list {fmt(len(unlisted))} of these "
                     f"problem(s){why_unlisted(d.record)}: their eval set and line are unknown here; the scores in "
                     "the traces are complete.</p>")
        body += table(["problem", "question", "overlap share", "samples", "rejected", "eval set (run record)"], rows) \
            if rows else "<p>No problem overlaps an evaluation set.</p>"
        parts.append(body)
    return ("Decontamination", "Problems whose question shares word n-grams with an evaluation set (score = share of "
            "the question's words covered). The eval set and line come from the decontam report in the run record; "
            "the counts from the traces.", _cols(runs, parts))


def why_unlisted(rec: dict) -> str:
    """Why a decontam hit in the traces can be missing from the record's report, when the record says why."""
    # Earlier versions of distill kept the report of the shard that finished last. The record now merges every
    # shard's report (filters_by_shard); a carried-over older report is kept as shard -1 (flows/generate.py).
    old = "the report of the shard that finished last, not of all shards"
    if "filters_by_shard" not in rec and "calls" not in rec:
        return f" (it holds {old})"
    if any(e.get("shard") == -1 for e in rec.get("filters_by_shard") or []):
        return f" (part of it was written by an earlier version of distill, which kept {old})"
    return ""


def sec_tokens(runs):
    xmax = max((r[3] or 0 for d in runs for r in d.tokens), default=0)
    parts = []
    for d in runs:
        rows = [[esc(o), fmt(n), fmt(p), fmt(c), fmt(m, "float"), fmt(cost, "usd")] for o, n, p, c, m, cost in d.tokens]
        parts.append(pair(token_chart(d, xmax), table(["outcome", "samples", "prompt tokens", "completion tokens",
                                                       "completion tokens / sample", "cost (USD)"], rows)))
    return ("Tokens and cost", "Where the completion tokens went: kept samples against each rejection reason. Cost "
            "(cost_usd) is recorded per sample when the recipe gives prices (price_input_per_mtok, "
            "price_output_per_mtok); a dash means it gave none.", _cols(runs, parts))


def sec_throughput(runs):
    xmax = max((t for d in runs for t, _ in d.throughput), default=0)
    ymax = max(sum(n for _, n in d.throughput) for d in runs)
    parts = []
    for d in runs:
        t = d.record.get("timings") or {}
        rows = [[esc(k), fmt(v, "s")] for k, v in sorted(t.items())]
        parts.append(pair(throughput_chart(d, xmax, ymax), table([esc(timings_label(d.record)), "seconds"], rows)
                          if rows else _empty("no timings in the run record")))
    return ("Throughput over time", "Cumulative completion tokens against each sample's created_at, from the "
            "run's start (its first call's started_at in the run record), or from the first sample when the record "
            "does not say when the run started (a record written before calls were kept knows only its last "
            "call's start). created_at is stamped when a generate call returns, once per batch (a shard), so the "
            "curve rises in steps and its slope is tokens per second of wall time, model loading and the time "
            "between a resumed run's calls included. The run record keeps stage times summed over shards and "
            "calls, not per shard; each call's own are in its calls entry.", _cols(runs, parts))


def timings_label(rec: dict) -> str:
    """The header of a run's timings table: what the record's timings add up."""
    calls = rec.get("calls")
    if calls is None:
        return "stage (last call only, summed over its shards)" if rec.get("shards_resumed") else \
            "stage (summed over shards)"
    return f"stage (summed over shards and {len(calls)} calls)" if len(calls) > 1 else "stage (summed over shards)"


def sec_examples(runs):
    parts = ["".join(example_card(e) for e in d.examples) or _empty("no samples") for d in runs]
    return ("Sample traces", "One kept sample and one per rejection reason (the first by problem id and sample "
            f"index), HTML-escaped; reasoning and answer beyond {TEXT_LIMIT:,} characters are cut, with a note.",
            _cols(runs, parts))


SECTIONS = [("summary", sec_summary), ("funnel", sec_funnel), ("lengths", sec_lengths),
            ("pass-rates", sec_pass_rates), ("language", sec_language), ("duplicates", sec_dedup),
            ("decontamination", sec_decontam), ("tokens", sec_tokens), ("throughput", sec_throughput),
            ("samples", sec_examples)]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1280px;margin:0 auto;
padding:16px 24px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:8px 0}h4{margin:12px 0 4px}
dl.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:2px 16px;margin:0}
dl.meta div{display:flex;gap:8px}dt{color:#666;min-width:70px}dd{margin:0;overflow-wrap:anywhere}
.caption{color:#555;margin:4px 0 12px;max-width:900px}.note{color:#7a5b00}.empty{color:#888;font-style:italic}
table{border-collapse:collapse;margin:8px 0}td.n{text-align:right}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}table.kv th{font-weight:normal}
table.summary th{font-weight:normal}tr.differs td{font-weight:bold;background:#fff6d5}td.diff{color:#555}
img{max-width:100%;height:auto;display:block}
.pair{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}.pair>img{flex:0 1 640px;min-width:0}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:24px}.cols>div{min-width:0}
nav a{margin-right:12px}
article.trace{border:1px solid #ddd;border-left:4px solid #2b7bba;padding:8px 12px;margin:12px 0;background:#fff}
article.trace.rejected{border-left-color:#d1495b}article.trace .meta{color:#555;font-size:12px}
pre{white-space:pre-wrap;word-wrap:break-word;margin:4px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace}
.label{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:#777}
.question{margin:6px 0}.think{background:#f4f4f8;border-left:3px solid #9a9ac8;padding:6px 10px;margin:6px 0;color:#444}
.answer{background:#eef7ee;border-left:3px solid #4a9a4a;padding:6px 10px;margin:6px 0}
.none{background:#fafafa;border-left-color:#ccc}.cut{color:#a33;font-style:italic;display:block;margin-top:4px}
"""


def page(title: str, head_html: str, runs: list[RunData], root: Path) -> str:
    sections, nav = [], []
    for sid, fn in SECTIONS:
        name, caption, body = fn(runs)
        nav.append(f'<a href="#{sid}">{esc(name)}</a>')
        sections.append(f'<section id="{sid}"><h2>{esc(name)}</h2><p class="caption">{esc(caption)}</p>'
                        f'{body}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><header>{head_html}<nav>{"".join(nav)}</nav></header>'
            f'{"".join(sections)}<footer><p class="caption">Made by distill from the warehouse at {esc(root)}; '
            f'again with <code>distill {"report" if len(runs) == 1 else "compare"} '
            f'{" ".join(esc(d.run_id) for d in runs)} --warehouse {esc(root)}</code>.</p></footer></body></html>\n')


# -- entry points ---------------------------------------------------------------------------------
def report_html(root: str | os.PathLike, run_id: str) -> str:
    return _report_page(root, load(root, run_id))


def _report_page(root: str | os.PathLike, d: RunData) -> str:
    return page(f"distill report: {d.run_id}", header(d), [d], Warehouse(root).root)


def compare_html(root: str | os.PathLike, run_a: str, run_b: str) -> str:
    a, b = load(root, run_a), load(root, run_b)
    head = (f"<h1>Compare {esc(run_a)} (A) with {esc(run_b)} (B)</h1>"
            f"<div class='cols'><div>{header(a, 'h3')}</div><div>{header(b, 'h3')}</div></div>")
    return page(f"distill compare: {run_a} vs {run_b}", head, [a, b], Warehouse(root).root)


def default_path(root: str | os.PathLike, run_id: str) -> Path:
    return Warehouse(root).root / "reports" / f"{run_id}.html"


def _write(path: Path, text: str) -> Path:
    # temporary name, then rename: a reader (a browser, the Prefect UI's link) never sees half a page
    return write_text(path, text)


def write_report(root: str | os.PathLike, run_id: str, out: str | os.PathLike | None = None) -> Path:
    """Render one run's report to `out` (default <root>/reports/<run_id>.html); returns the path."""
    return _write(Path(out) if out else default_path(root, run_id), report_html(root, run_id))


def write_compare(root: str | os.PathLike, run_a: str, run_b: str, out: str | os.PathLike) -> Path:
    return _write(Path(out), compare_html(root, run_a, run_b))


def publish(root: str | os.PathLike, run_id: str) -> str:
    """Write <root>/reports/<run_id>.html; return markdown for a Prefect artifact: the summary table and
    where the page is. The page itself (its PNGs inlined, a few hundred KB) is too big for an artifact."""
    d = load(root, run_id)
    path = _write(default_path(root, run_id), _report_page(root, d))
    lines = ["| | |", "|---|---:|"] + [f"| {label} | {fmt(d.summary[key], kind)} |"
                                        for key, label, kind in SUMMARY_ROWS]
    rejected = [f"{o} {n:,}" for o, n, *_ in d.tokens if o != "kept"]
    lines += ["", "rejected: " + (", ".join(rejected) or "none"), "",
              f"Full report (funnel, lengths, pass rates, language, duplicates, decontamination, throughput, sample "
              f"traces), one self-contained HTML file: `{path}`. Re-render: "
              f"`distill report {run_id} --warehouse {Warehouse(root).root} --out FILE`."]
    return "\n".join(lines)
