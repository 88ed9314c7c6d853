"""Never pay twice: the generation cache, the run id and the shard plan, on the real model.

The `generate` flow runs in this process under Prefect's test harness with the embedded model behind
the transformers backend (loaded once, kept in the flow's per-process teacher cache). The teacher's
work is read from the run record each call writes: the samples it generated and the generate calls
it made; the warehouse is read with SQL.
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import ROOT
from distill.warehouse.store import Warehouse

pytestmark = pytest.mark.slow  # a real model, server, Prefect flow or CLI subprocess

QUESTIONS = [("What is 2 + 3?", "5"), ("What is 4 + 4?", "8"), ("What is 7 + 1?", "8"), ("What is 6 + 3?", "9"),
             ("What is 5 + 5?", "10")]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    from distill.generators import release_teachers

    with prefect_test_harness(server_startup_timeout=180):
        yield
    release_teachers()  # the real model this module's runs loaded: other modules put their own teachers there


def write_problems(path, pairs):
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))


@pytest.fixture(scope="module")
def seeded(harness, tmp_path_factory):
    """One first run, paid for once: a folder with the recipe, its problems file (named relative to the
    recipe, so a copy of the folder is the same run) and the warehouse the run wrote."""
    from distill.flows.recipe import load_recipe

    folder = tmp_path_factory.mktemp("seeded")
    write_problems(folder / "problems.jsonl", QUESTIONS[:4])
    base = yaml.safe_load((ROOT / "recipes" / "default.yaml").read_text())
    base.update(dataset="problems.jsonl", backend="transformers", n=2, max_tokens=8, shard_size=2,
                parallel_shards=1, verify_workers=1, filters=["truncation", "rejection"], name="cache")
    (folder / "cache.yaml").write_text(yaml.safe_dump(base))
    recipe = load_recipe(folder / "cache.yaml", {"warehouse": str(folder / "wh")})
    _, _, call = run(recipe, folder)
    assert call["generated"] == 8 and call["teacher_calls"] >= 1
    return folder


@pytest.fixture
def make(seeded, tmp_path):
    """The seeded folder copied for this test; make(**overrides) gives its recipe with its warehouse."""
    from distill.flows.recipe import load_recipe

    shutil.copytree(seeded, tmp_path, dirs_exist_ok=True)

    def recipe(**overrides):
        return load_recipe(tmp_path / "cache.yaml", {"warehouse": str(tmp_path / "wh"), **overrides})

    return recipe


def run(recipe, base_dir, fresh=False):
    from distill.flows.generate import run_generate, run_id_for

    run_id = run_id_for(recipe, fresh)
    record = run_generate(recipe, run_id, base_dir)
    return run_id, record, record["calls"][-1]


def rows(wh_dir, run_id):
    wh = Warehouse(wh_dir)
    return wh.query("select problem_id, sample_index, trace_id, reused_from, kept, rejected_by from traces "
                    "where run_id = ? order by 1, 2", [run_id])[1]


def test_execution_settings_keep_the_run_and_call_no_teacher(harness, make, tmp_path):
    first_id, record, _ = run(make(), tmp_path)  # the seeded run: its 8 samples were generated once
    assert record["samples_generated"] == 8
    before = rows(tmp_path / "wh", first_id)
    for overrides in ({"concurrency": 256}, {"parallel_shards": 2, "verify_workers": 2}, {"checkpoint_seconds": 0},
                      {"max_retries": 1, "request_timeout": 5.0}):
        run_id, record, call = run(make(**overrides), tmp_path)
        assert run_id == first_id, overrides  # the same run, resumed: nothing to do
        assert (call["generated"], call["teacher_calls"], call["shards_done"]) == (0, 0, 0), overrides
    assert rows(tmp_path / "wh", first_id) == before


def test_a_moved_warehouse_is_the_same_run_and_calls_no_teacher(harness, make, tmp_path):
    run_id, _, _ = run(make(), tmp_path)
    shutil.move(tmp_path / "wh", tmp_path / "moved")
    again, record, call = run(make(warehouse=str(tmp_path / "moved")), tmp_path)
    assert again == run_id and call["generated"] == 0 and call["teacher_calls"] == 0
    assert len(rows(tmp_path / "moved", run_id)) == 8


def test_new_filters_and_thresholds_redecide_stored_samples_without_the_teacher(harness, make, tmp_path):
    first_id, _, _ = run(make(), tmp_path)
    first = {r[2]: r for r in rows(tmp_path / "wh", first_id)}
    # a new filter list and a selection rule: another run (other decisions), the same samples
    other_id, record, call = run(make(filters=["truncation", "rejection", {"length": {"max_tokens": 4}}],
                                      keep_per_problem=1), tmp_path)
    assert other_id != first_id
    assert (call["generated"], call["reused"], call["teacher_calls"]) == (0, 8, 0)
    assert call["reused_from"] == [first_id] and record["samples_generated"] == 0
    got = rows(tmp_path / "wh", other_id)
    assert {r[2] for r in got} == set(first)  # the same sample ids, each once
    assert all(r[3] == first_id for r in got)  # reused_from names the run that paid
    wh = Warehouse(tmp_path / "wh")
    # same completions, new decisions: the length filter scored every copied sample
    assert wh.query("select count(*) from traces a join traces b using (trace_id) where a.run_id = ? "
                    "and b.run_id = ? and a.completion = b.completion", [first_id, other_id])[1] == [(8,)]
    assert wh.query("select count(*) from traces where run_id = ? and scores['length'] is not null",
                    [other_id])[1] == [(8,)]
    assert wh.query("select generated, reused from funnel where run_id = ?", [other_id])[1] == [(0, 8)]
    # the samples were paid for once: one generated row per id in the whole warehouse
    assert wh.query("select count(*), count(distinct trace_id) from traces where reused_from is null")[1] == [(8, 8)]
    # --fresh: a new run id on purpose, still not a new sample
    _, _, call = run(make(), tmp_path, fresh=True)
    assert (call["generated"], call["reused"]) == (0, 8)


def test_more_samples_per_problem_pay_only_for_the_new_indices(harness, make, tmp_path):
    two_id, _, _ = run(make(), tmp_path)
    four_id, _, call = run(make(n=4), tmp_path)
    assert four_id != two_id
    assert (call["generated"], call["reused"]) == (8, 8)  # indices 2-3 of 4 problems; 0-1 copied
    got = rows(tmp_path / "wh", four_id)
    assert len(got) == 16 and len({r[2] for r in got}) == 16
    assert {r[1] for r in got if r[3] is None} == {2, 3} and {r[1] for r in got if r[3]} == {0, 1}
    assert {r[2] for r in got if r[1] < 2} == {r[2] for r in rows(tmp_path / "wh", two_id)}


def test_a_new_prompt_is_a_new_sample(harness, make, tmp_path):
    a, _, _ = run(make(), tmp_path)
    b, _, call = run(make(system_prompt="Answer briefly. Think inside <think></think>, then \\boxed{} the answer."), tmp_path)
    assert a != b and (call["generated"], call["reused"]) == (8, 0)
    assert not {r[2] for r in rows(tmp_path / "wh", a)} & {r[2] for r in rows(tmp_path / "wh", b)}


def test_inserting_deleting_and_shuffling_problems_never_regenerates(harness, make, tmp_path):
    recipe = make()
    run_id, _, _ = run(recipe, tmp_path)
    wh = Warehouse(tmp_path / "wh")
    plan = json.loads((tmp_path / "wh" / "plans" / f"{run_id}.json").read_text())["shards"]
    ids = {r[2] for r in rows(tmp_path / "wh", run_id)}
    problems = tmp_path / "problems.jsonl"

    # one problem inserted at the top, the rest shuffled: only the new problem's samples are generated
    write_problems(problems, [QUESTIONS[4], QUESTIONS[2], QUESTIONS[0], QUESTIONS[3], QUESTIONS[1]])
    again, _, call = run(make(), tmp_path)
    assert again == run_id and (call["generated"], call["reused"], call["recovered"]) == (2, 0, 0)
    got = rows(tmp_path / "wh", run_id)
    assert len(got) == 10 and len({r[2] for r in got}) == 10 and ids < {r[2] for r in got}
    new_plan = json.loads((tmp_path / "wh" / "plans" / f"{run_id}.json").read_text())["shards"]
    assert new_plan[:len(plan)] == plan and len(new_plan) == len(plan) + 1  # old shards kept, one new one

    # one problem deleted: nothing generated, its samples stay, rejected with the reason
    write_problems(problems, [QUESTIONS[4], QUESTIONS[2], QUESTIONS[3], QUESTIONS[1]])
    _, _, call = run(make(), tmp_path)
    assert call["generated"] == 0
    got = rows(tmp_path / "wh", run_id)
    assert len(got) == 10 and len({r[2] for r in got}) == 10
    assert [r[5] for r in got].count("removed_from_dataset") == 2
    assert wh.query("select count(*) from traces where run_id = ? and rejected_by = 'removed_from_dataset' "
                    "and kept", [run_id])[1] == [(0,)]

    # ... and back again: still nothing generated, and no longer rejected for it
    write_problems(problems, QUESTIONS)
    _, _, call = run(make(), tmp_path)
    assert call["generated"] == 0
    got = rows(tmp_path / "wh", run_id)
    assert len(got) == 10 and [r[5] for r in got].count("removed_from_dataset") == 0


def test_checkpoints_left_by_a_crash_are_recovered_without_the_teacher(harness, make, tmp_path):
    """A shard's samples in checkpoint files (its part never written) are folded in, not regenerated."""
    recipe = make()
    run_id, _, _ = run(recipe, tmp_path)
    wh = Warehouse(tmp_path / "wh")
    shard1 = wh.read_part(run_id, 1)
    # as if the call had died after the teacher answered for shard 1 but before its part was written
    for t in shard1:
        t.correct = t.kept = t.rejected_by = t.rejected_stage = None
        t.scores = {}
    wh.write_checkpoint(run_id, 1, shard1[:3])
    wh.write_checkpoint(run_id, 1, shard1[3:])
    wh.part_path(run_id, 1).unlink()
    _, record, call = run(recipe, tmp_path)
    assert (call["generated"], call["recovered"], call["reused"]) == (0, 4, 0)
    assert not wh.checkpoint_paths(run_id, 1)  # folded into the part
    assert {t.trace_id for t in wh.read_part(run_id, 1)} == {t.trace_id for t in shard1}
    assert all(t.reused_from is None for t in wh.read_part(run_id, 1))  # paid for by this run


def test_a_stored_sample_whose_file_went_away_is_looked_up_again(harness, make, tmp_path):
    """The lookup ran, then the checkpoint it named was folded into a part (another run finishing its
    shard): the shard looks again and still copies the sample instead of paying for it."""
    from distill.flows.generate import plan_shards, problems_for, sample_ids, shard_task

    first_id, _, _ = run(make(), tmp_path)
    recipe = make(keep_per_problem=1)  # another run (another decision), the same samples
    problems = problems_for(recipe, tmp_path)
    (shard0,) = plan_shards(None, [p.problem_id for p in problems], recipe.execution.shard_size)[:1]
    mine = [p for p in problems if p.problem_id in shard0]
    stale = {tid: (str(tmp_path / "wh" / "gone.parquet"), first_id) for p in mine for tid in sample_ids(recipe, p)}
    counts = shard_task.fn(recipe, "other-run", "transformers", 0, mine, tmp_path, stale)
    assert (counts["generated"], counts["reused"], counts["teacher_calls"]) == (0, 4, 0)
