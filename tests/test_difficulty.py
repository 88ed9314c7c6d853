"""Difficulty from pass rates: the `difficulty` view, the report's section, export's range and curriculum order,
and `pass_rate_from` (problems chosen by another run's pass rates before the teacher sees any).

Warehouses are written directly (Warehouse.write_part, real Parquet and DuckDB, no model); one slow test runs
the real embedded model through `distill run`."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from distill.errors import ConfigError, DistillError
from distill.warehouse.export import export
from distill.warehouse.schema import DECISIONS_SCHEMA
from distill.warehouse.store import Warehouse
from tests.conftest import ROOT, run_cli

CORRECT = [4, 3, 2, 1, 0, 2]  # of 4 samples, per problem p0..p5: pass rates 1, .75, .5, .25, 0, .5


def samples(make_trace, run_id: str, correct: list[int], n: int = 4) -> list:
    """n samples per problem p0, p1, …: the first `correct[p]` right (and kept), the rest wrong."""
    out = []
    for p, k in enumerate(correct):
        prompt = [{"role": "user", "content": f"What is {p} + 2?"}]
        for i in range(n):
            ans = p + 2 if i < k else p + 3
            out.append(make_trace(f"<think>{p} and 2 make {ans}.</think>\n\\boxed{{{ans}}}",
                                  trace_id=f"{run_id}-p{p}-{i}", run_id=run_id, problem_id=f"p{p}", sample_index=i,
                                  prompt=prompt, reference=str(p + 2), correct=i < k, kept=i < k,
                                  rejected_by=None if i < k else "wrong_answer",
                                  rejected_stage=None if i < k else "rejection", scores={"pass_rate": k / n}))
    return out


@pytest.fixture
def wh_dir(tmp_path, make_trace):
    """Run `cheap` (pass rates CORRECT / 4) with a journey row and a global decision that must not move its pass
    rates; run `big` where p0 is hard."""
    wh = Warehouse(tmp_path / "wh")
    wh.write_part("cheap", 0, samples(make_trace, "cheap", CORRECT))
    journey = make_trace("<think>1 and 2 make 4. Wrong. 1 and 2 make 3.</think>\n\\boxed{3}", trace_id="j1",
                         run_id="cheap", problem_id="p1", kind="journey", correct=True, kept=True,
                         prompt=[{"role": "user", "content": "What is 1 + 2?"}], parents=["cheap-p1-3", "cheap-p1-0"])
    wh.write_journeys("cheap", "template", [journey])
    wh.write_decisions("global_dedup", ["cheap"], pa.table({
        "run_id": ["cheap"], "trace_id": ["cheap-p0-1"], "stage": ["global_dedup"], "score": [1.0], "kept": [False],
        "rejected_by": ["duplicate"], "detail": ['{"cluster": "cheap-p0-0"}'],
        "created_at": [datetime(2026, 1, 1, tzinfo=timezone.utc)]}, schema=DECISIONS_SCHEMA))
    wh.write_part("big", 0, samples(make_trace, "big", [0, 4]))
    for run_id in ("cheap", "big"):
        wh.write_run({"run_id": run_id, "status": "finished", "teacher": "m", "backend": "b", "timings": {},
                      "recipe": {"n": 4, "dataset": "builtin:addition", "filters": ["rejection"]}})
    wh.refresh()
    return tmp_path / "wh"


def rows_of(out) -> list[dict]:
    return pq.read_table(out / "data" / "train-00000-of-00001.parquet").to_pylist()


# -- the view ---------------------------------------------------------------------------------------------
def test_difficulty_is_one_minus_the_pass_rate_in_five_levels_per_run(wh_dir):
    _, rows = Warehouse(wh_dir).query("select run_id, problem_id, samples, correct, pass_rate, difficulty, level, "
                                      "basis from difficulty order by run_id, problem_id")
    # journey rows and the global decision (a kept sample dropped as duplicate) leave the pass rates as drawn
    assert rows == [("big", "p0", 4, 0, 0.0, 1.0, 5, "pass_rate"), ("big", "p1", 4, 4, 1.0, 0.0, 1, "pass_rate"),
                    *[("cheap", f"p{p}", 4, k, k / 4, 1 - k / 4, level, "pass_rate")
                      for p, (k, level) in enumerate(zip(CORRECT, [1, 2, 3, 4, 5, 3]))]]
    # the view agrees with what selection stored on every sample
    _, differ = Warehouse(wh_dir).query("select count(*) from traces t join difficulty d using (run_id, problem_id) "
                                        "where t.kind = 'sample' and t.scores['pass_rate'] <> d.pass_rate")
    assert differ == [(0,)]


def test_pass_rate_is_the_one_selection_used_when_a_judge_decided(tmp_path, make_trace):
    """verifier math+judge with judge_uses judge: the rules said no to every sample, the judge yes to two of four;
    selection's pass rate (0.5) is the problem's, `correct` still counts the rules' verdicts."""
    wh = Warehouse(tmp_path / "wh")
    prompt = [{"role": "user", "content": "What is 1 + 1?"}]
    wh.write_part("judged", 0, [make_trace("<think>1 and 1.</think> two", trace_id=f"t{i}", run_id="judged",
                                           problem_id="p0", sample_index=i, prompt=prompt, reference="2",
                                           correct=False, judge_correct=i < 2, judge_model="m", kept=i < 2,
                                           scores={"pass_rate": 0.5}) for i in range(4)])
    wh.refresh()
    assert wh.query("select samples, correct, pass_rate from pass_rates")[1] == [(4, 0, 0.5)]
    assert wh.query("select difficulty, level from difficulty")[1] == [(0.5, 3)]


