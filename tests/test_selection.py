import pytest

from distill.filters.selection import select_per_problem


def group(make_trace, verdicts, pid="p", tokens=None):
    out = []
    for i, ok in enumerate(verdicts):
        out.append(make_trace(f"<think>path {i} {'x ' * i}</think>\\boxed{{2}}", trace_id=f"{pid}{i}", problem_id=pid,
                              sample_index=i, correct=ok, kept=bool(ok), rejected_by=None if ok else "wrong_answer",
                              completion_tokens=(tokens or [10] * len(verdicts))[i]))
    return out


def test_pass_rate_is_scored_on_every_sample(make_trace):
    ts = group(make_trace, [True, False, None, True])
    select_per_problem(ts)
    assert {t.scores["pass_rate"] for t in ts} == {0.5}
    assert [t.kept for t in ts] == [True, False, False, True]


def test_keep_per_problem_drops_the_rest_as_over_quota(make_trace):
    ts = group(make_trace, [True, True, True])
    dropped = select_per_problem(ts, keep_per_problem=1)
    assert [t.rejected_by for t in ts] == [None, "over_quota", "over_quota"] and dropped["over_quota"] == 2


def test_prefer_shortest_keeps_the_fewest_tokens(make_trace):
    ts = group(make_trace, [True, True, True], tokens=[30, 10, 20])
    select_per_problem(ts, keep_per_problem=1, prefer="shortest")
    assert [t.kept for t in ts] == [False, True, False]
    assert [t.scores["rank"] for t in ts] == [2.0, 0.0, 1.0]


def test_prefer_diverse_picks_the_least_similar_second(make_trace):
    ts = [make_trace(text, trace_id=str(i), sample_index=i, correct=True, kept=True, completion_tokens=5 + i)
          for i, text in enumerate(["<think>add the ones then the tens</think>2",
                                    "<think>add the ones then the tens again</think>2",
                                    "<think>count up from seven by fives</think>2"])]
    select_per_problem(ts, keep_per_problem=2, prefer="diverse")
    assert [t.kept for t in ts] == [True, False, True]


def test_pass_rate_bounds_drop_too_easy_and_too_hard(make_trace):
    easy, hard, mid = group(make_trace, [True] * 4, "e"), group(make_trace, [True, False, False, False], "h"), \
        group(make_trace, [True, True, False, False], "m")
    dropped = select_per_problem(easy + hard + mid, pass_rate_min=0.3, pass_rate_max=0.8)
    assert all(t.rejected_by == "pass_rate" for t in easy if t.correct)
    assert all(t.rejected_by == "pass_rate" for t in hard if t.correct)
    assert [t.kept for t in mid] == [True, True, False, False] and dropped["pass_rate"] == 5


def test_unknown_preference_is_an_error(make_trace):
    with pytest.raises(ValueError, match="prefer must be one of first, shortest, diverse"):
        select_per_problem(group(make_trace, [True]), prefer="longest")
