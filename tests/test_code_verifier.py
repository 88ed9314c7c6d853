"""The code verifier on real HumanEval and MBPP rows, copied here as literals.

HumanEval (openai/human-eval, MIT): HumanEval/23 and HumanEval/53.
MBPP (google-research, CC-BY-4.0): tasks 502 and 927 (927 has test_setup_code).
"""
import json

import pytest

from distill.verifiers import get_verifier
from distill.verifiers.code import extract_program, verify

HE_23 = {
    "prompt": "\n\ndef strlen(string: str) -> int:\n    \"\"\" Return length of given string\n    >>> strlen('')\n"
              "    0\n    >>> strlen('abc')\n    3\n    \"\"\"\n",
    "entry_point": "strlen",
    "canonical_solution": "    return len(string)\n",
    "test": "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check(candidate):\n"
            "    assert candidate('') == 0\n    assert candidate('x') == 1\n    assert candidate('asdasnakj') == 9\n",
}
HE_53 = {
    "prompt": "\n\ndef add(x: int, y: int):\n    \"\"\"Add two numbers x and y\n    >>> add(2, 3)\n    5\n"
              "    >>> add(5, 7)\n    12\n    \"\"\"\n",
    "entry_point": "add",
    "canonical_solution": "    return x + y\n",
    "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import random\n\n    assert candidate(0, 1) == 1\n"
            "    assert candidate(1, 0) == 1\n    assert candidate(2, 3) == 5\n    assert candidate(5, 7) == 12\n"
            "    assert candidate(7, 5) == 12\n\n    for i in range(100):\n"
            "        x, y = random.randint(0, 1000), random.randint(0, 1000)\n"
            "        assert candidate(x, y) == x + y\n\n",
}
MBPP_502 = {
    "code": "def find(n,m):\r\n  r = n%m\r\n  return (r)",
    "test_setup_code": "",
    "test_list": ["assert find(3,3) == 0", "assert find(10,3) == 1", "assert find(16,5) == 1"],
}
MBPP_927 = {
    "code": "class Node: \r\n\tdef __init__(self, data): \r\n\t\tself.data = data \r\n\t\tself.left = None\r\n"
            "\t\tself.right = None\r\ndef max_height(node): \r\n\tif node is None: \r\n\t\treturn 0 ; \r\n\telse : \r\n"
            "\t\tleft_height = max_height(node.left) \r\n\t\tright_height = max_height(node.right) \r\n"
            "\t\tif (left_height > right_height): \r\n\t\t\treturn left_height+1\r\n\t\telse: \r\n"
            "\t\t\treturn right_height+1",
    "test_setup_code": "root = Node(1) \r\nroot.left = Node(2) \r\nroot.right = Node(3) \r\n"
                       "root.left.left = Node(4) \r\nroot.left.right = Node(5) \r\n"
                       "root1 = Node(1);  \r\nroot1.left = Node(2);  \r\n"
                       "root1.right = Node(3);  \r\nroot1.left.left = Node(4);  \r\nroot1.right.left = Node(5);  \r\n"
                       "root1.right.right = Node(6);  \r\nroot1.right.right.right= Node(7);  \r\n"
                       "root1.right.right.right.right = Node(8)\r\nroot2 = Node(1) \r\nroot2.left = Node(2) \r\n"
                       "root2.right = Node(3) \r\nroot2.left.left = Node(4) \r\nroot2.left.right = Node(5)\r\n"
                       "root2.left.left.left = Node(6)\r\nroot2.left.left.right = Node(7)",
    "test_list": ["assert (max_height(root)) == 3", "assert (max_height(root1)) == 5 ",
                  "assert (max_height(root2)) == 4"],
}


def answer(program: str) -> str:
    """A long-CoT completion: a draft inside the reasoning, the program after it."""
    return f"<think>Let me write it.\n```python\nprint('draft')\n```\n</think>\nHere it is:\n" \
           f"```python\n{program}\n```\n"


