"""Journey rows: the builder on literal inputs, storage as kind = journey with parents, and export."""
import pyarrow.parquet as pq
import pytest

from flows.journey import JourneyError, build_journeys, recipe_of_run
from tests.conftest import run_cli
from warehouse.export import export
from warehouse.journey import cut_wrong_path, eligible_wrong, teacher_messages, template_journeys
from warehouse.store import Warehouse


def row(i, ok, reasoning, answer, extracted, problem="p0", finish="stop", kept=None):
    return {"trace_id": f"{problem}-{i}", "run_id": "r", "problem_id": problem, "sample_index": i, "kind": "sample",
            "source": "test", "domain": "math", "prompt": [{"role": "user", "content": "What is 23 + 45?"}],
            "reference": "68", "teacher": "m", "reasoning": reasoning, "answer": answer, "finish_reason": finish,
            "correct": ok, "kept": ok if kept is None else kept, "verifier": "math",
            "verdict_reason": "match" if ok else "mismatch", "extracted_answer": extracted}


def test_cut_keeps_the_path_up_to_the_step_that_states_the_wrong_answer():
    text = "First add the tens: 20 + 40 = 60. Then the ones: 3 + 5 = 9. So 23 + 45 is 69. I am sure it is 69."
    assert cut_wrong_path(text, "69") == "First add the tens: 20 + 40 = 60. Then the ones: 3 + 5 = 9. So 23 + 45 is 69."
    # a number inside another does not count (690, 6.9); no answer or not found: the whole path
    assert cut_wrong_path("It is 690.\nOr 6.9. Maybe 69.", "69") == "It is 690. Or 6.9. Maybe 69."
    assert cut_wrong_path("Hmm. Not sure.", None) == "Hmm. Not sure."
    assert cut_wrong_path("Hmm. Not sure.", "12") == "Hmm. Not sure."


def test_eligible_wrong_skips_truncated_and_empty_and_puts_new_mistakes_first():
    rows = [row(0, False, "23 plus 45 is 58.", "\\boxed{58}", "58"),
            row(1, False, "23 plus 45 is 58 again.", "\\boxed{58}", "58"),
            row(2, False, "", "\\boxed{60}", "60"),                       # no reasoning
            row(3, False, "23 plus 45 is", "", None, finish="length"),  # truncated
            row(4, False, "23 plus 45 is 78.", "\\boxed{78}", "78"),
            row(5, True, "23 plus 45 is 68.", "\\boxed{68}", "68")]
    assert [r["sample_index"] for r in eligible_wrong(rows)] == [0, 4, 1]


def test_template_journeys_go_wrong_reflect_then_right_with_parents_and_caps():
    rows = [row(0, False, "23 plus 45 is 58. Done.", "\\boxed{58}", "58"),
            row(1, True, "23 plus 45 is 68.", "\\boxed{68}", "68"),
            row(2, False, "23 plus 45 is 78.", "\\boxed{78}", "78"),
            row(3, True, "Tens 60, ones 8: 68.", "\\boxed{68}", "68"),
            row(0, True, "1 plus 1 is 2.", "\\boxed{2}", "2", problem="q")]   # no wrong sample: no journey
    out = template_journeys(rows, max_wrong=2, per_problem=None)
    assert len(out) == 2 and all(t.kind == "journey" and t.kept and t.problem_id == "p0" for t in out)
    by_parent = {t.parents[-1]: t for t in out}
    first = by_parent["p0-1"]
    assert first.parents == ["p0-0", "p0-2", "p0-1"]
    assert first.reasoning == ("23 plus 45 is 58.\n\nThat gives 58, but checking it again, 58 is not right. "
                               "Let me start over.\n\n23 plus 45 is 78.\n\nThat gives 78, but checking it again, "
                               "78 is not right. Let me start over.\n\n23 plus 45 is 68.")
    assert first.completion == f"<think>\n{first.reasoning}\n</think>\n\n\\boxed{{68}}"
    assert by_parent["p0-3"].parents[:2] == ["p0-2", "p0-0"]  # rotated: a different first mistake
    # caps: one wrong branch, one journey per problem
    capped = template_journeys(rows, max_wrong=1, per_problem=1)
    assert [t.parents for t in capped] == [["p0-0", "p0-1"]]
    # deterministic ids
    assert [t.trace_id for t in template_journeys(rows, 2)] == [t.trace_id for t in out]


def test_teacher_messages_show_the_attempt_after_worked_corrections():
    shots = [{"question": "What is 3 + 4?", "attempt": "3 plus 4 is 8.", "answer": "Wait, it is 7.</think>\n\\boxed{7}"}]
    msgs = teacher_messages("What is 23 + 45?", "23 plus 45 is 58.", system_prompt="Think.", few_shot=shots)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert "3 plus 4 is 8." in msgs[1]["content"] and msgs[2]["content"].startswith("Wait")
    assert msgs[-1]["content"].startswith("What is 23 + 45?") and "23 plus 45 is 58." in msgs[-1]["content"]


