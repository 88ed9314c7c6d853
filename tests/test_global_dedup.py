"""Global dedup and decontamination over the warehouse (filters/global_dedup.py, flows/dedup.py): decisions
over whole runs, the same whatever order shards were written in, stored beside the parts and overlaid
by the views. Real DuckDB catalogs and Parquet files in tmp_path; nothing mocked."""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import threading
from datetime import datetime, timezone

import pytest

from distill.errors import ConfigError, DistillError
from distill.filters.global_dedup import PARALLEL_MIN, global_decontam, global_dedup, signatures
from distill.flows.dedup import decontam_runs, dedup_runs
from distill.warehouse.schema import Trace
from distill.warehouse.store import Warehouse
from tests.conftest import ROOT, run_cli

MATH500 = ROOT / "recipes" / "data" / "math500-test-50.jsonl"
AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def words(seed: int, n: int = 120) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(["add", "carry", "sum", "digit", "check", "ten", "one", "so", "then", "we", "get", "the",
                        "next", "place", "value", "write", "down", "is", "and", "first"]) + str(rng.randint(0, 99))
            for _ in range(n)]


BASE = {k: " ".join(words(k)) for k in range(6)}  # unrelated texts


def near(text: str) -> str:
    """A near copy: one word of 120 replaced (true Jaccard on 5-word shingles 111/121 = 0.92)."""
    w = text.split()
    w[60] = "changed"
    return " ".join(w)


def sample(run: str, trace_id: str, problem: str, reasoning: str, kept: bool = True, question: str | None = None,
           index: int = 0) -> Trace:
    question = question or f"What is the value of {problem}?"
    return Trace(trace_id=trace_id, run_id=run, problem_id=problem, sample_index=index, source="test",
                 domain="math", prompt=[{"role": "system", "content": "Think."}, {"role": "user", "content": question}],
                 question=question, reference="1", teacher="m", backend="b", sampling="{}",
                 completion=f"<think>{reasoning}</think> \\boxed{{1}}", reasoning=reasoning, answer="\\boxed{1}",
                 finish_reason="stop", correct=kept, scores={"rejection": float(kept)}, kept=kept,
                 rejected_by=None if kept else "wrong_answer", rejected_stage=None if kept else "rejection")


def two_runs() -> dict[tuple[str, int], list[Trace]]:
    """Run A in two shards, run B in one: B reuses A's sample a1 (same trace_id), copies a2 but for
    whitespace, holds a near copy of a3; A's shard 1 holds a near copy of a shard-0 sample; one wrong
    sample (not kept) repeats a kept text and is never looked at."""
    return {
        ("A", 0): [sample("A", "a1", "p1", BASE[0]), sample("A", "a2", "p1", BASE[1], index=1),
                   sample("A", "a3", "p2", BASE[2]), sample("A", "a9", "p2", BASE[3], kept=False, index=1)],
        ("A", 1): [sample("A", "a4", "p3", near(BASE[0])), sample("A", "a5", "p4", BASE[4])],
        ("B", 0): [sample("B", "a1", "p1", BASE[0]), sample("B", "b2", "p1", "  ".join(BASE[1].split()), index=1),
                   sample("B", "b3", "p2", near(BASE[2])), sample("B", "b4", "p5", BASE[5])],
    }


def make_warehouse(root, parts: dict[tuple[str, int], list[Trace]], order: list | None = None) -> Warehouse:
    wh = Warehouse(root)
    for run, shard in order or list(parts):
        wh.write_part(run, shard, parts[(run, shard)], expected=len(parts[(run, shard)]))
    for run in sorted({r for r, _ in parts}):
        wh.write_run({"run_id": run, "status": "finished", "started_at": "2026-01-01T00:00:00+00:00",
                      "timings": {"wall": 1.0}, "recipe": {"name": run}})
    wh.refresh()
    return wh


def decisions(wh: Warehouse, stage: str = "global_dedup") -> dict[tuple[str, str], tuple]:
    _, rows = wh.query("SELECT run_id, trace_id, kept, rejected_by, score, detail FROM decisions WHERE stage = ?",
                       [stage])
    return {(r[0], r[1]): r[2:] for r in rows}


