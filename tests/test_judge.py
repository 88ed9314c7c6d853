"""The LLM judge verifier and judge difficulty ratings.

Fast: what the judge is shown (never the reasoning), how its reply is read, which verdict decides, the recipe
keys, the warehouse's new columns next to parts written before them (local catalog and the object-store path),
and the judge step against a fault-injecting server (garbage replies, a dead server). Slow: a real vLLM server of
the embedded model as teacher and judge (a weak judge: the tests check the plumbing, the stored fields and the
caching, not its wisdom), counted by the server's own request metric.
"""
from __future__ import annotations

import json

import pytest

from distill.errors import BackendError, ConfigError
from distill.filters import apply_filters
from distill.filters.basic import Rejection, verdict
from distill.filters.selection import select_per_problem
from distill.flows.judge import judge_traces
from distill.flows.recipe import Recipe
from distill.verifiers import verify_batch
from distill.verifiers.judge import (JUDGE_PROMPT_VERSION, candidate, judge_messages, parse_rating, parse_verdict,
                                     rate_messages, split_verifier)
from distill.warehouse.schema import SCHEMA_VERSION, to_table
from distill.warehouse.store import Warehouse
from tests.conftest import free_port, run_cli, server_metric
from tests.test_openai_backend import FaultServer, ok_body

SECRET = "the reasoning says SECRET-7"


# -- what the judge sees ----------------------------------------------------------------------------
def test_the_judge_sees_the_final_answer_and_the_reference_never_the_reasoning(make_trace):
    t = make_trace(f"<think>{SECRET}, so \\boxed{{3}} at first</think>\nSo the answer is \\boxed{{\\frac{{1}}{{2}}}}.")
    shown = candidate(t.answer, "0.5")
    assert shown == "\\frac{1}{2}"  # the model's own last box, before the parser's rendering
    text = json.dumps(judge_messages(shown, "1/2"))
    assert SECRET not in text and "SECRET" not in text and "\\\\frac{1}{2}" in text and "1/2" in text


def test_without_a_box_the_extracted_answer_then_the_answer_tail():
    assert candidate("The answer is 7.", "7") == "7"
    assert candidate("The answer is 7.") == "The answer is 7."
    long = "x" * 1000 + " final: 42"
    assert candidate(long).endswith("final: 42") and len(candidate(long)) == 300


def test_no_answer_no_candidate():
    # a reasoning that never closed has no answer (split_think): nothing to judge, nothing leaks
    assert candidate("") is None and candidate(None) is None


def test_verifier_judge_alone_extracts_the_answer_and_leaves_correct_null():
    (v,) = verify_batch("judge", [("<think>2+2</think> \\boxed{4}", "4")])
    assert (v.correct, v.reason, v.extracted) == (None, "judge_only", "4")
    (m,) = verify_batch("math+judge", [("<think>2+2</think> \\boxed{4}", "4")])
    assert (m.correct, m.reason) == (True, "match")  # NAME+judge: NAME's rules


def test_rating_prompt_shows_the_question_only():
    assert "What is 2 + 2?" in rate_messages("What is 2 + 2?")[0]["content"]


