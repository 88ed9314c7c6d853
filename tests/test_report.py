"""`distill report` and `distill compare`: the HTML page of a run, checked against SQL and in a real browser.

The warehouse is written by the real `generate` flow under Prefect's test harness, with a scripted
teacher (no model) whose samples hit every filter of the chain: wrong, truncated, unverifiable,
another language, repetitive, duplicate, contaminated. Two runs, at two temperatures, to compare.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

DUCKS = json.loads((ROOT / "recipes" / "data" / "gsm8k-test-50.jsonl").read_text().splitlines()[0])["question"]
LONG = " ".join(f"Step {i}: {i} and {i + 7} make {2 * i + 7}, carried over as {i * 3 + 1}." for i in range(60))
# decontam's eval set is found relative to recipes/, the base folder the runs are given
FILTERS = ["truncation", "rejection", {"language": {"target": "en"}}, "repetition", {"dedup": {"scope": "problem"}},
           {"decontam": {"against": [{"path": "data/gsm8k-test-50.jsonl", "field": "question"}]}}]
PROBLEMS = [
    {"question": "What is 2 + 3?", "answer": "5"},
    {"question": "What is 7 + 8?", "answer": "15"},
    {"question": "What colour is the sky?", "answer": "???"},  # a reference math-verify cannot parse
    {"question": DUCKS, "answer": "18"},  # copied from GSM8K's test set
]
# Per question, the teacher's four samples at temperature 0.6: (completion, finish_reason)
SCRIPT_A = {
    "What is 2 + 3?": [("<think>2 plus 3 is 5, since 2 + 1 + 1 + 1 = 5.</think>\n\\boxed{5}", "stop"),
                       ("<think>2 plus 3 is 6.</think>\n\\boxed{6}", "stop"),
                       ("<think>2 plus 3 is", "length"),
                       ("<think>2 plus 3 is 5, since 2 + 1 + 1 + 1 = 5.</think>\n\\boxed{5}", "stop")],
    "What is 7 + 8?": [(f"<think>{LONG} So 7 + 8 = 15.</think>\n\\boxed{{15}}", "stop"),
                       ("<think>七加八等于十五，所以答案是十五。再检查一遍，确实等于十五。</think>\n\\boxed{15}", "stop"),
                       ("<think>" + "7 plus 8 is 15 and we write it down. " * 50 + "</think>\n\\boxed{15}", "stop"),
                       ("<think>8 + 7: 8 + 2 = 10, then 5 more is 15.</think>\n\\boxed{15}", "stop")],
    "What colour is the sky?": [("<think>The sky is blue.</think>\n\\boxed{blue}", "stop")] * 4,
    DUCKS: [(f"<think>16 - 3 - 4 = 9 eggs, {k} check, 9 * 2 = 18.</think>\n\\boxed{{18}}", "stop")
            for k in ("first", "second", "third", "fourth")],
}
# At temperature 0.9 the first problem goes otherwise: two wrong samples and a new right one where run A had a
# wrong, a truncated and a duplicate one.
SCRIPT_B = {**SCRIPT_A, "What is 2 + 3?": [SCRIPT_A["What is 2 + 3?"][0],
                                          ("<think>2 plus 3 is 6.</think>\n\\boxed{6}", "stop"),
                                          ("<think>2 and 3 give 23.</think>\n\\boxed{23}", "stop"),
                                          ("<think>3 + 2: count on from 3, so 4, 5.</think>\n\\boxed{5}", "stop")]}
SECTIONS = ["summary", "funnel", "lengths", "pass-rates", "language", "duplicates", "decontamination", "tokens",
            "throughput", "samples"]


class ScriptedTeacher:
    """Answers from a script by temperature; a pause per call so the throughput curve has steps.
    Raises BackendError on a batch with a question in `fail_on`."""

    def __init__(self):
        self.fail_on: set[str] = set()

    def generate(self, conversations, sampling, indices=None, on_sample=None):
        from distill.generators.base import Sample
        from distill.errors import BackendError

        time.sleep(0.1)
        script = SCRIPT_A if sampling.temperature < 0.8 else SCRIPT_B
        out = []
        for conv, idx in zip(conversations, indices or [list(range(sampling.n))] * len(conversations)):
            if conv[-1]["content"] in self.fail_on:
                raise BackendError(f"scripted failure on {conv[-1]['content'][:20]!r}")
            samples = script[conv[-1]["content"]]
            out.append([Sample(samples[i][0], samples[i][1], 40 + i, len(samples[i][0].split()) + 3, 0.3) for i in idx])
        return out


def recipe_for(tmp: Path, temperature: float, warehouse: str = "wh"):
    """A recipe of its own (not recipes/default.yaml, which may change): the problems above, the whole filter chain,
    prices so cost is recorded. Two shards in flight: the run record merges every shard's filter reports, so its
    decontam report lists the hits of both whichever finishes last; the samples depend only on the question."""
    import yaml

    from distill.flows.recipe import load_recipe

    (tmp / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    (tmp / f"report-test-{warehouse}.yaml").write_text(yaml.safe_dump({
        "dataset": str(tmp / "problems.jsonl"), "model": "smollm2-135m", "backend": "transformers", "n": 4,
        "max_tokens": 48, "filters": FILTERS, "warehouse": str(tmp / warehouse), "shard_size": 2, "parallel_shards": 2,
        "verify_workers": 1, "price_input_per_mtok": 0.5, "price_output_per_mtok": 2.0}))
    return load_recipe(tmp / f"report-test-{warehouse}.yaml", {"name": "report-test", "temperature": temperature})


def artifact_key(run_id: str) -> str:
    return "funnel-" + re.sub(r"[^a-z0-9]", "-", run_id.lower())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of the generate flow (temperature 0.6 and 0.9) into one warehouse, a third into a warehouse
    where the report cannot be written (`reports` is a file), and a fourth, resumed, into a warehouse of its own: its
    first call fails on shard 0 and writes shard 1 (the contaminated problem), its second writes shard 0. The runs'
    artifacts and the flow's warnings."""
    import logging

    import distill.flows.generate as g
    from distill import generators
    from distill.errors import BackendError
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    tmp = tmp_path_factory.mktemp("report")
    # names of their own: a run's id does not depend on its warehouse, and Prefect keeps one artifact per key
    recipes = [recipe_for(tmp, 0.6), recipe_for(tmp, 0.9),
               recipe_for(tmp, 0.6, "wh-broken").replace(name="report-broken")]
    resumed = recipe_for(tmp, 0.6, "wh-resumed").replace(name="report-resumed")
    (tmp / "wh-broken").mkdir()
    (tmp / "wh-broken" / "reports").write_text("a file where the reports folder should be")
    key = generators.teacher_key(recipes[0].backend_name(), recipes[0].teacher_settings())
    assert all(generators.teacher_key(r.backend_name(), r.teacher_settings()) == key for r in [*recipes, resumed])
    assert key not in generators._TEACHERS
    teacher = ScriptedTeacher()
    generators._TEACHERS[key] = (teacher, threading.Lock())
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    flow_logger = logging.getLogger("prefect.flow_runs")
    flow_logger.addHandler(handler)
    try:
        with prefect_test_harness(server_startup_timeout=180):
            ids, results = [], []
            for r in recipes:
                ids.append(g.run_id_for(r))
                results.append(g.run_generate(r, ids[-1], ROOT / "recipes"))
            ids.append(g.run_id_for(resumed))
            teacher.fail_on = {PROBLEMS[0]["question"]}
            with pytest.raises(BackendError):
                g.run_generate(resumed, ids[-1], ROOT / "recipes")
            teacher.fail_on = set()
            g.run_generate(resumed, ids[-1], ROOT / "recipes")
            with get_client(sync_client=True) as client:
                artifacts = {a.key: a.data for a in client.read_artifacts(artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[artifact_key(i) for i in ids])))}
    finally:
        flow_logger.removeHandler(handler)
        generators._TEACHERS.pop(key, None)
    return {"wh": tmp / "wh", "a": ids[0], "b": ids[1], "broken": ids[2], "results": results,
            "artifacts": artifacts, "warnings": warnings, "resumed_wh": tmp / "wh-resumed", "resumed": ids[3]}


