import pytest

from distill.errors import ConfigError
from distill.filters import apply_filters, make_filter


def test_truncated_sample_is_rejected_with_its_reason(make_trace):
    t = make_trace(finish_reason="length", correct=True)
    apply_filters([t], [make_filter("truncation"), make_filter("rejection")])
    assert (t.kept, t.rejected_by, t.scores["truncation"]) == (False, "truncated", 1.0)


def test_wrong_answer_is_rejected(make_trace):
    t = make_trace(correct=False)
    stats = apply_filters([t], [make_filter("truncation"), make_filter("rejection")])
    assert (t.kept, t.rejected_by) == (False, "wrong_answer")
    assert stats.dropped == {"wrong_answer": 1} and stats.kept == 0


def test_unverifiable_is_rejected_unless_asked(make_trace):
    t = make_trace(correct=None)
    apply_filters([t], [make_filter("rejection")])
    assert (t.kept, t.rejected_by, t.scores["rejection"]) == (False, "unverifiable", None)
    apply_filters([t], [make_filter("rejection", keep_unverifiable=True)])
    assert t.kept is True


def test_correct_complete_sample_is_kept(make_trace):
    t = make_trace(correct=True)
    stats = apply_filters([t], [make_filter("truncation"), make_filter("rejection")])
    assert (t.kept, t.rejected_by, stats.kept) == (True, None, 1)


def test_every_filter_scores_even_after_an_earlier_rejection(make_trace):
    t = make_trace(finish_reason="length", correct=False)
    apply_filters([t], [make_filter("truncation"), make_filter("rejection")])
    # the first failing filter names the rejection; the later one still recorded its score
    assert t.rejected_by == "truncated" and t.scores == {"truncation": 1.0, "rejection": 0.0}


def test_unknown_filter_lists_known_names():
    with pytest.raises(ConfigError, match="known: .*rejection.*truncation"):
        make_filter("nope")