# -- reading the reply -------------------------------------------------------------------------------
@pytest.mark.parametrize("reply, expected", [
    ("YES", (True, "judge_yes")), ("yes.", (True, "judge_yes")), ("**Yes**, they match", (True, "judge_yes")),
    ("No", (False, "judge_no")), ("NO, 3 is not 4", (False, "judge_no")),
    ("Maybe", (None, "judge_unclear: Maybe")), ("The answer is yes", (None, "judge_unclear: The answer is yes")),
    ("", (None, "judge_empty_reply")), (None, (None, "judge_empty_reply")),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def test_parse_rating():
    assert [parse_rating(r) for r in ("7", "I'd say 10/10", "Rating: 3.", "hard", "0", None)] == \
        [7.0, 10.0, 3.0, None, None, None]


# -- which verdict decides ---------------------------------------------------------------------------
@pytest.mark.parametrize("correct, judge, expected", [
    # (rules, judge) -> rules, judge, either, both
    (True, True, (True, True, True, True)), (True, False, (True, False, True, False)),
    (False, True, (False, True, True, False)), (False, False, (False, False, False, False)),
    (None, True, (None, True, True, None)), (None, False, (None, False, False, False)),
    (True, None, (True, None, True, None)), (None, None, (None, None, None, None)),
])
def test_verdict_combinations(make_trace, correct, judge, expected):
    t = make_trace(correct=correct, judge_correct=judge)
    assert tuple(verdict(t, u) for u in ("rules", "judge", "either", "both")) == expected


def test_rejection_says_which_verdict_rejected(make_trace):
    rows = [make_trace(trace_id="a", correct=False, judge_correct=True), make_trace(trace_id="b", correct=True,
            judge_correct=False), make_trace(trace_id="c", correct=False, judge_correct=False)]
    apply_filters(rows, [Rejection(uses="both")])
    assert [(t.kept, t.rejected_by) for t in rows] == [(False, "wrong_answer"), (False, "judge_wrong"),
                                                       (False, "wrong_answer")]
    apply_filters(rows, [Rejection(uses="judge")])
    assert [(t.kept, t.rejected_by) for t in rows] == [(True, None), (False, "judge_wrong"), (False, "judge_wrong")]
    with pytest.raises(ConfigError, match="judge_uses must be one of"):
        Rejection(uses="majority")


def test_pass_rate_goes_by_the_chosen_verdict(make_trace):
    rows = [make_trace(trace_id=str(i), sample_index=i, correct=False, judge_correct=i < 3, kept=True)
            for i in range(4)]
    select_per_problem(rows, uses="rules")
    assert rows[0].scores["pass_rate"] == 0.0
    select_per_problem(rows, uses="either")
    assert rows[0].scores["pass_rate"] == 0.75


# -- recipe keys -------------------------------------------------------------------------------------
def test_recipe_keys_and_their_errors():
    assert split_verifier("math+judge") == ("math", True) and split_verifier("judge") == (None, True)
    assert Recipe.build({"verifier": "math+judge", "judge_model": "m"}).selection.uses() == "rules"
    assert Recipe.build({"verifier": "judge", "judge_model": "m"}).selection.uses() == "judge"
    with pytest.raises(ConfigError, match="recipe key 'judge_model': expected the judge's model name"):
        Recipe.build({"verifier": "math+judge"})
    with pytest.raises(ConfigError, match="recipe key 'judge_uses': expected null with verifier 'math'"):
        Recipe.build({"judge_uses": "judge"})
    with pytest.raises(ConfigError, match="recipe key 'judge_model': expected null with verifier 'math'"):
        Recipe.build({"judge_model": "m"})
    with pytest.raises(ConfigError, match="judge_api_base"):
        Recipe.build({"verifier": "judge", "judge_model": "m"}).judge_settings()
    # unset, the new identity keys leave every existing run id as it was; set, they make another run
    plain = Recipe.build({})
    assert "judge_model" not in plain.identity() and "judge_uses" not in plain.identity()
    judged = Recipe.build({"verifier": "math+judge", "judge_model": "m"})
    assert judged.fingerprint() != plain.fingerprint()
    # the judge's server is serving, not identity: moving it keeps the run
    assert judged.replace(judge_api_base="http://127.0.0.1:1/v1").fingerprint() == judged.fingerprint()


def test_cli_refuses_a_judge_without_a_server(tmp_path):
    from distill.flows.cli import prepare
    from tests.conftest import ROOT

    with pytest.raises(ConfigError, match="set judge_api_base"):
        prepare(ROOT / "recipes" / "default.yaml", ["verifier=math+judge", "judge_model=m", "backend=transformers"],
                1, str(tmp_path))


# -- the warehouse: new columns next to parts written before them --------------------------------------
def _judged_rows(make_trace, run_id: str):
    return [make_trace(trace_id=f"{run_id}-a", run_id=run_id, correct=True, judge_correct=False, judge_model="j",
                       judge_reason="judge_no", extracted_answer="2", kept=True),
            make_trace(trace_id=f"{run_id}-b", run_id=run_id, sample_index=1, correct=True, judge_correct=True,
                       judge_model="j", judge_reason="judge_yes", kept=True)]


@pytest.mark.parametrize("root", ["local", "memory"])
def test_old_shape_parts_and_new_ones_read_together(tmp_path, make_trace, root):
    """A part written before the judge columns (schema 2) and one with them: every view, the generation
    cache and the copy of a stored sample read both, on the local catalog and on the object-store path."""
    url = str(tmp_path / "wh") if root == "local" else f"memory://judge-{tmp_path.name}"
    wh = Warehouse(url)
    old = to_table([make_trace(trace_id="old-a", run_id="old", correct=True, schema_version=2)])
    old = old.drop_columns(["judge_correct", "judge_model", "judge_reason"])
    wh.storage.write_parquet(wh._part("old", 0), old)
    wh.write_part("new", 0, _judged_rows(make_trace, "new"))
    wh.write_run({"run_id": "new", "status": "finished"})
    wh.refresh()
    rows = wh.query("select run_id, count(*), count(judge_correct), count(judge_model), min(schema_version) "
                    "from traces group by 1 order by 1")[1]
    assert rows == [("new", 2, 2, 2, SCHEMA_VERSION), ("old", 1, 0, 0, 2)]
    assert wh.query("select trace_id, correct, judge_correct, judge_model, judge_reason, extracted_answer "
                    "from verdict_disagreements")[1] == [("new-a", True, False, "j", "judge_no", "2")]
    assert wh.query("select count(*) from ratings")[1] == [(0,)]  # empty until a run is rated
    found = wh.find_samples(["old-a", "new-b"])
    copied = {t.trace_id: t for t in wh.read_samples(found)}
    assert copied["old-a"].judge_correct is None and copied["new-b"].judge_correct is True
    assert wh.read_part("old", 0)[0].judge_model is None


# -- the judge step against a fault-injecting server ---------------------------------------------------
def _recipe(api_base: str, **kw) -> Recipe:
    return Recipe.build({"verifier": "math+judge", "judge_model": "judge-m", "judge_api_base": api_base,
                         "max_retries": 0, **kw})


@pytest.mark.parametrize("root", ["local", "memory"])
def test_garbage_replies_are_a_null_verdict_with_a_reason_and_are_cached(tmp_path, make_trace, root):
    """The cache is the warehouse's: a local folder or object storage (here fsspec's in-memory store)."""
    server = FaultServer([("ok", ok_body("Perhaps, hard to say"))] + [("ok", ok_body("YES"))] * 5)
    try:
        wh = Warehouse(tmp_path / "wh" if root == "local" else f"memory://judge-cache-{tmp_path.name}")
        rows = [make_trace(trace_id="a", completion="<think>x</think> \\boxed{5}", reference="5", correct=True),
                make_trace(trace_id="b", completion="<think>never closed", reference="5", correct=False),
                make_trace(trace_id="c", completion="<think>x</think> \\boxed{5}", reference=None)]
        assert judge_traces(rows, _recipe(server.url), wh) == {"judge_calls": 1, "judge_cached": 0}
        assert [(t.judge_correct, t.judge_model, t.judge_reason) for t in rows] == [
            (None, "judge-m", "judge_unclear: Perhaps, hard to say"), (None, "judge-m", "no_answer"),
            (None, "judge-m", "no_reference")]
        body = server.requests[0]["body"]
        assert body["temperature"] == 0.0 and body["max_tokens"] == 8 and body["model"] == "judge-m"
        assert "never closed" not in json.dumps(body) and "<think>" not in json.dumps(body)
        (rel,) = wh.storage.list("judge_cache")
        cached = wh.storage.read_parquet(rel).to_pylist()
        assert cached[0]["prompt_version"] == JUDGE_PROMPT_VERSION and cached[0]["reply"] == "Perhaps, hard to say"
        again = [make_trace(trace_id="a2", completion="<think>y</think> \\boxed{5}", reference="5")]
        assert judge_traces(again, _recipe(server.url), wh) == {"judge_calls": 0, "judge_cached": 1}
        assert again[0].judge_reason == "judge_unclear: Perhaps, hard to say" and len(server.requests) == 1
    finally:
        server.close()


def test_a_dead_judge_is_one_line_and_keeps_what_was_answered(tmp_path, make_trace):
    wh = Warehouse(tmp_path / "wh")
    rows = [make_trace(trace_id="a", completion="\\boxed{5}", reference="5")]
    with pytest.raises(BackendError) as e:
        judge_traces(rows, _recipe(f"http://127.0.0.1:{free_port()}/v1"), wh)
    assert "\n" not in str(e.value) and "judge judge-m at http://127.0.0.1" in str(e.value)
    assert "1 of 1 questions failed" in str(e.value) and "connection error" in str(e.value)
    assert not list((tmp_path / "wh").glob("judge_cache/*.parquet"))  # nothing answered, nothing cached


# -- a real server: the embedded model as teacher and as judge ---------------------------------------
@pytest.mark.slow
def test_run_with_math_judge_stores_both_verdicts_and_a_rerun_asks_nothing(vllm_server, tmp_path):
    """A dead judge first: the run fails in one line with its samples checkpointed; with the judge up the
    rerun judges them without asking the teacher again; a fresh run over the same samples asks nothing."""
    wh_dir = tmp_path / "wh"
    args = ["run", "recipes/default.yaml", "--limit", "2", "--warehouse", str(wh_dir), "--set", "backend=openai",
            "--set", f"api_base={vllm_server.url}", "--set", "n=2", "--set", "max_tokens=48",
            "--set", "verifier=math+judge", "--set", "judge_model=smollm2-135m", "--set", "max_retries=0"]
    dead = run_cli(*args, "--set", f"judge_api_base=http://127.0.0.1:{free_port()}/v1", timeout=600)
    assert dead.returncode == 2, dead.stderr[-3000:]
    (line,) = [x for x in dead.stderr.splitlines() if x.startswith("error:")]
    assert "judge smollm2-135m" in line and "questions failed" in line
    assert len(list(wh_dir.glob("traces/run_id=*/ckpt-*.parquet"))) >= 1  # the samples are kept

    before = server_metric(vllm_server, "vllm:request_success_total")
    up = run_cli(*args, timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    wh = Warehouse(wh_dir)
    (run_id,), = wh.query("select run_id from runs")[1]
    run = wh.read_run(run_id)
    call = run["calls"][-1]
    assert (call["generated"], call["recovered"], call["judge_cached"]) == (0, 4, 0)
    # the server answered the judge's questions only: the teacher was not asked again
    assert server_metric(vllm_server, "vllm:request_success_total") - before == call["judge_calls"] > 0
    assert run["judge"]["prompt_version"] == JUDGE_PROMPT_VERSION and run["judge"]["uses"] == "rules"
    cols, rows = wh.query("select answer, judge_model, judge_reason, verifier from traces")
    answered = [r for r in rows if r[0]]
    assert answered and all(r[1] == "smollm2-135m" and r[2] for r in answered)
    assert all(r[3] == "math+judge" for r in rows)
    wh.query("select * from verdict_disagreements")  # binds and runs, whatever the weak judge said

    before = server_metric(vllm_server, "vllm:request_success_total")
    fresh = run_cli(*args, "--fresh", timeout=600)  # another run over the same samples and answers
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert server_metric(vllm_server, "vllm:request_success_total") == before
    last = max((wh.read_run(r) for r in wh.run_ids()), key=lambda r: r["started_at"])
    assert last["calls"][-1]["judge_calls"] == 0 and last["calls"][-1]["judge_cached"] == call["judge_calls"]


@pytest.mark.slow
def test_rate_stores_ratings_once(vllm_server, tmp_path, make_trace):
    from distill.flows.judge import rate_problems

    wh_dir = tmp_path / "wh"
    wh = Warehouse(wh_dir)
    wh.write_part("r", 0, [make_trace(trace_id="a", run_id="r", problem_id="p0", question="What is 2 + 2?"),
                           make_trace(trace_id="b", run_id="r", problem_id="p1", question="What is 17 * 23?")])
    wh.refresh()
    before = server_metric(vllm_server, "vllm:request_success_total")
    first = run_cli("rate", "r", "--judge-model", "smollm2-135m", "--api-base", vllm_server.url,
                    "--warehouse", str(wh_dir), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 problems, 2 asked, 0 already rated" in first.stdout
    assert server_metric(vllm_server, "vllm:request_success_total") - before == 2
    rows = wh.query("select problem_id, rater, prompt_version from ratings order by 1")[1]
    assert rows == [("p0", "smollm2-135m", "rate-v1"), ("p1", "smollm2-135m", "rate-v1")]
    again = rate_problems(str(wh_dir), "r", "smollm2-135m", vllm_server.url)
    assert (again["asked"], again["cached"]) == (0, 2)
    assert server_metric(vllm_server, "vllm:request_success_total") - before == 2