# -- the stage, on plain rows --------------------------------------------------------------------------
def test_exact_and_near_duplicates_across_runs_and_shards(tmp_path):
    wh = make_warehouse(tmp_path / "wh", two_runs())
    counts = dedup_runs(tmp_path / "wh", ["A", "B"])
    d = decisions(wh)
    assert ("A", "a9") not in d and len(d) == 9  # every kept sample, and only those
    cluster = lambda t, r: json.dumps({"cluster": t, "run_id": r})  # noqa: E731
    assert d[("A", "a1")] == (True, None, 0.0, cluster("a1", "A"))  # lowest (trace_id, run_id) of its cluster
    assert d[("B", "a1")] == (False, "duplicate", 1.0, cluster("a1", "A"))  # the same sample, reused by B
    assert d[("A", "a4")][:2] == (False, "near_duplicate") and 0.85 <= d[("A", "a4")][2] < 1.0  # across shards
    assert d[("A", "a4")][3] == cluster("a1", "A")
    assert d[("B", "b2")] == (False, "duplicate", 1.0, cluster("a2", "A"))  # whitespace aside, the same text
    assert d[("B", "b3")][:2] == (False, "near_duplicate") and d[("B", "b3")][3] == cluster("a3", "A")
    for unique in (("A", "a5"), ("B", "b4")):
        assert d[unique] == (True, None, 0.0, None)
    assert {k: v for k, v in counts.items() if k not in ("seconds", "decisions")} == {
        "stage": "global_dedup", "runs": ["A", "B"], "threshold": 0.85, "scope": "dataset", "samples": 9,
        "clusters": 3, "duplicate": 2, "near_duplicate": 2, "kept": 5}


def test_scope_problem_compares_only_samples_of_one_problem():
    rows = [("R", "t1", "p1", BASE[0]), ("R", "t2", "p2", BASE[0]), ("R", "t3", "p1", near(BASE[0]))]
    by_problem = {r["trace_id"]: r["kept"] for r in global_dedup(rows, scope="problem").to_pylist()}
    assert by_problem == {"t1": True, "t2": True, "t3": False}
    assert {r["trace_id"]: r["kept"] for r in global_dedup(rows).to_pylist()} == {"t1": True, "t2": False, "t3": False}


def test_the_decisions_are_the_same_whatever_order_the_rows_come_in():
    rows = [(r.run_id, r.trace_id, r.problem_id, r.reasoning) for part in two_runs().values() for r in part if r.kept]
    first = global_dedup(rows, created_at=AT)
    for seed in range(5):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        assert global_dedup(shuffled, created_at=AT).equals(first)


def test_bad_options_are_one_clear_error():
    with pytest.raises(ConfigError, match="scope must be 'dataset' or 'problem', got 'run'"):
        global_dedup([], scope="run")
    with pytest.raises(ConfigError, match=r"threshold must be a number within \(0, 1\], got 1.5"):
        global_dedup([], threshold=1.5)


def test_signatures_are_the_same_in_a_process_pool():
    texts = [" ".join(words(i, 12)) for i in range(PARALLEL_MIN)]  # enough for the pool
    assert (signatures(texts, workers=2) == signatures(texts, workers=1)).all()


# -- the warehouse: decisions overlaid, parts untouched --------------------------------------------------
def test_the_same_decisions_for_two_orders_of_shard_writes(tmp_path):
    parts = two_runs()
    shuffled = {k: random.Random(1).sample(v, len(v)) for k, v in parts.items()}
    one = make_warehouse(tmp_path / "one", parts, order=[("A", 0), ("A", 1), ("B", 0)])
    two = make_warehouse(tmp_path / "two", shuffled, order=[("B", 0), ("A", 1), ("A", 0)])
    dedup_runs(tmp_path / "one", ["A", "B"])
    dedup_runs(tmp_path / "two", ["B", "A"])
    assert sorted(decisions(one).items()) == sorted(decisions(two).items())