def test_report_shows_samples_pass_rate_and_kept_per_level(wh_dir):
    from distill.warehouse.report import report_html
    from distill.warehouse.report_data import load

    levels = load(wh_dir, "cheap").by_difficulty
    # kept: p0's second sample was dropped as a duplicate afterwards
    assert levels == [("1 · easy (pass rate ≥ 0.8)", 1, 4, 4, 1.0, 3), ("2 (pass rate 0.6–0.8)", 1, 4, 3, 0.75, 3),
                      ("3 (pass rate 0.4–0.6)", 2, 8, 4, 0.5, 4), ("4 (pass rate 0.2–0.4)", 1, 4, 1, 0.25, 1),
                      ("5 · hard (pass rate < 0.2)", 1, 4, 0, 0.0, 0)]
    html = report_html(wh_dir, "cheap")
    assert "Not recorded" not in html and "5 · hard (pass rate &lt; 0.2)" in html


# -- export: range and curriculum -----------------------------------------------------------------------
def test_difficulty_range_keeps_only_problems_that_hard_in_their_run(wh_dir, tmp_path):
    res = export(wh_dir, tmp_path / "out", runs=["cheap"], difficulty_min=0.25, difficulty_max=0.75)
    assert sorted({r["problem_id"] for r in rows_of(tmp_path / "out")}) == ["p1", "p2", "p3", "p5"]
    assert res.splits == {"train": 3 + 2 + 1 + 2}
    assert "difficulty in [0.25, 0.75]" in res.card and "3 rows outside it left out" in res.card  # p0's kept 3
    # per run: p0 is easy in cheap and hard in big, p1 the other way round
    export(wh_dir, tmp_path / "easy", difficulty_max=0.1)
    assert {(r["run_id"], r["problem_id"]) for r in rows_of(tmp_path / "easy")} == {("cheap", "p0"), ("big", "p1")}


def test_curriculum_orders_easy_to_hard_with_ties_by_trace_id(wh_dir, tmp_path):
    res = export(wh_dir, tmp_path / "out", runs=["cheap"], order="difficulty")
    rows = rows_of(tmp_path / "out")
    hardness = {p: 1 - k / 4 for p, k in zip([f"p{i}" for i in range(6)], CORRECT)}
    keys = [(hardness[r["problem_id"]], r["trace_id"]) for r in rows]
    assert keys == sorted(keys) and [r["problem_id"] for r in rows][:3] == ["p0", "p0", "p0"]
    assert "a curriculum, easy → hard" in res.card
    # the default stays by trace_id
    export(wh_dir, tmp_path / "plain", runs=["cheap"])
    ids = [r["trace_id"] for r in rows_of(tmp_path / "plain")]
    assert ids == sorted(ids) and sorted(ids) == sorted(r["trace_id"] for r in rows)


