import pytest

from distill.filters import apply_filters, make_filter

# Plain English math reasoning. lingua's word-level segmentation calls "let me" and "plus 3 is 11"
# French here; the filter must not.
ENGLISH = """Okay, so I need to find the value of x such that $2x + 3 = 11$. Let me start by subtracting 3 from \
both sides. That gives $2x = 8$. Then dividing both sides by 2, x = 4.

Wait, let me double-check. If x = 4, then 2 times 4 is 8, plus 3 is 11. Yes, that matches.

So x = 4 is the unique solution, and the answer is 4."""
CHINESE = "我们需要再检查一下这个结果是否正确，所以把四代回原来的方程里面重新计算一遍。"
SPANISH = ("Bueno, ahora dividimos ambos lados entre dos y obtenemos que el resultado es igual a "
           "cuatro, como habíamos visto antes en el problema anterior.")


def think(text: str) -> str:
    return f"<think>{text}</think>\n\\boxed{{4}}"


def test_english_reasoning_is_kept_with_share_one(make_trace):
    t = make_trace(think(ENGLISH))
    apply_filters([t], [make_filter("language")])
    assert (t.kept, t.scores["language"]) == (True, 1.0)


def test_chinese_sentence_in_english_reasoning_is_language_mixed(make_trace):
    t = make_trace(think(ENGLISH + "\n\n" + CHINESE))
    apply_filters([t], [make_filter("language", target="en", min_share=0.95)])
    assert (t.kept, t.rejected_by) == (False, "language_mixed")
    assert 0.5 < t.scores["language"] < 0.95


def test_spanish_paragraph_in_english_reasoning_is_language_mixed(make_trace):
    t = make_trace(think(ENGLISH + "\n\n" + SPANISH))
    apply_filters([t], [make_filter("language")])
    assert (t.kept, t.rejected_by) == (False, "language_mixed")


def test_pure_math_scores_one(make_trace):
    t = make_trace(think("$$x^2 - 5x + 6 = 0 \\implies (x-2)(x-3) = 0$$\n\\[ x \\in \\{2, 3\\} \\]\n2 + 3 = 5"))
    apply_filters([t], [make_filter("language")])
    assert (t.kept, t.scores["language"]) == (True, 1.0)


def test_greek_math_letters_are_not_a_language(make_trace):
    t = make_trace(think("The angle θ is π/2, so the area is π r² and α + β = π."))
    assert make_filter("language").score(t) == 1.0


def test_chinese_target_keeps_chinese_and_drops_english(make_trace):
    f = make_filter("language", target="zh")
    zh = make_trace(think("首先，两边同时减去 3，得到 $2x = 8$，所以 $x = 4$。" + CHINESE))
    en = make_trace(think(ENGLISH))
    apply_filters([zh, en], [f])
    assert (zh.kept, zh.scores["language"]) == (True, 1.0)
    assert (en.kept, en.rejected_by, en.scores["language"]) == (False, "language_mixed", 0.0)


def test_completion_is_used_when_there_is_no_reasoning(make_trace):
    t = make_trace(CHINESE)  # no <think>: all answer, no reasoning
    assert t.reasoning == ""
    assert make_filter("language").score(t) == 0.0


def test_unknown_language_code_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown ISO 639-1 code 'xx'"):
        make_filter("language", target="xx")


def test_english_fast_path_still_sends_latin_rivals_to_lingua(make_trace):
    from distill.filters import make_filter

    f = make_filter("language")
    english = "We add the two numbers. Then we check the sum against the question. " * 6
    assert f.share(english) == 1.0
    for foreign in ("Entonces sumamos los dos numeros y el resultado es correcto para todos. ",
                    "Ensuite on additionne les deux nombres et le resultat est correct pour tous. ",
                    "Dann addieren wir die beiden Zahlen und das Ergebnis ist richtig fur alle. "):
        assert f.share(english + foreign * 3) < 0.95, foreign
