"""The math verifier: where the answer is taken from, what counts as equal, and one test per verdict."""
import pytest

from verifiers import Verdict, get_verifier
from verifiers.math import verify


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


# --- where the answer comes from -------------------------------------------------------------

@pytest.mark.parametrize("text, correct", [
    ("First \\boxed{3}, then correcting, \\boxed{18}", True),
    ("First \\boxed{18}, then correcting, \\boxed{3}", False),
    ("\\boxed{18} wait, no: \\boxed{\\frac{1}{2}}", False),
])
def test_last_box_wins(text, correct):
    assert verify(answer(text), "18").correct is correct


@pytest.mark.parametrize("text", ["\\boxed{2} and \\boxed{3}", "$\\boxed{2}$, $\\boxed{3}$"])
def test_boxes_joined_by_a_separator_are_one_answer(text):
    assert verify(answer(text), "2, 3").correct is True


def test_nested_box_is_one_answer():
    assert verify(answer("\\boxed{\\boxed{7}}"), "7").correct is True


def test_reasoning_is_ignored_and_only_the_answer_counts():
    assert verify("<think>the answer is 18</think>\nThe answer is 17.", "18").correct is False


def test_completion_without_think_is_all_answer():
    assert verify("The answer is \\boxed{18}.", "18").correct is True


@pytest.mark.parametrize("text", [
    "#### 18",
    "She makes 9 * 2 = 18 dollars.\n#### 18\nHope this helps with all 3 parts.",
    "The answer is 18.",
    "Final answer: 18",
    "The final answer is $18$. I hope it is correct.",
    "So she makes $18 per day at the market.",
])
def test_unboxed_answer_forms(text):
    assert verify(answer(text), "18").correct is True


# --- what counts as equal ------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "\\boxed{18 dollars}", "\\boxed{\\$18}", "\\boxed{18 \\text{ cm}}", "\\boxed{18\\ \\mathrm{cm}}",
    "\\boxed{18.00}", "\\boxed{18 apples}",
])
def test_units_and_currency_are_dropped(text):
    assert verify(answer(text), "18").correct is True


def test_math_words_after_a_number_are_not_dropped_as_units():
    assert verify(answer("\\boxed{2 pi}"), "2").correct is False


@pytest.mark.parametrize("gold, pred, correct", [
    ("50", "50\\%", True),       # the gold left the % sign out
    ("50\\%", "50", True),       # the model left it out
    ("50\\%", "0.5", True),      # the fraction a percentage stands for
    ("0.5", "50\\%", True),
    ("12.5", "12.5\\%", True),   # also for non-integers, which math-verify alone rejects
    ("12.5\\%", "12.5", True),
    ("0.5", "\\boxed{50}\\%", True),
    ("50", "0.5", False),        # a bare number is taken at its value
    ("50", "0.5\\%", False),
])
def test_percentage_policy(gold, pred, correct):
    text = pred if "\\boxed" in pred else f"\\boxed{{{pred}}}"
    assert verify(answer(text), gold).correct is correct


@pytest.mark.parametrize("gold, pred", [
    ("0.5", "\\frac{1}{2}"), ("\\frac12", "0.5"), ("\\frac{1}{2}", "1/2"), ("1000", "1,000"),
    ("[1,3)", "[1, 3)"), ("\\{2,1\\}", "\\{1,2\\}"), ("C", "\\mathrm{C}"), ("3", "x = 3"),
])
def test_equivalent_forms_match(gold, pred):
    assert verify(answer(f"\\boxed{{{pred}}}"), gold).correct is True


# Gold answers copied verbatim from MATH-500 (HuggingFaceH4/MATH-500, MIT), each boxed by the model
# in a different but equal form, and once in a wrong form.
MATH500 = [
    ("\\dfrac{33}{100}", "0.33", "0.34"),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}^\\circ", "\\frac{7}{270}"),
    ("10,\\!080", "10080", "10008"),
    ("\\$32,\\!348", "32348 \\text{ dollars}", "32,384"),
    ("(-\\infty, 0]", "\\left(-\\infty,0\\right]", "(-\\infty, 0)"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", "(3, \\pi)"),
    ("3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}, 3-2\\sqrt{2}", "3+2\\sqrt{2}"),
    ("\\text{(C)}", "\\textbf{(C)}", "(D)"),
    ("x \\in [-2,7]", "[-2, 7]", "(-2, 7)"),
    ("(0,9) \\cup (9,36)", "(9,36)\\cup(0,9)", "(0,36)"),
    ("\\$18.90", "18.9", "18.09"),
    ("90^\\circ", "90", "\\frac{\\pi}{2}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", "\\sqrt{3}"),
    ("5.4 \\text{ cents}", "5.40", "54"),
    ("\\text{Evelyn}", "\\text{evelyn}", "\\text{Bob}"),
]


@pytest.mark.parametrize("gold, equal, _", MATH500)
def test_math500_gold_matches_an_equal_form(gold, equal, _):
    assert verify(answer(f"So the answer is $\\boxed{{{equal}}}$."), gold).correct is True


@pytest.mark.parametrize("gold, _, wrong", MATH500)
def test_math500_gold_rejects_a_wrong_form(gold, _, wrong):
    assert verify(answer(f"So the answer is $\\boxed{{{wrong}}}$."), gold).correct is False


# GSM8K (openai/gsm8k, MIT): the loader passes the number after ####; a raw solution works too.
GSM8K_RAW = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
             "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18")


@pytest.mark.parametrize("reference", ["18", GSM8K_RAW])
def test_gsm8k_reference(reference):
    assert verify(answer("She makes \\boxed{\\$18} a day."), reference).correct is True


def test_gsm8k_reference_with_thousands():
    assert verify(answer("The answer is 1,080."), "1080").correct is True


def test_registered_under_math():
    assert get_verifier("math") is verify


def test_numeral_fast_path_agrees_with_math_verify():
    # Plain numbers skip the LaTeX parser; the verdicts must be the ones math-verify gives.
    from verifiers import math as m

    cases = [("<think>x</think>\\boxed{1,000}", "1000"), ("<think>x</think>\\boxed{18.0}", "18"),
             ("<think>x</think>\\boxed{-3}", "-3"), ("<think>x</think>\\boxed{17}", "18"),
             ("<think>x</think>\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72"), ("<think>x</think>$\\boxed{0.5}$", "0.50")]
    for completion, ref in cases:
        fast = m.verify(completion, ref)
        gold = list(m._gold(ref))
        pred, _ = m._extract(completion.split("</think>")[1])
        assert fast.correct == m._equal(gold, pred), (completion, ref)


@pytest.mark.parametrize("reference", ['{"answer": "5"}', str({"answer": "5"})])
def test_reference_object_is_unverifiable_not_wrong(reference):
    # An object is not a math answer (a code or countdown reference given to the wrong verifier).
    v = verify(answer("\\boxed{5}"), reference)
    assert (v.correct, v.reason) == (None, "unparseable_reference")
