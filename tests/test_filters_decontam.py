import json

import pytest

from distill.filters import apply_filters, make_filter
from distill.filters.base import merge_filter_reports

# Three MATH-500 test rows, verbatim (openai/prm800k, MIT; see recipes/data/LICENSES.md): a long
# problem, one shorter than 13 words, one in between.
MATH500 = [
    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer "
                "in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
     "unique_id": "test/precalculus/807.json"},
    {"problem": "How many positive whole-number divisors does 196 have?", "unique_id": "test/number_theory/572.json"},
    {"problem": "What is the smallest positive perfect cube that can be written as the sum of three consecutive "
                "integers?", "unique_id": "test/number_theory/515.json"},
]
TEMPLATE = "{}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
UNRELATED = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def math500(tmp_path):
    return [{"path": jsonl(tmp_path / "math500.jsonl", MATH500), "field": "problem"}]


def asking(make_trace, question, problem_id="p0", **kw):
    return make_trace(prompt=[{"role": "user", "content": question}], problem_id=problem_id, **kw)


def test_math500_problem_copied_into_a_prompt_is_contaminated(make_trace, math500):
    f = make_filter("decontam", against=math500)
    t = asking(make_trace, TEMPLATE.format(MATH500[0]["problem"]), problem_id="train-17")
    apply_filters([t], [f])
    assert (t.kept, t.rejected_by) == (False, "contaminated")
    assert t.scores["decontam"] > 0.6  # the template's words are not in MATH-500
    assert f.report([t])["contaminated"] == [{"problem_id": "train-17", "eval_set": "math500", "eval_line": 1,
                                              "share": round(t.scores["decontam"], 4)}]


def test_short_eval_item_is_matched_whole(make_trace, math500):
    t = asking(make_trace, "how many positive whole-number divisors does 196 have")
    apply_filters([t], [make_filter("decontam", against=math500)])
    assert (t.kept, t.rejected_by, t.scores["decontam"]) == (False, "contaminated", 1.0)


def test_unrelated_problem_is_kept(make_trace, math500):
    f = make_filter("decontam", against=math500)
    ts = [asking(make_trace, UNRELATED), asking(make_trace, "How many positive divisors does 200 have?")]
    apply_filters(ts, [f])
    assert [(t.kept, t.scores["decontam"]) for t in ts] == [(True, 0.0), (True, 0.0)]
    assert f.report(ts)["contaminated"] == []


def test_overlap_of_n_words_is_caught_with_punctuation_and_case_ignored(make_trace, tmp_path):
    evals = [{"path": jsonl(tmp_path / "e.jsonl", [{"q": "Tom has three red apples and gives two of them "
                                                         "to his sister Ann on a sunny Monday morning."}]),
              "field": "q"}]
    t = asking(make_trace, "Story: TOM HAS THREE RED APPLES, AND GIVES TWO OF THEM TO HIS SISTER ANN -- how many?")
    apply_filters([t], [make_filter("decontam", against=evals, n=13)])
    assert (t.kept, t.rejected_by) == (False, "contaminated")
    u = asking(make_trace, "Tom has three red apples and gives two of them away.")  # 10 words in common
    apply_filters([u], [make_filter("decontam", against=evals, n=13)])
    assert u.kept


def test_only_the_last_user_message_is_the_problem(make_trace, math500):
    few_shot = [{"role": "user", "content": MATH500[2]["problem"]}, {"role": "assistant", "content": "\\boxed{6}"},
                {"role": "user", "content": UNRELATED}]
    t = make_trace(prompt=[{"role": "system", "content": "Think step by step."}, *few_shot])
    apply_filters([t], [make_filter("decontam", against=math500)])
    assert (t.kept, t.scores["decontam"]) == (True, 0.0)


def test_no_eval_set_is_a_clear_error():
    with pytest.raises(ValueError, match="`against` is required"):
        make_filter("decontam")


def test_missing_file_and_wrong_field_are_clear_errors(tmp_path, math500):
    with pytest.raises(ValueError, match="eval set not found: .*nope.jsonl"):
        make_filter("decontam", against=[{"path": str(tmp_path / "nope.jsonl"), "field": "problem"}])
    with pytest.raises(ValueError, match="math500.jsonl:1: not a JSON object with a 'question' field"):
        make_filter("decontam", against=[{**math500[0], "field": "question"}])


def test_each_shard_reports_only_its_own_hits_and_the_merge_is_their_union(make_trace, math500):
    # One filter object for the run (as in a process handling two shards); each shard's report is its own.
    f = make_filter("decontam", against=math500)
    shard0 = [asking(make_trace, TEMPLATE.format(MATH500[0]["problem"]), problem_id="a", trace_id=f"a{i}",
                     sample_index=i, correct=i == 0) for i in range(2)]
    shard1 = [asking(make_trace, UNRELATED, problem_id="b", trace_id="b0", correct=True),
              asking(make_trace, MATH500[1]["problem"], problem_id="c", trace_id="c0", correct=True)]
    chain = [make_filter("rejection"), f]
    r0 = apply_filters(shard0, chain).reports
    r1 = apply_filters(shard1, chain).reports
    assert [h["problem_id"] for h in r0["decontam"]["contaminated"]] == ["a"]
    assert (r0["decontam"]["samples"], r0["decontam"]["rejected"]) == (2, 1)  # a1 was rejected as wrong first
    assert [h["problem_id"] for h in r1["decontam"]["contaminated"]] == ["c"]
    assert (r1["decontam"]["samples"], r1["decontam"]["rejected"]) == (1, 1)
    assert "rejection" not in r0  # a filter with nothing to say has no report

    run = merge_filter_reports([r0, r1])["decontam"]
    assert [(h["problem_id"], h["eval_line"]) for h in run["contaminated"]] == [("a", 1), ("c", 2)]
    assert (run["samples"], run["rejected"]) == (3, 2)
    assert run["n"] == 13 and run["eval_sets"] == r0["decontam"]["eval_sets"]  # configuration, not summed