def he_ref(row: dict) -> str:
    return json.dumps({"tests": row["test"], "entry_point": row["entry_point"]})


def mbpp_ref(row: dict) -> str:
    return json.dumps({"tests": row["test_list"], "setup": row["test_setup_code"]})


def test_registered():
    assert get_verifier("code") is verify


@pytest.mark.parametrize("row", [HE_23, HE_53], ids=["HumanEval/23", "HumanEval/53"])
def test_humaneval_canonical_solution_passes(row):
    v = verify(answer(row["prompt"] + row["canonical_solution"]), he_ref(row))
    assert (v.correct, v.reason) == (True, "passed") and row["entry_point"] in v.extracted


@pytest.mark.parametrize("row", [HE_23, HE_53], ids=["HumanEval/23", "HumanEval/53"])
def test_humaneval_wrong_solution_fails(row):
    v = verify(answer(row["prompt"] + "    return 0\n"), he_ref(row))
    assert (v.correct, v.reason) == (False, "failed_tests")


@pytest.mark.parametrize("row", [MBPP_502, MBPP_927], ids=["MBPP/502", "MBPP/927"])
def test_mbpp_reference_solution_passes(row):
    v = verify(answer(row["code"]), mbpp_ref(row))
    assert (v.correct, v.reason) == (True, "passed")


def test_mbpp_wrong_solution_fails():
    assert verify(answer("def find(n, m):\n    return n // m"), mbpp_ref(MBPP_502)).reason == "failed_tests"


def test_plain_string_reference_is_the_tests():
    v = verify(answer(MBPP_502["code"]), "\n".join(MBPP_502["test_list"]))
    assert (v.correct, v.reason) == (True, "passed")


def test_last_python_block_after_think_is_the_program():
    completion = ("<think>```python\ndef find(n, m):\n    return n % m\n```</think>\n"
                  "```python\ndef find(n, m):\n    return 1\n```\nor better:\n"
                  "```python\ndef find(n, m):\n    return n % m\n```")
    assert extract_program(completion) == "def find(n, m):\n    return n % m"
    assert verify(completion, mbpp_ref(MBPP_502)).correct is True


def test_code_only_inside_think_is_no_code():
    completion = "<think>```python\ndef find(n, m):\n    return n % m\n```</think>\nThe answer is n % m."
    v = verify(completion, mbpp_ref(MBPP_502))
    assert (v.correct, v.reason) == (False, "no_code")


def test_without_closing_think_the_whole_completion_is_searched():
    completion = "<think>I will write it.\n```python\ndef find(n, m):\n    return n % m\n```\n"
    assert verify(completion, mbpp_ref(MBPP_502)).reason == "passed"


def test_no_python_block_is_no_code():
    assert verify("</think>def find(n, m): return n % m", mbpp_ref(MBPP_502)).reason == "no_code"


def test_syntax_error():
    v = verify(answer("def find(n, m)\n    return n % m"), mbpp_ref(MBPP_502))
    assert (v.correct, v.reason, v.extracted) == (False, "syntax_error", "def find(n, m)\n    return n % m")


def test_exception_in_the_program_fails_the_tests():
    assert verify(answer("raise RuntimeError('no')"), mbpp_ref(MBPP_502)).reason == "failed_tests"


def test_exiting_before_the_tests_is_not_a_pass():
    program = "import sys\ndef find(n, m):\n    return 0\nsys.exit(0)"
    assert verify(answer(program), mbpp_ref(MBPP_502)).reason == "failed_tests"


def test_main_block_of_the_program_does_not_run():
    program = "def find(n, m):\n    return n % m\n\nif __name__ == '__main__':\n    n, m = map(int, input().split())\n"
    assert verify(answer(program), mbpp_ref(MBPP_502)).reason == "passed"