def test_bad_difficulty_arguments_are_one_line_and_write_nothing(wh_dir, tmp_path):
    for kwargs, msg in (({"difficulty_min": 2.0}, "--difficulty-min must be in \\[0, 1\\]"),
                        ({"order": "hardness"}, "--order must be trace_id or difficulty"),
                        ({"difficulty_min": 0.9, "difficulty_max": 0.95, "runs": ["cheap"]}, "no rows match")):
        with pytest.raises(DistillError, match=msg) as e:
            export(wh_dir, tmp_path / "out", **kwargs)
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_judges_ratings_give_a_difficulty_of_their_own_and_export_can_go_by_it(wh_dir, tmp_path):
    """`distill rate` stores 1–10 ratings per problem; the view adds a row per run that has the problem and per
    rater ((rating - 1) / 9), the pass-rate rows stay as they were, and export's range and order can use them."""
    wh = Warehouse(wh_dir)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = datetime(2026, 1, 2, tzinfo=timezone.utc)
    wh.write_ratings([
        {"problem_id": "p0", "rater": "judge-a", "rating": 10.0, "prompt_version": "rate-v1", "reply": "10",
         "key": "k0", "created_at": at},
        {"problem_id": "p0", "rater": "judge-b", "rating": 8.0, "prompt_version": "rate-v1", "reply": "8", "key": "k1",
         "created_at": at},
        {"problem_id": "p1", "rater": "judge-a", "rating": 9.0, "prompt_version": "rate-v1", "reply": "9", "key": "k2",
         "created_at": at},
        {"problem_id": "p1", "rater": "judge-a", "rating": 1.0, "prompt_version": "rate-v1", "reply": "1", "key": "k3",
         "created_at": later},  # rated again later: the latest rating counts
        {"problem_id": "p2", "rater": "judge-a", "rating": None, "prompt_version": "rate-v1", "reply": "hmm",
         "key": "k4", "created_at": at},  # no number in the reply: no difficulty
    ])
    wh.refresh()
    _, rows = wh.query("select run_id, problem_id, rater, difficulty, level from difficulty where basis = 'rating' "
                       "order by all")
    assert rows == [("big", "p0", "judge-a", 1.0, 5), ("big", "p0", "judge-b", 7 / 9, 4),
                    ("big", "p1", "judge-a", 0.0, 1),
                    ("cheap", "p0", "judge-a", 1.0, 5), ("cheap", "p0", "judge-b", 7 / 9, 4),
                    ("cheap", "p1", "judge-a", 0.0, 1)]
    assert wh.query("select count(*) from difficulty where basis = 'pass_rate'")[1] == [(8,)]
    # by rating, p0 (mean (1 + 7/9) / 2) is hard in every run, p1 easy, and unrated problems have none
    res = export(wh_dir, tmp_path / "hard", difficulty_by="rating", difficulty_min=0.5, order="difficulty")
    assert {(r["run_id"], r["problem_id"]) for r in rows_of(tmp_path / "hard")} == {("cheap", "p0")}
    assert "a judge's 1–10 rating" in res.card
    export(wh_dir, tmp_path / "easy", runs=["big"], difficulty_by="rating", difficulty_max=0.5)
    assert {r["problem_id"] for r in rows_of(tmp_path / "easy")} == {"p1"}
    with pytest.raises(DistillError, match="--difficulty-by must be pass_rate or rating"):
        export(wh_dir, tmp_path / "bad", difficulty_by="vibes", order="difficulty")


def test_difficulty_by_rating_with_no_ratings_says_how_to_make_them(wh_dir, tmp_path):
    with pytest.raises(DistillError, match="distill rate RUN") as e:
        export(wh_dir, tmp_path / "out", difficulty_by="rating", order="difficulty")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


# -- pass_rate_from: problems chosen by another run's pass rates, before generation ------------------------
def recipe_with(wh_dir, **keys):
    from distill.flows.recipe import load_recipe

    return load_recipe(ROOT / "recipes" / "default.yaml", {"warehouse": str(wh_dir), **keys})


def test_pass_rate_from_keeps_the_problems_in_range_of_the_other_run(wh_dir):
    from distill.flows.preselect import preselect
    from distill.generators.problems import Problem

    problems = [Problem(f"p{i}", "s", "math", f"What is {i} + 2?", str(i + 2)) for i in range(8)]  # cheap has p0..p5
    recipe = recipe_with(wh_dir, pass_rate_from="cheap", pass_rate_min=0.25, pass_rate_max=0.75)
    keep, record = preselect(recipe, Warehouse(wh_dir), problems)
    assert [p.problem_id for p in keep] == ["p1", "p2", "p3", "p5"]
    assert record == {"pass_rate_from": "cheap", "problems_skipped": {"pass_rate": 2, "not_in_run": 2}}
    # its own selection records pass rates but leaves the thresholds to the other run's
    assert recipe.selection.own_pass_rate_range() == (None, None)
    assert recipe_with(wh_dir, pass_rate_min=0.25).selection.own_pass_rate_range() == (0.25, None)
    assert preselect(recipe_with(wh_dir), Warehouse(wh_dir), problems) == (problems, {})


