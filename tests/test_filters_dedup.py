import pytest

from distill.filters import apply_filters, make_filter
from distill.filters.base import merge_filter_reports

A = ("First compute the area of the rectangle: the width is 4 and the height is 7, so the area is 28. "
     "Then subtract the triangle, whose base is 4 and height is 3, so its area is 6. "
     "The shaded region is therefore 28 minus 6, which is 22 square units. Let me double check the "
     "triangle: one half times 4 times 3 is 6, yes. So the answer is 22.")
B = ("The sequence doubles each step, starting from 3: 3, 6, 12, 24, 48. The sum of the first five "
     "terms is 93, which we can also get from the formula 3 times 2 to the fifth minus 1, that is 3 "
     "times 31, or 93. So the answer is 93.")


def traces(make_trace, *reasonings, problem_ids=None, **kw):
    ids = problem_ids or ["p0"] * len(reasonings)
    return [make_trace(f"<think>{r}</think> \\boxed{{22}}", trace_id=f"t{i}", problem_id=pid, sample_index=i, **kw)
            for i, (r, pid) in enumerate(zip(reasonings, ids))]


def test_exact_duplicate_is_dropped_and_the_first_kept(make_trace):
    ts = traces(make_trace, A, A.replace(" ", "  ").replace(". ", ".\n"))  # whitespace differs only
    apply_filters(ts, [make_filter("dedup")])
    assert [(t.kept, t.rejected_by, t.scores["dedup"]) for t in ts] == [(True, None, 0.0), (False, "duplicate", 1.0)]


def test_near_duplicate_is_dropped(make_trace):
    ts = traces(make_trace, A, A.replace("Let me double check", "Let me quickly double check"))
    apply_filters(ts, [make_filter("dedup", threshold=0.85)])
    assert (ts[1].kept, ts[1].rejected_by) == (False, "near_duplicate")
    assert 0.85 <= ts[1].scores["dedup"] < 1.0


def test_different_reasoning_is_kept(make_trace):
    ts = traces(make_trace, A, B)
    apply_filters(ts, [make_filter("dedup")])
    assert all(t.kept for t in ts) and ts[1].scores["dedup"] < 0.5


def test_scope_problem_keeps_copies_under_other_problems_scope_dataset_does_not(make_trace):
    ts = traces(make_trace, A, A, problem_ids=["p0", "p1"])
    apply_filters(ts, [make_filter("dedup", scope="problem")])
    assert all(t.kept for t in ts)
    ts = traces(make_trace, A, A, problem_ids=["p0", "p1"])
    apply_filters(ts, [make_filter("dedup", scope="dataset")])
    assert (ts[1].kept, ts[1].rejected_by) == (False, "duplicate")


def test_state_spans_batches_and_each_batch_reports_its_own_counts(make_trace):
    f = make_filter("dedup")
    first, later = traces(make_trace, A, A)
    r0 = apply_filters([first], [f]).reports  # shard 0
    r1 = apply_filters([later], [f]).reports  # shard 1
    assert first.kept and (later.kept, later.rejected_by) == (False, "duplicate")
    config = {"scope": "problem", "threshold": 0.85}
    assert r0 == {"dedup": {**config, "first_occurrences": 1, "duplicate": 0, "near_duplicate": 0}}
    assert r1 == {"dedup": {**config, "first_occurrences": 0, "duplicate": 1, "near_duplicate": 0}}
    assert merge_filter_reports([r0, r1]) == {"dedup": {**config, "first_occurrences": 1, "duplicate": 1,
                                                        "near_duplicate": 0}}


def test_a_batch_filtered_again_reports_the_same_counts(make_trace):
    # A resumed shard is re-filtered whole by the same filter object: its report replaces, never adds.
    f = make_filter("dedup")
    ts = traces(make_trace, A, A, A.replace("Let me double check", "Let me quickly double check"), B)
    first = apply_filters(ts, [f]).reports
    again = apply_filters(ts, [f]).reports
    assert first == again == {"dedup": {"scope": "problem", "threshold": 0.85, "first_occurrences": 2,
                                        "duplicate": 1, "near_duplicate": 1}}


def test_a_rejected_trace_is_nobodys_first_occurrence(make_trace):
    wrong, right = traces(make_trace, A, A)
    wrong.correct, right.correct = False, True
    apply_filters([wrong, right], [make_filter("rejection"), make_filter("dedup")])
    assert (wrong.rejected_by, right.kept) == ("wrong_answer", True)


def test_scores_are_deterministic_and_rescoring_is_safe(make_trace):
    near = A.replace("square units", "units squared")
    scores = []
    for _ in range(2):
        f = make_filter("dedup")
        ts = traces(make_trace, A, near)
        apply_filters(ts, [f])
        scores.append([t.scores["dedup"] for t in ts])
        apply_filters(ts, [f])  # the same traces again: the first is not its own duplicate
        assert [t.scores["dedup"] for t in ts] == scores[-1]
    assert scores[0] == scores[1]


def test_bad_scope_is_a_clear_error():
    with pytest.raises(ValueError, match="scope must be 'problem' or 'dataset'"):
        make_filter("dedup", scope="run")


def test_bad_threshold_and_bands_are_clear_errors():
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"threshold must be within \(0, 1\], got 1.5"):
        make_filter("dedup", threshold=1.5)
    with pytest.raises(ConfigError, match="bands must divide num_perm, got bands=5, num_perm=128"):
        make_filter("dedup", bands=5)
