"""An HTML report of one run, or of two side by side, read from the warehouse alone.

One self-contained page: charts are PNGs (warehouse/charts.py) inlined as base64 data URIs; there is no
script and no external URL, so the file can be mailed, kept as a CI artifact or opened offline. Every
number comes from SQL over the catalog's views or from the run record (warehouse/report_data.py); what
the warehouse does not record is said on the page, never estimated. The page is the Jinja2 templates in
warehouse/templates/, autoescaped: a model's text, a rejection reason or a recipe value reaches the page
as text, never as markup. This module gives them their values, formatted.
"""
from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import jinja2

from distill.files import write_text
from distill.warehouse import charts
from distill.warehouse.report_data import RunData, carried_call, load, timings_complete
from distill.warehouse.store import Warehouse

TEXT_LIMIT = 1500  # characters of reasoning (or answer) shown per sample trace; the rest is counted

# (id, title) of the page's sections, in order; each is templates/section-<id>.html
SECTIONS = [("summary", "Summary"), ("funnel", "Funnel"), ("lengths", "Reasoning length"),
            ("pass-rates", "Pass rate by source and difficulty"), ("language", "Language consistency"),
            ("duplicates", "Duplicates"), ("decontamination", "Decontamination"), ("tokens", "Tokens and cost"),
            ("throughput", "Throughput over time"), ("samples", "Sample traces")]

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
SETUP_KEYS = ("teacher", "backend", "dataset", "n", "temperature", "top_p", "max_tokens", "verifier", "filters")
NUMERIC = re.compile(r"[−+$]*[\d,.]+( s| pp|%)?|—")  # a table cell that is right-aligned


# -- values as the page writes them ---------------------------------------------------------------
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


def when(iso) -> str | None:
    """An ISO timestamp of the run record as '2026-11-23 20:57:31 UTC'."""
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return iso


def scores_text(scores: dict | None) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in (scores or {}).items())


def bins(values: list[int], n: int = 30) -> list[float]:
    hi = max(max(values, default=0), 1)
    return [hi * i / n for i in range(n + 1)]


# -- what the run record says ---------------------------------------------------------------------
def setup_values(d: RunData) -> dict:
    rec, rcp = d.record, d.record.get("recipe") or {}
    out = {"teacher": rec.get("teacher") or rcp.get("model"), "backend": rec.get("backend")}
    for k in SETUP_KEYS[2:]:
        v = rcp.get(k)
        if k == "filters" and v is not None:
            v = ", ".join(next(iter(f)) if isinstance(f, dict) else str(f) for f in v)
        out[k] = v
    return out


def header_meta(d: RunData) -> list[tuple[str, str]]:
    """The run's facts under its name: (label, value), only those the record has."""
    rec, setup = d.record, setup_values(d)
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
    return [(k, v) for k, v in meta if v not in (None, "")]


def resume_note(rec: dict) -> str:
    """What a run of several calls means for its timings; empty for a run of one call."""
    calls = rec.get("calls") or []
    if len(calls) < 2 and not rec.get("shards_resumed"):
        return ""
    if len(calls) == 1 and carried_call(rec):  # an older record of a resumed run: only its last call is known
        return (f"Resumed: {rec['shards_resumed']} of {rec.get('shards')} shards were written by an earlier call; "
                "timings cover only the last call.")
    done = (f"; {rec['shards_resumed']} of {rec.get('shards')} shards were already written when the last one "
            "started") if rec.get("shards_resumed") else ""
    note = (f"Resumed: the run took {len(calls)} calls ({', '.join(str(c.get('status')) for c in calls)}){done}. "
            "Timings are summed over all of them.")
    if carried_call(rec):
        note += (" The first call was recorded by an earlier version of distill, whose timings cover only its own "
                 "last call, so the totals may miss generation done before it: the summary withholds them.")
    return note


def timings_label(rec: dict) -> str:
    """The header of a run's timings table: what the record's timings add up."""
    calls = rec.get("calls") or []
    if len(calls) == 1 and carried_call(rec):
        return "stage (last call only, summed over its shards)"
    return f"stage (summed over shards and {len(calls)} calls)" if len(calls) > 1 else "stage (summed over shards)"


def why_unlisted(rec: dict) -> str:
    """Why a decontam hit in the traces can be missing from the record's report, when the record says why."""
    # Earlier versions of distill kept the report of the shard that finished last; store.upgrade_run keeps such a
    # report as shard -1, and the record now merges it with every later shard's.
    old = "the report of the shard that finished last, not of all shards"
    shards = [e.get("shard") for e in rec.get("filters_by_shard") or []]
    if shards and all(s == -1 for s in shards):
        return f" (it holds {old})"
    if -1 in shards:
        return f" (part of it was written by an earlier version of distill, which kept {old})"
    return ""


def decontam_sets(d: RunData) -> str:
    return ", ".join(Path(p).name for p in d.decontam["report"].get("eval_sets", [])) or "(not in the run record)"