class Page(HTMLParser):
    """What the tests look at in a page: sections and captions, summary cells, images, trace cards, links."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.captions, self.summary, self.images, self.outcomes = [], {}, {}, [], []
        self.urls, self.scripts = [], 0
        self._section, self._key, self._cells, self._in = None, None, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"]
            self.sections.append(a["id"])
        if tag == "p" and a.get("class") == "caption" and self._section:
            self._in = "caption"
        if tag == "tr" and "data-key" in a:
            self._key, self._cells = a["data-key"], []
        if tag == "td" and self._key:
            self._in = "td"
            self._cells.append("")
        if tag == "img":
            self.images.append(a["src"])
        if tag == "article":
            self.outcomes.append(a["data-outcome"])
        if tag == "script":
            self.scripts += 1
        self.urls += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith(("data:", "#"))]

    def handle_endtag(self, tag):
        if tag == "tr" and self._key:
            self.summary.setdefault(self._key, self._cells)
            self._key = None
        if tag in ("td", "p"):
            self._in = None

    def handle_data(self, data):
        if self._in == "caption":
            self.captions[self._section] = self.captions.get(self._section, "") + data
        elif self._in == "td":
            self._cells[-1] += data


def number(cell: str) -> float:
    return float(cell.replace(",", "").replace("$", "").replace("%", "").replace(" s", ""))


def sql(wh: Path, query: str, *params):
    return Warehouse(wh).query(query, list(params))[1]


# -- the flow ---------------------------------------------------------------------------------------
def test_the_flow_writes_the_report_and_publishes_its_summary_as_an_artifact(runs):
    for run_id in (runs["a"], runs["b"]):
        path = runs["wh"] / "reports" / f"{run_id}.html"
        assert path.exists() and run_id in path.read_text()
        md = runs["artifacts"][artifact_key(run_id)]
        assert "## Report" in md and str(path) in md and f"distill report {run_id}" in md
        kept = sql(runs["wh"], "select count(*) from traces where run_id = ? and kept", run_id)[0][0]
        assert f"| kept | {kept} |" in md


def test_a_report_that_cannot_be_written_costs_a_warning_not_the_run(runs):
    assert runs["results"][2]["status"] == "finished"
    assert Warehouse(runs["wh"].parent / "wh-broken").read_run(runs["broken"])["status"] == "finished"
    md = runs["artifacts"][artifact_key(runs["broken"])]  # the run's summary is still published
    assert md.startswith(f"# {runs['broken']}: finished") and "## Report" not in md
    (warning,) = [w for w in runs["warnings"] if "no HTML report" in w]
    assert runs["broken"] in warning and "FileExistsError" in warning


# -- the page ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_a(runs):
    from distill.warehouse.report import report_html

    text = report_html(runs["wh"], runs["a"])
    return text, Page(text)


def test_every_section_is_there_with_a_caption(page_a, runs):
    text, page = page_a
    assert page.sections == SECTIONS
    for sid in SECTIONS:
        assert len(page.captions.get(sid, "")) > 60, sid
    record = Warehouse(runs["wh"]).read_run(runs["a"])
    started = datetime.fromisoformat(record["started_at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    for fact in (runs["a"], "report-test", "smollm2-135m (transformers)", started, "temperature 0.6"):
        assert fact in text
    # the difficulty section is the difficulty view's levels, not a note that it is missing
    assert "Not recorded" not in text and "1 · easy (pass rate ≥ 0.8)" in text
    # decontamination names the eval set and line from the run record
    assert "gsm8k-test-50 line 1" in text


def test_summary_numbers_equal_sql(page_a, runs):
    _, page = page_a
    wh, run_id = runs["wh"], runs["a"]
    problems, samples, correct, unverifiable, truncated, kept, ptok, ctok, cost = sql(
        wh, "select count(distinct problem_id), count(*), count(*) filter (where correct), "
            "count(*) filter (where correct is null), count(*) filter (where finish_reason = 'length'), "
            "count(*) filter (where kept), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) "
            "from traces where run_id = ?", run_id)[0]
    expected = {"problems": problems, "samples": samples, "correct": correct, "unverifiable": unverifiable,
                "truncated": truncated, "kept": kept, "prompt_tokens": ptok, "completion_tokens": ctok}
    assert {k: number(page.summary[k][0]) for k in expected} == expected
    assert (problems, samples, truncated, unverifiable) == (4, 16, 1, 4)
    cols, rows = Warehouse(wh).query("select * from funnel where run_id = ?", [run_id])
    funnel = dict(zip(cols, rows[0]))
    assert funnel["kept"] == kept and funnel["samples"] == samples and funnel["completion_tokens"] == ctok
    assert page.summary["keep_rate"][0] == f"{kept / samples:.1%}"
    assert number(page.summary["cost_usd"][0]) == pytest.approx(cost, abs=5e-5) and cost > 0


def table_rows(text: str, section: str) -> list[list[str]]:
    """The rows of every table in a section, as the texts of their cells (header and data cells)."""
    body = text.split(f'id="{section}"')[1].split("</section>")[0]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def test_section_tables_equal_sql(page_a, runs):
    text, _ = page_a
    wh, run_id = runs["wh"], runs["a"]
    funnel = [r[:4] for r in table_rows(text, "funnel")]
    for stage, n_in, dropped, kept in sql(wh, 'select stage, "in", dropped, kept from filter_funnel where run_id = ? '
                                              "order by step", run_id):
        assert [stage, f"{n_in:,}", f"{dropped:,}", f"{kept:,}"] in funnel
    reasons = dict(sql(wh, "select rejected_by, count(*) from traces where run_id = ? and not kept group by 1", run_id))
    assert reasons == {"truncated": 1, "wrong_answer": 1, "unverifiable": 4, "language_mixed": 1, "repetitive": 1,
                       "duplicate": 1, "contaminated": 4}
    tokens = [r[:4] for r in table_rows(text, "tokens")]
    for outcome, n, ptok, ctok in sql(wh, "select coalesce(rejected_by, 'kept'), count(*), sum(prompt_tokens), "
                                          "sum(completion_tokens) from traces where run_id = ? group by 1", run_id):
        assert [outcome, f"{n:,}", f"{ptok:,}", f"{ctok:,}"] in tokens
    below = sql(wh, "select count(*) from traces where run_id = ? and scores['language'] < 0.95", run_id)[0][0]
    assert below == 1 and ["below the threshold", "1"] in table_rows(text, "language")
    assert ["rejected as duplicate (exact)", "1"] in table_rows(text, "duplicates")
    (pid,) = sql(wh, "select distinct problem_id from traces where run_id = ? and rejected_by = 'contaminated'",
                 run_id)[0]
    assert [pid, "1.00", "4", "4", "gsm8k-test-50 line 1"] == [r[i] for r in table_rows(text, "decontamination")[1:]
                                                                for i in (0, 2, 3, 4, 5)]
    assert "4 sample(s) rejected as contaminated" in text
    levels = [r for r in table_rows(text, "pass-rates") if r and r[0][:1].isdigit()]
    for level, problems, samples, kept in sql(wh, "select d.level, count(distinct t.problem_id), count(*), "
                                                  "count(*) filter (where t.kept) from traces t join difficulty d "
                                                  "using (run_id, problem_id) where run_id = ? and kind = 'sample' "
                                                  "group by 1", run_id):
        assert [str(level), f"{problems:,}", f"{samples:,}", f"{kept:,}"] in [[r[0][0], *r[1:3], r[5]] for r in levels]


def test_the_page_is_self_contained(page_a):
    text, page = page_a
    assert page.urls == [] and page.scripts == 0 and "<link" not in text and "@import" not in text
    assert len(page.images) == 6  # funnel, lengths, pass rates, language, tokens, throughput
    for src in page.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64" and base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_sample_traces_one_kept_and_one_per_reason_escaped_and_cut(page_a, runs):
    text, page = page_a
    reasons = {r for (r,) in sql(runs["wh"], "select distinct rejected_by from traces where run_id = ? and not kept",
                                 runs["a"])}
    assert page.outcomes[0] == "kept" and sorted(page.outcomes[1:]) == sorted(reasons)
    samples = text.split('id="samples"')[1]
    assert "<think>" not in samples and "&lt;think&gt;" in samples  # the model's text is escaped
    assert re.search(r"truncated here: [\d,]+ more characters of [\d,]+ not shown", samples)  # the long reasoning
    assert '<div class="think">' in samples and '<div class="answer">' in samples


def test_decontam_hits_missing_from_the_record_are_said(tmp_path, make_trace):
    from distill.warehouse.report import report_html

    wh = Warehouse(tmp_path / "wh")
    wh.write_part("r", 0, [make_trace(trace_id=f"t{i}", run_id="r", sample_index=i, correct=True, kept=False,
                                      rejected_by="contaminated", rejected_stage="decontam",
                                      scores={"decontam": 1.0}) for i in range(2)])
    # a record written by an earlier version of distill: one filter report, of the shard that finished last
    write_old_record(wh, {"run_id": "r", "status": "finished", "recipe": {"filters": ["rejection", {"decontam": {
        "against": ["x.jsonl"]}}]}, "filters": {"decontam": {"eval_sets": ["x.jsonl"], "n": 13, "contaminated": []}}})
    wh.refresh()
    text = report_html(wh.root, "r")
    rows = table_rows(text, "decontamination")
    assert rows[1][0] == "p0" and rows[1][-1] == "—"  # eval set and line unknown
    assert "does not list 1 of these problem(s) (it holds the report of the shard that finished last" in text
    # a record that merges its shards' reports: the page does not blame the last shard
    record = wh.read_run("r")
    record.update(calls=[], filters_by_shard=[{"shard": 0, "filters": record["filters"]}])
    wh.write_run(record)
    text = report_html(wh.root, "r")
    assert "does not list 1 of these problem(s): " in text and "finished last" not in text


def test_a_resumed_run_shows_tokens_per_second_of_all_its_calls(runs):
    from distill.warehouse.report import load, report_html, when

    wh, run_id = runs["resumed_wh"], runs["resumed"]
    record = Warehouse(wh).read_run(run_id)
    calls = record["calls"]
    assert [(c["status"], c["shards_done"]) for c in calls] == [("failed", 1), ("finished", 1)]
    assert record["status"] == "finished" and record["shards_resumed"] == 1
    gen = record["timings"]["generate"]
    assert gen == pytest.approx(sum(c["timings"]["generate"] for c in calls)) and calls[0]["timings"]["generate"] > 0
    text = report_html(wh, run_id)
    page = Page(text)
    ctok = sql(wh, "select sum(completion_tokens) from traces where run_id = ?", run_id)[0][0]
    assert number(page.summary["tokens_per_s"][0]) == int(ctok / gen) > 0
    assert number(page.summary["generate_s"][0]) == pytest.approx(gen, abs=0.05)
    assert "cover only the last call" not in text and "Timings are summed over all of them" in text
    assert "stage (summed over shards and 2 calls)" in text
    assert when(calls[0]["started_at"]) in text and when(calls[1]["started_at"]) in text
    # the contaminated problem was written by the first call, and its report is still in the record
    assert "gsm8k-test-50 line 1" in text and "does not list" not in text
    d = load(wh, run_id)
    assert d.throughput_origin == "the run's start" and min(t for t, _ in d.throughput) >= 0


def test_a_resumed_run_recorded_before_calls_were_kept_withholds_its_timings(tmp_path, make_trace):
    from distill.warehouse.report import report_html

    wh = Warehouse(tmp_path / "wh")
    wh.write_part("old", 0, [make_trace(trace_id=f"t{i}", run_id="old", sample_index=i, correct=True, kept=True)
                             for i in range(2)])
    write_old_record(wh, {"run_id": "old", "status": "finished", "started_at": "2026-11-23T00:00:00+00:00",
                          "recipe": {"filters": ["rejection"]}, "shards": 2, "shards_resumed": 1,
                          "timings": {"generate": 2.0, "wall": 3.0}})
    wh.refresh()
    text = report_html(wh.root, "old")
    page = Page(text)
    assert [page.summary[k][0] for k in ("generate_s", "tokens_per_s", "wall_s")] == ["—"] * 3
    assert "timings cover only the last call" in text and "stage (last call only, summed over its shards)" in text


def test_a_run_recorded_before_calls_were_kept_and_never_resumed_shows_its_timings(tmp_path, make_trace):
    from distill.warehouse.report import load, report_html

    wh = Warehouse(tmp_path / "wh")
    wh.write_part("old", 0, [make_trace(trace_id=f"t{i}", run_id="old", sample_index=i, correct=True, kept=True)
                             for i in range(2)])
    write_old_record(wh, {"run_id": "old", "status": "finished", "started_at": "2000-01-01T00:00:00+00:00",
                          "recipe": {"filters": ["rejection"]}, "shards": 1, "shards_resumed": 0,
                          "timings": {"generate": 2.0, "wall": 3.0}})
    wh.refresh()
    page = Page(report_html(wh.root, "old"))
    assert [page.summary[k][0] for k in ("generate_s", "wall_s")] == ["2.0 s", "3.0 s"]
    assert load(wh.root, "old").throughput_origin == "the run's start"  # its one call started the run


def write_old_record(wh: Warehouse, record: dict) -> None:
    """A run record as an earlier version of distill wrote it: the literal JSON, no record_version."""
    (wh.root / "runs").mkdir(parents=True, exist_ok=True)
    (wh.root / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record, indent=2))


XSS = "<script>alert(1)</script>"


def xss_page(tmp_path: Path, make_trace) -> str:
    """The page of a run whose rejection reason, model text, source and recipe values are all a script tag."""
    from distill.warehouse.report import report_html

    wh = Warehouse(tmp_path / "wh")
    wh.write_part("x", 0, [make_trace(trace_id="t0", run_id="x", source=XSS, correct=False, kept=False,
                                      rejected_by=XSS, rejected_stage=XSS,
                                      completion=f"<think>{XSS}</think>\\boxed{{{XSS}}}", scores={XSS: 1.0})])
    wh.write_run({"run_id": "x", "status": "finished", "recipe": {"name": XSS, "filters": [XSS]}, "teacher": XSS})
    wh.refresh()
    return report_html(wh.root, "x")


def test_text_from_the_warehouse_reaches_the_page_escaped(tmp_path, make_trace):
    text = xss_page(tmp_path, make_trace)
    page = Page(text)
    assert page.scripts == 0 and "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.outcomes == [XSS]  # the attribute holds the text itself, escaped in the markup
    samples = text.split('id="samples"')[1]
    assert samples.count("&lt;script&gt;") >= 6  # title, stage, source, scores, reasoning, answer


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_report_and_compare(runs, tmp_path):
    proc = run_cli("report", runs["a"], "--warehouse", str(runs["wh"]), "--out", str(tmp_path / "r.html"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Page((tmp_path / "r.html").read_text()).sections == SECTIONS
    proc = run_cli("compare", runs["a"], runs["b"], "--warehouse", str(runs["wh"]), "--out", str(tmp_path / "c.html"),
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "c.html").read_text()
    page = Page(text)
    assert page.sections == SECTIONS and len(page.images) == 12  # every figure, for each run
    a, b = (sql(runs["wh"], "select count(*) from traces where run_id = ? and kept", runs[r])[0][0] for r in "ab")
    assert a != b and [number(c) for c in page.summary["kept"]] == [a, b, b - a]
    # the setup table marks what differs between the runs: here the temperature
    assert re.search(r"<tr class=differs><th>temperature</th><td>0.6</td><td>0.9</td></tr>", text)


def test_unknown_run_is_one_clear_line(runs):
    proc = run_cli("report", "nope", "--warehouse", str(runs["wh"]), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no run 'nope'" in proc.stderr and runs["a"] in proc.stderr and runs["b"] in proc.stderr
    proc = run_cli("compare", runs["a"], "nope", "--warehouse", str(runs["wh"]), timeout=120)
    assert proc.returncode == 2 and "no run 'nope'" in proc.stderr


def test_missing_warehouse_is_one_clear_line(tmp_path):
    proc = run_cli("report", "x", "--warehouse", str(tmp_path / "none"), "--out", str(tmp_path / "r.html"), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no warehouse at" in proc.stderr
    assert not (tmp_path / "r.html").exists()


def test_a_run_with_no_samples_yet_still_renders(tmp_path):
    from distill.warehouse.report import report_html

    wh = Warehouse(tmp_path / "wh")
    wh.write_run({"run_id": "early", "status": "failed", "started_at": "2026-11-23T00:00:00+00:00",
                  "recipe": {"name": "early", "filters": ["truncation", "rejection"]}, "teacher": "m",
                  "backend": "vllm", "timings": {"wall": 1.0}, "error": "BackendError: no such model"})
    wh.refresh()
    page = Page(report_html(wh.root, "early"))
    assert page.sections == SECTIONS and page.images == []
    assert number(page.summary["samples"][0]) == 0


# -- a real browser ---------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended for the test only: writes how many <img> decoded (naturalWidth > 0) into the DOM once the page loaded.
COUNT_IMAGES = ("<script>window.addEventListener('load', () => { const im = [...document.images]; "
                "document.body.setAttribute('data-images', "
                "im.filter(i => i.naturalWidth > 0).length + '/' + im.length); "
                "});</script>")


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=60)


def test_the_report_renders_in_chromium(runs, tmp_path):
    from PIL import Image

    assert Path(CHROMIUM).exists(), "chromium is not installed: `make test` installs it (apt-get install chromium)"
    report = runs["wh"] / "reports" / f"{runs['a']}.html"
    shot = tmp_path / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", report.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    artifacts = ROOT / "ci-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copy(shot, artifacts / "report.png")
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text and charts, not a blank page

    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", COUNT_IMAGES + "</body>"))
    proc = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'data-images="(\d+)/(\d+)"', proc.stdout)
    assert m, proc.stderr[-2000:]
    assert m.group(1) == m.group(2) == "6"


def test_text_from_the_warehouse_runs_no_script_in_chromium(tmp_path, make_trace):
    assert Path(CHROMIUM).exists(), "chromium is not installed: `make test` installs it (apt-get install chromium)"
    page = tmp_path / "x.html"
    page.write_text(xss_page(tmp_path, make_trace))
    proc = chromium("--virtual-time-budget=3000", "--dump-dom", page.as_uri())
    # the browser's DOM: no script element, the text shown as text
    assert "<body" in proc.stdout, proc.stderr[-2000:]
    assert "<script" not in proc.stdout and "&lt;script&gt;alert(1)&lt;/script&gt;" in proc.stdout


def test_global_dedup_decisions_show_in_the_duplicates_section(tmp_path, make_trace):
    import pyarrow as pa

    from distill.warehouse.report import report_html
    from distill.warehouse.schema import DECISIONS_SCHEMA

    wh = Warehouse(tmp_path / "wh")
    wh.write_part("r", 0, [make_trace(trace_id=f"t{i}", run_id="r", sample_index=i, correct=True, kept=True)
                           for i in range(3)])
    wh.write_run({"run_id": "r", "status": "finished", "recipe": {"filters": ["rejection"]}, "calls": []})
    now = pa.array([0] * 2, pa.timestamp("us", tz="UTC"))
    wh.write_decisions("global_dedup", ["r"], pa.table({
        "run_id": ["r", "r"], "trace_id": ["t1", "t2"], "stage": ["global_dedup"] * 2, "score": [1.0, 0.9],
        "kept": [False, False], "rejected_by": ["duplicate", "near_duplicate"], "detail": [None, None],
        "created_at": now}, schema=DECISIONS_SCHEMA))
    wh.refresh()
    text = report_html(wh.root, "r")
    cells = {r[0]: r[-1] for r in table_rows(text, "duplicates")}
    assert cells["dropped over the whole run as duplicate"] == "1"
    assert cells["dropped over the whole run as near_duplicate"] == "1"