def test_pass_rate_from_an_unknown_run_is_one_line_naming_the_runs(wh_dir, tmp_path):
    from distill.flows.preselect import preselect

    with pytest.raises(ConfigError, match=r"pass_rate_from: no run 'nope' with samples in .* \(runs: big, cheap\)$"):
        preselect(recipe_with(wh_dir, pass_rate_from="nope", pass_rate_max=0.5), Warehouse(wh_dir), [])
    with pytest.raises(ConfigError, match=r"no run 'cheap' .* \(runs: none\)$"):  # no warehouse there yet
        new = tmp_path / "new"
        preselect(recipe_with(new, pass_rate_from="cheap", pass_rate_max=0.5), Warehouse(new), [])
    assert not (tmp_path / "new").exists()


def test_pass_rate_from_needs_a_range_and_leaves_existing_run_ids_alone(wh_dir):
    with pytest.raises(ConfigError, match="recipe key 'pass_rate_from': expected a run id, with pass_rate_min or "
                                          "pass_rate_max set"):
        recipe_with(wh_dir, pass_rate_from="cheap")
    plain = recipe_with(wh_dir, pass_rate_min=0.25)
    assert "pass_rate_from" not in plain.identity()  # ONLY_WHEN_SET: recipes without it keep their run ids
    assert recipe_with(wh_dir, pass_rate_min=0.25, pass_rate_from="cheap").fingerprint() != plain.fingerprint()


@pytest.mark.slow
def test_pass_rate_from_end_to_end_asks_the_teacher_only_for_problems_in_range(tmp_path, make_trace):
    """A cheap run (written directly) rated three of four problems; `distill run` with the real embedded model
    and pass_rate_from samples only the one in range: the others are never planned nor sent to the teacher."""
    from distill.generators.problems import load_problems

    pairs = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 6 + 1?", "7"), ("What is 9 + 9?", "18")]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    problems = load_problems("problems.jsonl", base_dir=tmp_path)
    wh = Warehouse(tmp_path / "wh")
    cheap = [make_trace(trace_id=f"cheap-{p.problem_id}-{i}", run_id="cheap", problem_id=p.problem_id, sample_index=i,
                        correct=i < k, kept=i < k) for p, k in zip(problems[:3], [2, 1, 0]) for i in range(2)]
    wh.write_part("cheap", 0, cheap)  # pass rates 1, 0.5, 0; the fourth problem never sampled
    wh.refresh()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "expensive", "dataset": "problems.jsonl", "model": "smollm2-135m", "backend": "transformers", "n": 2,
        "max_tokens": 16, "filters": ["truncation", "rejection"], "pass_rate_from": "cheap", "pass_rate_min": 0.25,
        "pass_rate_max": 0.75, "warehouse": str(tmp_path / "wh")}))
    r = run_cli("run", str(tmp_path / "r.yaml"), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "problems skipped by run cheap's pass rates: 2 out of range, 1 it never sampled" in r.stdout
    (run_id,) = [i for i in wh.run_ids() if i != "cheap"]
    record = wh.read_run(run_id)
    assert record["problems_skipped"] == {"pass_rate": 2, "not_in_run": 1} and record["problems"] == 1
    assert record["samples_generated"] == 2 and record["teacher_calls"] == 1  # one problem x n = 2
    assert wh.read_plan(run_id) == [[problems[1].problem_id]]
    rows = wh.query("select problem_id, scores['pass_rate'], rejected_by from traces where run_id = ?", [run_id])[1]
    assert {p for p, _, _ in rows} == {problems[1].problem_id} and len(rows) == 2
    # this run's own pass rate is recorded, never used to drop: the range was the cheap run's to decide
    assert all(rate is not None and why != "pass_rate" for _, rate, why in rows)


@pytest.mark.slow
def test_difficulty_on_object_storage_is_the_local_one(wh_dir, s3_root, make_trace, tmp_path):
    """The views are shared: the same parts on S3 (a real S3 API, moto) give the same difficulty rows and curriculum."""
    wh = Warehouse(s3_root)
    wh.write_part("cheap", 0, samples(make_trace, "cheap", CORRECT))
    wh.write_run({"run_id": "cheap", "status": "finished", "recipe": {}})
    query = "select * from difficulty where run_id = 'cheap' order by problem_id"
    assert wh.query(query) == Warehouse(wh_dir).query(query)
    export(s3_root, tmp_path / "out", order="difficulty", difficulty_min=0.25)
    assert [r["problem_id"] for r in rows_of(tmp_path / "out")] == ["p1"] * 3 + ["p2", "p2", "p5", "p5", "p3"]