def test_infinite_loop_is_timeout(monkeypatch):
    monkeypatch.setattr("distill.verifiers.code.TIMEOUT_S", 1)
    v = verify(answer("def find(n, m):\n    while True:\n        pass"), mbpp_ref(MBPP_502))
    assert (v.correct, v.reason) == (False, "timeout")


def test_memory_bomb_is_memory_exceeded():
    v = verify(answer("def find(n, m):\n    return len(b'x' * (4 << 30))"), mbpp_ref(MBPP_502))
    assert (v.correct, v.reason) == (False, "memory_exceeded")


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_missing_reference_is_unverifiable(reference):
    v = verify(answer(MBPP_502["code"]), reference)
    assert (v.correct, v.reason) == (None, "no_reference")


@pytest.mark.parametrize("reference", [
    json.dumps({"entry_point": "find"}),                           # no tests
    json.dumps({"tests": HE_23["test"]}),                          # check(candidate) but no entry point
    json.dumps({"tests": "assert find(3,3) ==", "setup": ""}),     # tests that don't parse
    json.dumps({"tests": ["assert True"], "entry_point": "not a name"}),
    "42",
])
def test_unusable_reference_is_unverifiable(reference):
    v = verify(answer(MBPP_502["code"]), reference)
    assert (v.correct, v.reason) == (None, "bad_reference")


@pytest.mark.filterwarnings("ignore:sandbox")
def test_broken_sandbox_is_unverifiable_not_wrong(monkeypatch):
    from distill.verifiers import sandbox
    monkeypatch.setattr(sandbox, "_self_test", lambda use_ns: "self-test failed: no python")
    v = verify(answer(MBPP_502["code"]), mbpp_ref(MBPP_502))
    assert (v.correct, v.reason) == (None, "sandbox_error")


def test_output_without_a_final_newline_still_passes():
    program = MBPP_502["code"] + "\nprint('no newline', end='')"
    assert verify(answer(program), mbpp_ref(MBPP_502)).reason == "passed"


# --- a reference the verifier cannot read never passes (issue 13, point 1) ----------------------

ADD_REF = {"tests": "assert add(1, 2) == 3", "entry_point": "add"}
PRINTS_ONE = "print(1)"


def test_python_repr_of_a_reference_object_is_read_not_run_as_tests():
    # What `str(answer)` made of a nested JSONL answer: `{'tests': ..., 'entry_point': ...}`.
    v = verify(answer(PRINTS_ONE), str(ADD_REF))
    assert (v.correct, v.reason) == (False, "failed_tests")


def test_python_repr_of_a_reference_object_still_passes_a_right_program():
    v = verify(answer("def add(a, b):\n    return a + b"), str(ADD_REF))
    assert (v.correct, v.reason) == (True, "passed")


def test_python_repr_of_a_list_of_asserts_is_read():
    v = verify(answer(PRINTS_ONE), str(["assert add(1, 2) == 3"]))
    assert (v.correct, v.reason) == (False, "failed_tests")


@pytest.mark.parametrize("reference", [
    "{'tests': 'assert add(1,2)==4', 'entry_point': add}",     # looks like an object, is none: no test in it
    "x = 1\nprint(x)",                                           # code without a single assert
    json.dumps({"tests": "def check(candidate):\n    candidate(1)\n", "entry_point": "add"}),
    json.dumps({"tests": "import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n"
                         "        assert add(1, 2) == 3\n"}),  # a TestCase nobody runs
    json.dumps({"tests": "def helper():\n    assert add(1, 2) == 3\n"}),  # an assert that is never called
])
def test_reference_without_a_test_that_runs_is_unverifiable(reference):
    v = verify(answer(PRINTS_ONE), reference)
    assert (v.correct, v.reason) == (None, "no_tests")


def test_assert_in_a_helper_the_tests_call_counts_as_a_test():
    reference = json.dumps({"tests": "def helper():\n    assert add(1, 2) == 3\n\nhelper()\n"})
    assert verify(answer(PRINTS_ONE), reference).reason == "failed_tests"