def test_decisions_overlay_the_views_and_leave_the_parts_alone(tmp_path):
    wh = make_warehouse(tmp_path / "wh", two_runs())
    parts = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in wh.parts()}
    raw = sorted(wh.query("SELECT * FROM raw_traces")[1], key=lambda r: (r[0], r[1]))
    assert wh.query("SELECT run_id, kept FROM funnel ORDER BY 1")[1] == [("A", 5), ("B", 4)]

    dedup_runs(tmp_path / "wh", ["A", "B"])
    assert wh.query("SELECT run_id, kept FROM funnel ORDER BY 1")[1] == [("A", 4), ("B", 1)]
    assert wh.query("SELECT count(*) FROM accepted")[1] == [(5,)]
    assert wh.query("SELECT run_id, trace_id, rejected_by, rejected_stage, scores['global_dedup'] FROM traces "
                    "WHERE rejected_stage = 'global_dedup' ORDER BY 1, 2")[1] == [
        ("A", "a4", "near_duplicate", "global_dedup", pytest.approx(0.9, abs=0.1)),
        ("B", "a1", "duplicate", "global_dedup", 1.0), ("B", "b2", "duplicate", "global_dedup", 1.0),
        ("B", "b3", "near_duplicate", "global_dedup", pytest.approx(0.9, abs=0.1))]
    # the wrong sample keeps its own reason; a kept one gains the stage's score
    assert wh.query("SELECT rejected_by, scores['global_dedup'] FROM traces WHERE trace_id = 'a9'")[1] == [
        ("wrong_answer", None)]
    assert wh.query("SELECT scores['global_dedup'] FROM traces WHERE run_id = 'A' AND trace_id = 'a1'")[1] == [(0.0,)]
    steps = wh.query('SELECT stage, "in", dropped, kept FROM filter_funnel WHERE run_id = \'B\' ORDER BY step')[1]
    assert steps[-1] == ("global_dedup", 4, 3, 1)
    # the parts and raw_traces are as written
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in wh.parts()} == parts
    assert sorted(wh.query("SELECT * FROM raw_traces")[1], key=lambda r: (r[0], r[1])) == raw


def test_deciding_again_with_another_threshold_replaces_the_file(tmp_path):
    wh = make_warehouse(tmp_path / "wh", two_runs())
    first = dedup_runs(tmp_path / "wh", ["A", "B"])
    again = dedup_runs(tmp_path / "wh", ["B", "A"], threshold=0.99)
    assert first["decisions"] == again["decisions"]
    assert [p.name for p in (tmp_path / "wh" / "decisions").glob("global_dedup-*.parquet")] == [
        Warehouse.decisions_name("global_dedup", ["A", "B"]).split("/")[1]]
    assert (again["duplicate"], again["near_duplicate"]) == (2, 0)  # no near copy is that close
    assert wh.query("SELECT count(*) FROM decisions")[1] == [(9,)]
    assert wh.query("SELECT count(*) FROM traces WHERE rejected_stage = 'global_dedup'")[1] == [(2,)]


def test_unknown_run_is_one_clear_error_and_nothing_is_written(tmp_path):
    make_warehouse(tmp_path / "wh", two_runs())
    with pytest.raises(DistillError, match=r"no run 'C' in .* \(runs: A, B\)"):
        dedup_runs(tmp_path / "wh", ["A", "C"])
    assert not list((tmp_path / "wh" / "decisions").glob("global_*.parquet"))


# -- decontamination ---------------------------------------------------------------------------------
def eval_problem(line: int) -> str:
    return json.loads(MATH500.read_text().splitlines()[line - 1])["problem"]


def test_decontam_drops_every_sample_of_a_contaminated_problem(tmp_path):
    leaked = eval_problem(3)  # MATH-500's third problem, asked verbatim
    parts = {("A", 0): [sample("A", "c1", "leak", BASE[0], question=leaked),
                        sample("A", "c2", "leak", BASE[1], question=leaked, index=1),
                        sample("A", "c3", "leak", BASE[2], question=leaked, kept=False, index=2),
                        sample("A", "k1", "clean", BASE[3], question="What is 2 + 3?")]}
    wh = make_warehouse(tmp_path / "wh", parts)
    counts = decontam_runs(tmp_path / "wh", ["A"], against=[{"path": str(MATH500), "field": "problem"}])
    d = decisions(wh, "global_decontam")
    where = json.dumps({"eval_set": "math500-test-50", "eval_line": 3})
    assert d == {("A", "c1"): (False, "contaminated", 1.0, where), ("A", "c2"): (False, "contaminated", 1.0, where),
                 ("A", "c3"): (False, "contaminated", 1.0, where), ("A", "k1"): (True, None, 0.0, None)}
    assert (counts["problems"], counts["contaminated_problems"], counts["contaminated"], counts["dropped"]) == (2, 1, 3, 2)
    assert counts["problems_found"] == [{"problem_id": "leak", "eval_set": "math500-test-50", "eval_line": 3, "share": 1.0}]
    assert wh.query("SELECT trace_id, rejected_by, rejected_stage FROM traces ORDER BY 1")[1] == [
        ("c1", "contaminated", "global_decontam"), ("c2", "contaminated", "global_decontam"),
        ("c3", "wrong_answer", "rejection"), ("k1", None, None)]


