"""The math verifier: where the answer is taken from, what counts as equal, and one test per verdict."""
import pytest

from tests.math_cases import CASES, Case, all_cases, completion, plain_math_verify
from distill.verifiers import Verdict, get_verifier
from distill.verifiers.math import verify


def answer(text: str) -> str:
    """A completion whose reasoning holds a wrong intermediate result, then `text` as its answer."""
    return f"<think>First guess: \\boxed{{0}}. Let me check again.</think>\n{text}"


# --- one test per verdict --------------------------------------------------------------------

def test_boxed_equal_answer_is_a_match():
    assert verify(answer("So the total is $\\boxed{18}$."), "18") == Verdict(True, "match", "18")


def test_different_answer_is_a_mismatch():
    v = verify(answer("\\boxed{17}"), "18")
    assert (v.correct, v.reason, v.extracted) == (False, "mismatch", "17")


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_missing_reference_is_unverifiable(reference):
    assert verify(answer("\\boxed{18}"), reference) == Verdict(None, "no_reference")


@pytest.mark.parametrize("reference", ["\\frac{", "x^2+"])
def test_unparseable_gold_is_unverifiable_not_wrong(reference):
    v = verify(answer("\\boxed{3}"), reference)
    assert (v.correct, v.reason) == (None, "unparseable_reference")


def test_think_never_closed_is_wrong_even_with_a_boxed_answer_inside():
    v = verify("<think>so it is \\boxed{18}", "18")
    assert (v.correct, v.reason) == (False, "unclosed_think")


@pytest.mark.parametrize("completion", ["<think>it is \\boxed{18}</think>", "<think>it is 18</think> I am not sure."])
def test_answer_only_in_the_reasoning_is_no_answer(completion):
    v = verify(completion, "18")
    assert (v.correct, v.reason) == (False, "no_answer")


def test_empty_box_is_an_unparseable_answer():
    v = verify(answer("\\boxed{}"), "18")
    assert (v.correct, v.reason) == (False, "unparseable_answer")


def test_box_cut_off_by_truncation_is_no_answer():
    v = verify(answer("\\boxed{18"), "18")
    assert (v.correct, v.reason) == (False, "no_answer")


# --- where the answer comes from (cases: tests/math_cases.py) ----------------------------------

def check(case: Case) -> None:
    v = verify(completion(case), case.gold)
    assert v.correct is case.expected, (case, v)


@pytest.mark.parametrize("case", CASES["last_box"], ids=str)
def test_last_box_wins(case):
    check(case)


@pytest.mark.parametrize("case", CASES["joined_boxes"], ids=str)
def test_boxes_joined_by_a_separator_are_one_answer(case):
    check(case)


@pytest.mark.parametrize("case", CASES["spaced_boxes"], ids=str)
def test_boxes_joined_by_latex_spacing_or_text_are_one_answer(case):
    check(case)


@pytest.mark.parametrize("case", CASES["final_answer_after_box"], ids=str)
def test_explicit_final_answer_after_the_last_box_overrides_it(case):
    check(case)


@pytest.mark.parametrize("case", CASES["unboxed"], ids=str)
def test_unboxed_answer_forms(case):
    check(case)


@pytest.mark.parametrize("case", CASES["other_language"], ids=str)
def test_answers_in_other_languages(case):
    check(case)


def test_reasoning_is_ignored_and_only_the_answer_counts():
    assert verify("<think>the answer is 18</think>\nThe answer is 17.", "18").correct is False


def test_completion_without_think_is_all_answer():
    assert verify("The answer is \\boxed{18}.", "18").correct is True


# --- what counts as equal ------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES["units"], ids=str)
def test_units_and_currency_are_dropped_but_not_math_words(case):
    check(case)


@pytest.mark.parametrize("case", CASES["percent"], ids=str)
def test_percentage_policy(case):
    check(case)


@pytest.mark.parametrize("case", CASES["equivalent"], ids=str)
def test_equivalent_forms_match(case):
    check(case)


@pytest.mark.parametrize("case", CASES["math500"], ids=str)
def test_math500_gold_matches_an_equal_form_and_rejects_a_wrong_one(case):
    check(case)


@pytest.mark.parametrize("case", CASES["gsm8k"], ids=["number", "raw-solution"])
def test_gsm8k_reference(case):
    check(case)


@pytest.mark.parametrize("case", CASES["currency_gold"], ids=str)
def test_currency_gold(case):
    check(case)


@pytest.mark.parametrize("case", CASES["pm_equations"], ids=str)
def test_list_of_equations_with_pm_is_parsed_part_by_part(case):
    check(case)


@pytest.mark.parametrize("case", CASES["exact_tiny_huge"], ids=str)
def test_exact_quantities_are_compared_exactly(case):
    check(case)


@pytest.mark.parametrize("case", CASES["unparseable_gold"], ids=str)
def test_unparseable_gold_case(case):
    check(case)


def test_unparseable_gold_is_matched_by_the_very_same_text_and_nothing_else():
    assert verify(answer("\\boxed{x^2+}"), "x^2+") == Verdict(True, "match", "x^2+")
    assert verify(answer("\\boxed{x^2-}"), "x^2+") == Verdict(None, "unparseable_reference")


def test_never_wrong_where_plain_math_verify_is_right():
    """Verdicts no worse than the library we wrap: on every case, a distill verdict that is wrong
    while plain math-verify's is right is a deliberate difference, and the case says why."""
    worse = []
    for cls, case in all_cases():
        plain_right = any(plain_math_verify(case.gold, case.answer, wrap) is case.expected for wrap in (True, False))
        if plain_right and verify(completion(case), case.gold).correct is not case.expected and not case.why:
            worse.append((cls, case))
    assert worse == []


def test_registered_under_math():
    assert get_verifier("math") is verify


def test_numeral_fast_path_agrees_with_math_verify():
    # Plain numbers skip the LaTeX parser; the verdicts must be the ones math-verify gives.
    from distill.verifiers import math as m

    cases = [("<think>x</think>\\boxed{1,000}", "1000"), ("<think>x</think>\\boxed{18.0}", "18"),
             ("<think>x</think>\\boxed{-3}", "-3"), ("<think>x</think>\\boxed{17}", "18"),
             ("<think>x</think>\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72"), ("<think>x</think>$\\boxed{0.5}$", "0.50")]
    for completion, ref in cases:
        fast = m.verify(completion, ref)
        gold = list(m._gold(ref))
        _, pred = m._extract(completion.split("</think>")[1])
        assert fast.correct == m._equal(gold, pred), (completion, ref)


@pytest.mark.parametrize("reference", ['{"answer": "5"}', str({"answer": "5"}), '["2", "3"]', str(["2", "3"])])
def test_reference_object_is_unverifiable_not_wrong(reference):
    # An object is not a math answer (a code or countdown reference given to the wrong verifier), nor
    # is a list of quoted answers, which math-verify would read as the interval [2, 3].
    v = verify(answer("\\boxed{[2, 3]}"), reference)
    assert (v.correct, v.reason) == (None, "unparseable_reference")


def test_a_bracketed_pair_without_quotes_is_still_an_interval():
    assert verify(answer("\\boxed{[2, 3]}"), "[2, 3]").correct is True
