import pytest

from distill.filters import apply_filters, make_filter


def test_too_short_is_rejected(make_trace):
    t = make_trace(completion_tokens=3)
    apply_filters([t], [make_filter("length", min_tokens=10)])
    assert (t.kept, t.rejected_by, t.scores["length"]) == (False, "too_short", 3.0)


def test_too_long_is_rejected(make_trace):
    t = make_trace(completion_tokens=9000)
    apply_filters([t], [make_filter("length", max_tokens=8192)])
    assert (t.kept, t.rejected_by) == (False, "too_long")


def test_within_bounds_is_kept_and_no_max_by_default(make_trace):
    t = make_trace(completion_tokens=100_000)
    apply_filters([t], [make_filter("length")])
    assert (t.kept, t.scores["length"]) == (True, 100_000.0)


def test_empty_completion_is_too_short_by_default(make_trace):
    t = make_trace("", completion_tokens=0)
    apply_filters([t], [make_filter("length")])
    assert (t.kept, t.rejected_by) == (False, "too_short")


def test_whitespace_words_when_token_count_is_missing(make_trace):
    t = make_trace("<think>one two three</think> four", completion_tokens=None)
    assert make_filter("length").score(t) == 4.0


def test_max_below_min_is_a_clear_error():
    with pytest.raises(ValueError, match="min_tokens <= max_tokens"):
        make_filter("length", min_tokens=100, max_tokens=10)