def test_global_decontam_reads_the_problem_not_the_few_shot_turns():
    rows = [("R", "t1", "p1", "What is 2 + 3?"), ("R", "t2", "p2", None)]
    got = global_decontam(rows, against=[str(MATH500)]).to_pylist()
    assert [(r["kept"], r["score"]) for r in got] == [(True, 0.0), (True, None)]


def test_dedup_never_keeps_a_sample_decontamination_dropped(tmp_path):
    """The same text in a contaminated problem (lower trace_id) and a clean one: once decontam has dropped
    the first, dedup keeps the second instead of dropping both."""
    leaked = eval_problem(3)
    parts = {("A", 0): [sample("A", "t1", "leak", BASE[0], question=leaked),
                        sample("A", "t2", "clean", BASE[0], question="What is 2 + 3?")]}
    wh = make_warehouse(tmp_path / "wh", parts)
    decontam_runs(tmp_path / "wh", ["A"], against=[str(MATH500)])
    dedup_runs(tmp_path / "wh", ["A"])
    assert wh.query("SELECT trace_id, kept, rejected_by FROM traces ORDER BY 1")[1] == [
        ("t1", False, "contaminated"), ("t2", True, None)]


# -- recipe keys ------------------------------------------------------------------------------------
def test_recipe_keys_leave_the_default_run_id_alone_and_name_one_value_each():
    from distill.flows.recipe import load_recipe

    default = ROOT / "recipes" / "default.yaml"
    assert load_recipe(default).fingerprint() == "7ccd21b5"  # unset: not in the identity
    assert load_recipe(default, {"global_dedup": False}).fingerprint() == "7ccd21b5"
    on = {load_recipe(default, {"global_dedup": v}).fingerprint()
          for v in (True, {}, {"threshold": 0.85}, {"threshold": 0.85, "scope": "dataset"})}
    assert len(on) == 1 and "7ccd21b5" not in on
    assert load_recipe(default, {"global_dedup": {"scope": "problem"}}).fingerprint() not in on | {"7ccd21b5"}
    assert load_recipe(default, {"dedup_workers": 1}).fingerprint() == "7ccd21b5"  # how, not what


