from distill.filters import apply_filters, make_filter
from distill.filters.repetition import repeated_share

LOOP = "Wait, let me recompute: 3 times 4 is 12, and 12 plus 5 is 17, so the total is 17. "


def test_normal_short_reasoning_scores_zero(make_trace):
    t = make_trace()
    apply_filters([t], [make_filter("repetition")])
    assert (t.kept, t.scores["repetition"]) == (True, 0.0)


def test_looping_paragraph_is_repetitive(make_trace):
    t = make_trace(f"<think>First, add the numbers. {LOOP * 6}</think> \\boxed{{17}}")
    apply_filters([t], [make_filter("repetition")])
    assert (t.kept, t.rejected_by) == (False, "repetitive")
    assert t.scores["repetition"] > 0.75  # five of six copies repeat the first


def test_one_word_over_and_over_is_repetitive(make_trace):
    t = make_trace("<think>So the answer is " + "the " * 200 + "</think>")
    assert make_filter("repetition").score(t) > 0.95


def test_a_single_recheck_is_kept(make_trace):
    text = ("We need the total cost. Apples cost 3 dollars each and we buy 4, so apples cost 12. "
            "Pears cost 5 dollars. Together that is 17 dollars. Let me verify once more: "
            "Apples cost 3 dollars each and we buy 4, so apples cost 12. Then 12 plus 5 is 17. Good.")
    t = make_trace(f"<think>{text}</think> \\boxed{{17}}")
    apply_filters([t], [make_filter("repetition")])
    assert t.kept and 0 < t.scores["repetition"] < 0.3


def test_shorter_than_n_words_scores_zero():
    assert repeated_share("a b a b a b", n=10) == 0.0