def decontam_listed(d: RunData) -> dict[str, str]:
    """Where the record's decontam report found each problem it lists: {problem_id: "<eval set> line <n>"}."""
    return {h["problem_id"]: f"{h['eval_set']} line {h['eval_line']}" for h in d.decontam["report"].get("contaminated", [])}


# -- the page -------------------------------------------------------------------------------------
ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    finalize=lambda v: "" if v is None else v)  # a value the record lacks is blank, not "None"
ENV.filters.update(fmt=fmt, text=lambda v: "" if v is None else str(v))
ENV.tests["numeric"] = lambda v: NUMERIC.fullmatch(str(v)) is not None
ENV.tests["partial_timings"] = lambda d: bool(d.record) and not timings_complete(d.record)
ENV.globals.update(SECTIONS=SECTIONS, SUMMARY_ROWS=SUMMARY_ROWS, SETUP_KEYS=SETUP_KEYS, TEXT_LIMIT=TEXT_LIMIT,
                   diff=diff, when=when, scores_text=scores_text, setup_values=setup_values, header_meta=header_meta,
                   resume_note=resume_note, timings_label=timings_label, why_unlisted=why_unlisted,
                   decontam_sets=decontam_sets, decontam_listed=decontam_listed)


def run_charts(runs: list[RunData]) -> list[dict[str, charts.Chart]]:
    """Each run's charts, on scales shared by the runs of the page, so two runs compare by eye."""
    samples_max = max(d.summary["samples"] or 0 for d in runs) or 1
    length_bins = bins([v for d in runs for vals in d.lengths.values() for v in vals])
    tokens_max = max((r[3] or 0 for d in runs for r in d.tokens), default=0)
    time_max = max((t for d in runs for t, _ in d.throughput), default=0)
    tokens_total = max(sum(n for _, n in d.throughput) for d in runs)
    return [{"funnel": charts.funnel(d.run_id, d.summary["samples"], d.steps, samples_max),
             "lengths": charts.lengths(d.run_id, d.lengths["kept"], d.lengths["rejected"], length_bins),
             "pass_rates": charts.pass_rates(d.run_id, d.problem_pass_rates),
             "language": charts.language(d.run_id, d.language["scores"], d.language["target"],
                                         d.language["min_share"]),
             "tokens": charts.tokens(d.run_id, d.tokens, tokens_max),
             "throughput": charts.throughput(d.run_id, d.throughput, d.throughput_origin, time_max, tokens_total)}
            for d in runs]


def page(runs: list[RunData], root: Path) -> str:
    return ENV.get_template("report.html").render(runs=runs, charts=run_charts(runs), root=root) + "\n"


# -- entry points ---------------------------------------------------------------------------------
def report_html(root: str | os.PathLike, run_id: str) -> str:
    return page([load(root, run_id)], Warehouse(root).root)


def compare_html(root: str | os.PathLike, run_a: str, run_b: str) -> str:
    return page([load(root, run_a), load(root, run_b)], Warehouse(root).root)


def default_path(root: str | os.PathLike, run_id: str) -> Path | str:
    return Warehouse(root)._at(f"reports/{run_id}.html")


def write_report(root: str | os.PathLike, run_id: str, out: str | os.PathLike | None = None) -> Path | str:
    """Render one run's report to `out` (default <root>/reports/<run_id>.html, on the warehouse's store);
    returns where. Written whole or not at all: a reader (a browser, the Prefect UI's link) never sees half a page."""
    html = report_html(root, run_id)
    if out:
        return write_text(Path(out), html)
    wh = Warehouse(root)
    wh.storage.write_text(f"reports/{run_id}.html", html)
    return wh._at(f"reports/{run_id}.html")


def write_compare(root: str | os.PathLike, run_a: str, run_b: str, out: str | os.PathLike) -> Path:
    return write_text(Path(out), compare_html(root, run_a, run_b))


def publish(root: str | os.PathLike, run_id: str) -> str:
    """Write <root>/reports/<run_id>.html; return markdown for a Prefect artifact: the summary table and
    where the page is. The page itself (its PNGs inlined, a few hundred KB) is too big for an artifact."""
    d = load(root, run_id)
    wh = Warehouse(root)
    wh.storage.write_text(f"reports/{run_id}.html", page([d], wh.root))
    path = default_path(root, run_id)
    lines = ["| | |", "|---|---:|"] + [f"| {label} | {fmt(d.summary[key], kind)} |"
                                        for key, label, kind in SUMMARY_ROWS]
    rejected = [f"{o} {n:,}" for o, n, *_ in d.tokens if o != "kept"]
    lines += ["", "rejected: " + (", ".join(rejected) or "none"), "",
              f"Full report (funnel, lengths, pass rates, language, duplicates, decontamination, throughput, sample "
              f"traces), one self-contained HTML file: `{path}`. Re-render: "
              f"`distill report {run_id} --warehouse {Warehouse(root).root} --out FILE`."]
    return "\n".join(lines)