@pytest.mark.parametrize("override, message", [
    ({"global_dedup": {"threshold": 2}}, "recipe key 'global_dedup': expected null, true or {threshold"),
    ({"global_dedup": {"scope": "run"}}, "recipe key 'global_dedup'"),
    ({"global_decontam": {"against": []}}, "recipe key 'global_decontam': expected null or {against"),
    ({"global_decontam": {"against": ["x.jsonl"], "n": 0}}, "recipe key 'global_decontam'"),
])
def test_bad_recipe_values_are_one_line(override, message):
    from distill.flows.recipe import load_recipe

    with pytest.raises(ConfigError) as e:
        load_recipe(ROOT / "recipes" / "default.yaml", override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_recipes_eval_sets_are_found_beside_it_and_checked_before_the_run():
    from distill.flows.dedup import check_global
    from distill.flows.recipe import load_recipe

    def recipe(path):
        return load_recipe(ROOT / "recipes" / "default.yaml",
                           {"global_decontam": {"against": [{"path": path, "field": "problem"}]}})

    check_global(recipe("data/math500-test-50.jsonl"), ROOT / "recipes")  # relative to the recipe's folder
    with pytest.raises(ConfigError, match="eval set not found: data/nope.jsonl"):
        check_global(recipe("data/nope.jsonl"), ROOT / "recipes")


# -- the CLI and the flow, for real (subprocesses, Prefect) ------------------------------------------
@pytest.mark.slow
def test_cli_dedup_and_decontam(tmp_path):
    wh_dir = tmp_path / "wh"
    parts = two_runs()
    parts[("A", 1)].append(sample("A", "a6", "leak", " ".join(words(99)), question=eval_problem(3)))
    make_warehouse(wh_dir, parts)
    proc = run_cli("dedup", "A", "B", "--warehouse", str(wh_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"global dedup of A, B .*: 10 kept samples, 3 clusters; dropped 2 duplicate, 2 near_duplicate; "
                     r"6 kept", proc.stdout), proc.stdout
    assert "funnel — A" in proc.stdout and "global_dedup" in proc.stdout  # the funnel, with the new step

    proc = run_cli("decontam", "A", "--against", f"{MATH500}:problem", "--warehouse", str(wh_dir), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 contaminated (leak (math500-test-50 line 3)); 1 of 7 samples dropped as contaminated" in proc.stdout
    assert Warehouse(wh_dir).query("SELECT rejected_stage FROM traces WHERE trace_id = 'a6'")[1] == [("global_decontam",)]

    bad = run_cli("dedup", "A", "nope", "--warehouse", str(wh_dir), timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "no run 'nope'" in bad.stderr
    assert run_cli("dedup", "--help", timeout=120).returncode == 0


class SameReasoning:
    """A teacher that answers every "What is a + b?" right, always with the same reasoning: every sample
    is an exact duplicate of every other, across problems and shards."""

    def generate(self, conversations, sampling, indices=None, on_sample=None):
        from distill.generators.base import Sample

        out = []
        for conv in conversations:
            a, b = map(int, re.findall(r"\d+", conv[-1]["content"])[:2])
            text = f"<think>Add the ones, carry when the ones pass nine, then add the tens and check.</think>\n\\boxed{{{a + b}}}"
            out.append([Sample(text, "stop", 10, 20, 0.01)] * sampling.n)
        return out


@pytest.mark.slow
def test_a_recipe_with_global_dedup_decides_over_the_whole_run(tmp_path):
    from prefect.settings import PREFECT_API_URL, PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from distill import generators as g
    from distill.flows.generate import run_generate, run_id_for
    from distill.flows.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "default.yaml",
                         {"backend": "transformers", "limit": 4, "n": 2, "shard_size": 2, "global_dedup": True,
                          "warehouse": str(tmp_path / "wh")})
    key = g.teacher_key(recipe.backend_name(), recipe.teacher_settings())
    assert key not in g._TEACHERS
    g._TEACHERS[key] = (SameReasoning(), threading.Lock())
    # the session's Prefect server (tests/conftest.py), named here: Prefect read its settings at import; the
    # logs stay here (sent to the API, the last would be sent after the session has stopped the server)
    api = os.environ.get("PREFECT_API_URL")
    try:
        with temporary_settings(updates={PREFECT_API_URL: api, PREFECT_LOGGING_TO_API_ENABLED: False}) if api \
                else contextlib.nullcontext():
            run_id = run_id_for(recipe)
            run = run_generate(recipe, run_id, ROOT / "recipes")
            again = run_generate(recipe, run_id, ROOT / "recipes")  # nothing to do: the decisions stand
    finally:
        g._TEACHERS.pop(key, None)
    # the shards' dedup (scope problem) kept one sample per problem; the global one keeps one in all
    counts = run["global"]["global_dedup"]
    assert (counts["samples"], counts["clusters"], counts["duplicate"], counts["kept"]) == (4, 1, 3, 1)
    assert again["global"] == run["global"]
    wh = Warehouse(tmp_path / "wh")
    assert wh.read_run(run_id)["global"]["global_dedup"]["kept"] == 1
    assert wh.query("SELECT kept FROM funnel WHERE run_id = ?", [run_id])[1] == [(1,)]
    assert wh.query("SELECT stage, dropped FROM filter_funnel WHERE run_id = ? ORDER BY step DESC LIMIT 1",
                    [run_id])[1] == [("global_dedup", 3)]
