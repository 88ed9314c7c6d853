"""The countdown / Game of 24 verifier: one test per verdict, then the forms an answer may take."""
import pytest

from distill.verifiers import Verdict, get_verifier
from distill.verifiers.countdown import parse_reference, verify

REF = '{"numbers": [4, 7, 8, 8], "target": 24}'


def answer(text: str) -> str:
    return f"<think>Try 8 + 8 + 7 + 4 = 27, no.</think>\n{text}"


# --- one test per verdict --------------------------------------------------------------------

def test_right_expression_is_a_match():
    assert verify(answer("\\boxed{(7 - 8 / 8) * 4}"), REF) == Verdict(True, "match", "(7 - 8 / 8) * 4")


def test_expression_with_another_value_is_wrong_value():
    assert verify(answer("\\boxed{(7 - 8 / 8) + 4}"), REF).reason == "wrong_value"


@pytest.mark.parametrize("expr", ["(7 - 8 / 8) * 4 * 1", "(7 - 8) * 4", "(7 - 8 / 8) * 4 + 8 - 8", "24"])
def test_numbers_not_used_exactly_once_are_wrong_numbers(expr):
    v = verify(answer(f"\\boxed{{{expr}}}"), REF)
    assert (v.correct, v.reason) == (False, "wrong_numbers")


@pytest.mark.parametrize("expr", [
    "-(7 - 8 / 8) * -4",        # unary minus: the game combines two numbers at a time
    "2**3 + 8 + 8 + 4 - 7",     # powers
    "__import__('os').getcwd()",
    "(7 - 8 // 8) * 4",         # floor division
    "7.0 * 4 - 8 + 8",          # non-integer literal
    "1_0 + 7 + 8 - 4 + 8",      # a Python-only literal
    "(7 - 8 / 8) 4",
])
def test_anything_but_binary_arithmetic_is_invalid(expr):
    v = verify(answer(f"\\boxed{{{expr}}}"), REF)
    assert (v.correct, v.reason) == (False, "invalid_expression")


def test_overlong_expression_is_invalid():
    assert verify(answer("\\boxed{" + "(" * 300 + "4" + ")" * 300 + "}"), REF).reason == "invalid_expression"


def test_division_by_zero_is_its_own_failure():
    v = verify(answer("\\boxed{8 / (3 - 3) + 8}"), "3 3 8 8")
    assert (v.correct, v.reason) == (False, "division_by_zero")


@pytest.mark.parametrize("text", ["I could not find one.", ""])
def test_no_expression_is_no_answer(text):
    assert verify(answer(text), REF) == Verdict(False, "no_answer")


def test_expression_only_inside_the_reasoning_is_no_answer():
    assert verify("<think>(7 - 8 / 8) * 4 = 24</think>\nDone.", REF).reason == "no_answer"


def test_think_never_closed_is_wrong():
    assert verify("<think>(7 - 8 / 8) * 4 = 24", REF) == Verdict(False, "unclosed_think")


@pytest.mark.parametrize("reference", ["four seven", '{"numbers": [4, 7.5], "target": 24}',
                                       '{"numbers": [], "target": 24}', '{"numbers": [4, 7], "target": "x"}'])
def test_bad_reference_is_unverifiable(reference):
    assert verify(answer("\\boxed{4 * 7}"), reference) == Verdict(None, "bad_reference")


@pytest.mark.parametrize("reference", [None, " "])
def test_missing_reference_is_unverifiable(reference):
    assert verify(answer("\\boxed{4 * 7}"), reference) == Verdict(None, "no_reference")


# --- the reference ---------------------------------------------------------------------------

@pytest.mark.parametrize("reference, parsed", [
    (REF, ([4, 7, 8, 8], 24)),
    ('{"nums": [25, 3, 7], "target": 82}', ([25, 3, 7], 82)),   # TinyZero's countdown rows
    ("4 7 8 8", ([4, 7, 8, 8], 24)),                            # a Game of 24 puzzle (24.csv)
    ("1 1 11 11", ([1, 1, 11, 11], 24)),
    ("4,7,8,8", ([4, 7, 8, 8], 24)),
    ("[4, 7, 8, 8]", ([4, 7, 8, 8], 24)),
])
def test_reference_shapes(reference, parsed):
    assert parse_reference(reference) == parsed


def test_countdown_target_other_than_24():
    assert verify(answer("<answer>25 * 3 + 7</answer>"), '{"nums": [25, 3, 7], "target": 82}').correct is True


# --- the forms an answer may take ------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "\\boxed{(7 - 8 / 8) * 4 = 24}",
    "\\boxed{(7 - 8 \\div 8) \\times 4}",
    "\\boxed{\\left(7 - \\frac{8}{8}\\right) \\cdot 4}",
    "<answer> (7 - 8 / 8) * 4 </answer>",
    "(7 − 8 ÷ 8) × 4 = 24",
    "(7 - 8 / 8) x 4 = 24\nThat uses every number once.",
    "**Answer:** $(7 - 8 / 8) * 4 = 24$.",
    "24 = (7 - 8 / 8) * 4",
    "(7 - 8 / 8) * 4 = 6 * 4 = 24",
])
def test_answer_forms(text):
    assert verify(answer(text), REF).correct is True


def test_last_box_wins():
    assert verify(answer("\\boxed{(7 - 8 / 8) + 4} no: \\boxed{(7 - 8 / 8) * 4}"), REF).correct is True


def test_arithmetic_is_exact():
    assert verify(answer("\\boxed{8 / (3 - 8 / 3)}"), "3 3 8 8").correct is True


def test_registered_under_countdown():
    assert get_verifier("countdown") is verify


def test_python_repr_of_a_reference_object_is_read():
    # What `str(answer)` made of a nested JSONL answer before the loader kept it as JSON.
    reference = str({"numbers": [4, 7, 8, 8], "target": 24})
    assert verify(answer("\\boxed{(7 - 8 / 8) * 4}"), reference) == Verdict(True, "match", "(7 - 8 / 8) * 4")


def test_a_code_reference_is_unverifiable_not_wrong():
    reference = '{"tests": "assert add(1,2)==4", "entry_point": "add"}'
    assert verify(answer("\\boxed{(7 - 8 / 8) * 4}"), reference) == Verdict(None, "bad_reference")
