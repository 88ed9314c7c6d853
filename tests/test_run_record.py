"""The run record (runs/<run_id>.json) against the traces: what the real `generate` flow records about its filters
and timings must be what SQL over the warehouse says, whatever order shards finish in and however many calls
(resumes) the run took.

The flow runs under Prefect's test harness with a scripted teacher (no model) in the per-process teacher cache.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

EVAL = [json.loads(line)["question"] for line in (ROOT / "recipes" / "data" / "gsm8k-test-50.jsonl").read_text().splitlines()]
# Eight problems, two per shard; four are copied from GSM8K's test set (the decontam eval set), in shards 0, 2 and 3.
PROBLEMS = [(EVAL[0], "18"), ("What is 2 + 3?", "5"),
            ("What is 7 + 8?", "15"), ("What is 1 + 1?", "2"),
            (EVAL[1], "3"), ("What is 4 + 4?", "8"),
            (EVAL[2], "70000"), (EVAL[3], "540")]
FILTERS = ["rejection", {"dedup": {"scope": "problem"}},
           {"decontam": {"against": [{"path": "data/gsm8k-test-50.jsonl", "field": "question"}]}}]


class ScriptedTeacher:
    """Two samples per problem: both right and identical (a duplicate) for problems asked in even positions,
    a right one and a wrong one otherwise. Raises BackendError on a question in `fail_on`."""

    def __init__(self):
        self.fail_on: set[str] = set()

    def generate(self, conversations, sampling, indices=None, on_sample=None):
        from distill.generators.base import Sample
        from distill.errors import BackendError

        time.sleep(0.05)  # some generation time to record
        out = []
        for conv, idx in zip(conversations, indices or [list(range(sampling.n))] * len(conversations)):
            question = conv[-1]["content"]
            if question in self.fail_on:
                raise BackendError(f"scripted failure on {question[:20]!r}")
            pos, answer = next((i, a) for i, (q, a) in enumerate(PROBLEMS) if q == question)
            texts = [f"<think>Working it out carefully, the result is {answer}.</think>\n\\boxed{{{answer}}}"] * 2
            if pos % 2:
                texts[1] = "<think>A quick guess that is off by one.</think>\n\\boxed{1}"
            out.append([Sample(texts[i], "stop", 30, 12, 0.05) for i in idx])
        return out


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def teacher(tmp_path):
    """A recipe of its own (8 problems, shards of 2, n 2) and the scripted teacher installed for it."""
    import yaml

    import distill.flows.generate as g
    from distill import generators
    from distill.flows.recipe import load_recipe

    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                                                     for q, a in PROBLEMS))
    path = tmp_path / "record-test.yaml"
    path.write_text(yaml.safe_dump({
        "dataset": str(tmp_path / "problems.jsonl"), "model": "smollm2-135m", "backend": "transformers", "n": 2,
        "max_tokens": 32, "filters": FILTERS, "warehouse": str(tmp_path / "wh"), "shard_size": 2,
        "task_runner": "threads", "parallel_shards": 2, "verify_workers": 1}))

    def recipe(**overrides):
        return load_recipe(path, {"name": "record-test", **overrides})

    key = generators.teacher_key(recipe().backend_name(), recipe().teacher_settings())
    assert key not in generators._TEACHERS
    gen = ScriptedTeacher()
    generators._TEACHERS[key] = (gen, threading.Lock())
    yield recipe, gen
    generators._TEACHERS.pop(key, None)
    for run_id in [r for r in g._FILTERS if r.startswith("record-test-")]:  # the runs' filter objects
        g._FILTERS.pop(run_id, None)


def reports_per_sql(wh: Warehouse, run_id: str) -> dict:
    """The decontam and dedup reports' content, as SQL over the run's traces computes it."""
    def one(sql):
        return wh.query(sql, [run_id])[1][0][0]

    s = "FROM traces WHERE run_id = ? AND kind = 'sample'"
    return {
        "decontam": {"problems": [p for (p,) in wh.query(f"SELECT DISTINCT problem_id {s} AND scores['decontam'] > 0 "
                                                           "ORDER BY 1", [run_id])[1]],
                     "samples": one(f"SELECT count(*) {s} AND scores['decontam'] > 0"),
                     "rejected": one(f"SELECT count(*) {s} AND rejected_by = 'contaminated'")},
        "dedup": {"duplicate": one(f"SELECT count(*) {s} AND scores['dedup'] >= 1"),
                  "near_duplicate": one(f"SELECT count(*) {s} AND scores['dedup'] >= 0.85 AND scores['dedup'] < 1"),
                  # below the threshold and not rejected by the one filter before dedup (rejection)
                  "first_occurrences": one(f"SELECT count(*) {s} AND scores['dedup'] < 0.85 "
                                           "AND coalesce(rejected_stage, '') <> 'rejection'")},
    }


def reports_per_record(record: dict) -> dict:
    dc, dd = record["filters"]["decontam"], record["filters"]["dedup"]
    return {"decontam": {"problems": sorted(h["problem_id"] for h in dc["contaminated"]), "samples": dc["samples"],
                         "rejected": dc["rejected"]},
            "dedup": {k: dd[k] for k in ("duplicate", "near_duplicate", "first_occurrences")}}


def test_filter_reports_of_shards_in_parallel_add_up_to_what_the_traces_say(harness, teacher, monkeypatch):
    from distill.flows.generate import run_generate, run_id_for

    recipe, _ = teacher
    recipe = recipe()
    run_id = run_id_for(recipe)
    wh = Warehouse(recipe.execution.warehouse)
    # Shard 0 finishes last although it was filtered first: its write waits until the other three parts exist
    # (the other thread runs shards 1, 2 and 3 meanwhile). Its report then predates shards 2's and 3's hits.
    write_part = Warehouse.write_part

    def slow_write_of_shard_0(self, rid, shard, *args, **kw):
        deadline = time.monotonic() + 120
        while shard == 0 and not all(self.part_exists(rid, i) for i in (1, 2, 3)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return write_part(self, rid, shard, *args, **kw)

    monkeypatch.setattr(Warehouse, "write_part", slow_write_of_shard_0)
    run = run_generate(recipe, run_id, ROOT / "recipes")
    assert run["status"] == "finished" and run["shards"] == 4
    record = wh.read_run(run_id)

    sql = reports_per_sql(wh, run_id)
    hit_shards = {i for i, (q, _) in enumerate(PROBLEMS) if q in EVAL[:4]}
    assert {i // 2 for i in hit_shards} == {0, 2, 3} and len(sql["decontam"]["problems"]) == 4
    assert sql["decontam"]["rejected"] < sql["decontam"]["samples"]  # a wrong sample was rejected before decontam
    assert reports_per_record(record) == sql
    # each shard's own report is kept, and its hits are its own problems
    assert [e["shard"] for e in record["filters_by_shard"]] == [0, 1, 2, 3]
    per_shard = {e["shard"]: len(e["filters"]["decontam"]["contaminated"]) for e in record["filters_by_shard"]}
    assert per_shard == {0: 1, 1: 0, 2: 1, 3: 2}
    assert record["filters"]["decontam"]["n"] == 13 and record["filters"]["dedup"]["threshold"] == 0.85


def test_a_resumed_run_records_every_call(harness, teacher):
    from distill.flows.generate import run_generate, run_id_for
    from distill.errors import BackendError

    recipe, gen = teacher
    recipe = recipe(parallel_shards=1)
    run_id = run_id_for(recipe)
    wh = Warehouse(recipe.execution.warehouse)

    gen.fail_on = {"What is 7 + 8?"}  # shard 1 fails; shards 0, 2 and 3 are written
    with pytest.raises(BackendError):
        run_generate(recipe, run_id, ROOT / "recipes")
    first = wh.read_run(run_id)
    assert first["status"] == "failed" and [e["shard"] for e in first["filters_by_shard"]] == [0, 2, 3]
    assert reports_per_record(first) == reports_per_sql(wh, run_id)  # the record covers the parts written

    gen.fail_on = set()
    run_generate(recipe, run_id, ROOT / "recipes")  # does shard 1 only
    run_generate(recipe, run_id, ROOT / "recipes")  # nothing left to do
    record = wh.read_run(run_id)
    assert record["status"] == "finished" and record["shards_resumed"] == 4
    assert reports_per_record(record) == reports_per_sql(wh, run_id)
    assert len(reports_per_record(record)["decontam"]["problems"]) == 4

    calls = record["calls"]
    assert [(c["status"], c["shards_done"]) for c in calls] == [("failed", 3), ("finished", 1), ("finished", 0)]
    assert all(c["started_at"] <= c["finished_at"] for c in calls)
    assert record["started_at"] == calls[-1]["started_at"]  # started_at stays the last call's
    # timings are totals over the calls: the generation behind every sample, though the last call generated none
    assert calls[-1]["timings"].get("generate", 0.0) == 0.0
    for k in ("generate", "verify", "filter", "write", "wall"):
        assert record["timings"][k] == pytest.approx(sum(c["timings"].get(k, 0.0) for c in calls))
    assert record["timings"]["generate"] >= 4 * 0.05  # one scripted call per shard
    assert wh.query("SELECT status, len(calls), timings.generate > 0 FROM runs WHERE run_id = ?", [run_id])[1] == \
        [("finished", 3, True)]

    shown = run_cli("show", run_id, "--warehouse", recipe.execution.warehouse, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "timings (s, summed over 3 calls): " in shown.stdout
    assert "tokens/s" in shown.stdout and "4 of 4 shards already done" in shown.stdout


def test_a_record_from_before_calls_were_kept_is_carried_forward(harness, teacher):
    # A run recorded by an earlier version of distill: one call's timings, one merged filter report.
    from distill.flows.generate import run_generate, run_id_for
    from distill.warehouse.store import RECORD_VERSION

    recipe, _ = teacher
    recipe = recipe(parallel_shards=1)
    run_id = run_id_for(recipe)
    wh = Warehouse(recipe.execution.warehouse)
    run_generate(recipe, run_id, ROOT / "recipes")
    old = wh.read_run(run_id)
    old["timings"] = {"generate": 3.0, "wall": 5.0}
    for key in ("calls", "filters_by_shard", "record_version"):
        del old[key]
    write_old_record(wh, old)

    run_generate(recipe, run_id, ROOT / "recipes")  # nothing left to do
    run_generate(recipe, run_id, ROOT / "recipes")
    record = wh.read_run(run_id)
    assert record["record_version"] == RECORD_VERSION
    assert [c["status"] for c in record["calls"]] == ["finished"] * 3
    assert record["calls"][0]["shards_done"] == 4  # the old record's one call wrote every shard
    assert record["timings"]["generate"] == 3.0 and record["timings"]["wall"] > 5.0
    assert record["filters"] == old["filters"]
    assert [e["shard"] for e in record["filters_by_shard"]] == [-1]


def write_old_record(wh: Warehouse, record: dict) -> Path:
    """A run record as an earlier version of distill wrote it: the literal JSON, no record_version."""
    path = wh.root / "runs" / f"{record['run_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    return path


# What distill 0.1 wrote before it kept calls and per-shard filter reports: a resumed run's last call.
OLD_RECORD = {
    "run_id": "old-run", "recipe_name": "old", "recipe": {"name": "old", "filters": ["rejection", "decontam"]},
    "status": "finished", "started_at": "2026-10-01T10:00:00+00:00", "finished_at": "2026-10-01T10:05:00+00:00",
    "backend": "vllm", "teacher": "m", "problems": 8, "shards": 4, "shards_resumed": 1,
    "timings": {"generate": 12.5, "wall": 20.0},
    "filters": {"decontam": {"n": 13, "contaminated": [{"problem_id": "p1", "eval_set": "x.jsonl", "eval_line": 3}]}},
}


def test_an_old_record_is_upgraded_once_when_read_and_written_back(tmp_path):
    from distill.warehouse.store import RECORD_VERSION

    wh = Warehouse(tmp_path / "wh")
    path = write_old_record(wh, OLD_RECORD)
    record = wh.read_run("old-run")
    assert record["record_version"] == RECORD_VERSION
    assert record["calls"] == [{"started_at": "2026-10-01T10:00:00+00:00", "finished_at": "2026-10-01T10:05:00+00:00",
                                "status": "finished", "timings": {"generate": 12.5, "wall": 20.0},
                                "shards_done": None}]  # resumed: earlier calls, unrecorded, made some samples
    assert record["filters_by_shard"] == [{"shard": -1, "filters": OLD_RECORD["filters"]}]
    assert {k: record[k] for k in OLD_RECORD} == OLD_RECORD  # nothing of the old record is lost
    assert json.loads(path.read_text()) == record  # written back, so the next read upgrades nothing
    assert not [p for p in path.parent.iterdir() if p != path]  # atomically: no temporary file left
    mtime = path.stat().st_mtime_ns
    assert wh.read_run("old-run") == record and path.stat().st_mtime_ns == mtime


def test_an_old_record_in_a_read_only_warehouse_is_upgraded_in_memory(tmp_path, monkeypatch):
    from distill.warehouse import store

    wh = Warehouse(tmp_path / "wh")
    path = write_old_record(wh, {**OLD_RECORD, "shards_resumed": 0})
    text = path.read_text()
    # a folder we may not write to (chmod does not stop root, who runs the tests in CI)
    monkeypatch.setattr(store.os, "access", lambda p, mode: False)
    record = wh.read_run("old-run")
    assert record["calls"][0]["shards_done"] == 4  # not resumed: its one call wrote every shard
    assert path.read_text() == text