@pytest.fixture
def run_dir(tmp_path, make_trace):
    wh = Warehouse(tmp_path / "wh")
    traces = []
    for p in range(3):
        for i, ok in enumerate([False, True, False, True]):
            ans = 10 + p if ok else 20 + p + i
            traces.append(make_trace(f"<think>{p} plus 10 is {ans}.</think>\n\\boxed{{{ans}}}", trace_id=f"t{p}{i}",
                                     run_id="run-j", problem_id=f"p{p}", sample_index=i, reference=str(10 + p),
                                     correct=ok, kept=ok, verdict_reason="match" if ok else "mismatch",
                                     extracted_answer=str(ans), rejected_by=None if ok else "wrong_answer",
                                     prompt=[{"role": "user", "content": f"What is {p} + 10?"}]))
    wh.write_part("run-j", 0, traces)
    wh.write_run({"run_id": "run-j", "status": "finished", "recipe": {"name": "j", "verifier": "math"},
                  "timings": {}})
    wh.refresh()
    return tmp_path / "wh"


def test_stored_journeys_are_rows_of_the_run_with_a_view_and_feed_the_export(run_dir, tmp_path):
    stats = build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template", max_wrong=1, per_problem=2)
    assert (stats["journeys"], stats["kept"], stats["problems_kept"]) == (6, 6, 3)
    wh = Warehouse(run_dir)
    assert wh.query("select mode, problems, journeys, kept from journeys")[1] == [("template", 3, 6, 6)]
    # the sample funnel does not count journey rows; journey parents are samples of the same run
    assert wh.query("select samples from funnel where run_id = 'run-j'")[1] == [(12,)]
    assert wh.query("select count(*) from traces j, unnest(j.parents) as p(id) left join traces s on s.trace_id = p.id "
                    "where j.kind = 'journey' and (s.kind <> 'sample' or s.run_id <> 'run-j')")[1] == [(0,)]
    assert wh.read_run("run-j")["journeys"]["template"]["kept"] == 6
    # rebuilding replaces, never doubles
    build_journeys(recipe_of_run(run_dir, "run-j"), "run-j", "template", max_wrong=1, per_problem=2)
    assert wh.query("select count(*) from traces where kind = 'journey'")[1] == [(6,)]

    res = export(run_dir, tmp_path / "out", variant="journey")
    rows = pq.read_table(tmp_path / "out" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert res.splits == {"train": 6}
    stored = {r[0] for r in wh.query("select trace_id from traces where kind = 'journey'")[1]}
    assert {r["trace_id"] for r in rows} == stored
    text = rows[0]["messages"][1]["content"]
    assert text.index("is not right") < text.index("</think>") and "Let me start over." in text


def test_journeys_cli_errors_are_one_line(run_dir):
    proc = run_cli("journeys", "no-such-run", "--warehouse", str(run_dir), timeout=120)
    assert proc.returncode != 0 and "unknown run 'no-such-run'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("journeys", "run-j", "--mode", "dream", "--warehouse", str(run_dir), timeout=120)
    assert proc.returncode != 0 and "template or teacher" in proc.stderr
    with pytest.raises(JourneyError, match="no samples"):
        build_journeys(recipe_of_run(run_dir, "run-j"), "run-x", "template")


def test_teacher_journeys_on_the_real_model_continue_wrong_paths_and_keep_only_verified_ones(tmp_path):
    wh_dir = tmp_path / "wh"
    proc = run_cli("run", "recipes/default.yaml", "--limit", "8", "--set", "backend=transformers",
                   "--set", "journey=teacher", "--warehouse", str(wh_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    wh = Warehouse(wh_dir)
    (run_id,), = wh.query("select run_id from runs")[1]
    cols, rows = wh.query("select j.trace_id, j.kept, j.correct, j.rejected_by, j.reasoning, j.problem_id, "
                          "s.problem_id, s.correct, s.reasoning, s.extracted_answer, j.sampling "
                          "from traces j join traces s on s.trace_id = j.parents[1] where j.kind = 'journey'")
    assert rows, "the run has wrong samples, so teacher journeys were tried"
    for _, kept, correct, why, reasoning, pj, ps, parent_ok, parent_reasoning, parent_ans, sampling in rows:
        assert pj == ps and parent_ok is False                    # a journey starts from a wrong sample of its problem
        assert reasoning.startswith(cut_wrong_path(parent_reasoning, parent_ans))
        assert kept == (why is None)
        assert (not kept) or correct                              # kept only when the continuation verified
        assert why in (None, "wrong_answer", "truncated", "no_think_close")
        assert '"journey":"teacher"' in sampling
    stats = wh.read_run(run_id)["journeys"]["teacher"]
    assert (stats["journeys"], stats["kept"]) == (len(rows), sum(r[1] for r in rows))
    assert sum(r["asked"] for r in stats["rounds"][:1]) == len(rows)  # every journey was asked in round 1
    assert stats["kept"] >= 1, "the 3-shot teacher corrects some one-digit sums"
